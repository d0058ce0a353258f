//! §1 of the contract over real TCP: every route, status, body and header,
//! plus the HTTP limits (408, 413, 431, 429), keep-alive and pipelining.

mod common;

use common::{http, read_response, TestServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn service_descriptor_and_health() {
    let s = TestServer::start(&[]);
    let r = http(s.addr, "GET", "/", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let j = r.json();
    assert_eq!(j["status"], "running");
    assert_eq!(j["websocket"], "/ws");
    assert!(j["name"].is_string() && j["version"].is_string());
    assert!(j["api"].as_array().unwrap().len() >= 4);

    let h = http(s.addr, "GET", "/health", &[], b"").json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["store"], "disabled");
    assert_eq!(h["rooms"], 0);
    assert!(h["connections"].as_u64().unwrap() >= 1);
    assert!(h["uptime_seconds"].is_u64());
    let ts = h["timestamp"].as_str().unwrap();
    assert!(
        ts.len() >= 20 && ts.ends_with('Z') && &ts[10..11] == "T",
        "{ts}"
    );
}

#[test]
fn create_room_fresh_and_restored() {
    let s = TestServer::start(&[]);
    let r = http(s.addr, "POST", "/api/rooms", &[], b"");
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["success"], true);
    let code = j["room_code"].as_str().unwrap();
    assert_eq!(code.len(), 6);
    assert!(
        code.bytes()
            .all(|b| b"ABCDEFGHJKMNPQRSTUVWXYZ23456789".contains(&b)),
        "{code}"
    );
    let host = j["host_id"].as_str().unwrap();
    assert!(host.starts_with("host_") && host.len() == 13, "{host}");
    assert!(host[5..]
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    let id = j["room_id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert_eq!(j["websocket_url"], format!("ws://{}/ws", s.addr));

    // Desired code and host id; asking again restores the same room.
    let a = s.room("my-room_1", "host-A");
    assert_eq!(a["room_code"], "my-room_1");
    assert_eq!(a["host_id"], "host-A");
    assert!(a.get("restored").is_none());
    // Only the host id restores it (rule 11); anyone else gets 409.
    let r = http(
        s.addr,
        "POST",
        "/api/rooms",
        &[],
        br#"{"desired_room_code":"my-room_1","desired_host_id":"someone-else"}"#,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["success"], false);
    assert!(!r.text().contains("host-A"));
    let r = http(
        s.addr,
        "POST",
        "/api/rooms",
        &[],
        br#"{"desired_room_code":"my-room_1"}"#,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let b = s.room("my-room_1", "host-A");
    assert_eq!(b["restored"], true);
    assert_eq!(b["has_document"], false);
    assert_eq!(b["host_id"], "host-A");
    assert_eq!(b["room_id"], a["room_id"]);
}

#[test]
fn create_room_rejects_bad_bodies_and_closes() {
    let s = TestServer::start(&[("ROOM_CREATE_BURST", "100")]);
    for body in [
        "not json",
        r#"{"desired_room_code":"has space"}"#,
        r#"{"desired_room_code":""}"#,
        &format!(r#"{{"desired_room_code":"{}"}}"#, "a".repeat(65)),
        r#"{"desired_room_code":5}"#,
        r#"{"desired_host_id":""}"#,
        &format!(r#"{{"desired_host_id":"{}"}}"#, "h".repeat(129)),
        r#"{"desired_host_id":"a\u0001b"}"#,
    ] {
        let r = http(s.addr, "POST", "/api/rooms", &[], body.as_bytes());
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json()["success"], false);
        assert!(r.json()["error"].as_str().unwrap().len() > 5);
        assert_eq!(r.header("connection"), Some("close"));
    }
    // A 64-character code is fine.
    let ok = s.room(&"a".repeat(64), "h");
    assert_eq!(ok["room_code"].as_str().unwrap().len(), 64);
}

#[test]
fn get_room_and_not_found() {
    let s = TestServer::start(&[]);
    s.room("R1", "h1");
    let r = http(s.addr, "GET", "/api/rooms/R1", &[], b"");
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["success"], true);
    assert_eq!(j["room_code"], "R1");
    // The host's public id, never the secret one the creator holds.
    let public = j["host_id"].as_str().unwrap();
    assert!(public.starts_with("host_") && public != "h1", "{public}");
    assert_eq!(j["peers"], serde_json::json!([]));
    assert_eq!(j["peer_count"], 0);
    assert_eq!(j["has_document"], false);
    assert!(j["created_at"].as_str().unwrap().ends_with('Z'));

    let mut c = s.ws();
    c.send(serde_json::json!({"action":"join","room_code":"R1","peer_id":"p1","metadata":{"name":"Ann"}}));
    c.recv();
    c.recv();
    let j = http(s.addr, "GET", "/api/rooms/R1", &[], b"").json();
    assert_eq!(j["peer_count"], 1);
    let p = &j["peers"][0];
    assert_eq!(p["id"], "p1");
    assert_eq!(p["is_host"], false);
    assert_eq!(p["metadata"]["name"], "Ann");
    assert!(p["joined_at"].as_str().unwrap().ends_with('Z'));

    let r = http(s.addr, "GET", "/api/rooms/NOPE", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), r#"{"success":false,"error":"Room not found"}"#);
}

#[test]
fn unknown_route_wrong_method_and_preflight() {
    let s = TestServer::start(&[]);
    let r = http(s.addr, "GET", "/nope", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["success"], false);

    let r = http(s.addr, "GET", "/api/rooms", &[], b"");
    assert_eq!(r.status, 405);
    assert!(r.header("allow").unwrap().contains("POST"));
    let r = http(s.addr, "DELETE", "/health", &[], b"");
    assert_eq!(r.status, 405);
    assert!(r.header("allow").unwrap().contains("GET"));

    let r = http(
        s.addr,
        "OPTIONS",
        "/api/rooms",
        &[
            ("Origin", "http://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    // Credentialed CORS: the page's own origin, never `*` (a browser hands
    // a `credentials: "include"` answer to the page only then).
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
    assert_eq!(r.header("access-control-max-age"), Some("86400"));
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("Content-Type"));
}

#[test]
fn cors_allow_list_echoes_only_listed_origins() {
    let s = TestServer::start(&[(
        "CORS_ALLOWED_ORIGINS",
        "https://a.example,https://b.example",
    )]);
    let r = http(
        s.addr,
        "GET",
        "/health",
        &[("Origin", "https://b.example")],
        b"",
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://b.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = http(
        s.addr,
        "GET",
        "/health",
        &[("Origin", "https://evil.example")],
        b"",
    );
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // The answer still varies by Origin, for caches in between.
    assert_eq!(r.header("vary"), Some("Origin"));
}

#[test]
fn preflight_lists_the_methods_of_its_route() {
    let s = TestServer::start(&[]);
    for (path, methods) in [
        ("/api/rooms", "POST, OPTIONS"),
        ("/api/rooms/ABC123", "GET, OPTIONS"),
        ("/api/auth/login", "POST, OPTIONS"),
        ("/api/auth/me", "GET, PUT, OPTIONS"),
        ("/api/auth/users", "GET, OPTIONS"),
        ("/api/auth/users/abc", "PUT, DELETE, OPTIONS"),
        ("/api/auth/setup-info", "GET, OPTIONS"),
    ] {
        let r = http(
            s.addr,
            "OPTIONS",
            path,
            &[
                ("Origin", "http://127.0.0.1:5173"),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "content-type,authorization,x-setup-token",
                ),
            ],
            b"",
        );
        assert_eq!(r.status, 204, "{path}");
        assert_eq!(r.header("access-control-allow-methods"), Some(methods));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("Content-Type, Authorization, X-Setup-Token")
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    }
    // Not a browser (no Origin): the plain wildcard, no credentials.
    let r = http(s.addr, "GET", "/health", &[], b"");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
}

#[test]
fn ws_route_without_upgrade_is_400() {
    let s = TestServer::start(&[]);
    let r = http(s.addr, "GET", "/ws", &[], b"");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["success"], false);
    // The handshake is an HTTP/1.1 request (RFC 6455 §4.1).
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        b"GET /ws HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 400);
}

#[test]
fn auth_routes_without_database_are_503() {
    let s = TestServer::start(&[]);
    let r = http(
        s.addr,
        "POST",
        "/api/auth/login",
        &[],
        br#"{"email":"a@b.c","password":"x"}"#,
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "Accounts are not configured");
}

#[test]
fn keep_alive_and_pipelining_answer_in_order() {
    let s = TestServer::start(&[]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Three requests in one write, then one more on the same connection.
    c.write_all(
        b"GET /api/rooms/A1 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /api/rooms HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\n{\"desired_room_code\":\"A1\"}\
          GET /api/rooms/A1 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 404);
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    // Connection: close is honoured.
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        c.read_to_end(&mut rest).unwrap(),
        0,
        "server closed after Connection: close"
    );
}

#[test]
fn huge_header_is_431_and_closes() {
    let s = TestServer::start(&[]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = "a".repeat(100_000);
    let req = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // The server may answer before reading everything; ignore write errors.
    let _ = c.write_all(req.as_bytes());
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["success"], false);
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
}

#[test]
fn body_over_limit_is_413() {
    let s = TestServer::start(&[("MAX_BODY_BYTES", "100")]);
    let body = format!(r#"{{"desired_host_id":"{}"}}"#, "x".repeat(200));
    let r = http(s.addr, "POST", "/api/rooms", &[], body.as_bytes());
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["success"], false);
}

#[test]
fn on_a_kept_alive_connection_the_request_clock_starts_with_its_first_byte() {
    let s = TestServer::start(&[("REQUEST_TIMEOUT_SECONDS", "2")]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    // Idle for most of the timeout, then a request sent in two halves that
    // together take longer than what was left of it.
    std::thread::sleep(Duration::from_millis(1500));
    c.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    c.write_all(b"Host: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 200);
    // A connection that stays idle is closed without an answer.
    let t0 = Instant::now();
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}

#[test]
fn slow_request_gets_408_then_close() {
    let s = TestServer::start(&[("REQUEST_TIMEOUT_SECONDS", "1")]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 408);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
}

#[test]
fn garbage_is_400_and_server_goes_on() {
    let s = TestServer::start(&[]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 400);
    assert_eq!(http(s.addr, "GET", "/health", &[], b"").status, 200);
}

#[test]
fn room_creation_is_rate_limited_per_client() {
    let s = TestServer::start(&[("ROOM_CREATE_RATE", "1"), ("ROOM_CREATE_BURST", "3")]);
    for _ in 0..3 {
        assert_eq!(http(s.addr, "POST", "/api/rooms", &[], b"").status, 200);
    }
    let r = http(s.addr, "POST", "/api/rooms", &[], b"");
    assert_eq!(r.status, 429);
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs));
    // A forged forwarding header does not escape the limit without TRUST_PROXY.
    let r = http(
        s.addr,
        "POST",
        "/api/rooms",
        &[("X-Forwarded-For", "9.9.9.9")],
        b"",
    );
    assert_eq!(r.status, 429);
}

#[test]
fn trusted_proxy_headers_pick_the_client_and_scheme() {
    let s = TestServer::start(&[
        ("TRUST_PROXY", "127.0.0.1"),
        ("ROOM_CREATE_RATE", "1"),
        ("ROOM_CREATE_BURST", "1"),
    ]);
    let h = |ip: &'static str| [("X-Forwarded-For", ip), ("X-Forwarded-Proto", "https")];
    let r = http(s.addr, "POST", "/api/rooms", &h("1.1.1.1"), b"");
    assert_eq!(r.status, 200);
    assert!(r.json()["websocket_url"]
        .as_str()
        .unwrap()
        .starts_with("wss://"));
    assert_eq!(
        http(s.addr, "POST", "/api/rooms", &h("1.1.1.1"), b"").status,
        429
    );
    assert_eq!(
        http(s.addr, "POST", "/api/rooms", &h("2.2.2.2"), b"").status,
        200
    );
}

#[test]
fn connection_limit_refuses_then_recovers() {
    let s = TestServer::start(&[("MAX_CONNECTIONS", "3")]);
    let held: Vec<_> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(read_response(&mut c).unwrap().status, 200);
            c
        })
        .collect();
    let mut extra = TcpStream::connect(s.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let r = read_response(&mut extra).expect("refusal answer");
    assert_eq!(r.status, 503);
    drop(held);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        if read_response(&mut c).map(|r| r.status) == Some(200) {
            break;
        }
        assert!(Instant::now() < end, "server did not resume accepting");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_configuration_stops_startup_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .env_clear()
        .env("PORT", "0")
        .env("MAX_CONNECTIONS", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MAX_CONNECTIONS"));
}

#[test]
fn chunked_bodies_are_decoded_and_other_codings_refused() {
    let s = TestServer::start(&[]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The body in three chunks, sent in two writes, then a pipelined GET.
    c.write_all(
        b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          a\r\n{\"desired_\r\n",
    )
    .unwrap();
    c.write_all(
        b"10\r\nroom_code\":\"CH1\"\r\n1\r\n}\r\n0\r\n\r\n\
          GET /api/rooms/CH1 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let created = read_response(&mut c).unwrap();
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.json()["room_code"], "CH1");
    assert_eq!(read_response(&mut c).unwrap().status, 200);

    // A coding we do not implement: 501, and the connection is closed.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 501);
    assert_eq!(r.json()["success"], false);
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);

    // Both framings at once is how requests get smuggled: 400.
    let r = http(
        s.addr,
        "POST",
        "/api/rooms",
        &[("Transfer-Encoding", "chunked")],
        b"0\r\n\r\n",
    );
    assert_eq!(r.status, 400);

    // A chunked body over the limit is refused from its size line.
    let s = TestServer::start(&[("MAX_BODY_BYTES", "100")]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 413);
}

#[test]
fn expect_continue_gets_an_interim_100_before_the_body() {
    let s = TestServer::start(&[]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = br#"{"desired_room_code":"EC1"}"#;
    let head = format!(
        "POST /api/rooms HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    let interim = read_response(&mut c).unwrap();
    assert_eq!(interim.status, 100);
    c.write_all(body).unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["room_code"], "EC1");

    // A body too large is refused at once instead of being invited.
    let s = TestServer::start(&[("MAX_BODY_BYTES", "10")]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 50\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 413);
}

#[test]
fn near_the_memory_limit_new_rooms_and_websockets_get_503() {
    // A 1 MiB limit: the server's RSS is above its high-water mark from the
    // start, so admission control is engaged for the whole test.
    let s = TestServer::start(&[("MEMORY_LIMIT_BYTES", "1048576")]);
    let r = http(
        s.addr,
        "POST",
        "/api/rooms",
        &[],
        br#"{"desired_room_code":"MEM1"}"#,
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["success"], false);
    assert_eq!(
        r.json()["error"],
        "Server is near its memory limit; try again later"
    );
    assert_eq!(http(s.addr, "GET", "/api/rooms/MEM1", &[], b"").status, 404);

    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 503);

    // Everything else goes on.
    let h = http(s.addr, "GET", "/health", &[], b"");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["rooms"], 0);
}

/// Peers that keep their side open after the server closed its own get
/// their answer, then the end of the stream, and the server goes on. What
/// such peers cost in CPU (an idle server sleeps in epoll; a spin on the
/// half-closed socket would burn a core) is measured by
/// `tools/bench.sh linger`, not here.
#[test]
fn a_peer_that_lingers_after_our_close_gets_its_answer_then_eof() {
    let s = TestServer::start(&[]);
    // The server closes its side (Connection: close, and a 400) while the
    // clients keep theirs open and never read again.
    let mut held = Vec::new();
    for req in [
        &b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\n\r\n",
        b"BROKEN\r\n\r\n",
    ] {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(req).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(read_response(&mut c).is_some());
        // Nothing follows the answer: the server's side is closed.
        let mut rest = [0u8; 64];
        assert_eq!(
            c.read(&mut rest).unwrap(),
            0,
            "end of stream after the answer"
        );
        held.push(c);
    }
    // With the three held, the server answers everybody else.
    for _ in 0..3 {
        assert_eq!(http(s.addr, "GET", "/health", &[], b"").status, 200);
    }
    drop(held);
}

#[test]
fn upgrade_answer_carries_cors_and_a_missing_host_names_the_bound_port() {
    let s = TestServer::start(&[]);
    let mut c = common::raw_upgrade(s.addr);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // HTTP/1.0 needs no Host header: the URL then names the real port, not
    // the configured 0.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST /api/rooms HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["websocket_url"],
        format!("ws://localhost:{}/ws", s.addr.port())
    );
}
