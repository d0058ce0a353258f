//! The operator's view (protocol §8) against the real binary: `/metrics`
//! parsed by the official Prometheus Python client after a scripted
//! workload, `/livez` and `/readyz` flipping with their dependencies, JSON
//! log lines, and the admin API's access rules.
//!
//! The metrics parser and the accounts database come from
//! `tools/with-secantus.sh` (which `tools/test.sh` runs): it exports
//! `SYNC_TEST_PYTHON` (a venv with `prometheus_client`) and
//! `SYNC_TEST_MONGODB_URI`. Without them these tests fail, never skip.

mod common;

use common::{http, Response, TestServer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghij";

/// Parses Prometheus text with `prometheus_client.parser` and returns every
/// sample as `name{label="v",...}` (labels sorted) → value. Also checks that
/// each family has HELP and TYPE, as promtool would.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let python = std::env::var("SYNC_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "SYNC_TEST_PYTHON is not set: the metrics test needs the Prometheus client's parser; \
             run it through tools/with-secantus.sh (tools/test.sh does)"
        )
    });
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    assert fam.documentation, "no HELP for " + fam.name
    assert fam.type in ("counter", "gauge", "histogram"), fam.type
    for s in fam.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        key = s.name + ("{" + labels + "}" if labels else "")
        assert key not in out, "duplicate sample " + key
        out[key] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: BTreeMap<String, f64> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

struct Scrape {
    samples: BTreeMap<String, f64>,
    raw: Response,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key}; have {:#?}", self.samples.keys()))
    }
    fn n(&self, key: &str) -> u64 {
        let v = self.get(key);
        assert_eq!(v.fract(), 0.0, "{key} = {v}");
        v as u64
    }
}

const SCRAPE_REQUEST: &str = "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";

/// One scrape on a fresh connection; returns the parsed samples and the
/// raw answer (whose exact size the next scrape's byte counter includes).
fn scrape(s: &TestServer) -> Scrape {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(SCRAPE_REQUEST.as_bytes()).unwrap();
    let raw = common::read_response(&mut c).expect("a /metrics answer");
    assert_eq!(raw.status, 200);
    assert_eq!(
        raw.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let samples = parse_metrics(&raw.text());
    Scrape { samples, raw }
}

/// The size on the wire of an answer read by `read_response`.
fn wire_len(r: &Response) -> u64 {
    let status_line = format!(
        "HTTP/1.1 {} {}\r\n",
        r.status,
        match r.status {
            200 => "OK",
            _ => unreachable!(),
        }
    );
    let headers: usize = r
        .headers
        .iter()
        .map(|(k, v)| k.len() + 2 + v.len() + 2)
        .sum();
    (status_line.len() + headers + 2 + r.body.len()) as u64
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_count_a_scripted_workload() {
    let s = TestServer::start(&[("ROOM_CREATE_BURST", "2"), ("ROOM_CREATE_RATE", "0.001")]);
    let mut accepted = 0u64;
    let mut get = |path: &str| {
        accepted += 1;
        http(s.addr, "GET", path, &[], b"")
    };
    assert_eq!(get("/health").status, 200);
    assert_eq!(get("/api/rooms/NOPE").status, 404);
    assert_eq!(get("/no/such/route").status, 404);
    assert_eq!(get("/livez").status, 200);
    assert_eq!(get("/readyz").status, 200);
    let post = |body: &str| http(s.addr, "POST", "/api/rooms", &[], body.as_bytes());
    assert_eq!(
        post(r#"{"desired_room_code":"ROOM1","desired_host_id":"h1"}"#).status,
        200
    );
    assert_eq!(post("").status, 200);
    assert_eq!(post("").status, 429);
    accepted += 3;

    // One room, three peers.
    let mut host = s.ws();
    host.join("ROOM1", "h1", true);
    let mut a = s.ws();
    a.join("ROOM1", "a", false);
    let mut b = s.ws();
    b.join("ROOM1", "b", false);
    accepted += 3;
    assert_eq!(host.recv_type(), "peer_joined");
    assert_eq!(host.recv_type(), "peer_joined");
    assert_eq!(a.recv_type(), "peer_joined");
    for i in 0..5 {
        a.send(json!({"action": "broadcast", "data": format!("m{i}")}));
    }
    for _ in 0..5 {
        assert_eq!(host.recv_type(), "data");
        assert_eq!(b.recv_type(), "data");
    }
    host.send(json!({"action": "sync_document", "document": "DOC"}));
    assert_eq!(a.recv_type(), "document_sync");
    assert_eq!(b.recv_type(), "document_sync");
    b.send(json!({"action": "request_sync"}));
    assert_eq!(b.recv_type(), "document_sync");
    a.send(json!({"action": "ping"}));
    a.send(json!({"action": "ping"}));
    assert_eq!(a.recv_type(), "pong");
    assert_eq!(a.recv_type(), "pong");
    a.send_text("{not json");
    assert_eq!(a.recv_type(), "error");
    a.ws.send(tungstenite::Message::binary(vec![1u8, 2, 3]))
        .unwrap();
    assert_eq!(a.recv_type(), "error");
    b.send(json!({"action": "leave"}));
    assert_eq!(b.expect_close(), Some(1000));
    drop(b);
    assert_eq!(host.recv_type(), "peer_left");
    assert_eq!(a.recv_type(), "peer_left");
    // `a` drops its TCP connection without a close frame.
    drop(a);
    assert_eq!(host.recv_type(), "peer_left");

    // Wait until the short-lived HTTP connections are gone too: then the
    // host's WebSocket and the scrape are the only connections.
    let mut scrapes = 0u64;
    let mut m;
    let t0 = Instant::now();
    loop {
        m = scrape(&s);
        scrapes += 1;
        if m.n("sync_server_connections_open") == 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "connections stay open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(
        m.n("sync_server_connections_accepted_total"),
        accepted + scrapes
    );
    assert_eq!(m.n("sync_server_websockets_accepted_total"), 3);
    assert_eq!(m.n("sync_server_websockets_open"), 1);
    assert_eq!(m.n("sync_server_rooms_in_memory"), 2);
    // The five broadcasts are held for catch-up (§6), and the room store
    // (the default file store) answers.
    assert_eq!(m.n("sync_server_history_events"), 5);
    assert!(m.n("sync_server_history_bytes") > 5 * 64);
    assert_eq!(m.n("sync_server_room_store_up"), 1);
    for (t, n) in [
        ("join", 3),
        ("broadcast", 5),
        ("sync_document", 1),
        ("request_sync", 1),
        ("leave", 1),
        ("ping", 2),
        ("invalid", 1),
        ("binary", 1),
    ] {
        assert_eq!(
            m.n(&format!(
                "sync_server_messages_received_total{{type=\"{t}\"}}"
            )),
            n,
            "messages in, {t}"
        );
    }
    for (t, n) in [
        ("room_info", 3),
        ("connected", 3),
        ("peer_joined", 3),
        ("peer_left", 3),
        ("document_sync", 3),
        ("data", 10),
        ("error", 2),
        ("pong", 2),
        ("other", 0),
    ] {
        assert_eq!(
            m.n(&format!("sync_server_deliveries_total{{type=\"{t}\"}}")),
            n,
            "deliveries, {t}"
        );
    }
    assert_eq!(m.n(r#"sync_server_websocket_closes_total{code="1000"}"#), 1);
    assert_eq!(m.n(r#"sync_server_websocket_closes_total{code="1006"}"#), 1);
    assert_eq!(m.n(r#"sync_server_websocket_closes_total{code="1008"}"#), 0);
    let http = |route: &str, status: u16| {
        m.samples
            .get(&format!(
                "sync_server_http_responses_total{{route=\"{route}\",status=\"{status}\"}}"
            ))
            .copied()
            .unwrap_or(0.0) as u64
    };
    assert_eq!(http("health", 200), 1);
    assert_eq!(http("rooms_get", 404), 1);
    assert_eq!(http("other", 404), 1);
    assert_eq!(http("livez", 200), 1);
    assert_eq!(http("readyz", 200), 1);
    assert_eq!(http("rooms_create", 200), 2);
    assert_eq!(http("rooms_create", 429), 1);
    assert_eq!(http("ws", 101), 3);
    // Every earlier scrape was answered before this one was rendered.
    assert_eq!(http("metrics", 200), scrapes - 1);
    assert_eq!(
        m.n(r#"sync_server_rejections_total{reason="room_create_rate",status="429"}"#),
        1
    );
    assert_eq!(
        m.n(r#"sync_server_rejections_total{reason="memory_guard",status="503"}"#),
        0
    );
    assert_eq!(m.n("sync_server_memory_guard_engaged"), 0);
    assert!(m.get("sync_server_resident_memory_bytes") > 1e6);
    assert!(m.n("sync_server_loop_turns_total") > 10);
    assert!(m.n("sync_server_received_bytes_total") > 0);
    assert!(m.n("sync_server_sent_bytes_total") > 0);
    // No accounts, no accounts figures.
    assert!(!m
        .samples
        .keys()
        .any(|k| k.starts_with("sync_server_accounts")));
    // Nothing that names a room or a peer.
    let text = m.raw.text();
    for secret in ["ROOM1", "\"h1\"", "\"a\"", "\"b\""] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }

    // The byte counters are exact: between two scrapes on a quiet server
    // the server read one request and wrote one answer.
    let next = scrape(&s);
    assert_eq!(
        next.n("sync_server_received_bytes_total") - m.n("sync_server_received_bytes_total"),
        SCRAPE_REQUEST.len() as u64
    );
    assert_eq!(
        next.n("sync_server_sent_bytes_total") - m.n("sync_server_sent_bytes_total"),
        wire_len(&m.raw)
    );
    drop(host);
}

#[test]
fn a_slow_reader_cut_off_counts_as_1008() {
    let s = TestServer::start(&[("MAX_OUTBOUND_BYTES", "65536")]);
    s.room("SLOW", "h");
    let mut host = s.ws();
    host.join("SLOW", "h", true);
    let mut slow = s.ws();
    slow.join("SLOW", "slow", false);
    assert_eq!(host.recv_type(), "peer_joined");
    // `slow` reads nothing; the host floods until the server cuts it off.
    let chunk = "x".repeat(32 * 1024);
    let t0 = Instant::now();
    loop {
        // Several per scrape: each scrape runs the Python parser, and the
        // kernel's loopback buffers take megabytes before the server's
        // queue for `slow` grows at all.
        for _ in 0..32 {
            host.send(json!({"action": "broadcast", "data": chunk}));
        }
        let m = scrape(&s);
        if m.n(r#"sync_server_websocket_closes_total{code="1008"}"#) == 1 {
            assert_eq!(m.n("sync_server_websockets_open"), 1);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no 1008");
    }
}

#[test]
fn livez_and_readyz_without_dependencies() {
    let s = TestServer::start(&[]);
    let r = http(s.addr, "GET", "/livez", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "alive");
    assert!(r.json()["loop_turns"].as_u64().unwrap() > 0);
    let r = http(s.addr, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"status": "ready", "checks": {"draining": false, "memory_guard": "ok", "accounts": "disabled", "room_store": "ok"}})
    );
    // HEAD: the same head, no body.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"HEAD /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    std::io::Read::read_to_string(&mut c, &mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "{head}");
    let r = http(s.addr, "POST", "/livez", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // The probes carry the CORS headers every API answer carries.
    let r = http(
        s.addr,
        "GET",
        "/metrics",
        &[("Origin", "http://dash.example")],
        b"",
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://dash.example")
    );
    // /health is unchanged.
    let h = http(s.addr, "GET", "/health", &[], b"").json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["store"], "disabled");
}

#[test]
fn room_store_figures() {
    // The default file store (a fresh directory per test server).
    let s = TestServer::start(&[("ROOM_SAVE_DELAY_MS", "0")]);
    let m = scrape(&s);
    assert_eq!(m.n("sync_server_room_store_up"), 1);
    assert_eq!(m.n("sync_server_room_store_save_duration_seconds_count"), 0);
    s.room("STORED", "h");
    let t0 = Instant::now();
    loop {
        let m = scrape(&s);
        if m.n("sync_server_room_store_save_duration_seconds_count") >= 1
            && m.n("sync_server_room_store_unsaved_rooms") == 0
        {
            assert_eq!(
                m.n(r#"sync_server_room_store_save_duration_seconds_bucket{le="+Inf"}"#),
                m.n("sync_server_room_store_save_duration_seconds_count")
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the room was never saved"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = admin_get(&s, "/readyz", None).json();
    assert_eq!(r["checks"]["room_store"], "ok");

    // A memory-only server has no store figures, and nothing to be ready for.
    let mem = TestServer::start(&[("ROOM_STORE", "memory")]);
    let m = scrape(&mem);
    assert!(!m.samples.keys().any(|k| k.contains("room_store")));
    assert_eq!(
        admin_get(&mem, "/readyz", None).json()["checks"]["room_store"],
        "disabled"
    );
}

#[test]
fn readyz_fails_while_the_memory_guard_is_engaged() {
    // A limit far below any real RSS: the guard engages at its first sample.
    let s = TestServer::start(&[("MEMORY_LIMIT_BYTES", "1000000")]);
    let r = http(s.addr, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["checks"]["memory_guard"], "engaged");
    assert_eq!(http(s.addr, "GET", "/livez", &[], b"").status, 200);
    let m = scrape(&s);
    assert_eq!(m.n("sync_server_memory_guard_engaged"), 1);
    assert_eq!(m.n("sync_server_memory_limit_bytes"), 1_000_000);
    let r = http(s.addr, "POST", "/api/rooms", &[], b"");
    assert_eq!(r.status, 503);
    let m = scrape(&s);
    assert_eq!(
        m.n(r#"sync_server_rejections_total{reason="memory_guard",status="503"}"#),
        1
    );
}

#[test]
fn json_log_lines() {
    let s = TestServer::start(&[
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    s.room("LOGS", "secret-host-id");
    let mut c = s.ws();
    c.join("LOGS", "p", false);
    c.send(json!({"action": "broadcast", "data": "a private document"}));
    let r = http(
        s.addr,
        "GET",
        "/api/admin/rooms",
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        b"",
    );
    assert_eq!(r.status, 200);
    drop(c);
    wait_until("a closed line", Duration::from_secs(10), || {
        s.log().contains("closed")
    });
    let log = s.log();
    let mut conn_lines = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        for k in ["time", "level", "target", "message"] {
            assert!(v[k].is_string(), "{k} missing: {line}");
        }
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        if let Some(c) = v.get("conn") {
            assert!(c.is_u64());
            assert!(!v["message"].as_str().unwrap().starts_with('['));
            conn_lines += 1;
        }
    }
    assert!(conn_lines > 3, "{log}");
    assert!(log.contains(r#""level":"info""#) && log.contains("listening on"));
    for secret in [ADMIN_TOKEN, "a private document", "secret-host-id"] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}

#[test]
fn a_short_admin_token_stops_start_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("ADMIN_TOKEN", "too-short-but-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ADMIN_TOKEN") && err.contains("32"), "{err}");
    assert!(!err.contains("too-short-but-secret"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .env_clear()
        .env("PORT", "0")
        .env("LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn admin_get(s: &TestServer, path: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http(s.addr, "GET", path, &headers, b"")
}

#[test]
fn without_admin_access_the_inspector_does_not_exist() {
    let s = TestServer::start(&[]);
    for p in [
        "/admin",
        "/admin/admin.js",
        "/api/admin/rooms",
        "/api/admin/rooms/X",
    ] {
        let r = admin_get(&s, p, Some(ADMIN_TOKEN));
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.json()["error"], "Not found");
    }
}

#[test]
fn admin_token_api() {
    let s = TestServer::start(&[("ADMIN_TOKEN", ADMIN_TOKEN)]);
    // The page and its assets: compiled in, strict headers.
    let page = admin_get(&s, "/admin", None);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(page.text().contains(r#"data-mode="token""#));
    let js = admin_get(&s, "/admin/admin.js", None);
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(admin_get(&s, "/admin/nothing.js", None).status, 404);

    // The JSON needs the token.
    assert_eq!(admin_get(&s, "/api/admin/rooms", None).status, 401);
    let wrong = ADMIN_TOKEN.replace('0', "1");
    assert_eq!(admin_get(&s, "/api/admin/rooms", Some(&wrong)).status, 401);
    let r = admin_get(&s, "/api/admin/rooms", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rooms"], json!([]));
    // Same origin only: no page elsewhere may read the inspector's JSON.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = http(
        s.addr,
        "GET",
        "/api/admin/rooms",
        &[("Authorization", &auth), ("Origin", "http://evil.example")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.json()["node"]["memory_guard"], "ok");

    s.room("INSPECT", "hostsecret");
    let mut host = s.ws();
    host.join("INSPECT", "hostsecret", true);
    let mut p = s.ws();
    p.join("INSPECT", "p1", false);
    let rooms = admin_get(&s, "/api/admin/rooms", Some(ADMIN_TOKEN)).json();
    let row = &rooms["rooms"][0];
    assert_eq!(row["code"], "INSPECT");
    assert_eq!(row["members"], 2);
    assert_eq!(row["host_present"], true);
    assert_eq!(row["document_bytes"], 0);
    assert!(row["last_activity"].as_str().unwrap().ends_with('Z'));
    let one = admin_get(&s, "/api/admin/rooms/INSPECT", Some(ADMIN_TOKEN));
    assert_eq!(one.status, 200);
    let peers = one.json()["peers"].clone();
    assert_eq!(peers.as_array().unwrap().len(), 2);
    assert_eq!(peers[0]["is_host"], true);
    assert_eq!(peers[1]["id"], "p1");
    // The host's secret id stays secret here too (rule 11): its public id
    // is listed.
    assert!(!one.text().contains("hostsecret"), "{}", one.text());
    let rooms_text = admin_get(&s, "/api/admin/rooms", Some(ADMIN_TOKEN)).text();
    assert!(!rooms_text.contains("hostsecret"), "{rooms_text}");
    assert_eq!(
        admin_get(&s, "/api/admin/rooms/NOPE", Some(ADMIN_TOKEN)).status,
        404
    );
    p.send(json!({"action": "leave"}));
    p.expect_close();
    wait_until("member count 1", Duration::from_secs(5), || {
        admin_get(&s, "/api/admin/rooms", Some(ADMIN_TOKEN)).json()["rooms"][0]["members"] == 1
    });

    // Failed attempts are limited per client: after the burst even the
    // right token waits.
    let mut limited = None;
    for i in 0..30 {
        let r = admin_get(&s, "/api/admin/rooms", Some(&wrong));
        if r.status == 429 {
            limited = Some(i);
            assert!(r.header("retry-after").is_some());
            break;
        }
        assert_eq!(r.status, 401);
    }
    assert!(limited.is_some(), "failed attempts were never limited");
    assert_eq!(
        admin_get(&s, "/api/admin/rooms", Some(ADMIN_TOKEN)).status,
        429
    );
    let m = scrape(&s);
    assert!(m.n(r#"sync_server_rejections_total{reason="admin_auth_rate",status="429"}"#) >= 2);
    assert!(!m.raw.text().contains("INSPECT"));
}

#[cfg(feature = "accounts")]
mod accounts_support;

#[cfg(feature = "accounts")]
mod with_accounts {
    use super::*;
    use accounts_support::{mongo_uri, unique_db, Daemon, JWT_SECRET};

    const ADMIN_EMAIL: &str = "ops-admin@example.org";
    const ADMIN_PW: &str = "ops admin password";

    fn server(uri: &str, db: &str) -> TestServer {
        TestServer::start(&[
            ("MONGODB_URI", uri),
            ("DB_NAME", db),
            ("JWT_SECRET", JWT_SECRET),
            ("INITIAL_ADMIN_EMAIL", ADMIN_EMAIL),
            ("INITIAL_ADMIN_PASSWORD", ADMIN_PW),
        ])
    }

    fn readyz(s: &TestServer) -> (u16, Value) {
        let r = http(s.addr, "GET", "/readyz", &[], b"");
        (r.status, r.json())
    }

    fn login(s: &TestServer, email: &str, pw: &str) -> Response {
        let body = json!({"email": email, "password": pw}).to_string();
        http(
            s.addr,
            "POST",
            "/api/auth/login",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    #[test]
    fn readyz_follows_the_accounts_database() {
        let daemon = Daemon::start();
        let s = server(&daemon.uri(), &unique_db("readyz"));
        wait_until("ready", Duration::from_secs(30), || readyz(&s).0 == 200);
        assert_eq!(readyz(&s).1["checks"]["accounts"], "ok");

        daemon.freeze();
        let t0 = Instant::now();
        wait_until("not ready", Duration::from_secs(30), || readyz(&s).0 == 503);
        eprintln!(
            "readyz went 503 {:?} after the database froze",
            t0.elapsed()
        );
        assert_eq!(readyz(&s).1["checks"]["accounts"], "unavailable");
        // Alive all along, and rooms still work.
        assert_eq!(http(s.addr, "GET", "/livez", &[], b"").status, 200);
        assert_eq!(http(s.addr, "GET", "/health", &[], b"").status, 200);
        let m = scrape(&s);
        assert_eq!(m.n("sync_server_accounts_database_up"), 0);

        daemon.thaw();
        let t0 = Instant::now();
        wait_until("ready again", Duration::from_secs(30), || {
            readyz(&s).0 == 200
        });
        eprintln!(
            "readyz went 200 {:?} after the database thawed",
            t0.elapsed()
        );
        let m = scrape(&s);
        assert_eq!(m.n("sync_server_accounts_database_up"), 1);
    }

    #[test]
    fn admin_api_takes_an_admin_account() {
        let s = server(&mongo_uri(), &unique_db("admin_api"));
        let mut token = None;
        wait_until("login", Duration::from_secs(30), || {
            let r = login(&s, ADMIN_EMAIL, ADMIN_PW);
            if r.status == 200 {
                token = Some(r.json()["token"].as_str().unwrap().to_owned());
            }
            r.status == 200
        });
        let token = token.unwrap();
        let page = admin_get(&s, "/admin", None);
        assert!(page.text().contains(r#"data-mode="accounts""#));
        let r = admin_get(&s, "/api/admin/rooms", Some(&token));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["node"]["accounts"], "ok");
        // A plain user is not an admin.
        let body = json!({"email": "plain@example.org", "password": "plain password 1"});
        let r = http(
            s.addr,
            "POST",
            "/api/auth/invite",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &format!("Bearer {token}")),
            ],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let user = login(&s, "plain@example.org", "plain password 1").json()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(admin_get(&s, "/api/admin/rooms", Some(&user)).status, 401);
        assert_eq!(admin_get(&s, "/api/admin/rooms", Some("x.y.z")).status, 401);
        // The ADMIN_TOKEN is not a way in when accounts are on.
        assert_eq!(
            admin_get(&s, "/api/admin/rooms", Some(ADMIN_TOKEN)).status,
            401
        );
        let m = scrape(&s);
        assert!(m.n("sync_server_accounts_job_duration_seconds_count") >= 4);
        assert_eq!(m.n("sync_server_accounts_jobs_queued"), 0);
        assert_eq!(
            m.n(r#"sync_server_accounts_job_duration_seconds_bucket{le="+Inf"}"#),
            m.n("sync_server_accounts_job_duration_seconds_count")
        );
    }
}
