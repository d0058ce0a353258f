//! Property tests (proptest) of the connection engine
//! (`sync_server::conn::Engine`), driven through the fuzz harness's
//! in-memory sockets and fake clock (`tools/fuzz/src/mem.rs`), in plain
//! `cargo test`.
//!
//! * HTTP split invariance: a stream of pipelined requests (well-formed or
//!   damaged) gets the same answers, in order, and the same ending, whether
//!   it arrives whole, cut at arbitrary points, one byte at a time, or one
//!   request at a time (the `http_stream` harness's checks); undamaged
//!   requests are all answered until one closes the connection.
//! * WebSocket reassembly: broadcasts fragmented at random, with pings
//!   between fragments, and the byte stream cut at random, reach the other
//!   member as the same messages in the same order, and every ping is
//!   answered.
//! * Room invariants: random sequences of joins, broadcasts, documents,
//!   leaves, drops, slow readers and idle time from four clients, checked
//!   after every step by the `ws_client_message` harness (every member a
//!   live connection, one room per connection, unique peer ids, bounded
//!   queues, §2 replies), and at the end every idle room expires.

#[path = "../tools/fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;
#[path = "common/mod.rs"]
mod test_common;

use harness::common::{
    client_frame, http_answers, server_frame, server_frame_len, upgrade_request,
};
use harness::http_stream::{self, Rest};
use harness::mem::{self, Net};
use harness::ws_client_message::{World, CONNS};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use sync_server::rooms::ConnRef;

// ---- HTTP ------------------------------------------------------------------

/// One request's bytes. Unless `honest`, the declared body length may be
/// off by a little.
fn request(honest: bool) -> impl Strategy<Value = Vec<u8>> {
    let delta = if honest { 0i64..1 } else { -2i64..3 };
    (
        prop::sample::select(vec![
            "GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "BREW",
        ]),
        "/[a-zA-Z0-9/_.-]{0,16}",
        prop::option::of("[a-z0-9=&%+]{0,12}"),
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "Host",
                    "Origin",
                    "Connection",
                    "Upgrade",
                    "Authorization",
                    "X-Forwarded-For",
                    "X-Custom",
                ]),
                "[ -~]{0,24}",
            ),
            0..5,
        ),
        prop::collection::vec(any::<u8>(), 0..48),
        prop::option::of(delta),
        any::<bool>(),
    )
        .prop_map(
            |(method, path, query, version, headers, body, len_delta, lf_only)| {
                let nl = if lf_only { "\n" } else { "\r\n" };
                let mut head = format!("{method} {path}");
                if let Some(q) = query {
                    head.push('?');
                    head.push_str(&q);
                }
                head.push(' ');
                head.push_str(version);
                head.push_str(nl);
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}{nl}"));
                }
                if let Some(delta) = len_delta {
                    let declared = (body.len() as i64 + delta).max(0);
                    head.push_str(&format!("Content-Length: {declared}{nl}"));
                }
                head.push_str(nl);
                let mut out = head.into_bytes();
                if len_delta.is_some() {
                    out.extend_from_slice(&body);
                }
                out
            },
        )
}

/// Pipelined requests, then maybe some bytes damaged.
fn http_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(request(false), 1..5),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    )
        .prop_map(|(reqs, damage)| {
            let mut s: Vec<u8> = reqs.concat();
            for (at, byte) in damage {
                let i = at.index(s.len());
                s[i] = byte;
            }
            s
        })
}

/// Sorted, distinct cut points strictly inside `0..len`.
fn cut_points(len: usize, cuts: &[prop::sample::Index]) -> Vec<usize> {
    if len < 2 {
        return Vec::new();
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| 1 + c.index(len - 1)).collect();
    points.sort_unstable();
    points.dedup();
    points
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn http_split_invariance(
        stream in http_stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        small_body in any::<bool>(),
    ) {
        // Whole, cut, one byte at a time and one request at a time; the
        // harness asserts the answers and endings agree and follow the
        // requests in order.
        let max_body = if small_body { 8 } else { 1024 };
        let points = cut_points(stream.len(), &cuts);
        http_stream::check(&stream, &points, max_body, usize::MAX);
    }

    #[test]
    fn well_formed_pipelines_are_all_answered(reqs in prop::collection::vec(request(true), 1..5)) {
        // Undamaged requests with honest lengths: every one parses, in
        // order, nothing is left over, and the engine answers each one in
        // turn until an answer closes the connection.
        let stream = reqs.concat();
        let (got, rest) = http_stream::expected(&stream, 1024);
        prop_assert_eq!(rest, Rest::Clean);
        prop_assert_eq!(got.len(), reqs.len());
        for ((_, n), raw) in got.iter().zip(&reqs) {
            prop_assert_eq!(*n, raw.len());
        }
        let summary = http_stream::check(&stream, &[], 1024, 0);
        let first = summary.split_whitespace().next().unwrap_or_default();
        prop_assert!(matches!(first, "end" | "close" | "upgrade"), "{}", summary);
        if first == "end" {
            prop_assert!(summary.contains(&format!(" after {} requests", reqs.len())), "{}", summary);
        }
    }
}

// ---- WebSocket -------------------------------------------------------------

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 8));

/// Sends `bytes` on a fresh connection and lets the client close it.
fn http_once(net: &mut Net, bytes: &[u8]) -> u16 {
    let c = net.connect(CLIENT).expect("admitted");
    net.send(c, bytes);
    let (answers, _) = http_answers(&net.pipe(c).from_server, |_| false);
    net.fin(c);
    answers.first().expect("one answer").status
}

/// A client connection upgraded to WebSocket.
fn ws_client(net: &mut Net) -> ConnRef {
    let c = net.connect(CLIENT).expect("admitted");
    net.send(c, &upgrade_request());
    c
}

/// The frames written to `c` after its 101: (opcode, payload).
fn ws_received(net: &Net, c: ConnRef) -> Vec<(u8, Vec<u8>)> {
    let buf = &net.pipe(c).from_server;
    let (answers, mut pos) = http_answers(buf, |_| false);
    assert_eq!(answers.first().map(|a| a.status), Some(101));
    let mut out = Vec::new();
    while let Some(n) = server_frame_len(&buf[pos..]) {
        let (op, payload) = server_frame(&buf[pos..pos + n]);
        out.push((op, payload.to_vec()));
        pos += n;
    }
    assert_eq!(pos, buf.len(), "a partial frame was written");
    out
}

fn join(code: &str, peer: &str) -> Vec<u8> {
    format!(r#"{{"action":"join","room_code":"{code}","peer_id":"{peer}"}}"#).into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ws_messages_survive_fragmentation_and_splits(
        messages in prop::collection::vec(
            ("\\PC{0,80}", prop::collection::vec(any::<prop::sample::Index>(), 0..4), any::<bool>()),
            1..6,
        ),
        mask in any::<[u8; 4]>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut net = Net::new(mem::config(&[]));
        let body = r#"{"desired_room_code":"R","desired_host_id":"host-1"}"#;
        let post = format!(
            "POST /api/rooms HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        prop_assert_eq!(http_once(&mut net, post.as_bytes()), 200);
        let sender = ws_client(&mut net);
        let receiver = ws_client(&mut net);
        net.send(sender, &client_frame(1, true, &join("R", "s"), mask));
        net.send(receiver, &client_frame(1, true, &join("R", "r"), mask));

        // Each broadcast's message cut into fragments, a ping between
        // fragments where asked, the whole byte stream cut again.
        let mut stream = Vec::new();
        let mut pings = 0;
        for (text, frags, ping) in &messages {
            let msg = serde_json::json!({"action": "broadcast", "data": text}).to_string();
            let bytes = msg.as_bytes();
            let mut points: Vec<usize> = frags.iter().map(|f| f.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            points.dedup();
            let mut start = 0;
            let mut parts = Vec::new();
            for p in points {
                parts.push(&bytes[start..p]);
                start = p;
            }
            parts.push(&bytes[start..]);
            let last = parts.len() - 1;
            for (k, part) in parts.iter().enumerate() {
                let opcode = if k == 0 { 1 } else { 0 };
                stream.extend(client_frame(opcode, k == last, part, mask));
                if *ping && k < last {
                    stream.extend(client_frame(9, true, b"hb", mask));
                    pings += 1;
                }
            }
        }
        let before = ws_received(&net, sender).len();
        let mut start = 0;
        for p in cut_points(stream.len(), &cuts).into_iter().chain([stream.len()]) {
            net.send(sender, &stream[start..p]);
            start = p;
        }
        prop_assert_eq!(net.engine.buffered_input(sender), Some(0));

        // The sender hears a pong per ping and nothing else.
        let own = &ws_received(&net, sender)[before..];
        prop_assert!(own.iter().all(|(op, p)| *op == 10 && p == b"hb"), "{:?}", own);
        prop_assert_eq!(own.len(), pings);
        // The receiver gets every message, whole and in order.
        let got: Vec<String> = ws_received(&net, receiver)
            .into_iter()
            .filter(|(op, _)| *op == 1)
            .map(|(_, p)| serde_json::from_slice::<serde_json::Value>(&p).unwrap())
            .filter(|v| v["type"] == "data")
            .map(|v| v["data"].as_str().unwrap().to_owned())
            .collect();
        let want: Vec<String> = messages.iter().map(|(t, _, _)| t.clone()).collect();
        prop_assert_eq!(got, want);
    }
}

// ---- Rooms -----------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Create(usize, usize),
    Join(usize, usize, usize, bool),
    Broadcast(usize, String),
    Sync(usize, String),
    RequestSync(usize),
    Leave(usize),
    Ping(usize),
    Garbage(usize, String),
    Drop(usize),
    Slow(usize, bool),
    Advance(u64),
}

const CODES: &[&str] = &["R1", "R2", "team-x", "Q"];
const HOSTS: &[&str] = &["h", "host_2", "p1"];
const PEERS: &[&str] = &["h", "p1", "p2", "host_2", "\u{0e02}"];

fn op() -> impl Strategy<Value = Op> {
    let conn = 0..CONNS;
    prop_oneof![
        2 => (0..CODES.len(), 0..HOSTS.len()).prop_map(|(c, h)| Op::Create(c, h)),
        5 => (conn.clone(), 0..CODES.len(), 0..PEERS.len(), any::<bool>())
            .prop_map(|(i, c, p, host)| Op::Join(i, c, p, host)),
        4 => (conn.clone(), "\\PC{0,300}").prop_map(|(i, d)| Op::Broadcast(i, d)),
        2 => (conn.clone(), "\\PC{0,200}").prop_map(|(i, d)| Op::Sync(i, d)),
        1 => conn.clone().prop_map(Op::RequestSync),
        1 => conn.clone().prop_map(Op::Leave),
        1 => conn.clone().prop_map(Op::Ping),
        1 => (conn.clone(), "\\PC{0,40}").prop_map(|(i, g)| Op::Garbage(i, g)),
        1 => conn.clone().prop_map(Op::Drop),
        1 => (conn, any::<bool>()).prop_map(|(i, s)| Op::Slow(i, s)),
        1 => (0u64..5).prop_map(Op::Advance),
    ]
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn room_invariants_hold_after_every_step(
        ops in prop::collection::vec(op(), 1..60),
        idle in prop::option::of(1u64..4),
    ) {
        // Every World step asserts the invariants and §2 replies itself.
        let mut w = World::new(idle.map(Duration::from_secs));
        for op in ops {
            match op {
                Op::Create(c, h) => w.create(Some(CODES[c]), Some(HOSTS[h])),
                Op::Join(i, c, p, host) => w.message(
                    i,
                    &format!(
                        r#"{{"action":"join","room_code":{},"peer_id":{},"is_host":{host},"metadata":{{"n":{i}}}}}"#,
                        json(CODES[c]),
                        json(PEERS[p])
                    ),
                ),
                Op::Broadcast(i, d) => {
                    w.message(i, &format!(r#"{{"action":"broadcast","data":{}}}"#, json(&d)))
                }
                Op::Sync(i, d) => {
                    w.message(i, &format!(r#"{{"action":"sync_document","document":{}}}"#, json(&d)))
                }
                Op::RequestSync(i) => w.message(i, r#"{"action":"request_sync"}"#),
                Op::Leave(i) => w.message(i, r#"{"action":"leave"}"#),
                Op::Ping(i) => w.message(i, r#"{"action":"ping"}"#),
                Op::Garbage(i, g) => w.message(i, &g),
                Op::Drop(i) => w.drop_conn(i),
                Op::Slow(i, slow) => w.set_reading(i, !slow),
                Op::Advance(s) => w.advance(s),
            }
            // A connection is in at most one room, and peer ids are unique
            // per room (also asserted inside; restated here as the property).
            let mut seen = std::collections::HashSet::new();
            for (_, room) in w.rooms().iter() {
                let ids: std::collections::HashSet<&str> = room.member_peer_ids().collect();
                prop_assert_eq!(ids.len(), room.peer_count());
                for c in room.member_conns() {
                    prop_assert!(seen.insert(c), "connection in two rooms");
                }
            }
        }
        w.drop_all_and_expire();
    }
}
