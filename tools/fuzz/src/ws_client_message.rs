//! `ws_client_message`: arbitrary bytes as client text messages into the
//! real connection engine (`sync_server::conn::Engine`, through the
//! in-memory sockets and fake clock of [`super::mem`]), from four clients
//! that upgrade `/ws` as a browser does and send masked frames, with any
//! number of rooms. What the engine writes to each client, and what it
//! still holds queued for one that stopped reading, is decoded as a client
//! decodes it and checked.
//!
//! The input is a script, one step per line:
//! * `0`..`3` + text: client N sends that text as one text frame (bytes
//!   that are not UTF-8 too: the engine must close with 1007); a closed
//!   client connects again (a new connection, a new upgrade);
//! * `c` + `code host`: `POST /api/rooms` on a connection of its own with
//!   that desired code and host id (either may be empty: then the server
//!   draws it);
//! * `xN`: client N closes its connection (FIN); `sN` / `rN`: it stops /
//!   resumes reading, so its queue fills up;
//! * `tN`: N seconds pass on the fake clock and due timers fire;
//! * a first line `iN` sets `ROOM_IDLE_TIMEOUT_SECONDS` (0 = forever; at
//!   most the configuration's one-year bound).
//!
//! The engine runs with `MAX_OUTBOUND_BYTES` at 4 KiB (so slow readers hit
//! it), and with the message rate, the room creation and lookup budgets and
//! the keepalive out of the way (the fake clock may jump days at once).
//!
//! After every step:
//! * each client is sent the `101` with the right accept key, then final,
//!   unmasked text frames each holding a JSON object with a §2 message type
//!   (keepalive pings aside), ended by at most one close frame (1000, 1007
//!   or 1008 here) after which nothing comes; what was seen queued for a
//!   client that stopped reading is what it reads when it resumes, save
//!   what a 1008 cut from the queue's tail;
//! * every room member is an open WebSocket connection of a client whose
//!   session names that room; a connection is in at most one room and a
//!   closed one in none; peer ids are unique per room and the peers list
//!   is in join order; the code index finds every room;
//! * no open connection's queue costs more than `MAX_OUTBOUND_BYTES` once
//!   the engine's flush is done (past it the client is closed with 1008),
//!   and the timer heap holds at most one expiry per room; a room expires
//!   only empty;
//! * each client's `seq` strictly increases from its `room_info` on;
//! * the step obeys §2: a join is answered `room_info` (listing the joiner
//!   once), `connected`, then `document_sync` when there is a document, the
//!   other members get `peer_joined` and the joiner does not; an unknown
//!   room is exactly `Room not found`; a broadcast reaches every other
//!   member once with the sender's id and the same string; only the host
//!   syncs a document and `request_sync` returns the stored one (or `""`);
//!   not joined gives `Not in a room`; bad input gives
//!   `Invalid message format: …`; every failure answers only the sender and
//!   changes no membership; `leave` is answered by a close (1000);
//! * room creation answers 200 with a valid new room (its code and host id
//!   as asked), or restores a room only for its secret host id, or refuses
//!   (400, 409) and creates nothing.
//!
//! At the end every client closes and, with a finite idle timeout, the
//! timeout passes: then no room may be left.
//!
//! The summary is `m<members>-r<rooms>-c<closes>` before that cleanup.

use super::common::{
    client_frame, http_answers, lenient_json, msg_type, server_frame, server_frame_len,
    server_message, upgrade_request, Rng, WS_ACCEPT,
};
use super::mem::{self, Net};
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use sync_server::config::MAX_TIMER_SECONDS;
use sync_server::conn::Phase;
use sync_server::protocol::{self, Action};
use sync_server::rooms::{self, ConnRef, RoomRef, Rooms};

/// Clients in the script.
pub const CONNS: usize = 4;
/// `MAX_OUTBOUND_BYTES`, small so that slow readers hit it.
pub const MAX_OUTBOUND: usize = 4096;
/// Steps run from one input; the rest is ignored.
const MAX_STEPS: usize = 256;
/// The idle timeout when the script does not set one.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3);

const CLIENTS: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
const CREATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));

/// One client and what it has been sent on its current connection.
struct Slot {
    cref: ConnRef,
    /// From the client's side: no close seen or made yet.
    open: bool,
    /// Bytes of `from_server` decoded so far.
    cursor: usize,
    /// The `101` was read.
    upgraded: bool,
    /// Text payloads written to it, in order.
    written: Vec<Vec<u8>>,
    /// A close frame was written; its code.
    close_written: Option<u16>,
    /// Text payloads sent to it so far, written or queued, in order.
    seen: Vec<Vec<u8>>,
    /// Messages first seen during the current step, checked and decoded.
    step_log: Vec<Value>,
    /// The last stream position it was told of: `room_info`'s `seq`, then
    /// each numbered event's.
    seq: u64,
}

impl Slot {
    fn new(cref: ConnRef) -> Slot {
        Slot {
            cref,
            open: true,
            cursor: 0,
            upgraded: false,
            written: Vec::new(),
            close_written: None,
            seen: Vec::new(),
            step_log: Vec::new(),
            seq: 0,
        }
    }
}

/// The engine, its clients, and what the checks remember.
pub struct World {
    net: Net,
    slots: Vec<Slot>,
    idle: Option<Duration>,
    rng: Rng,
    /// Documents stored per room, as the JSON string value.
    documents: HashMap<RoomRef, Value>,
    /// Connections closed so far (by the server or the client).
    pub closes: usize,
}

impl World {
    pub fn new(idle: Option<Duration>) -> World {
        let idle = idle.map(|d| d.min(Duration::from_secs(MAX_TIMER_SECONDS)));
        let idle_secs = idle.map_or(0, |d| d.as_secs().max(1)).to_string();
        let outbound = MAX_OUTBOUND.to_string();
        let cfg = mem::config(&[
            ("ROOM_IDLE_TIMEOUT_SECONDS", &idle_secs),
            ("MAX_OUTBOUND_BYTES", &outbound),
            ("PING_INTERVAL_SECONDS", &MAX_TIMER_SECONDS.to_string()),
            ("MESSAGE_RATE", "1000000000"),
            ("MESSAGE_BURST", "1000000000"),
            ("ROOM_CREATE_RATE", "1000000"),
            ("ROOM_CREATE_BURST", "1000000"),
            ("ROOM_MISS_RATE", "1000000"),
            ("ROOM_MISS_BURST", "1000000"),
        ]);
        let mut w = World {
            net: Net::new(cfg),
            slots: Vec::new(),
            idle,
            rng: Rng::new(0x5eed),
            documents: HashMap::new(),
            closes: 0,
        };
        for _ in 0..CONNS {
            let s = w.connect();
            w.slots.push(s);
        }
        w.check_invariants();
        w
    }

    /// The engine's rooms.
    pub fn rooms(&self) -> &Rooms {
        self.net.engine.rooms()
    }

    /// A new client connection, upgraded to WebSocket.
    fn connect(&mut self) -> Slot {
        let cref = self.net.connect(CLIENTS).expect("under MAX_CONNECTIONS");
        self.net.send(cref, &upgrade_request());
        let mut slot = Slot::new(cref);
        self.read(&mut slot);
        assert!(slot.upgraded, "no 101 for the upgrade");
        assert_eq!(self.net.engine.phase(cref), Some(Phase::WebSocket));
        slot
    }

    fn begin_step(&mut self) {
        for s in &mut self.slots {
            s.step_log.clear();
        }
    }

    /// Lets the engine finish, lets the clients read and answer a close,
    /// until neither has anything left; then checks the invariants.
    fn finish_step(&mut self) {
        loop {
            let mut slots = std::mem::take(&mut self.slots);
            let mut acted = false;
            for s in &mut slots {
                acted |= self.read(s);
            }
            self.slots = slots;
            if !acted {
                break;
            }
        }
        self.check_invariants();
    }

    /// What `slot`'s client has been sent since last looked: decodes and
    /// checks it, and answers a close frame as a client does (a close of
    /// its own and a FIN). Returns whether the client did something.
    fn read(&mut self, slot: &mut Slot) -> bool {
        let cref = slot.cref;
        let pipe = self.net.pipe(cref);
        let buf = &pipe.from_server;
        if !slot.upgraded {
            let (answers, used) = http_answers(buf, |_| false);
            if let Some(a) = answers.first() {
                assert_eq!(a.status, 101, "upgrade answered {a:?}");
                assert_eq!(a.body, WS_ACCEPT.as_bytes(), "wrong accept key");
                slot.upgraded = true;
                slot.cursor = used;
            }
        }
        if slot.upgraded {
            while let Some(n) = server_frame_len(&buf[slot.cursor..]) {
                let f = &buf[slot.cursor..slot.cursor + n];
                slot.cursor += n;
                assert!(slot.close_written.is_none(), "a frame after the close");
                match server_frame(f) {
                    (1, text) => slot.written.push(text.to_vec()),
                    (8, p) => slot.close_written = Some(close_code(p)),
                    (9, _) => {}
                    (op, _) => panic!("server sent opcode {op}"),
                }
            }
        }
        // What waits in its queue: whole frames (a write lands whole or not
        // at all here), the 101 first if even that was not read.
        let mut queued = Vec::new();
        let mut queued_close = None;
        if let Some(frames) = self.net.engine.queued_frames(cref) {
            for f in frames {
                if !slot.upgraded && f.starts_with(b"HTTP/1.1 101 ") {
                    continue;
                }
                assert!(queued_close.is_none(), "a frame queued after the close");
                match server_frame(f) {
                    (1, text) => queued.push(text),
                    (8, p) => queued_close = Some(close_code(p)),
                    (9, _) => {}
                    (op, _) => panic!("server queued opcode {op}"),
                }
            }
        }
        let sent: Vec<&[u8]> = slot
            .written
            .iter()
            .map(Vec::as_slice)
            .chain(queued)
            .collect();
        let k = slot.seen.len();
        if sent.len() >= k {
            assert!(
                sent[..k].iter().eq(slot.seen.iter()),
                "what a client was sent changed"
            );
            for text in &sent[k..] {
                let msg = server_message(&client_view(text));
                check_seq(&mut slot.seq, &msg);
                slot.step_log.push(msg);
                slot.seen.push(text.to_vec());
            }
        } else {
            // A 1008 keeps only the frame being written and drops the rest;
            // a connection that is gone (after its client closed, or its
            // linger) takes its queue along.
            let gone = self.net.engine.phase(cref).is_none();
            let cut = slot.close_written.or(queued_close) == Some(1008);
            assert!(gone || cut, "queued frames vanished");
            assert!(sent.iter().eq(slot.seen[..sent.len()].iter()));
        }
        let close = slot.close_written.or(queued_close);
        if let Some(code) = close {
            assert!(matches!(code, 1000 | 1007 | 1008), "close {code}");
            if slot.open {
                slot.open = false;
                self.closes += 1;
            }
        }
        let pipe = self.net.pipe(cref);
        if slot.close_written.is_some() && !pipe.client_fin && !pipe.dropped {
            let mask = self.mask();
            self.net.send(cref, &client_frame(8, true, &[], mask));
            self.net.fin(cref);
            return true;
        }
        false
    }

    fn mask(&mut self) -> [u8; 4] {
        let m = self.rng.next_u64().to_le_bytes();
        [m[0], m[1], m[2], m[3]]
    }

    /// Client `i`'s connection, connecting again if it was closed.
    fn open_slot(&mut self, i: usize) -> ConnRef {
        if !self.slots[i].open {
            let old = self.slots[i].cref;
            // The client gives up on what is left of the old connection.
            self.net.reset(old);
            self.slots[i] = self.connect();
        }
        self.slots[i].cref
    }

    /// `POST /api/rooms` with a desired code and host id.
    pub fn create(&mut self, code: Option<&str>, host: Option<&str>) {
        self.begin_step();
        let before = self.rooms().len();
        let existed = code
            .and_then(|c| self.rooms().find(c))
            .map(|(r, room)| (r, room.host_id().to_owned()));
        let mut body = serde_json::Map::new();
        if let Some(c) = code {
            body.insert("desired_room_code".into(), c.into());
        }
        if let Some(h) = host {
            body.insert("desired_host_id".into(), h.into());
        }
        let body = Value::Object(body).to_string();
        let req = format!(
            "POST /api/rooms HTTP/1.1\r\nHost: sync.example\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let cref = self.net.connect(CREATOR).expect("under MAX_CONNECTIONS");
        self.net.send(cref, req.as_bytes());
        let (answers, used) = http_answers(&self.net.pipe(cref).from_server, |_| false);
        assert_eq!(answers.len(), 1, "one answer to one request");
        assert_eq!(used, self.net.pipe(cref).from_server.len());
        self.net.fin(cref);
        assert!(
            self.net.pipe(cref).dropped,
            "the connection outlived its answer"
        );
        let a = &answers[0];
        let reply: Value = serde_json::from_slice(&a.body).expect("JSON answer");
        match a.status {
            200 => {
                let got = reply["room_code"].as_str().expect("room_code");
                let (r, room) = self.rooms().find(got).expect("created room exists");
                assert!(rooms::valid_room_code(room.code()));
                assert_eq!(reply["host_id"], room.host_id());
                let host_chars = room.host_id().chars().count();
                assert!((1..=128).contains(&host_chars));
                assert_ne!(room.host_public_id(), room.host_id());
                assert_eq!(
                    reply["restored"].as_bool().unwrap_or(false),
                    existed.is_some()
                );
                if let Some((was, h)) = existed {
                    // Rule 11: only the secret host id restores a room.
                    assert_eq!(host, Some(h.as_str()));
                    assert_eq!(r, was);
                    assert_eq!(self.rooms().len(), before);
                } else {
                    assert_eq!(self.rooms().len(), before + 1);
                    if let Some(c) = code {
                        assert_eq!(room.code(), c);
                    }
                    if let Some(h) = host {
                        assert_eq!(room.host_id(), h);
                    }
                }
            }
            status => {
                assert!(
                    matches!(status, 400 | 409),
                    "create answered {status}: {reply}"
                );
                assert_eq!(self.rooms().len(), before);
                if existed.is_some() {
                    let e = reply["error"].as_str().unwrap_or_default();
                    assert!(
                        status == 409 || e.starts_with("desired_host_id"),
                        "an existing code refused with {status} {e}"
                    );
                }
            }
        }
        self.finish_step();
    }

    /// Client `i` sends one text message.
    pub fn message(&mut self, i: usize, text: &str) {
        self.begin_step();
        let me = self.open_slot(i);
        let before = self.membership();
        let my_room = self.net.engine.session(me).and_then(|s| s.room);
        let mask = self.mask();
        let frame = client_frame(1, true, text.as_bytes(), mask);
        // What the check of each action needs from before it.
        let decoded = protocol::decode(text);
        let sender = self.peer_id_of(i);
        let is_host = self.net.engine.session(me).is_some_and(|s| s.is_host);
        let target = match &decoded {
            Ok(Action::Join { room_code, .. }) => self.rooms().find(room_code).map(|(r, _)| r),
            _ => None,
        };
        self.net.send(me, &frame);
        self.finish_step();
        match decoded {
            Err(_) => self.expect_only_error(i, "Invalid message format: ", &before),
            Ok(Action::Ping) => self.expect_only(i, &["pong"], &before),
            Ok(Action::Join {
                room_code, peer_id, ..
            }) => self.check_join(i, target, &room_code, &peer_id, &before),
            Ok(Action::Broadcast { data }) => {
                let value = lenient_json(data.get().as_bytes()).expect("data is JSON");
                assert!(value.is_string(), "data {value}");
                match sender {
                    None => self.expect_only_error(i, "Not in a room", &before),
                    Some((room, from)) => {
                        self.expect_fanout(i, room, &before, |m| {
                            msg_type(m) == "data" && m["from"] == *from && m["data"] == value
                        });
                    }
                }
            }
            Ok(Action::SyncDocument { document }) => {
                let value = lenient_json(document.get().as_bytes()).expect("document is JSON");
                assert!(value.is_string(), "document {value}");
                match (my_room.filter(|r| self.rooms().get(*r).is_some()), is_host) {
                    (None, _) => self.expect_only_error(i, "Not in a room", &before),
                    (Some(_), false) => self.expect_only_error(i, "Only the host", &before),
                    (Some(room), true) => {
                        assert!(self.rooms().get(room).is_some_and(|r| r.has_document()));
                        self.documents.insert(room, value.clone());
                        self.expect_fanout(i, room, &before, |m| {
                            msg_type(m) == "document_sync" && m["document"] == value
                        });
                    }
                }
            }
            Ok(Action::RequestSync) => match my_room.filter(|r| self.rooms().get(*r).is_some()) {
                None => self.expect_only_error(i, "Not in a room", &before),
                Some(room) => {
                    let doc = self.documents.get(&room).cloned();
                    let doc = doc.unwrap_or_else(|| Value::String(String::new()));
                    self.expect_only(i, &["document_sync"], &before);
                    if self.slots[i].open {
                        assert_eq!(self.slots[i].step_log[0]["document"], doc);
                    }
                }
            },
            Ok(Action::Leave) => {
                assert!(
                    self.slots[i].step_log.is_empty(),
                    "leave is answered by a close"
                );
                assert!(!self.slots[i].open, "leave did not close");
                if let Some((room, id)) = sender {
                    self.expect_fanout(i, room, &before, |m| {
                        msg_type(m) == "peer_left" && m["peer_id"] == *id
                    });
                }
            }
        }
    }

    /// Client `i` sends a text frame that is not UTF-8: the engine closes
    /// it with 1007.
    pub fn bad_utf8(&mut self, i: usize, bytes: &[u8]) {
        self.begin_step();
        if self.slots[i].open {
            let mask = self.mask();
            self.net
                .send(self.slots[i].cref, &client_frame(1, true, bytes, mask));
            self.finish_step();
            assert!(!self.slots[i].open, "bad UTF-8 did not close");
            let code = self.slots[i].close_written.or_else(|| {
                // It stopped reading: the close waits in its queue.
                let frames = self.net.engine.queued_frames(self.slots[i].cref)?;
                frames.last().map(|f| close_code(server_frame(f).1))
            });
            assert_eq!(code, Some(1007));
        } else {
            self.finish_step();
        }
    }

    /// Client `i` closes its connection.
    pub fn drop_conn(&mut self, i: usize) {
        self.begin_step();
        if self.slots[i].open {
            self.slots[i].open = false;
            self.closes += 1;
            self.net.fin(self.slots[i].cref);
        }
        self.finish_step();
    }

    /// Client `i` stops or resumes reading.
    pub fn set_reading(&mut self, i: usize, reading: bool) {
        self.begin_step();
        self.net.set_reading(self.slots[i].cref, reading);
        self.finish_step();
    }

    /// `secs` seconds pass; due timers fire. Only an empty room expires.
    pub fn advance(&mut self, secs: u64) {
        self.begin_step();
        let had: HashMap<RoomRef, usize> = self
            .rooms()
            .iter()
            .map(|(r, room)| (r, room.peer_count()))
            .collect();
        self.net.advance(Duration::from_secs(secs));
        for (r, n) in had {
            if self.rooms().get(r).is_none() {
                assert_eq!(n, 0, "only an empty room expires");
                self.documents.remove(&r);
            }
        }
        self.finish_step();
    }

    /// Every client closes, then the idle timeout passes: no room may be
    /// left. Without a finite timeout rooms stay, which is checked too.
    pub fn drop_all_and_expire(&mut self) {
        for i in 0..CONNS {
            self.drop_conn(i);
        }
        let count = self.rooms().len();
        match self.idle {
            Some(t) if t.as_secs() < 1_000_000 => {
                self.advance(t.as_secs() + 1);
                assert_eq!(
                    self.rooms().len(),
                    0,
                    "empty rooms outlived the idle timeout"
                );
            }
            Some(_) => {}
            None => {
                self.advance(1_000_000);
                assert_eq!(self.rooms().len(), count, "rooms kept forever expired");
            }
        }
    }

    pub fn summary(&self) -> String {
        let members: usize = self.rooms().iter().map(|(_, r)| r.peer_count()).sum();
        format!("m{members}-r{}-c{}", self.rooms().len(), self.closes)
    }

    // ---- invariants ------------------------------------------------------

    /// The slot whose current connection `c` is.
    fn slot_of(&self, c: ConnRef) -> Option<usize> {
        self.slots.iter().position(|s| s.cref == c)
    }

    /// Which room each client is a member of, by slot.
    fn membership(&self) -> Vec<Option<(RoomRef, String)>> {
        let mut out = vec![None; CONNS];
        for (r, room) in self.rooms().iter() {
            for (c, id) in room.member_conns().zip(room.member_peer_ids()) {
                let i = self
                    .slot_of(c)
                    .unwrap_or_else(|| panic!("member {c:?} is no client's connection"));
                out[i] = Some((r, id.to_owned()));
            }
        }
        out
    }

    fn peer_id_of(&self, i: usize) -> Option<(RoomRef, String)> {
        self.membership()[i].clone()
    }

    pub fn check_invariants(&self) {
        let engine = &self.net.engine;
        let mut member_of: Vec<Option<RoomRef>> = vec![None; CONNS];
        let mut total = 0;
        for (r, room) in self.rooms().iter() {
            total += 1;
            let (found, _) = self
                .rooms()
                .find(room.code())
                .expect("every room is indexed by its code");
            assert_eq!(found, r, "code index points elsewhere");
            let conns: Vec<ConnRef> = room.member_conns().collect();
            let ids: Vec<&str> = room.member_peer_ids().collect();
            assert_eq!(conns.len(), ids.len());
            assert_eq!(conns.len(), room.peer_count());
            let peers = lenient_json(room.peers_json().as_bytes()).expect("peers JSON");
            assert_eq!(peers.as_array().map(Vec::len), Some(ids.len()));
            for (k, id) in ids.iter().enumerate() {
                assert!(!ids[..k].contains(id), "peer id {id:?} twice in a room");
                assert_eq!(peers[k]["id"], **id, "peers list out of join order");
            }
            for c in conns {
                let i = self
                    .slot_of(c)
                    .unwrap_or_else(|| panic!("member {c:?} is no client's connection"));
                assert!(self.slots[i].open, "member {c:?} is closed");
                assert_eq!(engine.phase(c), Some(Phase::WebSocket), "member {c:?}");
                assert!(member_of[i].is_none(), "connection {c:?} in two rooms");
                member_of[i] = Some(r);
            }
        }
        assert_eq!(total, self.rooms().len());
        // Rooms go only when their timer fires, and each has at most one
        // pending: a member cannot grow the timer heap by re-joining.
        assert!(
            engine.room_timers() <= self.rooms().len(),
            "{} room timers for {} rooms",
            engine.room_timers(),
            self.rooms().len()
        );
        for (i, s) in self.slots.iter().enumerate() {
            let room = engine.session(s.cref).and_then(|x| x.room);
            assert_eq!(room, member_of[i], "session of slot {i} is stale");
            if s.open {
                assert_eq!(engine.phase(s.cref), Some(Phase::WebSocket), "slot {i}");
                let cost = engine.queued_cost(s.cref).unwrap_or(0);
                assert!(
                    cost <= MAX_OUTBOUND,
                    "slot {i}: queue of {cost} over its bound"
                );
            }
        }
    }

    // ---- §2 checks for one step ------------------------------------------

    fn others_unchanged_and_silent(&self, i: usize, before: &[Option<(RoomRef, String)>]) {
        if !self.slots[i].open {
            // The sender overflowed its own queue and was closed: the others
            // rightly heard it leave.
            return;
        }
        let now = self.membership();
        for j in 0..CONNS {
            if j != i {
                assert!(
                    self.slots[j].step_log.is_empty(),
                    "slot {j} heard a failure"
                );
                if self.slots[j].open {
                    assert_eq!(now[j], before[j], "a failure moved slot {j}");
                }
            }
        }
    }

    /// A failed action: the sender hears one error starting with `prefix`,
    /// nobody else hears anything and nobody moves.
    fn expect_only_error(&self, i: usize, prefix: &str, before: &[Option<(RoomRef, String)>]) {
        self.expect_only(i, &["error"], before);
        if self.slots[i].open {
            let m = self.slots[i].step_log[0]["message"]
                .as_str()
                .unwrap_or_default();
            assert!(m.starts_with(prefix), "error {m:?}, expected {prefix:?}");
            assert_eq!(self.membership()[i], before[i]);
        }
    }

    /// The sender hears exactly these types and nobody else anything.
    fn expect_only(&self, i: usize, types: &[&str], before: &[Option<(RoomRef, String)>]) {
        if self.slots[i].open {
            let got: Vec<&str> = self.slots[i].step_log.iter().map(msg_type).collect();
            assert_eq!(got, types, "slot {i}");
        }
        self.others_unchanged_and_silent(i, before);
    }

    /// Every other member of `room` (before and after the step) got exactly
    /// one message matching `is_it`; the sender and non-members nothing.
    /// A member that overflowed its queue meanwhile was closed, and the
    /// others (the sender too) may also hear that as `peer_left`.
    fn expect_fanout(
        &self,
        i: usize,
        room: RoomRef,
        before: &[Option<(RoomRef, String)>],
        is_it: impl Fn(&Value) -> bool,
    ) {
        let own = &self.slots[i].step_log;
        assert!(
            own.iter().all(|m| msg_type(m) == "peer_left"),
            "sender heard its own fan-out: {own:?}"
        );
        let now = self.membership();
        for j in 0..CONNS {
            if j == i || !self.slots[j].open {
                continue;
            }
            let log = &self.slots[j].step_log;
            let was_member = before[j].as_ref().is_some_and(|(r, _)| *r == room);
            if was_member && now[j].as_ref().is_some_and(|(r, _)| *r == room) {
                assert_eq!(
                    log.iter().filter(|m| is_it(m)).count(),
                    1,
                    "slot {j}: {log:?}"
                );
                assert!(
                    log.iter().all(|m| is_it(m) || msg_type(m) == "peer_left"),
                    "slot {j}: {log:?}"
                );
            } else {
                assert!(log.is_empty(), "non-member slot {j} heard {log:?}");
            }
        }
    }

    fn check_join(
        &self,
        i: usize,
        target: Option<RoomRef>,
        code: &str,
        peer_id: &str,
        before: &[Option<(RoomRef, String)>],
    ) {
        if !self.slots[i].open {
            return;
        }
        let log = &self.slots[i].step_log;
        let Some(target) = target else {
            assert_eq!(log.len(), 1);
            assert_eq!(log[0]["message"], "Room not found", "rule 1 wording");
            self.others_unchanged_and_silent(i, before);
            return;
        };
        if log.first().map(msg_type) == Some("error") {
            self.expect_only_error(i, "", before);
            return;
        }
        // Joined. Others know the host by its public id only (rule 11).
        let room = self.rooms().get(target).expect("joined room exists");
        assert_ne!(peer_id, room.host_public_id(), "joined as the public id");
        let shown = if peer_id == room.host_id() {
            room.host_public_id()
        } else {
            peer_id
        };
        let now = self.membership();
        assert_eq!(
            now[i],
            Some((target, shown.to_owned())),
            "joiner not in the room"
        );
        let mut want = vec!["room_info", "connected"];
        if room.has_document() {
            want.push("document_sync");
        }
        // The joiner's own replies come first. A member of the target room
        // whose queue overflowed on `peer_joined` is closed in the same step,
        // and the joiner, a member by then, rightly hears it leave.
        let got: Vec<&str> = log.iter().map(msg_type).collect();
        assert_eq!(
            &got[..want.len().min(got.len())],
            &want[..],
            "joiner's replies"
        );
        assert!(got.len() >= want.len(), "joiner's replies: {got:?}");
        for m in &log[want.len()..] {
            assert_eq!(msg_type(m), "peer_left", "joiner heard {m}");
            let gone = (0..CONNS).any(|j| {
                j != i
                    && !self.slots[j].open
                    && before[j]
                        .as_ref()
                        .is_some_and(|(r, id)| *r == target && m["peer_id"] == **id)
            });
            assert!(gone, "joiner heard {m} for a member that did not leave");
        }
        assert_eq!(log[0]["room_code"], *code);
        // Rule 11: the host itself is told its own id; everyone else the
        // public one. Either way room_info names the host as its peers
        // list does, and lists the joiner once.
        let host_seen = if peer_id == room.host_id() {
            room.host_id()
        } else {
            room.host_public_id()
        };
        assert_eq!(log[0]["host_id"], host_seen);
        let peers = log[0]["peers"].as_array().expect("peers is an array");
        let listed = peers.iter().filter(|p| p["id"] == *peer_id).count();
        assert_eq!(listed, 1, "room_info lists the joiner once");
        if peer_id != room.host_id() {
            assert!(
                peers.iter().all(|p| p["id"] != room.host_id()),
                "a guest was told the host's secret id"
            );
        }
        assert_eq!(log[1]["peer_id"], *peer_id);
        assert_eq!(log[1]["room_code"], *code);
        if room.has_document() {
            assert_eq!(log[2]["document"], self.documents[&target]);
        }
        // Members of the target room hear `peer_joined` once; members of
        // the room the joiner left (or of either room, when a slow member
        // was closed meanwhile) hear `peer_left`; nobody else hears a thing.
        for (j, (c, now_j)) in self.slots.iter().zip(&now).enumerate() {
            if j == i || !c.open {
                continue;
            }
            let in_target = now_j.as_ref().is_some_and(|(r, _)| *r == target);
            let log = &c.step_log;
            let joined = log
                .iter()
                .filter(|m| msg_type(m) == "peer_joined" && m["peer"]["id"] == *shown)
                .count();
            assert_eq!(joined, usize::from(in_target), "slot {j} heard {log:?}");
            assert!(
                log.iter()
                    .all(|m| matches!(msg_type(m), "peer_joined" | "peer_left")),
                "slot {j} heard {log:?} during a join"
            );
        }
    }
}

/// The close code a close frame's payload carries.
fn close_code(payload: &[u8]) -> u16 {
    assert!(payload.len() >= 2, "close frame without a code");
    assert!(
        std::str::from_utf8(&payload[2..]).is_ok(),
        "close reason not UTF-8"
    );
    u16::from_be_bytes([payload[0], payload[1]])
}

/// A text payload as one frame again, for [`server_message`]'s checks.
fn client_view(text: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match text.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(text);
    f
}

/// §6: one numbering per room, strictly increasing for each member.
fn check_seq(last: &mut u64, msg: &Value) {
    match msg_type(msg) {
        "room_info" => {
            let seq = msg["seq"].as_u64().expect("room_info carries seq");
            assert!(msg["epoch"].is_string(), "room_info carries epoch: {msg}");
            *last = seq;
        }
        t @ ("peer_joined" | "peer_left" | "data" | "document_sync") => match msg["seq"].as_u64() {
            Some(seq) => {
                assert!(seq > *last, "{t} seq {seq} after {last}: {msg}");
                *last = seq;
            }
            // Only a snapshot of the document has no number.
            None => assert_eq!(t, "document_sync", "{t} without seq: {msg}"),
        },
        _ => {}
    }
}

fn slot(b: Option<&u8>) -> Option<usize> {
    match b {
        Some(d @ b'0'..=b'9') => Some((d - b'0') as usize % CONNS),
        _ => None,
    }
}

fn number(digits: &[u8]) -> u64 {
    digits
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add((d - b'0') as u64)
        })
}

pub fn run(data: &[u8]) -> String {
    let mut lines = data.split(|&b| b == b'\n').peekable();
    let mut idle = Some(DEFAULT_IDLE);
    if let Some([b'i', digits @ ..]) = lines.peek().copied() {
        let n = number(digits);
        idle = (n > 0).then(|| Duration::from_secs(n));
        lines.next();
    }
    let mut w = World::new(idle);
    for line in lines.take(MAX_STEPS) {
        match line {
            [d @ b'0'..=b'9', text @ ..] => {
                let i = (d - b'0') as usize % CONNS;
                match std::str::from_utf8(text) {
                    Ok(t) => w.message(i, t),
                    Err(_) => w.bad_utf8(i, text),
                }
            }
            [b'c', rest @ ..] => {
                let rest = String::from_utf8_lossy(rest);
                let (code, host) = match rest.split_once(' ') {
                    Some((c, h)) => (c, Some(h)),
                    None => (&*rest, None),
                };
                let code = (!code.is_empty()).then_some(code);
                let host = host.filter(|h| !h.is_empty());
                w.create(code, host);
            }
            [b'x', rest @ ..] => {
                if let Some(i) = slot(rest.first()) {
                    w.drop_conn(i);
                }
            }
            [b's', rest @ ..] => {
                if let Some(i) = slot(rest.first()) {
                    w.set_reading(i, false);
                }
            }
            [b'r', rest @ ..] => {
                if let Some(i) = slot(rest.first()) {
                    w.set_reading(i, true);
                }
            }
            [b't', digits @ ..] => w.advance(number(digits).min(100_000)),
            _ => {}
        }
    }
    let summary = w.summary();
    w.drop_all_and_expire();
    summary
}
