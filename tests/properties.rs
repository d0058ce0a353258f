//! Property tests (proptest) for the sans-io cores, in plain `cargo test`.
//!
//! * HTTP split invariance: a stream of pipelined requests (well-formed or
//!   damaged) gives the same requests, in order, and the same ending,
//!   whether it arrives whole or cut at arbitrary points.
//! * WebSocket reassembly: client messages fragmented at random, with pings
//!   between fragments, and the byte stream cut at random, decode to the
//!   same messages.
//! * Room invariants: random sequences of joins, broadcasts, documents,
//!   leaves, drops, slow readers and idle time through the room state
//!   machine, checked after every step by the `ws_client_message` fuzz
//!   harness's model (every member a live connection, one room per
//!   connection, unique peer ids, bounded queues, §2 replies), and at the
//!   end every idle room expires.

#[path = "../tools/fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;
#[path = "common/mod.rs"]
mod test_common;

use harness::ws_client_message::{World, CONNS};
use proptest::prelude::*;
use std::time::Duration;
use sync_server::http::{parse_request, Request};
use sync_server::ws::{Decoder, Event};

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

#[derive(Debug, PartialEq)]
enum HttpEnd {
    Clean,
    More(usize),
    Error(u16),
}

/// The server's loop: append each arrival, parse until "need more".
fn http_feed(arrivals: &[&[u8]], max_body: usize) -> (Vec<(Request, usize)>, HttpEnd) {
    let mut inbuf = Vec::new();
    let mut out = Vec::new();
    for a in arrivals {
        inbuf.extend_from_slice(a);
        loop {
            match parse_request(&inbuf, max_body) {
                Ok(Some((req, n))) => {
                    inbuf.drain(..n);
                    out.push((req, n));
                }
                Ok(None) => break,
                Err(e) => return (out, HttpEnd::Error(e.status())),
            }
        }
    }
    let end = if inbuf.is_empty() {
        HttpEnd::Clean
    } else {
        HttpEnd::More(inbuf.len())
    };
    (out, end)
}

fn cut(data: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.push(data[start..p].to_vec());
        start = p;
    }
    out.push(data[start..].to_vec());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn http_split_invariance(
        stream in http_stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        small_body in any::<bool>(),
    ) {
        let max_body = if small_body { 8 } else { 1024 };
        let whole = http_feed(&[&stream], max_body);
        let pieces = cut(&stream, &cuts);
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(&whole, &http_feed(&refs, max_body));
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(&whole, &http_feed(&bytes, max_body));
        // In order: the requests' byte ranges tile the stream.
        let mut pos = 0;
        for (req, n) in &whole.0 {
            let own = parse_request(&stream[pos..pos + n], max_body);
            prop_assert_eq!(own, Ok(Some((req.clone(), *n))));
            pos += n;
        }
    }

    #[test]
    fn well_formed_pipelines_parse_completely(reqs in prop::collection::vec(request(true), 1..5)) {
        // Undamaged requests with honest lengths: every one comes out, in
        // order, and nothing is left over.
        let stream = reqs.concat();
        let (got, end) = http_feed(&[&stream], 1024);
        prop_assert_eq!(end, HttpEnd::Clean);
        prop_assert_eq!(got.len(), reqs.len());
        for ((_, n), raw) in got.iter().zip(&reqs) {
            prop_assert_eq!(*n, raw.len());
        }
    }
}

// ---- WebSocket -------------------------------------------------------------

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
        let mut stream = Vec::new();
        for (text, frags, ping) in &messages {
            let bytes = text.as_bytes();
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
                stream.extend(test_common::client_frame(opcode, k == last, part, mask));
                if *ping && k < last {
                    stream.extend(test_common::client_frame(9, true, b"hb", mask));
                }
            }
        }
        let mut decoder = Decoder::default();
        let mut inbuf: Vec<u8> = Vec::new();
        let mut texts = Vec::new();
        for piece in cut(&stream, &cuts) {
            inbuf.extend_from_slice(&piece);
            let mut pos = 0;
            while let Some((ev, used)) = decoder.next(&mut inbuf[pos..], 1 << 20).expect("valid stream") {
                if let Some(Event::Text(t)) = ev {
                    texts.push(t.to_owned());
                }
                pos += used;
            }
            inbuf.drain(..pos);
            prop_assert!(decoder.buffered() <= 1 << 20);
        }
        prop_assert!(inbuf.is_empty());
        let want: Vec<String> = messages.iter().map(|(t, _, _)| t.clone()).collect();
        prop_assert_eq!(texts, want);
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
            for (_, room) in w.rooms.iter() {
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
