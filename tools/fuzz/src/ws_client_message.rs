//! `ws_client_message`: arbitrary bytes as client text messages into the
//! JSON action decoder (`protocol::decode`) and the room state machine
//! (`rooms::Rooms`), with four connections and any number of rooms, driven
//! the way `src/server.rs` drives them (effects applied in order, closes
//! deferred and then carried out by leaving the room, outbound queues
//! bounded, idle rooms expired by `timers::Timers`).
//!
//! The input is a script, one step per line:
//! * `0`..`3` + text: connection N sends that text message (bytes that are
//!   not UTF-8 close it with 1007, as the frame decoder would); a closed
//!   connection's slot reconnects as a new connection (new generation);
//! * `c` + `code host`: `POST /api/rooms` with that desired code and host
//!   id (either may be empty: drawn at random);
//! * `xN`: connection N drops (TCP close); `sN` / `rN`: it stops / resumes
//!   reading, so its queue fills up;
//! * `tN`: N seconds pass and due room timers fire;
//! * a first line `iN` sets `ROOM_IDLE_TIMEOUT_SECONDS` (0 = forever).
//!
//! After every step:
//! * every room member is a live (open, current-generation) connection
//!   whose session names that room; a connection is in at most one room
//!   and a closed one in none; peer ids are unique per room; the code index
//!   finds every room;
//! * no outbound queue is over its bound (4 KiB here), and the timer heap
//!   holds at most one expiry per room;
//! * every frame queued is one unmasked text frame holding a JSON object
//!   with a §2 message type;
//! * the step obeys §2: a join is answered `room_info` (listing the joiner
//!   once), `connected`, then `document_sync` when there is a document, the
//!   other members get `peer_joined` and the joiner does not; an unknown
//!   room is exactly `Room not found`; a broadcast reaches every other
//!   member once with the sender's id and the same string; only the host
//!   syncs a document and `request_sync` returns the stored one (or `""`);
//!   not joined gives `Not in a room`; bad input gives
//!   `Invalid message format: …`; every failure answers only the sender and
//!   changes no membership.
//!
//! At the end every connection drops and, with a finite idle timeout, the
//! timeout passes: then no room may be left.
//!
//! The summary is `m<members>-r<rooms>-c<closes>` before that cleanup.

use super::common::{lenient_json, msg_type, server_message, Rng};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use sync_server::protocol::{self, Action};
use sync_server::rooms::{self, ConnRef, Effect, RoomRef, Rooms, Session};
use sync_server::timers::Timers;
use sync_server::ws::Frame;

/// Connections in the script.
pub const CONNS: usize = 4;
/// The per-connection output bound (`MAX_OUTBOUND_BYTES`), small so that
/// slow readers hit it.
pub const MAX_OUTBOUND: usize = 4096;
/// Steps run from one input; the rest is ignored.
const MAX_STEPS: usize = 256;
/// The idle timeout when the script does not set one.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// Will be closed with this code at the end of the step.
    Doomed(u16),
    Closed,
}

struct Conn {
    gen: u32,
    state: State,
    session: Session,
    queue: Vec<Frame>,
    queued: usize,
    reading: bool,
    /// Messages queued during the current step, checked and decoded.
    step_log: Vec<Value>,
    /// The last stream position this connection was told of: `room_info`'s
    /// `seq`, then each numbered event's.
    seq: u64,
}

impl Conn {
    fn new(gen: u32) -> Conn {
        Conn {
            gen,
            state: State::Open,
            session: Session::default(),
            queue: Vec::new(),
            queued: 0,
            reading: true,
            step_log: Vec::new(),
            seq: 0,
        }
    }
}

/// The server's state around `Rooms`, reduced to what the room machine
/// touches.
pub struct World {
    pub rooms: Rooms,
    conns: Vec<Conn>,
    timers: Timers<RoomRef>,
    idle: Option<Duration>,
    now: Instant,
    wall: SystemTime,
    rng: Rng,
    fx: Vec<Effect>,
    doomed: Vec<usize>,
    /// Documents stored per room, as the JSON string value.
    documents: HashMap<RoomRef, Value>,
    /// Connection closes so far.
    pub closes: usize,
}

impl World {
    pub fn new(idle: Option<Duration>) -> World {
        World {
            rooms: Rooms::new(idle),
            conns: (0..CONNS).map(|_| Conn::new(1)).collect(),
            timers: Timers::default(),
            idle,
            now: Instant::now(),
            wall: UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            rng: Rng::new(0x5eed),
            fx: Vec::new(),
            doomed: Vec::new(),
            documents: HashMap::new(),
            closes: 0,
        }
    }

    fn cref(&self, i: usize) -> ConnRef {
        ConnRef {
            key: i as u32,
            gen: self.conns[i].gen,
        }
    }

    /// The slot of a live connection reference, if it is one.
    fn live(&self, c: ConnRef) -> Option<usize> {
        let i = c.key as usize;
        (i < CONNS && self.conns[i].gen == c.gen && self.conns[i].state != State::Closed)
            .then_some(i)
    }

    fn begin_step(&mut self) {
        for c in &mut self.conns {
            c.step_log.clear();
        }
    }

    /// `POST /api/rooms` with a desired code and host id.
    pub fn create(&mut self, code: Option<&str>, host: Option<&str>) {
        self.begin_step();
        let rng = &mut self.rng;
        let before = self.rooms.len();
        let existed = code
            .and_then(|c| self.rooms.find(c))
            .map(|(r, room)| (r, room.host_id().to_owned()));
        let result = self.rooms.create(
            code,
            host,
            self.now,
            self.wall,
            &mut |b: &mut [u8]| rng.fill(b),
            &mut self.fx,
        );
        match result {
            Ok(created) => {
                let room = self.rooms.get(created.room).expect("created room exists");
                assert!(rooms::valid_room_code(room.code()));
                let host_chars = room.host_id().chars().count();
                assert!((1..=128).contains(&host_chars));
                assert_ne!(room.host_public_id(), room.host_id());
                assert_eq!(created.restored, existed.is_some());
                if let Some((r, h)) = existed {
                    // Rule 11: only the secret host id restores a room.
                    assert_eq!(host, Some(h.as_str()));
                    assert_eq!(r, created.room);
                    assert_eq!(self.rooms.len(), before);
                } else {
                    assert_eq!(self.rooms.len(), before + 1);
                    if let Some(c) = code {
                        assert_eq!(room.code(), c);
                    }
                    if let Some(h) = host {
                        assert_eq!(room.host_id(), h);
                    }
                }
            }
            Err(e) => {
                assert_eq!(self.rooms.len(), before);
                if existed.is_some() {
                    assert!(matches!(
                        e,
                        rooms::CreateError::Taken | rooms::CreateError::BadHostId
                    ));
                }
            }
        }
        self.finish_step();
    }

    /// Connection `i` sends one text message.
    pub fn message(&mut self, i: usize, text: &str) {
        self.begin_step();
        if self.conns[i].state == State::Closed {
            let gen = self.conns[i].gen.wrapping_add(1);
            self.conns[i] = Conn::new(gen);
        }
        let me = self.cref(i);
        let before = self.membership();
        let my_room = self.conns[i].session.room;
        match protocol::decode(text) {
            Err(detail) => {
                self.send(
                    me,
                    sync_server::protocol::out::error_frame(&format!(
                        "Invalid message format: {detail}"
                    )),
                );
                self.finish_step();
                self.expect_only_error(i, "Invalid message format: ", &before);
            }
            Ok(Action::Ping) => {
                self.send(me, sync_server::protocol::out::pong_frame());
                self.finish_step();
                self.expect_only(i, &["pong"], &before);
            }
            Ok(Action::Join {
                room_code,
                peer_id,
                is_host,
                metadata,
                token: _,
                since,
            }) => {
                let target = self.rooms.find(&room_code).map(|(r, _)| r);
                let mut session = std::mem::take(&mut self.conns[i].session);
                self.rooms.join(
                    me,
                    &mut session,
                    &room_code,
                    &peer_id,
                    is_host,
                    metadata,
                    since,
                    self.now,
                    self.wall,
                    &mut self.fx,
                );
                self.conns[i].session = session;
                self.apply_effects();
                self.finish_step();
                self.check_join(i, target, &room_code, &peer_id, &before);
            }
            Ok(Action::Broadcast { data }) => {
                let value = lenient_json(data.get().as_bytes()).expect("data is JSON");
                assert!(value.is_string(), "data {value}");
                let sender = self.peer_id_of(me);
                self.rooms
                    .broadcast(me, &self.conns[i].session, data, self.now, &mut self.fx);
                self.apply_effects();
                self.finish_step();
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
                let is_host = self.conns[i].session.is_host;
                self.rooms
                    .sync_document(me, &self.conns[i].session, document, &mut self.fx);
                self.apply_effects();
                self.finish_step();
                match (my_room.filter(|r| self.rooms.get(*r).is_some()), is_host) {
                    (None, _) => self.expect_only_error(i, "Not in a room", &before),
                    (Some(_), false) => self.expect_only_error(i, "Only the host", &before),
                    (Some(room), true) => {
                        assert!(self.rooms.get(room).is_some_and(|r| r.has_document()));
                        self.documents.insert(room, value.clone());
                        self.expect_fanout(i, room, &before, |m| {
                            msg_type(m) == "document_sync" && m["document"] == value
                        });
                    }
                }
            }
            Ok(Action::RequestSync) => {
                self.rooms
                    .request_sync(me, &self.conns[i].session, &mut self.fx);
                self.apply_effects();
                self.finish_step();
                match my_room.filter(|r| self.rooms.get(*r).is_some()) {
                    None => self.expect_only_error(i, "Not in a room", &before),
                    Some(room) => {
                        let doc = self.documents.get(&room).cloned();
                        let doc = doc.unwrap_or_else(|| Value::String(String::new()));
                        self.expect_only(i, &["document_sync"], &before);
                        if self.conns[i].state == State::Open {
                            assert_eq!(self.conns[i].step_log[0]["document"], doc);
                        }
                    }
                }
            }
            Ok(Action::Leave) => {
                let left = self.peer_id_of(me);
                let mut session = std::mem::take(&mut self.conns[i].session);
                self.rooms.leave(me, &mut session, self.now, &mut self.fx);
                self.conns[i].session = session;
                self.apply_effects();
                self.doom(me, 1000);
                self.finish_step();
                assert!(
                    self.conns[i].step_log.is_empty(),
                    "leave is answered by a close"
                );
                if let Some((room, id)) = left {
                    self.expect_fanout(i, room, &before, |m| {
                        msg_type(m) == "peer_left" && m["peer_id"] == *id
                    });
                }
            }
        }
    }

    /// Connection `i` sends a text frame that is not UTF-8: the decoder
    /// answers 1007 and the connection closes.
    pub fn bad_utf8(&mut self, i: usize) {
        self.begin_step();
        if self.conns[i].state == State::Open {
            self.doom(self.cref(i), 1007);
        }
        self.finish_step();
    }

    /// Connection `i` drops (TCP close, keepalive timeout).
    pub fn drop_conn(&mut self, i: usize) {
        self.begin_step();
        if self.conns[i].state == State::Open {
            self.doom(self.cref(i), 1006);
        }
        self.finish_step();
    }

    /// Connection `i` stops or resumes reading.
    pub fn set_reading(&mut self, i: usize, reading: bool) {
        self.begin_step();
        self.conns[i].reading = reading;
        self.finish_step();
    }

    /// `secs` seconds pass; due room timers fire.
    pub fn advance(&mut self, secs: u64) {
        self.begin_step();
        let d = Duration::from_secs(secs);
        self.now += d;
        self.wall += d;
        while let Some((at, room)) = self.timers.pop_due(self.now) {
            assert!(at <= self.now);
            let had = self.rooms.get(room).map(|r| r.peer_count());
            let removed = self.rooms.expire(room, self.now, &mut self.fx);
            if removed {
                assert_eq!(had, Some(0), "only an empty room expires");
                self.documents.remove(&room);
            }
            // A re-armed timer is due strictly later (checked there).
            self.apply_effects();
        }
        self.finish_step();
    }

    /// Every connection drops, then the idle timeout passes: no room may be
    /// left. Without a finite timeout rooms stay, which is checked too.
    pub fn drop_all_and_expire(&mut self) {
        for i in 0..CONNS {
            self.drop_conn(i);
        }
        let count = self.rooms.len();
        match self.idle {
            Some(t) if t.as_secs() < 1_000_000 => {
                self.advance(t.as_secs() + 1);
                assert_eq!(self.rooms.len(), 0, "empty rooms outlived the idle timeout");
            }
            Some(_) => {}
            None => {
                self.advance(1_000_000);
                assert_eq!(self.rooms.len(), count, "rooms kept forever expired");
            }
        }
    }

    pub fn summary(&self) -> String {
        let members: usize = self.rooms.iter().map(|(_, r)| r.peer_count()).sum();
        format!("m{members}-r{}-c{}", self.rooms.len(), self.closes)
    }

    // ---- the server's effect handling ---------------------------------

    fn send(&mut self, to: ConnRef, frame: Frame) {
        let Some(i) = self.live(to) else { return };
        let c = &mut self.conns[i];
        if c.state != State::Open {
            // On the way out: its stream ends here, cleanly.
            return;
        }
        let msg = server_message(&frame);
        if c.queued + frame.len() > MAX_OUTBOUND {
            self.doom(to, 1008);
            return;
        }
        // §6: one numbering per room, strictly increasing for each member.
        match msg_type(&msg) {
            "room_info" => {
                let seq = msg["seq"].as_u64().expect("room_info carries seq");
                assert!(msg["epoch"].is_string(), "room_info carries epoch: {msg}");
                c.seq = seq;
            }
            t @ ("peer_joined" | "peer_left" | "data" | "document_sync") => {
                match msg["seq"].as_u64() {
                    Some(seq) => {
                        assert!(seq > c.seq, "{t} seq {seq} after {}: {msg}", c.seq);
                        c.seq = seq;
                    }
                    // Only a snapshot of the document has no number.
                    None => assert_eq!(t, "document_sync", "{t} without seq: {msg}"),
                }
            }
            _ => {}
        }
        c.queued += frame.len();
        c.queue.push(frame);
        c.step_log.push(msg);
    }

    fn doom(&mut self, to: ConnRef, code: u16) {
        if let Some(i) = self.live(to) {
            if self.conns[i].state == State::Open {
                self.conns[i].state = State::Doomed(code);
                self.doomed.push(i);
            }
        }
    }

    fn apply_effects(&mut self) {
        let fx = std::mem::take(&mut self.fx);
        for e in fx {
            match e {
                Effect::Send(to, frame) => self.send(to, frame),
                Effect::Fanout { to, frame } => {
                    for to in to {
                        self.send(to, frame.clone());
                    }
                }
                Effect::Close(to, code, _) => {
                    assert!(matches!(code, 1000 | 1008), "close code {code}");
                    if let Some(i) = self.live(to) {
                        self.conns[i].session = Session::default();
                    }
                    self.doom(to, code);
                }
                Effect::Publish { .. } => unreachable!("the fuzzed server is not in cluster mode"),
                Effect::ExpireAt(room, at) => {
                    assert!(at >= self.now);
                    self.timers.arm(at, room);
                }
                // The room store is not part of this model.
                Effect::Persist(_) => {}
            }
        }
    }

    /// Carries out deferred closes (which may doom more), delivers what the
    /// reading connections have queued, and checks the invariants.
    fn finish_step(&mut self) {
        self.apply_effects();
        while let Some(i) = self.doomed.pop() {
            let me = self.cref(i);
            let mut session = std::mem::take(&mut self.conns[i].session);
            if session.in_room() {
                self.rooms.leave(me, &mut session, self.now, &mut self.fx);
                self.apply_effects();
            }
            let c = &mut self.conns[i];
            let State::Doomed(code) = c.state else {
                unreachable!("only doomed connections are reaped")
            };
            assert!(matches!(code, 1000 | 1006 | 1007 | 1008), "close {code}");
            c.state = State::Closed;
            c.queue.clear();
            c.queued = 0;
            self.closes += 1;
        }
        for c in &mut self.conns {
            if c.reading {
                c.queue.clear();
                c.queued = 0;
            }
        }
        self.check_invariants();
    }

    // ---- invariants ------------------------------------------------------

    /// Which room each connection is a member of, by slot.
    fn membership(&self) -> Vec<Option<(RoomRef, String)>> {
        let mut out = vec![None; CONNS];
        for (r, room) in self.rooms.iter() {
            for (c, id) in room.member_conns().zip(room.member_peer_ids()) {
                out[c.key as usize] = Some((r, id.to_owned()));
            }
        }
        out
    }

    fn peer_id_of(&self, c: ConnRef) -> Option<(RoomRef, String)> {
        self.membership()[c.key as usize].clone()
    }

    pub fn check_invariants(&self) {
        let mut member_of: Vec<Option<RoomRef>> = vec![None; CONNS];
        let mut total = 0;
        for (r, room) in self.rooms.iter() {
            total += 1;
            let (found, _) = self
                .rooms
                .find(room.code())
                .expect("every room is indexed by its code");
            assert_eq!(found, r, "code index points elsewhere");
            assert!(self.rooms.get(r).is_some());
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
                    .live(c)
                    .unwrap_or_else(|| panic!("member {c:?} is not a live connection"));
                assert_eq!(self.conns[i].state, State::Open, "member {c:?} is closing");
                assert!(member_of[i].is_none(), "connection {c:?} in two rooms");
                member_of[i] = Some(r);
                assert_eq!(
                    self.conns[i].session.room,
                    Some(r),
                    "session of {c:?} names another room"
                );
            }
        }
        assert_eq!(total, self.rooms.len());
        // Rooms go only when their timer fires, and each has at most one
        // pending: a member cannot grow the timer heap by re-joining.
        assert!(
            self.timers.len() <= self.rooms.len(),
            "{} room timers for {} rooms",
            self.timers.len(),
            self.rooms.len()
        );
        for (i, c) in self.conns.iter().enumerate() {
            assert_eq!(c.session.room, member_of[i], "session of slot {i} is stale");
            assert!(matches!(c.state, State::Open | State::Closed));
            assert!(c.queued <= MAX_OUTBOUND, "queue over its bound");
            assert_eq!(c.queued, c.queue.iter().map(|f| f.len()).sum::<usize>());
        }
    }

    // ---- §2 checks for one step ------------------------------------------

    fn others_unchanged_and_silent(&self, i: usize, before: &[Option<(RoomRef, String)>]) {
        if self.conns[i].state != State::Open {
            // The sender overflowed its own queue and was closed: the others
            // rightly heard it leave.
            return;
        }
        let now = self.membership();
        for j in 0..CONNS {
            if j != i {
                assert!(
                    self.conns[j].step_log.is_empty(),
                    "slot {j} heard a failure"
                );
                if self.conns[j].state == State::Open {
                    assert_eq!(now[j], before[j], "a failure moved slot {j}");
                }
            }
        }
    }

    /// A failed action: the sender hears one error starting with `prefix`,
    /// nobody else hears anything and nobody moves.
    fn expect_only_error(&self, i: usize, prefix: &str, before: &[Option<(RoomRef, String)>]) {
        self.expect_only(i, &["error"], before);
        if self.conns[i].state == State::Open {
            let m = self.conns[i].step_log[0]["message"]
                .as_str()
                .unwrap_or_default();
            assert!(m.starts_with(prefix), "error {m:?}, expected {prefix:?}");
            assert_eq!(self.membership()[i], before[i]);
        }
    }

    /// The sender hears exactly these types and nobody else anything.
    fn expect_only(&self, i: usize, types: &[&str], before: &[Option<(RoomRef, String)>]) {
        if self.conns[i].state == State::Open {
            let got: Vec<&str> = self.conns[i].step_log.iter().map(msg_type).collect();
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
        let own = &self.conns[i].step_log;
        assert!(
            own.iter().all(|m| msg_type(m) == "peer_left"),
            "sender heard its own fan-out: {own:?}"
        );
        let now = self.membership();
        for j in 0..CONNS {
            if j == i || self.conns[j].state != State::Open {
                continue;
            }
            let log = &self.conns[j].step_log;
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
        if self.conns[i].state != State::Open {
            return;
        }
        let log = &self.conns[i].step_log;
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
        let room = self.rooms.get(target).expect("joined room exists");
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
                    && self.conns[j].state == State::Closed
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
        for (j, (c, now_j)) in self.conns.iter().zip(&now).enumerate() {
            if j == i || c.state != State::Open {
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
                    Err(_) => w.bad_utf8(i),
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
