//! `http_stream`: one connection's bytes into the real connection engine
//! (`sync_server::conn::Engine`, through the in-memory sockets of
//! [`super::mem`]), delivered whole, in pieces cut where the fuzzer says,
//! one byte at a time (short streams) and one request per arrival; what the
//! engine writes back is read as a client reads it.
//!
//! Input layout: a flags byte (bit 7: start the stream with a head just
//! under the 16 KiB limit, so the limit itself is within reach; bit 0: a
//! 16-byte body limit instead of 1 KiB), a cut count with 16-bit cut
//! offsets, then the stream.
//!
//! The expectation is the stream parsed whole, one request after another,
//! with `http::parse_request` (every parse also passes the `http_head`
//! checks): its requests, then a clean end, a leftover, or a parse error.
//!
//! Checks:
//! * the engine answers the requests once each, in order, until an answer
//!   ends the connection: a `101` for a WebSocket upgrade, or an answer
//!   saying `Connection: close` (a request without keep-alive, a
//!   400/408/413/431), after which the connection is closing; no answer
//!   before that says `Connection: close`; a parse error is answered with
//!   its status and closes; a stream that stops inside a request leaves
//!   exactly that leftover buffered and the connection open;
//! * the answers (status and `Connection: close`, in order), the bytes after
//!   a `101`, and the connection's state at the end are the same for the
//!   whole stream, the fuzzer's pieces, one byte at a time and one request
//!   per arrival; with one request per arrival each arrival brings out its
//!   own answer, so pipelined answers come in request order;
//! * pipelined requests tile the stream: their byte ranges follow each
//!   other from its start, and each range alone parses to its request;
//! * on the fake clock, `REQUEST_TIMEOUT_SECONDS` after the last byte, a
//!   connection holding part of a request is answered 408 and closed, and
//!   an idle kept-alive one is dropped without a word.
//!
//! The summary starts with how the stream ended (`end`, `more <n>`,
//! `close`, `upgrade`, `e400`, `e413`, `e431`, `e501`), then the number of
//! requests answered.

use super::common::{chunks, cut_points, http_answers, read_cuts, Input};
use super::http_head;
use super::mem::{self, Net};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use sync_server::config::MAX_HEADER_BYTES;
use sync_server::conn::Phase;
use sync_server::http::{closes_connection, parse_request, Method, Request};
use sync_server::rooms::ConnRef;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How the stream parsed whole ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Rest {
    Clean,
    /// Stops inside a request; this many bytes are left.
    More(usize),
    Error(u16),
}

/// What the engine did with one delivery of the stream.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Final answers: status and whether it says `Connection: close`.
    answers: Vec<(u16, bool)>,
    /// What followed a `101`.
    after_upgrade: Vec<u8>,
    phase: Option<Phase>,
    buffered: Option<usize>,
    server_fin: bool,
}

pub fn run(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let flags = input.byte();
    let raw_cuts = read_cuts(&mut input);
    let body = input.rest();
    let max_body = if flags & 1 != 0 { 16 } else { 1024 };
    let stream = if flags & 0x80 != 0 {
        let mut s = b"POST /api/rooms HTTP/1.1\r\nX-Filler: ".to_vec();
        s.resize(MAX_HEADER_BYTES - 64, b'f');
        s.extend_from_slice(body);
        s
    } else {
        body.to_vec()
    };
    let cuts = cut_points(&raw_cuts, stream.len());
    check(&stream, &cuts, max_body, 256)
}

/// Runs every check on `stream` (see the module docs), cut at `cuts` (sorted
/// points inside it), and one byte at a time if it is at most
/// `bytewise_up_to` long; returns the summary.
pub fn check(stream: &[u8], cuts: &[usize], max_body: usize, bytewise_up_to: usize) -> String {
    let (requests, rest) = expected(stream, max_body);
    let heads: Vec<bool> = requests
        .iter()
        .map(|(r, _)| r.method() == Method::Head)
        .collect();

    let (mut net, cref, whole) = feed(&[stream], max_body, &heads);
    let (_, _, split) = feed(&chunks(stream, cuts), max_body, &heads);
    assert_eq!(whole, split, "cut at {cuts:?}");
    if stream.len() <= bytewise_up_to {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            whole,
            feed(&bytes, max_body, &heads).2,
            "one byte at a time"
        );
    }

    // One request per arrival: each brings out its own answer.
    let mut arrivals: Vec<&[u8]> = Vec::new();
    let mut pos = 0;
    for (_, n) in &requests {
        arrivals.push(&stream[pos..pos + n]);
        pos += n;
    }
    arrivals.push(&stream[pos..]);
    let mut one = Net::new(engine_config(max_body));
    let c = one.connect(peer()).expect("admitted");
    let mut counts = Vec::new();
    for a in &arrivals {
        one.send(c, a);
        counts.push(outcome(&one, c, &heads).answers.len());
    }
    assert_eq!(whole, outcome(&one, c, &heads), "one request per arrival");

    // The answers against the expectation.
    let ended = whole
        .answers
        .iter()
        .position(|&(s, close)| close || s == 101);
    let answered = ended.map_or(whole.answers.len(), |j| (j + 1).min(requests.len()));
    assert!(answered <= requests.len(), "more answers than requests");
    for (k, count) in counts.iter().take(answered).enumerate() {
        assert_eq!(
            *count,
            k + 1,
            "request {k} brought out {count} answers in all"
        );
    }
    for (k, (req, _)) in requests.iter().take(answered).enumerate() {
        let (status, close) = whole.answers[k];
        let ends = status == 101 || !req.keep_alive() || closes_connection(status);
        assert_eq!(ends, Some(k) == ended, "answer {k} ({status}) to {req:?}");
        assert_eq!(
            close,
            ends && status != 101,
            "answer {k} ({status}): Connection"
        );
        if status == 101 {
            assert!(req.upgrade_websocket && req.conn_upgrade, "101 to {req:?}");
        }
    }
    let end = match ended {
        Some(j) if j < requests.len() => {
            assert_eq!(whole.answers.len(), j + 1, "answers after the last");
            if whole.answers[j].0 == 101 {
                "upgrade".to_string()
            } else {
                assert!(
                    matches!(whole.phase, Some(Phase::Closing) | None),
                    "still open after Connection: close: {whole:?}"
                );
                "close".into()
            }
        }
        _ => {
            assert!(whole.after_upgrade.is_empty());
            match rest {
                Rest::Error(status) => {
                    assert_eq!(whole.answers.len(), requests.len() + 1, "{whole:?}");
                    assert_eq!(whole.answers.last(), Some(&(status, true)));
                    assert!(matches!(whole.phase, Some(Phase::Closing) | None));
                    format!("e{status}")
                }
                Rest::Clean | Rest::More(_) => {
                    let left = match rest {
                        Rest::More(n) => n,
                        _ => 0,
                    };
                    assert_eq!(whole.answers.len(), requests.len(), "{whole:?}");
                    assert_eq!(whole.phase, Some(Phase::Http));
                    assert_eq!(whole.buffered, Some(left), "bytes left over");
                    expire(&mut net, cref, &heads, left);
                    if left == 0 {
                        "end".into()
                    } else {
                        format!("more {left}")
                    }
                }
            }
        }
    };
    let paths: Vec<&str> = requests
        .iter()
        .take(answered)
        .map(|(r, _)| r.path.as_str())
        .collect();
    format!("{end} after {answered} requests {paths:?}")
}

/// The stream parsed whole, one request after another, each parse checked
/// as `http_head` checks one; the requests' ranges tile the stream.
pub fn expected(stream: &[u8], max_body: usize) -> (Vec<(Request, usize)>, Rest) {
    let mut requests = Vec::new();
    let mut pos = 0;
    loop {
        let result = parse_request(&stream[pos..], max_body);
        http_head::check(&stream[pos..], max_body, &result);
        match result {
            Ok(Some((req, n))) => {
                // Each range alone parses to its request.
                let own = parse_request(&stream[pos..pos + n], max_body);
                assert_eq!(own, Ok(Some((req.clone(), n))));
                requests.push((req, n));
                pos += n;
            }
            Ok(None) if pos == stream.len() => return (requests, Rest::Clean),
            Ok(None) => return (requests, Rest::More(stream.len() - pos)),
            Err(e) => return (requests, Rest::Error(e.status())),
        }
    }
}

fn engine_config(max_body: usize) -> sync_server::config::Config {
    let max_body = max_body.to_string();
    mem::config(&[
        ("MAX_BODY_BYTES", &max_body),
        ("REQUEST_TIMEOUT_SECONDS", "10"),
        ("ROOM_CREATE_RATE", "1000000"),
        ("ROOM_CREATE_BURST", "1000000"),
        ("ROOM_MISS_RATE", "1000000"),
        ("ROOM_MISS_BURST", "1000000"),
    ])
}

fn peer() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
}

/// Delivers `arrivals` on a fresh engine's one connection.
fn feed(arrivals: &[&[u8]], max_body: usize, heads: &[bool]) -> (Net, ConnRef, Outcome) {
    let mut net = Net::new(engine_config(max_body));
    let cref = net.connect(peer()).expect("admitted");
    for a in arrivals {
        net.send(cref, a);
    }
    let o = outcome(&net, cref, heads);
    (net, cref, o)
}

fn outcome(net: &Net, cref: ConnRef, heads: &[bool]) -> Outcome {
    let pipe = net.pipe(cref);
    let (answers, used) = http_answers(&pipe.from_server, |k| {
        heads.get(k).copied().unwrap_or(false)
    });
    let upgraded = answers.last().is_some_and(|a| a.status == 101);
    if !upgraded {
        assert_eq!(used, pipe.from_server.len(), "a partial answer was written");
    }
    Outcome {
        answers: answers.iter().map(|a| (a.status, a.close)).collect(),
        after_upgrade: pipe.from_server[used..].to_vec(),
        phase: net.engine.phase(cref),
        buffered: net.engine.buffered_input(cref),
        server_fin: pipe.server_fin || pipe.dropped,
    }
}

/// The request timeout passes on a connection left open with `left` bytes
/// of a request: 408 and a close, or, idle, a silent drop.
fn expire(net: &mut Net, cref: ConnRef, heads: &[bool], left: usize) {
    let before = outcome(net, cref, heads).answers.len();
    net.advance(REQUEST_TIMEOUT - Duration::from_millis(1));
    assert_eq!(net.engine.phase(cref), Some(Phase::Http), "closed early");
    net.advance(Duration::from_millis(1));
    let after = outcome(net, cref, heads);
    if left == 0 {
        assert_eq!(
            after.answers.len(),
            before,
            "an idle connection was answered"
        );
        assert!(
            net.pipe(cref).dropped,
            "an idle connection outlived its timeout"
        );
    } else {
        assert_eq!(after.answers.len(), before + 1);
        assert_eq!(after.answers.last(), Some(&(408, true)));
        assert!(matches!(after.phase, Some(Phase::Closing) | None));
    }
}
