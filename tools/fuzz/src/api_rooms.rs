//! `api_rooms`: the REST routes of §1 (`api::route`, and through it
//! `api::create_room`'s JSON body handling), on a server that already has a
//! room `R1` hosted by `h`.
//!
//! Input layout: a mode byte, then either raw request bytes (bit 0 clear:
//! up to 16 pipelined requests, parsed by `http::parse_request` and routed
//! in order on shared state, so a `POST /api/rooms` can be followed by a
//! `GET` of the new room) or the body of one `POST /api/rooms` (bit 0 set).
//! Bit 1 restricts `CORS_ALLOWED_ORIGINS`; bit 2 makes the peer the trusted
//! proxy (so `X-Forwarded-*` count); bit 3 first has a peer join `R1` over
//! the WebSocket protocol with the input's first line as its `metadata`;
//! bit 4 has memory admission control refuse new rooms.
//!
//! Checks, for every routed request:
//! * accounts are not configured, so `/api/auth/*` is 503 and nothing is
//!   handed to workers; an upgrade is only a `GET /ws` with upgrade
//!   headers, version 13 and a key of the right shape;
//! * every status is one §1 uses; 204 has no body, every other answer is a
//!   JSON object, errors are `{"success":false,"error":<sentence>}`, 405
//!   carries `Allow`, 429 a `Retry-After` of at least a second;
//! * `POST /api/rooms` → 200 only for an empty body or a JSON object, and
//!   names a room that exists with a valid code,
//!   the desired code when one was given, a UUIDv4 `room_id`, the room's
//!   host, and `websocket_url` = `ws[s]://<host>/ws` with a host free of
//!   control characters, spaces and slashes (`wss` only via the trusted
//!   proxy); `restored` exactly when the code existed; a 400 creates
//!   nothing;
//! * `GET /api/rooms/:code` agrees with the room table: every peer is
//!   listed, with the metadata it joined with (404 is exactly
//!   `Room not found`); `/health` counts the rooms;
//! * the response written by `http::write_response` is well formed: status
//!   line, header lines without stray CR or LF (no header injection through
//!   reflected values), and a `Content-Length` that matches the body.
//!
//! The summary is the comma-separated list of outcomes (`upgrade` or the
//! status), empty when no request was complete.

use super::common::{lenient_json, Input, Rng};
use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};
use sync_server::config::Config;
use sync_server::conn::routes::{self as api, Routed, Stats};
use sync_server::http::{self, Answer, Method, Request};
use sync_server::protocol::{self, Action};
use sync_server::ratelimit::RateLimiter;
use sync_server::rooms::{self, ConnRef, Rooms, Session};

const PROXY: &str = "10.0.0.1";

pub fn run(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let mode = input.byte();
    let rest = input.rest();
    let cfg = Config::from_lookup(|k| match k {
        "TRUST_PROXY" => Some(PROXY.into()),
        "CORS_ALLOWED_ORIGINS" if mode & 2 != 0 => Some("https://a.example".into()),
        _ => None,
    })
    .expect("a valid configuration");
    let peer: IpAddr = if mode & 4 != 0 { PROXY } else { "192.0.2.7" }
        .parse()
        .unwrap();
    let now = Instant::now();
    let mut rooms = Rooms::new(Some(Duration::from_secs(60)));
    let mut fx = Vec::new();
    let mut rng = Rng::new(7);
    rooms
        .create(
            Some("R1"),
            Some("h"),
            now,
            SystemTime::now(),
            &mut |b: &mut [u8]| rng.fill(b),
            &mut fx,
        )
        .expect("seed room");
    let mut rest = rest;
    let mut metadata = None;
    if mode & 8 != 0 {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = after;
        let text = format!(
            r#"{{"action":"join","room_code":"R1","peer_id":"p","metadata":{}}}"#,
            String::from_utf8_lossy(line)
        );
        if let Ok(Action::Join {
            room_code,
            peer_id,
            is_host,
            metadata: meta,
            ..
        }) = protocol::decode(&text)
        {
            let conn = ConnRef { key: 1, gen: 1 };
            let mut session = Session::default();
            rooms.join(
                conn,
                &mut session,
                &room_code,
                &peer_id,
                is_host,
                meta,
                None,
                now,
                SystemTime::now(),
                &mut fx,
            );
            if session.in_room() {
                let m = meta.map_or(Value::Null, |m| {
                    lenient_json(m.get().as_bytes()).expect("metadata is JSON")
                });
                metadata = Some(m);
            }
        }
        fx.clear();
    }
    let mut limiter = RateLimiter::new(cfg.room_create_rate, cfg.room_create_burst, 1024);
    let mut misses = RateLimiter::new(cfg.room_miss_rate, cfg.room_miss_burst, 1024);
    let stats = Stats {
        connections: 3,
        started: now,
        store: "disabled",
        admit_new_rooms: mode & 16 == 0,
        room_store: sync_server::store::RoomStore::memory().health(now),
        cluster: None,
    };

    let mut outcomes = Vec::new();
    let mut route = |req: &Request, rooms: &mut Rooms| {
        let before = rooms.len();
        let routed = api::route(
            &cfg,
            rooms,
            &mut limiter,
            &mut misses,
            &stats,
            peer,
            req,
            now,
            &mut fx,
        );
        check(
            &cfg,
            rooms,
            before,
            peer,
            req,
            &routed,
            metadata.as_ref(),
            stats.admit_new_rooms,
        );
        outcomes.push(match routed {
            Routed::Answer(a) => a.status.to_string(),
            Routed::Upgrade => "upgrade".into(),
            Routed::Accounts | Routed::AuthorizeThenCreate(_) => unreachable!(),
        });
    };
    if mode & 1 == 0 {
        let mut buf = rest;
        for _ in 0..16 {
            match http::parse_request(buf, cfg.max_body_bytes) {
                Ok(Some((req, n))) => {
                    route(&req, &mut rooms);
                    buf = &buf[n..];
                }
                Ok(None) | Err(_) => break,
            }
        }
    } else {
        let req = Request {
            method: Some(Method::Post),
            path: "/api/rooms".into(),
            http11: true,
            host: Some("sync.example:3001".into()),
            host_count: 1,
            body: rest.to_vec(),
            ..Request::default()
        };
        route(&req, &mut rooms);
    }
    outcomes.join(",")
}

#[allow(clippy::too_many_arguments)]
fn check(
    cfg: &Config,
    rooms: &Rooms,
    before: usize,
    peer: IpAddr,
    req: &Request,
    routed: &Routed,
    metadata: Option<&Value>,
    admit_new_rooms: bool,
) {
    let path = req.path.as_str();
    let a = match routed {
        Routed::Accounts => panic!("accounts are not configured"),
        Routed::AuthorizeThenCreate(_) => panic!("REQUIRE_AUTH is off"),
        Routed::Upgrade => {
            assert_eq!(req.method(), Method::Get);
            assert_eq!(path, "/ws");
            assert!(req.upgrade_websocket && req.conn_upgrade);
            assert_eq!(req.ws_version.as_deref(), Some("13"));
            let key = req.ws_key.as_deref().unwrap_or_default();
            assert!(key.len() == 24 && key.ends_with("=="), "key {key:?}");
            assert!(api::origin_allowed(cfg, req.origin.as_deref()));
            return;
        }
        Routed::Answer(a) => a,
    };
    check_wire(cfg, req, a);
    assert!(
        matches!(
            a.status,
            200 | 204 | 400 | 403 | 404 | 405 | 409 | 429 | 503
        ),
        "status {}",
        a.status
    );
    if a.status == 204 {
        assert!(a.body.is_empty());
        assert_eq!(req.method(), Method::Options);
        return;
    }
    let body: Value = lenient_json(&a.body).expect("answers are JSON");
    assert!(body.is_object());
    if a.status >= 400 {
        assert_eq!(body["success"], false);
        let e = body["error"].as_str().expect("error sentence");
        assert!(!e.is_empty());
    }
    match a.status {
        405 => assert!(a.allow.is_some()),
        429 => assert!(a.retry_after.is_some_and(|s| s >= 1)),
        409 => {
            assert_eq!(path, "/api/rooms", "409 only for a taken room code");
            assert_eq!(rooms.len(), before);
        }
        503 if path == "/api/rooms" => {
            assert!(!admit_new_rooms, "503 without memory pressure");
            assert_eq!(body["error"], api::NEAR_MEMORY_LIMIT);
            assert_eq!(rooms.len(), before, "a refused POST created a room");
        }
        503 => assert!(path == "/api/auth" || path.starts_with("/api/auth/")),
        200 if path == "/api/rooms" && !admit_new_rooms => {
            assert_eq!(body["restored"], true, "a new room under memory pressure");
        }
        _ => {}
    }
    if path == "/api/rooms" && req.method() == Method::Post {
        match a.status {
            200 => check_created(cfg, rooms, before, peer, req, &body),
            _ => assert_eq!(rooms.len(), before, "a refused create made a room"),
        }
    } else {
        assert_eq!(rooms.len(), before, "only a create makes rooms");
    }
    if let Some(code) = path.strip_prefix("/api/rooms/") {
        match a.status {
            200 => {
                let (_, room) = rooms.find(code).expect("answered room exists");
                assert_eq!(body["room_code"], code);
                // The secret host id never leaves in a lookup (rule 11).
                assert_eq!(body["host_id"], room.host_public_id());
                let peers = body["peers"].as_array().expect("peers");
                assert_eq!(peers.len() as u64, body["peer_count"].as_u64().unwrap());
                assert_eq!(
                    peers.len(),
                    room.peer_count(),
                    "peers missing from the answer"
                );
                if let (Some(m), "R1") = (metadata, code) {
                    assert_eq!(peers[0]["metadata"], *m, "metadata changed");
                }
                assert!(body["has_document"].is_boolean());
            }
            404 => {
                assert!(rooms.find(code).is_none());
                assert_eq!(body["error"], "Room not found");
            }
            _ => {}
        }
    }
    if path == "/health" && a.status == 200 {
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["rooms"].as_u64(), Some(rooms.len() as u64));
    }
}

fn check_created(
    cfg: &Config,
    rooms: &Rooms,
    before: usize,
    peer: IpAddr,
    req: &Request,
    body: &Value,
) {
    assert_eq!(body["success"], true);
    let code = body["room_code"].as_str().expect("room_code");
    assert!(rooms::valid_room_code(code), "code {code:?}");
    let (_, room) = rooms.find(code).expect("created room exists");
    assert_eq!(body["host_id"], room.host_id());
    assert_eq!(body["room_id"], room.room_id());
    let id = room.room_id().as_bytes();
    assert_eq!(id.len(), 36);
    assert_eq!(id[14], b'4', "UUID version 4");
    let sent: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    if !req.body.iter().all(u8::is_ascii_whitespace) {
        assert!(
            sent.is_object(),
            "a body that is not a JSON object made a room"
        );
    }
    if let Some(want) = sent["desired_room_code"].as_str() {
        assert_eq!(code, want);
    }
    if let Some(want) = sent["desired_host_id"].as_str() {
        // A restore only for the room's own (secret) host id.
        assert_eq!(room.host_id(), want);
    }
    if body["restored"] == true {
        assert!(
            sent["desired_host_id"].is_string(),
            "restored without the host id"
        );
    }
    if body["restored"] == true {
        assert_eq!(rooms.len(), before);
        assert!(body["has_document"].is_boolean());
    } else {
        assert!(body.get("restored").is_none());
        assert_eq!(rooms.len(), before + 1);
    }
    let url = body["websocket_url"].as_str().expect("websocket_url");
    let rest = url
        .strip_prefix("wss://")
        .inspect(|_| assert_eq!(peer.to_string(), PROXY, "wss only via the trusted proxy"))
        .or_else(|| url.strip_prefix("ws://"))
        .unwrap_or_else(|| panic!("websocket_url {url:?}"));
    let host = rest.strip_suffix("/ws").expect("ends in /ws");
    assert!(!host.is_empty());
    assert!(
        !host.chars().any(|c| c.is_control() || c == ' ' || c == '/'),
        "host {host:?}"
    );
    let _ = cfg;
}

/// Writes the answer as the server does and checks the bytes.
fn check_wire(cfg: &Config, req: &Request, a: &Answer) {
    let origin = api::cors_origin(cfg, req.origin.as_deref());
    let is_head = req.method() == Method::Head;
    let mut out = Vec::new();
    http::write_response(&mut out, a, origin, !req.keep_alive(), is_head);
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head ends");
    // The head with its last line's CRLF, without the blank line.
    let head = &out[..head_end + 2];
    let status_line = format!("HTTP/1.1 {} ", a.status);
    assert!(head.starts_with(status_line.as_bytes()));
    let mut length = None;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let line = line
            .strip_suffix(b"\r\n")
            .expect("header lines end in CRLF");
        assert!(
            !line.contains(&b'\r') && line.iter().all(|&b| b == b'\t' || b >= 0x20),
            "header injection: {:?}",
            String::from_utf8_lossy(line)
        );
        if let Some(v) = line.strip_prefix(b"Content-Length: ") {
            length = std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<usize>().ok());
        }
    }
    let body = &out[head_end + 4..];
    if a.status == 204 {
        assert!(body.is_empty() && length.is_none());
    } else {
        assert_eq!(length, Some(a.body.len()));
        let expected = if is_head { 0 } else { a.body.len() };
        assert_eq!(body.len(), expected);
    }
}
