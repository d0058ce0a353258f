//! The engine driven with in-memory streams and a fake clock: no sockets,
//! no sleeps. A `Rig` plays the shell: it hands the engine what a peer sent,
//! runs the end of a turn (buffered input, timers, the flush) and counts the
//! `Io` actions.

use super::*;
use std::collections::HashMap;

/// A peer's socket: what the engine wrote, and whether the peer reads.
struct Peer {
    out: Vec<u8>,
    reading: bool,
}

impl io::Write for Peer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.reading {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Peers(HashMap<ConnRef, Peer>);

impl Sockets for Peers {
    type Stream = Peer;
    fn stream(&mut self, cref: ConnRef) -> Option<&mut Peer> {
        self.0.get_mut(&cref)
    }
}

struct Rig {
    engine: Engine,
    peers: Peers,
    t0: Instant,
    drops: HashMap<ConnRef, usize>,
    _poll: mio::Poll,
}

impl Rig {
    fn new(settings: &[(&str, &str)]) -> Rig {
        let cfg = Config::from_lookup(|k| {
            if k == "ROOM_STORE" {
                return Some("memory".into());
            }
            settings
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let t0 = Instant::now();
        Rig {
            engine: Engine::new(cfg, waker, t0).unwrap(),
            peers: Peers(HashMap::new()),
            t0,
            drops: HashMap::new(),
            _poll: poll,
        }
    }

    fn connect(&mut self) -> ConnRef {
        let Admission::Admitted(cref) = self.engine.admit(IpAddr::from([192, 0, 2, 1])) else {
            panic!("refused");
        };
        let peer = Peer {
            out: Vec::new(),
            reading: true,
        };
        self.peers.0.insert(cref, peer);
        cref
    }

    /// The peer's bytes arrive (read within the engine's allowance), then
    /// the turn ends.
    fn send(&mut self, cref: ConnRef, mut data: &[u8]) {
        while !data.is_empty() {
            let Some(want) = self.engine.read_allowance(cref) else {
                break;
            };
            let n = want.min(data.len());
            let more = self.engine.input(cref, &data[..n]);
            data = &data[n..];
            if !more {
                break;
            }
        }
        assert!(data.is_empty(), "the engine left input unread");
        self.turn();
    }

    /// The fake clock reads `t0 + at`; the turn ends.
    fn at(&mut self, at: Duration) {
        self.engine.set_now(self.t0 + at);
        self.turn();
    }

    /// The end of a turn, repeated while the engine has work left now.
    fn turn(&mut self) {
        for _ in 0..100 {
            for cref in self.engine.take_again() {
                self.engine.resume_buffered(cref);
            }
            self.engine.fire_timers(&mut |_| Some(0));
            self.io();
            self.engine.flush_dirty(&mut self.peers);
            self.io();
            if self.engine.timeout() > Duration::ZERO {
                return;
            }
        }
        panic!("the engine kept working");
    }

    fn io(&mut self) {
        for io in self.engine.take_io() {
            if let Io::Drop(cref) = io {
                *self.drops.entry(cref).or_default() += 1;
            }
        }
    }

    fn out(&self, cref: ConnRef) -> &[u8] {
        &self.peers.0[&cref].out
    }

    /// A WebSocket client that joined room `R` (created first if needed).
    fn member(&mut self, peer_id: &str) -> ConnRef {
        if self.engine.rooms().find("R").is_none() {
            let http = self.connect();
            let body = r#"{"desired_room_code":"R","desired_host_id":"host-1"}"#;
            let req = format!(
                "POST /api/rooms HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            self.send(http, req.as_bytes());
            assert_eq!(statuses(self.out(http)), [200]);
        }
        let c = self.connect();
        self.send(
            c,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        let join = format!(r#"{{"action":"join","room_code":"R","peer_id":"{peer_id}"}}"#);
        self.send(c, &text_frame(join.as_bytes()));
        assert_eq!(self.engine.phase(c), Some(Phase::WebSocket));
        c
    }
}

/// The status of every answer in `out` (whose bodies are all read whole).
fn statuses(mut out: &[u8]) -> Vec<u16> {
    let mut got = Vec::new();
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = resp.parse(out).unwrap() else {
            panic!("partial answer");
        };
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| {
                std::str::from_utf8(h.value).unwrap().parse().unwrap()
            });
        got.push(resp.code.unwrap());
        out = &out[head + len..];
    }
    got
}

/// A masked client text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    crate::ws::client_frame(0x1, true, payload, [1, 2, 3, 4])
}

/// The server frames after the 101: (opcode, payload).
fn frames(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut pos = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut got = Vec::new();
    while pos < out.len() {
        let (len, head) = match out[pos + 1] & 0x7f {
            126 => (u16::from_be_bytes([out[pos + 2], out[pos + 3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(out[pos + 2..pos + 10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        got.push((out[pos] & 0x0f, out[pos + head..pos + head + len].to_vec()));
        pos += head + len;
    }
    got
}

const PIPELINE: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
    GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n\
    OPTIONS /api/rooms HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn pipelined_requests_are_answered_in_order_however_they_arrive() {
    let want = [200, 404, 204];
    let mut whole = Rig::new(&[]);
    let c = whole.connect();
    whole.send(c, PIPELINE);
    assert_eq!(statuses(whole.out(c)), want);
    for cut in 1..PIPELINE.len() {
        let mut rig = Rig::new(&[]);
        let c = rig.connect();
        rig.send(c, &PIPELINE[..cut]);
        rig.send(c, &PIPELINE[cut..]);
        assert_eq!(statuses(rig.out(c)), want, "cut at {cut}");
    }
    let mut rig = Rig::new(&[]);
    let c = rig.connect();
    for b in PIPELINE {
        rig.send(c, std::slice::from_ref(b));
    }
    assert_eq!(statuses(rig.out(c)), want, "one byte at a time");
    assert_eq!(rig.engine.phase(c), Some(Phase::Http));
}

#[test]
fn an_unfinished_request_gets_408_and_a_close_at_its_deadline() {
    let mut rig = Rig::new(&[("REQUEST_TIMEOUT_SECONDS", "5")]);
    let c = rig.connect();
    rig.at(Duration::from_secs(1));
    rig.send(c, b"GET /health HTTP/1.1\r\nHost:");
    rig.at(Duration::from_millis(4999));
    assert!(rig.out(c).is_empty(), "answered before the deadline");
    assert_eq!(rig.engine.phase(c), Some(Phase::Http));
    rig.at(Duration::from_secs(5));
    assert_eq!(statuses(rig.out(c)), [408]);
    let out = String::from_utf8_lossy(rig.out(c)).to_ascii_lowercase();
    assert!(out.contains("connection: close"), "{out}");
    assert_eq!(rig.engine.phase(c), Some(Phase::Closing));
    // The peer never closes: the linger ends it, once.
    rig.at(Duration::from_secs(5) + LINGER);
    assert_eq!(rig.engine.phase(c), None);
    assert_eq!(rig.drops[&c], 1);
}

#[test]
fn a_stalled_reader_is_closed_with_1008_and_a_reader_keeping_up_is_not() {
    let mut rig = Rig::new(&[("MAX_OUTBOUND_BYTES", "4096")]);
    let talker = rig.member("talker");
    let stalled = rig.member("stalled");
    let reader = rig.member("reader");
    rig.peers.0.get_mut(&stalled).unwrap().reading = false;
    // One turn's burst: twenty 1 KiB broadcasts in one read, 20 KiB queued
    // for each member before the flush, five times the bound.
    let data = "d".repeat(1024);
    let msg = format!(r#"{{"action":"broadcast","data":"{data}"}}"#);
    let burst: Vec<u8> = (0..20).flat_map(|_| text_frame(msg.as_bytes())).collect();
    rig.send(talker, &burst);

    let got = frames(rig.out(reader));
    let data_frames = got
        .iter()
        .filter(|(op, p)| *op == 1 && p.starts_with(br#"{"type":"data""#))
        .count();
    assert_eq!(data_frames, 20, "the reader got the whole burst");
    assert_eq!(rig.engine.phase(reader), Some(Phase::WebSocket));
    assert!(got.iter().all(|(op, _)| *op == 1), "reader got a close");

    assert_eq!(rig.engine.phase(stalled), Some(Phase::Closing));
    let (_, room) = rig.engine.rooms().find("R").unwrap();
    let members: Vec<&str> = room.member_peer_ids().collect();
    assert_eq!(members, ["talker", "reader"]);
    // When it reads again, its queue ends with the close: whole frames, the
    // rest of the burst cut.
    rig.peers.0.get_mut(&stalled).unwrap().reading = true;
    rig.engine.writable(stalled);
    rig.turn();
    let got = frames(rig.out(stalled));
    let (op, payload) = got.last().unwrap();
    assert_eq!(*op, 8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
    assert!(got.len() < 20, "the stalled reader's queue was not cut");
}

#[test]
fn a_close_is_carried_out_once() {
    let mut rig = Rig::new(&[]);
    // HTTP: the peer's EOF, then everything that could close it again.
    let c = rig.connect();
    rig.engine.eof(c);
    rig.engine.eof(c);
    rig.engine.abort(c);
    rig.turn();
    rig.at(Duration::from_secs(60));
    assert_eq!(rig.drops.get(&c), Some(&1));

    // WebSocket: `leave` closes it (1000), the peer also vanishes, the
    // linger runs out, and a reset is reported for it after all.
    let ws = rig.member("p");
    let leave = text_frame(br#"{"action":"leave"}"#);
    rig.send(ws, &leave);
    assert_eq!(rig.engine.phase(ws), Some(Phase::Closing));
    let got = frames(rig.out(ws));
    assert_eq!(
        got.last().map(|(op, p)| (*op, p[..2].to_vec())),
        Some((8, vec![0x03, 0xe8]))
    );
    rig.engine.eof(ws);
    rig.engine.abort(ws);
    rig.at(Duration::from_secs(60) + LINGER * 2);
    rig.engine.abort(ws);
    rig.turn();
    assert_eq!(rig.drops.get(&ws), Some(&1));
    assert!(rig.engine.rooms().find("R").unwrap().1.peer_count() == 0);
}
