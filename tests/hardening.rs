//! Issue 15 ("Hardening") over real sockets: the host role as a secret
//! capability (rule 11), and the bounds against hostile clients (rule 12).

mod common;

use common::{http, read_response, Client, Response, TestServer};
use serde_json::json;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A stranger who knows only a room's code cannot learn the host's id nor
/// take the host role; the creator, using only its own POST answer (as the
/// tracker client does), keeps working.
#[test]
fn the_host_id_is_a_secret_only_the_creator_holds() {
    let s = TestServer::start(&[]);
    let created = http(s.addr, "POST", "/api/rooms", &[], b"").json();
    let code = created["room_code"].as_str().unwrap().to_string();
    let secret = created["host_id"].as_str().unwrap().to_string();

    // The lookup shows a public id, never the secret.
    let r = http(s.addr, "GET", &format!("/api/rooms/{code}"), &[], b"");
    assert!(!r.text().contains(&secret), "{}", r.text());
    let public = r.json()["host_id"].as_str().unwrap().to_string();
    assert!(public.starts_with("host_") && public != secret);

    // Re-creating the code without the secret is 409 and reveals nothing.
    for body in [
        json!({"desired_room_code": code}),
        json!({"desired_room_code": code, "desired_host_id": public}),
    ] {
        let r = http(
            s.addr,
            "POST",
            "/api/rooms",
            &[],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(!r.text().contains(&secret));
    }

    // The creator joins as host with the id from its own answer.
    let mut host = s.ws();
    host.send(json!({"action":"join","room_code":code,"peer_id":secret,"is_host":true}));
    let info = host.recv();
    assert_eq!(info["host_id"], public);
    assert_eq!(info["peers"][0]["id"], public);
    assert_eq!(info["peers"][0]["is_host"], true);
    let connected = host.recv();
    assert_eq!(connected["peer_id"], secret, "the host may see its own id");

    // The stranger can neither be host under the public id nor join as it.
    let mut stranger = s.ws();
    for is_host in [true, false] {
        stranger.send(json!({"action":"join","room_code":code,"peer_id":public,"is_host":is_host}));
        assert_eq!(stranger.recv_type(), "error");
    }
    assert!(host.silent_for(Duration::from_millis(200)));

    // A guest sees the host only under the public id, everywhere.
    let mut guest = s.ws();
    let info = guest.join(&code, "guest", false);
    assert!(!info.to_string().contains(&secret), "{info}");
    assert_eq!(host.recv()["type"], "peer_joined");
    host.send(json!({"action":"broadcast","data":"hello"}));
    let data = guest.recv();
    assert_eq!(data, json!({"type":"data","from":public,"data":"hello"}));
    let r = http(s.addr, "GET", &format!("/api/rooms/{code}"), &[], b"");
    assert!(!r.text().contains(&secret), "{}", r.text());
    host.send(json!({"action":"leave"}));
    let left = guest.recv();
    assert_eq!(left, json!({"type":"peer_left","peer_id":public}));

    // The creator restores its room with its secret.
    let r = http(
        s.addr,
        "POST",
        "/api/rooms",
        &[],
        json!({"desired_room_code": code, "desired_host_id": secret})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["restored"], true);
    assert_eq!(r.json()["host_id"], secret);
}

/// A TCP connection to `addr` from the loopback source address `src`
/// (127.0.0.2, ...), so that each test client counts as its own address.
fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One HTTP request from the source address `src`.
fn http_from(src: &str, addr: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    let mut s = connect_from(src, addr);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if method == "POST" || !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    read_response(&mut s).expect("a response")
}

/// A WebSocket client from the source address `src`.
fn ws_from(src: &str, addr: SocketAddr) -> Client {
    let s = connect_from(src, addr);
    let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), s).expect("handshake");
    Client { ws }
}

/// Guessing room codes costs from a per-client budget (rule 12): misses
/// over it get 429 with Retry-After (REST) or an `error` (join); lookups of
/// an existing room never cost anything; other clients are unaffected.
#[test]
fn guessing_room_codes_is_rate_limited_per_client() {
    let s = TestServer::start(&[("ROOM_MISS_BURST", "3"), ("ROOM_MISS_RATE", "0.01")]);
    s.room("REAL01", "h");
    // Lookups of a room that exists are free, however many.
    for _ in 0..50 {
        assert_eq!(
            http_from("127.0.0.2", s.addr, "GET", "/api/rooms/REAL01", "").status,
            200
        );
    }
    for i in 0..3 {
        let r = http_from(
            "127.0.0.2",
            s.addr,
            "GET",
            &format!("/api/rooms/NOPE{i}"),
            "",
        );
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.json()["error"], "Room not found");
    }
    let r = http_from("127.0.0.2", s.addr, "GET", "/api/rooms/NOPE9", "");
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert!(r.json()["error"].as_str().unwrap().contains("Rate limited"));
    // Over budget, a hit is refused too: the answer must not tell a
    // guesser which of its guesses exist.
    let r = http_from("127.0.0.2", s.addr, "GET", "/api/rooms/REAL01", "");
    assert_eq!(r.status, 429);
    // The budget is the client's: a join from the same address is refused,
    // and another address is untouched.
    let mut guesser = ws_from("127.0.0.2", s.addr);
    guesser.send(json!({"action":"join","room_code":"NOPE8","peer_id":"g"}));
    let m = guesser.recv();
    assert_eq!(m["type"], "error");
    assert!(
        m["message"].as_str().unwrap().contains("Rate limited"),
        "{m}"
    );
    let r = http_from("127.0.0.3", s.addr, "GET", "/api/rooms/NOPE0", "");
    assert_eq!(r.status, 404);
    let mut other = ws_from("127.0.0.3", s.addr);
    other.join("REAL01", "o", false);

    // Joins spend the same budget.
    let mut joiner = ws_from("127.0.0.4", s.addr);
    for i in 0..3 {
        joiner.send(json!({"action":"join","room_code":format!("NOPE{i}"),"peer_id":"j"}));
        assert_eq!(
            joiner.recv(),
            json!({"type":"error","message":"Room not found"})
        );
    }
    joiner.send(json!({"action":"join","room_code":"NOPE3","peer_id":"j"}));
    let m = joiner.recv();
    assert!(
        m["message"].as_str().unwrap().contains("Rate limited"),
        "{m}"
    );
    let r = http_from("127.0.0.4", s.addr, "GET", "/api/rooms/NOPE4", "");
    assert_eq!(r.status, 429);
}
