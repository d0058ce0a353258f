//! Sans-io room state: who is in which room, in what order, and what each
//! event makes the server send.
//!
//! Rooms live in a slab with a map from room code to key. Functions take the
//! acting connection, its [`Session`] (owned by the shell) and `now`, and
//! push [`Effect`]s into a caller-owned vector; they never touch sockets.
//!
//! Invariants:
//! * A room's `members` are in join order and fan-out visits them in that
//!   order, so the same input always gives the same output.
//! * A connection is a member of at most one room, and only of the room its
//!   session names; peer ids are unique within a room.
//! * Every outgoing message is serialized once into a shared [`Frame`]; a
//!   fan-out to `n` peers is one effect, not `n` copies.
//! * Every stream event (`peer_joined`, `peer_left`, `data`, a
//!   `document_sync` from `sync_document`) is stamped with the room's next
//!   `seq` when its frame is built, so every member sees one numbering in one
//!   order. Snapshots (`room_info`, a joiner's or `request_sync`'s
//!   `document_sync`) carry no `seq` of their own. Recent `data` events are
//!   held for replay ([`crate::rooms::history`]).
//! * The host id a room's creator received is a secret capability: only a
//!   join with it may be the host. Every message other peers see names the
//!   host by the room's `host_public_id` instead (peers lists, `room_info`,
//!   `peer_joined`, `peer_left`, `data.from`); only the host's own
//!   `connected` carries the secret back to it. No peer may join under the
//!   public id.
//! * An empty room carries `empty_since`; the shell holds at most one timer
//!   per room (re-armed later when the room emptied again meanwhile) for
//!   `empty_since + idle_timeout` (less `idle_before`, the idle time a room
//!   read back from the store brought along) and calls [`Rooms::expire`]
//!   when it fires.
//! * Every change to what the room store keeps (creation, document, the
//!   room emptying or filling) emits [`Effect::Persist`].

pub mod history;

use self::history::{Ledger, Log, Logs};
use crate::protocol::{Since, MAX_METADATA_BYTES};
use crate::util::{json_str, random_string, rfc3339, uuid_v4};
use crate::ws::{self, Frame, HEADROOM};
use serde_json::value::RawValue;
use slab::Slab;
use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime};

pub use crate::refs::{ConnRef, RoomRef};

/// Per-connection room state, stored by the shell next to the socket.
#[derive(Debug, Default)]
pub struct Session {
    pub room: Option<RoomRef>,
    pub is_host: bool,
    /// `{"type":"data","from":"<peer id>","data":` — built once at join so a
    /// broadcast costs no escaping. It also tells a peer's own `data`
    /// events apart in a replay.
    data_prefix: Box<[u8]>,
}

impl Session {
    pub fn in_room(&self) -> bool {
        self.room.is_some()
    }
}

/// What the shell must do after a room operation.
#[derive(Debug)]
pub enum Effect {
    /// Queue `frame` for one connection.
    Send(ConnRef, Frame),
    /// Queue one shared `frame` for each of `to` (a room's members at the
    /// time, in join order).
    Fanout { to: Vec<ConnRef>, frame: Frame },
    /// Close a connection with a WebSocket close code; its session must be
    /// treated as having no room (the room already forgot it).
    Close(ConnRef, u16, &'static str),
    /// The room became empty: call [`Rooms::expire`] at this instant.
    ExpireAt(RoomRef, Instant),
    /// Something kept of the room changed (created, document, emptied or
    /// occupied): the room store saves it later.
    Persist(RoomRef),
    /// Cluster mode: instead of a [`Effect::Fanout`], the event goes to
    /// Redis to be numbered; every node (this one too) delivers it from
    /// there ([`Rooms::deliver`]). `frame` carries the placeholder
    /// `"seq":0`.
    Publish {
        room: RoomRef,
        except: Option<ConnRef>,
        what: Published,
        frame: Frame,
    },
}

/// What a [`Effect::Publish`] is about.
#[derive(Debug, Clone)]
pub enum Published {
    /// `conn` joined as `shown`, with this peer object.
    Joined {
        conn: ConnRef,
        shown: Box<str>,
        peer_json: Box<str>,
    },
    /// `conn` (shown as `shown`) left.
    Left { conn: ConnRef, shown: Box<str> },
    /// A `data` event.
    Data,
    /// A `document_sync` from `sync_document`.
    Document,
}

/// One numbered event from Redis, for [`Rooms::deliver`].
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// `d` data, `s` document, `j` joined, `l` left, `r` replaced (left
    /// because the same peer id joined elsewhere).
    pub kind: u8,
    /// Published by this node.
    pub mine: bool,
    /// On the publishing node: the connection not to deliver to (for `r`:
    /// the replaced connection).
    pub except: Option<ConnRef>,
    /// `j`/`l`/`r`: the shown peer id (unused for `d` and `s`).
    pub from: &'a str,
    /// The frame's JSON without its closing `,"seq":N}`.
    pub body: &'a [u8],
}

struct Member {
    conn: ConnRef,
    /// The id the peer joined with (for the host: the secret host id;
    /// others see [`Room::shown`] of it).
    peer_id: Box<str>,
    /// The peer object as JSON: `{"id","joined_at","is_host","metadata"}`.
    peer_json: Box<str>,
    /// With `REQUIRE_AUTH`: the account that joined under this peer id;
    /// another account may not replace it.
    account: Option<Box<str>>,
}

/// A room's document, kept as a ready frame.
enum Doc {
    /// The numbered `document_sync` event that set it (its payload ends
    /// with `,"seq":N}`, `tail` bytes). A snapshot is cut from it when a
    /// joiner or `request_sync` first needs one, so the fan-out and the
    /// stored document share one buffer meanwhile.
    Event { frame: Frame, tail: usize },
    /// A snapshot: `{"type":"document_sync","document":…}` with no `seq`.
    Snapshot(Frame),
}

impl Doc {
    /// The raw JSON string of the document: a slice of the frame, no copy.
    fn raw(&self) -> bytes::Bytes {
        let (f, tail) = match self {
            Doc::Event { frame, tail } => (frame, *tail),
            Doc::Snapshot(frame) => (frame, 1),
        };
        let start = (ws::header_len(f) + DOCUMENT_PREFIX.len()).min(f.len());
        let end = f.len().saturating_sub(tail).max(start);
        f.slice(start..end)
    }
    fn frame_len(&self) -> usize {
        match self {
            Doc::Event { frame, .. } | Doc::Snapshot(frame) => frame.len(),
        }
    }
}

/// One room.
pub struct Room {
    code: Box<str>,
    room_id: Box<str>,
    host_id: Box<str>,
    /// The host's name towards everyone else (protocol §2 rule 11).
    host_public_id: Box<str>,
    /// With `REQUIRE_AUTH`: the account that created the room; only it (or
    /// an admin) may join as the host.
    owner: Option<Box<str>>,
    created_at: Box<str>,
    gen: u32,
    members: Vec<Member>,
    /// The stored document, as one frame in either form (never both: a
    /// 10 MiB document is held once).
    document: Option<Doc>,
    /// Names this incarnation of the room's stream; a client's `since` from
    /// another epoch is never replayed.
    epoch: Box<str>,
    /// The number of the room's last stream event (0: none yet).
    seq: u64,
    /// The number of the event that last changed the document (0: never).
    doc_seq: u64,
    /// Recent `data` events, for replay.
    log: Log,
    /// Cluster mode: the peers on other nodes, `(shown id, peer json)`.
    remote: Vec<(Box<str>, Box<str>)>,
    /// Cluster mode: this node follows the room's stream (its `epoch`,
    /// `seq` and `remote` are the cluster's).
    synced: bool,
    empty_since: Option<Instant>,
    /// How long it had been empty before `empty_since` (a room read back
    /// from the store after a restart; the monotonic clock may not reach
    /// back that far). Zero once anybody joins.
    idle_before: Duration,
    /// The shell holds a pending expiry timer for this room. At most one is
    /// ever pending: a room that empties again while one is (a lone member
    /// re-joining in a loop) waits for it, and [`Rooms::expire`] re-arms it
    /// for the later time, so the timer heap holds one entry per room.
    expiry_armed: bool,
}

impl Room {
    /// Numbers the room's next stream event.
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
    /// The number a new event's frame carries: the next `seq`, or in
    /// cluster mode the placeholder 0 (Redis numbers it).
    fn stamp(&mut self, cluster: bool) -> u64 {
        if cluster {
            0
        } else {
            self.next_seq()
        }
    }
    pub fn code(&self) -> &str {
        &self.code
    }
    pub fn room_id(&self) -> &str {
        &self.room_id
    }
    /// The secret host id: only its creator may know it.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }
    /// The id everyone else sees for the host.
    pub fn host_public_id(&self) -> &str {
        &self.host_public_id
    }
    /// The account bound to the member with `peer_id` (`REQUIRE_AUTH`).
    pub fn account_of(&self, peer_id: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| &*m.peer_id == peer_id)
            .and_then(|m| m.account.as_deref())
    }
    /// The account bound to the host role (`REQUIRE_AUTH`), if any.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
    /// What others are shown for a peer joining as `peer_id`: the secret
    /// host id never leaves the room except to the host itself.
    fn shown<'a>(&'a self, peer_id: &'a str) -> &'a str {
        if peer_id == &*self.host_id {
            &self.host_public_id
        } else {
            peer_id
        }
    }
    pub fn created_at(&self) -> &str {
        &self.created_at
    }
    pub fn has_document(&self) -> bool {
        self.document.is_some()
    }
    pub fn epoch(&self) -> &str {
        &self.epoch
    }
    /// The number of the room's last stream event.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Held `data` events.
    pub fn history_len(&self) -> usize {
        self.log.len()
    }
    /// Bytes the stored document's frame holds (0 without one); compare
    /// with [`document_frame_len`] to tell whether a new one is larger.
    pub fn document_frame_len(&self) -> usize {
        self.document
            .as_ref()
            .map_or(0, |d| document_frame_len(d.raw().len()))
    }
    pub fn peer_count(&self) -> usize {
        self.members.len() + self.remote.len()
    }
    /// Cluster mode: whether this node follows the room's stream.
    pub fn synced(&self) -> bool {
        self.synced
    }
    /// Local members only (cluster mode: not those of other nodes).
    pub fn local_count(&self) -> usize {
        self.members.len()
    }
    /// Bytes the stored document holds (as its ready `document_sync`
    /// frame); 0 without one.
    pub fn document_bytes(&self) -> usize {
        self.document.as_ref().map_or(0, Doc::frame_len)
    }
    /// Whether a member joined as the host. Read from the peer objects:
    /// `"is_host":` follows the id, whose quotes are escaped, so the first
    /// unescaped quote that starts it is the member's own flag. (A plain
    /// scan for quotes: `str::find` builds a searcher per call, which made
    /// this the inspector's main cost.)
    pub fn host_present(&self) -> bool {
        const KEY: &[u8] = br#""is_host":"#;
        self.members.iter().any(|m| {
            let b = m.peer_json.as_bytes();
            let mut i = 0;
            while let Some(off) = b[i..].iter().position(|&c| c == b'"') {
                let at = i + off;
                if b[at..].starts_with(KEY) {
                    return b[at + KEY.len()..].starts_with(b"true");
                }
                i = at + 1;
            }
            false
        })
    }
    /// The JSON array of peer objects, in join order.
    pub fn peers_json(&self) -> String {
        let mut s = String::with_capacity(2 + self.members.len() * 96);
        s.push('[');
        let local = self.members.iter().map(|m| &*m.peer_json);
        let remote = self.remote.iter().map(|(_, j)| &**j);
        for (i, j) in local.chain(remote).enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(j);
        }
        s.push(']');
        s
    }
    /// The peers list as the host itself sees it in its `room_info`: its
    /// own entry under the id it joined with (rule 11: the host may see its
    /// own id; a client that compares `host_id` with its own id keeps
    /// working), everyone else as in [`Room::peers_json`].
    fn peers_json_for_host(&self, host: ConnRef) -> String {
        let mut s = String::with_capacity(2 + self.members.len() * 96);
        s.push('[');
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let shown = json_str(self.shown(&m.peer_id));
            let head_len = r#"{"id":"#.len() + shown.len();
            match m.peer_json.get(head_len..) {
                Some(rest) if m.conn == host => {
                    s.push_str(r#"{"id":"#);
                    s.push_str(&json_str(&m.peer_id));
                    s.push_str(rest);
                }
                _ => s.push_str(&m.peer_json),
            }
        }
        s.push(']');
        s
    }
    /// Who hears an event: the members in join order, but `except`.
    fn recipients(&self, except: Option<ConnRef>) -> Vec<ConnRef> {
        let mut to = Vec::with_capacity(self.members.len());
        to.extend(self.member_conns().filter(|&m| Some(m) != except));
        to
    }
    /// The members' connections in join order.
    pub fn member_conns(&self) -> impl Iterator<Item = ConnRef> + '_ {
        self.members.iter().map(|m| m.conn)
    }
    /// The members' peer ids in join order, as others see them (the host
    /// under its public id).
    pub fn member_peer_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.members.iter().map(|m| self.shown(&m.peer_id))
    }
    /// How long the room has had nobody in it, if it is empty.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        self.empty_since
            .map(|t| now.saturating_duration_since(t) + self.idle_before)
    }
    /// The document's raw JSON text: a slice of the shared frame, no copy.
    pub fn document_raw(&self) -> Option<bytes::Bytes> {
        self.document.as_ref().map(Doc::raw)
    }
    /// The document as a snapshot frame (no `seq`), cut from the numbered
    /// event the first time one is needed; the room then holds only the
    /// snapshot (the event's buffer lives on only in queues still sending
    /// it).
    fn snapshot(&mut self) -> Option<Frame> {
        if let Some(Doc::Event { .. }) = &self.document {
            let raw = self.document.as_ref().map(Doc::raw).unwrap_or_default();
            self.document = Some(Doc::Snapshot(document_frame_bytes(&raw)));
        }
        match &self.document {
            Some(Doc::Snapshot(f)) => Some(f.clone()),
            _ => None,
        }
    }
}

/// Why `POST /api/rooms` was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum CreateError {
    BadRoomCode,
    BadHostId,
    /// The desired code names a room whose host id the caller did not give.
    Taken,
}

/// The answer to a create: the room and whether it already existed.
pub struct Created {
    pub room: RoomRef,
    pub restored: bool,
}

const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const HOST_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const EPOCH_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl Logs for Slab<Room> {
    fn log_mut(&mut self, r: RoomRef) -> Option<&mut Log> {
        self.get_mut(r.key as usize)
            .filter(|room| room.gen == r.gen)
            .map(|room| &mut room.log)
    }
}

/// Every room of the server.
pub struct Rooms {
    rooms: Slab<Room>,
    by_code: HashMap<Box<str>, usize>,
    idle_timeout: Option<Duration>,
    next_gen: u32,
    ledger: Ledger,
    /// Cluster mode (`REDIS_URL`): stream events are published, not fanned
    /// out, and numbered by Redis.
    cluster: bool,
}

impl Rooms {
    pub fn new(idle_timeout: Option<Duration>) -> Rooms {
        Rooms {
            rooms: Slab::new(),
            by_code: HashMap::new(),
            idle_timeout,
            next_gen: 0,
            ledger: Ledger::new(history::Limits::default()),
            cluster: false,
        }
    }

    /// Sets the replay history's bounds (before any room exists).
    pub fn set_history_limits(&mut self, limits: history::Limits) {
        self.ledger = Ledger::new(limits);
    }

    /// Cluster mode: events are published through Redis.
    pub fn set_cluster(&mut self, on: bool) {
        self.cluster = on;
    }

    pub fn cluster(&self) -> bool {
        self.cluster
    }

    /// Bytes and events held for replay across all rooms.
    pub fn history_usage(&self) -> (usize, usize) {
        (self.ledger.bytes(), self.ledger.events())
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Binds `conn`'s membership of `r` to an account (`REQUIRE_AUTH`).
    pub fn bind_account(&mut self, r: RoomRef, conn: ConnRef, account: &str) {
        let member = self
            .rooms
            .get_mut(r.key as usize)
            .filter(|room| room.gen == r.gen)
            .and_then(|room| room.members.iter_mut().find(|m| m.conn == conn));
        if let Some(m) = member {
            m.account = Some(account.into());
        }
    }

    /// Binds the room's host role to an account (`REQUIRE_AUTH`).
    pub fn set_owner(&mut self, r: RoomRef, owner: &str) {
        if let Some(room) = self
            .rooms
            .get_mut(r.key as usize)
            .filter(|room| room.gen == r.gen)
        {
            room.owner = Some(owner.into());
        }
    }

    pub fn get(&self, r: RoomRef) -> Option<&Room> {
        self.rooms
            .get(r.key as usize)
            .filter(|room| room.gen == r.gen)
    }

    /// Every room with its reference, in slab order (for inspection).
    pub fn iter(&self) -> impl Iterator<Item = (RoomRef, &Room)> + '_ {
        self.rooms.iter().map(|(key, room)| {
            let r = RoomRef {
                key: key as u32,
                gen: room.gen,
            };
            (r, room)
        })
    }

    pub fn find(&self, code: &str) -> Option<(RoomRef, &Room)> {
        let key = *self.by_code.get(code)?;
        let room = &self.rooms[key];
        Some((
            RoomRef {
                key: key as u32,
                gen: room.gen,
            },
            room,
        ))
    }

    /// Creates a room, or returns the existing one when `desired_code` names
    /// it. `rand` supplies random bytes.
    pub fn create(
        &mut self,
        desired_code: Option<&str>,
        desired_host: Option<&str>,
        now: Instant,
        wall: SystemTime,
        rand: &mut dyn FnMut(&mut [u8]),
        fx: &mut Vec<Effect>,
    ) -> Result<Created, CreateError> {
        if let Some(code) = desired_code {
            if !valid_room_code(code) {
                return Err(CreateError::BadRoomCode);
            }
        }
        if let Some(host) = desired_host {
            let n = host.chars().count();
            if n == 0 || n > 128 || host.chars().any(char::is_control) {
                return Err(CreateError::BadHostId);
            }
        }
        if let Some((r, room)) = desired_code.and_then(|c| self.find(c)) {
            // Only the creator, who holds the secret host id, gets the room
            // back; anyone else learning it could take the host role.
            if desired_host != Some(room.host_id()) {
                return Err(CreateError::Taken);
            }
            return Ok(Created {
                room: r,
                restored: true,
            });
        }
        let code = match desired_code {
            Some(c) => c.to_owned(),
            None => self.draw_code(rand),
        };
        let host_id = match desired_host {
            Some(h) => h.to_owned(),
            None => format!("host_{}", random_string(HOST_ALPHABET, 8, rand)),
        };
        let host_public_id = draw_public_id(&host_id, rand);
        self.next_gen = self.next_gen.wrapping_add(1);
        let room = Room {
            code: code.clone().into(),
            room_id: uuid_v4(rand).into(),
            host_id: host_id.into(),
            host_public_id: host_public_id.into(),
            owner: None,
            created_at: rfc3339(wall).into(),
            gen: self.next_gen,
            members: Vec::new(),
            document: None,
            epoch: random_string(EPOCH_ALPHABET, 12, rand).into(),
            seq: 0,
            doc_seq: 0,
            log: Log::default(),
            remote: Vec::new(),
            synced: false,
            empty_since: Some(now),
            idle_before: Duration::ZERO,
            expiry_armed: false,
        };
        let key = self.rooms.insert(room);
        self.by_code.insert(code.into(), key);
        let r = RoomRef {
            key: key as u32,
            gen: self.next_gen,
        };
        self.arm_expiry(r, now, fx);
        fx.push(Effect::Persist(r));
        Ok(Created {
            room: r,
            restored: false,
        })
    }

    /// A fresh 6-character room code no room in memory has.
    pub fn draw_code(&self, rand: &mut dyn FnMut(&mut [u8])) -> String {
        loop {
            let c = random_string(CODE_ALPHABET, 6, rand);
            if !self.by_code.contains_key(c.as_str()) {
                return c;
            }
        }
    }

    /// Handles `join`. On failure only the joiner hears about it and nothing
    /// changes.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        conn: ConnRef,
        session: &mut Session,
        room_code: &str,
        peer_id: &str,
        is_host: bool,
        metadata: Option<&RawValue>,
        since: Option<Since<'_>>,
        now: Instant,
        wall: SystemTime,
        fx: &mut Vec<Effect>,
    ) {
        let Some((target, room)) = self.find(room_code) else {
            fx.push(Effect::Send(conn, error_frame("Room not found")));
            return;
        };
        if is_host && peer_id != &*room.host_id {
            fx.push(Effect::Send(
                conn,
                error_frame("Only the room's host may join with is_host"),
            ));
            return;
        }
        if peer_id == &*room.host_public_id {
            fx.push(Effect::Send(
                conn,
                error_frame("This peer_id is reserved for the room's host"),
            ));
            return;
        }
        if metadata.is_some_and(|m| m.get().len() > MAX_METADATA_BYTES) {
            fx.push(Effect::Send(
                conn,
                error_frame("Invalid message format: metadata too large"),
            ));
            return;
        }
        self.leave(conn, session, now, fx);

        let room = &mut self.rooms[target.key as usize];
        // A reconnecting browser: the newer connection wins.
        if let Some(i) = room.members.iter().position(|m| &*m.peer_id == peer_id) {
            let old = room.members.remove(i);
            fx.push(Effect::Send(
                old.conn,
                error_frame("Replaced by a newer connection"),
            ));
            fx.push(Effect::Close(
                old.conn,
                ws::close::NORMAL,
                "Replaced by a newer connection",
            ));
            // Fan-outs are expanded after this call returns, when the
            // joiner is already a member: exclude it explicitly.
            let seq = room.stamp(self.cluster);
            let shown = room.shown(&old.peer_id);
            let frame = peer_left_frame(shown, seq);
            let what = || Published::Left {
                conn: old.conn,
                shown: shown.into(),
            };
            stream(self.cluster, fx, room, target, Some(conn), what, frame);
        }

        let id_json = json_str(peer_id);
        let shown_json = json_str(room.shown(peer_id));
        let peer_json = format!(
            r#"{{"id":{},"joined_at":"{}","is_host":{},"metadata":{}}}"#,
            shown_json,
            rfc3339(wall),
            is_host,
            metadata.map_or("null", |m| m.get())
        );
        let seq = room.stamp(self.cluster);
        let joined_frame = build(|b| {
            b.extend_from_slice(br#"{"type":"peer_joined","peer":"#);
            b.extend_from_slice(peer_json.as_bytes());
            end_seq(b, seq);
        });
        let what = || Published::Joined {
            conn,
            shown: room.shown(peer_id).into(),
            peer_json: peer_json.as_str().into(),
        };
        stream(
            self.cluster,
            fx,
            room,
            target,
            Some(conn),
            what,
            joined_frame,
        );
        room.members.push(Member {
            conn,
            peer_id: peer_id.into(),
            peer_json: peer_json.into(),
            account: None,
        });
        room.idle_before = Duration::ZERO;
        if room.empty_since.take().is_some() {
            // Occupied again: its idle clock stops in the store too.
            fx.push(Effect::Persist(target));
        }

        // Recovery: the same epoch, a position not ahead of the stream,
        // and every `data` event after it still held. Never a partial
        // replay.
        room.log.expire(&mut self.ledger, now);
        let recovered = since
            .as_ref()
            .map(|s| *s.epoch == *room.epoch && s.seq <= room.seq && room.log.covers(s.seq));

        // Everyone else knows the host by its public id; the host itself
        // is told the id it joined with, as before rule 11.
        let (host_shown, peers) = if peer_id == &*room.host_id {
            (&*room.host_id, room.peers_json_for_host(conn))
        } else {
            (&*room.host_public_id, room.peers_json())
        };
        let info = build(|b| {
            b.extend_from_slice(br#"{"type":"room_info","room_code":"#);
            b.extend_from_slice(json_str(&room.code).as_bytes());
            b.extend_from_slice(br#","host_id":"#);
            b.extend_from_slice(json_str(host_shown).as_bytes());
            b.extend_from_slice(br#","peers":"#);
            b.extend_from_slice(peers.as_bytes());
            b.extend_from_slice(br#","epoch":"#);
            b.extend_from_slice(json_str(&room.epoch).as_bytes());
            let _ = write!(b, r#","seq":{}"#, room.seq);
            if let Some(r) = recovered {
                let _ = write!(b, r#","recovered":{r}"#);
            }
            b.push(b'}');
        });
        fx.push(Effect::Send(conn, info));
        let connected = build(|b| {
            b.extend_from_slice(br#"{"type":"connected","peer_id":"#);
            b.extend_from_slice(id_json.as_bytes());
            b.extend_from_slice(br#","room_code":"#);
            b.extend_from_slice(json_str(&room.code).as_bytes());
            b.push(b'}');
        });
        fx.push(Effect::Send(conn, connected));
        let mut prefix = Vec::with_capacity(shown_json.len() + 32);
        prefix.extend_from_slice(br#"{"type":"data","from":"#);
        prefix.extend_from_slice(shown_json.as_bytes());
        prefix.extend_from_slice(br#","data":"#);
        let send_document = match (&since, recovered) {
            (Some(s), Some(true)) => {
                // What this peer sent itself is not sent back.
                for frame in room.log.after(s.seq, &prefix) {
                    fx.push(Effect::Send(conn, frame.clone()));
                }
                room.doc_seq > s.seq
            }
            _ => true,
        };
        if send_document {
            if let Some(doc) = room.snapshot() {
                fx.push(Effect::Send(conn, doc));
            }
        }
        *session = Session {
            room: Some(target),
            is_host,
            data_prefix: prefix.into(),
        };
    }

    /// Handles `broadcast`: every other member gets `data`. `data` must be a
    /// JSON string literal (checked by the decoder).
    pub fn broadcast(
        &mut self,
        conn: ConnRef,
        session: &Session,
        data: &RawValue,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Some(r) = session.room else {
            fx.push(Effect::Send(conn, not_in_room()));
            return;
        };
        let Some(room) = self
            .rooms
            .get_mut(r.key as usize)
            .filter(|room| room.gen == r.gen)
        else {
            fx.push(Effect::Send(conn, not_in_room()));
            return;
        };
        let seq = room.stamp(self.cluster);
        let raw = data.get().as_bytes();
        let mut b = Vec::with_capacity(HEADROOM + session.data_prefix.len() + raw.len() + 28);
        b.resize(HEADROOM, 0);
        b.extend_from_slice(&session.data_prefix);
        b.extend_from_slice(raw);
        end_seq(&mut b, seq);
        let frame = ws::finish_text(b);
        if self.cluster {
            // Held when it comes back numbered.
            let what = || Published::Data;
            stream(true, fx, room, r, Some(conn), what, frame);
            return;
        }
        // The room's log is taken out for the call so that the total bound
        // may borrow the other rooms' logs.
        let mut log = std::mem::take(&mut room.log);
        self.ledger
            .hold(r, &mut log, seq, &frame, now, &mut self.rooms);
        let room = &mut self.rooms[r.key as usize];
        room.log = log;
        fx.push(Effect::Fanout {
            to: room.recipients(Some(conn)),
            frame,
        });
    }

    /// Handles `sync_document` (host only).
    pub fn sync_document(
        &mut self,
        conn: ConnRef,
        session: &Session,
        document: &RawValue,
        fx: &mut Vec<Effect>,
    ) {
        let Some(r) = session.room.filter(|r| self.get(*r).is_some()) else {
            fx.push(Effect::Send(conn, not_in_room()));
            return;
        };
        if !session.is_host {
            fx.push(Effect::Send(
                conn,
                error_frame("Only the host can sync the document"),
            ));
            return;
        }
        let room = &mut self.rooms[r.key as usize];
        let seq = room.stamp(self.cluster);
        if !self.cluster {
            // In cluster mode the number comes with the delivery.
            room.doc_seq = seq;
        }
        // One buffer: the room keeps the numbered event it fans out, and
        // cuts a snapshot (no `seq`) from it when one is first needed.
        let frame = document_frame(document.get(), Some(seq));
        let tail = document_frame_tail(seq);
        room.document = Some(Doc::Event {
            frame: frame.clone(),
            tail,
        });
        fx.push(Effect::Persist(r));
        stream(
            self.cluster,
            fx,
            room,
            r,
            Some(conn),
            || Published::Document,
            frame,
        );
    }

    /// Handles `request_sync`: the stored document, or `""` if none.
    pub fn request_sync(&mut self, conn: ConnRef, session: &Session, fx: &mut Vec<Effect>) {
        let Some(room) = session.room.and_then(|r| {
            self.rooms
                .get_mut(r.key as usize)
                .filter(|room| room.gen == r.gen)
        }) else {
            fx.push(Effect::Send(conn, not_in_room()));
            return;
        };
        let frame = room
            .snapshot()
            .unwrap_or_else(|| document_frame("\"\"", None));
        fx.push(Effect::Send(conn, frame));
    }

    /// Takes the connection out of its room (leave, close, drop, timeout).
    /// The others get `peer_left`. Idempotent.
    pub fn leave(
        &mut self,
        conn: ConnRef,
        session: &mut Session,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Some(r) = session.room.take() else { return };
        session.is_host = false;
        session.data_prefix = Box::default();
        let Some(room) = self
            .rooms
            .get_mut(r.key as usize)
            .filter(|room| room.gen == r.gen)
        else {
            return;
        };
        let Some(i) = room.members.iter().position(|m| m.conn == conn) else {
            return;
        };
        let gone = room.members.remove(i);
        let seq = room.stamp(self.cluster);
        let shown = room.shown(&gone.peer_id);
        let frame = peer_left_frame(shown, seq);
        let what = || Published::Left {
            conn,
            shown: shown.into(),
        };
        stream(self.cluster, fx, room, r, Some(conn), what, frame);
        if room.members.is_empty() && room.remote.is_empty() {
            room.empty_since = Some(now);
            fx.push(Effect::Persist(r));
            self.arm_expiry(r, now, fx);
        }
    }

    /// Puts back a room read from the store, empty for `idle_for` already
    /// (its expiry timer counts from then). Returns the room in memory if
    /// one with that code is there already.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &mut self,
        code: &str,
        room_id: &str,
        host_id: &str,
        host_public_id: Option<&str>,
        owner: Option<&str>,
        created_at: &str,
        document: Option<Frame>,
        idle_for: Duration,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> RoomRef {
        if let Some((r, _)) = self.find(code) {
            return r;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        // A record saved before rooms had a public host id gets one now.
        let host_public_id = match host_public_id {
            Some(p) if p != host_id => p.to_owned(),
            _ => draw_public_id(host_id, &mut crate::util::fill_random),
        };
        let key = self.rooms.insert(Room {
            code: code.into(),
            room_id: room_id.into(),
            host_id: host_id.into(),
            host_public_id: host_public_id.into(),
            owner: owner.map(Into::into),
            created_at: created_at.into(),
            gen: self.next_gen,
            members: Vec::new(),
            document: document.map(Doc::Snapshot),
            // A new incarnation of the stream: positions from before the
            // restart are not replayable (its history was not kept).
            epoch: random_string(EPOCH_ALPHABET, 12, &mut crate::util::fill_random).into(),
            seq: 0,
            doc_seq: 0,
            log: Log::default(),
            remote: Vec::new(),
            synced: false,
            empty_since: Some(now),
            idle_before: idle_for,
            expiry_armed: false,
        });
        self.by_code.insert(code.into(), key);
        let r = RoomRef {
            key: key as u32,
            gen: self.next_gen,
        };
        self.arm_expiry(r, now, fx);
        r
    }

    /// Cluster mode: this node starts following the room's stream at
    /// `(epoch, seq)`, with the presence Redis holds (`(shown id, peer
    /// json)` of every node's peers; this node's own entries are skipped,
    /// its members are local).
    pub fn cluster_start(
        &mut self,
        r: RoomRef,
        epoch: &str,
        seq: u64,
        peers: Vec<(Box<str>, Box<str>)>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Some(room) = self
            .rooms
            .get_mut(r.key as usize)
            .filter(|room| room.gen == r.gen)
        else {
            return;
        };
        room.epoch = epoch.into();
        room.seq = seq;
        room.doc_seq = 0;
        room.log.restart(&mut self.ledger, seq);
        let local: Vec<&str> = room
            .members
            .iter()
            .map(|m| room.shown(&m.peer_id))
            .collect();
        let remote = peers
            .into_iter()
            .filter(|(shown, _)| !local.contains(&&**shown))
            .collect();
        room.remote = remote;
        room.synced = true;
        if !room.remote.is_empty() {
            room.empty_since = None;
        } else if room.members.is_empty() && room.empty_since.is_none() {
            room.empty_since = Some(now);
            self.arm_expiry(r, now, fx);
        }
    }

    /// Cluster mode: the room's order cannot go on without a gap (or this
    /// node cannot follow it): its local members are closed with 1013 so
    /// they re-join, and it is followed again only after a new snapshot.
    /// Their `peer_left` is published as for any leave.
    pub fn cluster_reset(&mut self, code: &str, now: Instant, fx: &mut Vec<Effect>) {
        let Some((r, _)) = self.find(code) else {
            return;
        };
        let room = &mut self.rooms[r.key as usize];
        room.synced = false;
        room.remote.clear();
        for m in std::mem::take(&mut room.members) {
            fx.push(Effect::Close(
                m.conn,
                ws::close::TRY_AGAIN_LATER,
                "Try again later",
            ));
            let shown = room.shown(&m.peer_id);
            let frame = peer_left_frame(shown, 0);
            let what = || Published::Left {
                conn: m.conn,
                shown: shown.into(),
            };
            stream(true, fx, room, r, Some(m.conn), what, frame);
        }
        room.empty_since.get_or_insert(now);
        self.arm_expiry(r, now, fx);
    }

    /// Cluster mode: closes every local member of every room with 1013
    /// without publishing anything (this node's presence in Redis is being
    /// cleared as a whole), and forgets every room's stream position.
    pub fn cluster_reset_all(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let refs: Vec<RoomRef> = self.iter().map(|(r, _)| r).collect();
        for r in refs {
            let room = &mut self.rooms[r.key as usize];
            room.synced = false;
            room.remote.clear();
            for m in std::mem::take(&mut room.members) {
                fx.push(Effect::Close(
                    m.conn,
                    ws::close::TRY_AGAIN_LATER,
                    "Try again later",
                ));
            }
            room.empty_since.get_or_insert(now);
            self.arm_expiry(r, now, fx);
        }
    }

    /// Cluster mode: one numbered event of the room `code` from Redis, in
    /// `seq` order: updates what this node knows of the room (its
    /// position, held history, document, remote peers) and fans the frame
    /// out to the local members.
    pub fn deliver(
        &mut self,
        code: &str,
        seq: u64,
        d: Delivery<'_>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Some((r, _)) = self.find(code) else {
            return;
        };
        let room = &mut self.rooms[r.key as usize];
        if !room.synced {
            return;
        }
        room.seq = seq;
        let mut b = Vec::with_capacity(HEADROOM + d.body.len() + 28);
        b.resize(HEADROOM, 0);
        b.extend_from_slice(d.body);
        end_seq(&mut b, seq);
        let frame = ws::finish_text(b);
        let mut except = if d.mine { d.except } else { None };
        match d.kind {
            b'd' => {
                let mut log = std::mem::take(&mut room.log);
                self.ledger
                    .hold(r, &mut log, seq, &frame, now, &mut self.rooms);
                self.rooms[r.key as usize].log = log;
            }
            b's' => {
                room.doc_seq = seq;
                if !d.mine {
                    // The delivered event is the stored document too (one
                    // buffer; a snapshot is cut from it when needed).
                    room.document = Some(Doc::Event {
                        frame: frame.clone(),
                        tail: document_frame_tail(seq),
                    });
                }
            }
            b'j' => {
                if !d.mine {
                    let prefix = br#"{"type":"peer_joined","peer":"#;
                    let json = d.body.get(prefix.len()..).unwrap_or_default();
                    room.remote.retain(|(s, _)| **s != *d.from);
                    room.remote.push((
                        d.from.into(),
                        String::from_utf8_lossy(json).into_owned().into(),
                    ));
                    room.empty_since = None;
                }
            }
            b'l' | b'r' => {
                room.remote.retain(|(s, _)| **s != *d.from);
                // This node's own member, replaced on another node, or
                // removed from Redis while this node could not refresh its
                // presence: it must not linger here unseen by the others.
                let gone = if d.kind == b'r' {
                    d.mine
                        .then_some(d.except)
                        .flatten()
                        .and_then(|c| room.members.iter().position(|m| m.conn == c))
                } else if d.mine && d.except.is_none() {
                    room.members
                        .iter()
                        .position(|m| room.shown(&m.peer_id) == d.from)
                } else {
                    None
                };
                if let Some(i) = gone {
                    let m = room.members.remove(i);
                    except = Some(m.conn);
                    if d.kind == b'r' {
                        fx.push(Effect::Send(
                            m.conn,
                            error_frame("Replaced by a newer connection"),
                        ));
                        fx.push(Effect::Close(
                            m.conn,
                            ws::close::NORMAL,
                            "Replaced by a newer connection",
                        ));
                    } else {
                        fx.push(Effect::Close(
                            m.conn,
                            ws::close::TRY_AGAIN_LATER,
                            "Try again later",
                        ));
                    }
                }
                if room.members.is_empty() && room.remote.is_empty() && room.empty_since.is_none() {
                    room.empty_since = Some(now);
                    fx.push(Effect::Persist(r));
                    self.arm_expiry(r, now, fx);
                }
            }
            _ => return,
        }
        fx.push(Effect::Fanout {
            to: self.rooms[r.key as usize].recipients(except),
            frame,
        });
    }

    /// Asks the shell for an expiry timer at `since + idle_timeout` unless
    /// one is pending already (it fires no later and re-arms).
    fn arm_expiry(&mut self, r: RoomRef, since: Instant, fx: &mut Vec<Effect>) {
        // A timeout too long for an `Instant` (a huge
        // ROOM_IDLE_TIMEOUT_SECONDS) means never: `now + t` would panic.
        let Some(room) = self.rooms.get_mut(r.key as usize) else {
            return;
        };
        let Some(at) = self
            .idle_timeout
            .and_then(|t| since.checked_add(t.saturating_sub(room.idle_before)))
        else {
            return;
        };
        if !room.expiry_armed {
            room.expiry_armed = true;
            fx.push(Effect::ExpireAt(r, at));
        }
    }

    /// Removes the room if it has been empty for the whole idle timeout.
    /// Returns whether it was removed.
    ///
    /// This is the room's one pending timer firing: if the room emptied
    /// again after that timer was armed, a new one is asked for (strictly
    /// later than `now`) through `fx`.
    pub fn expire(&mut self, r: RoomRef, now: Instant, fx: &mut Vec<Effect>) -> bool {
        let Some(timeout) = self.idle_timeout else {
            return false;
        };
        let Some(room) = self
            .rooms
            .get_mut(r.key as usize)
            .filter(|room| room.gen == r.gen)
        else {
            return false;
        };
        room.expiry_armed = false;
        let empty = room.members.is_empty() && room.remote.is_empty();
        let Some(since) = room.empty_since.filter(|_| empty) else {
            // Occupied: the next leave that empties it arms a timer.
            return false;
        };
        match since.checked_add(timeout.saturating_sub(room.idle_before)) {
            Some(at) if now >= at => {
                let mut room = self.rooms.remove(r.key as usize);
                room.log.clear(&mut self.ledger);
                self.by_code.remove(&room.code);
                true
            }
            Some(_) => {
                self.arm_expiry(r, since, fx);
                false
            }
            None => false,
        }
    }
}

/// `^[A-Za-z0-9_-]{1,64}$`
pub fn valid_room_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A public host id: `host_` and 8 random characters, never the secret.
fn draw_public_id(host_id: &str, rand: &mut dyn FnMut(&mut [u8])) -> String {
    loop {
        let id = format!("host_{}", random_string(HOST_ALPHABET, 8, rand));
        if id != host_id {
            break id;
        }
    }
}

/// Builds a text frame whose payload `f` writes after the header room.
fn build(f: impl FnOnce(&mut Vec<u8>)) -> Frame {
    let mut b = Vec::with_capacity(128);
    b.resize(HEADROOM, 0);
    f(&mut b);
    ws::finish_text(b)
}

/// Closes a stream event's JSON object with its number.
/// A stream event: fanned out at once, or in cluster mode published
/// (`what` is built only then: a single node pays nothing for it).
fn stream(
    cluster: bool,
    fx: &mut Vec<Effect>,
    members: &Room,
    room: RoomRef,
    except: Option<ConnRef>,
    what: impl FnOnce() -> Published,
    frame: Frame,
) {
    if cluster {
        fx.push(Effect::Publish {
            room,
            except,
            what: what(),
            frame,
        });
    } else {
        fx.push(Effect::Fanout {
            to: members.recipients(except),
            frame,
        });
    }
}

/// The closing bytes of an event frame built in cluster mode, replaced by
/// the real number on delivery.
pub const SEQ_PLACEHOLDER: &[u8] = br#","seq":0}"#;

fn end_seq(b: &mut Vec<u8>, seq: u64) {
    let _ = write!(b, r#","seq":{seq}}}"#);
}

/// The length of what [`end_seq`] writes.
fn document_frame_tail(seq: u64) -> usize {
    let digits = seq.checked_ilog10().unwrap_or(0) as usize + 1;
    r#","seq":}"#.len() + digits
}

/// The length of the stored `document_sync` snapshot frame for a document
/// whose raw JSON string is `raw_len` bytes.
pub fn document_frame_len(raw_len: usize) -> usize {
    let payload = DOCUMENT_PREFIX.len() + raw_len + 1;
    let header = match payload {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    header + payload
}

const DOCUMENT_PREFIX: &[u8] = br#"{"type":"document_sync","document":"#;

/// `document_sync`: numbered when it is the stream event, plain when it is
/// a snapshot.
fn document_frame(raw: &str, seq: Option<u64>) -> Frame {
    let mut b = Vec::with_capacity(HEADROOM + raw.len() + 64);
    b.resize(HEADROOM, 0);
    b.extend_from_slice(DOCUMENT_PREFIX);
    b.extend_from_slice(raw.as_bytes());
    match seq {
        Some(seq) => end_seq(&mut b, seq),
        None => b.push(b'}'),
    }
    ws::finish_text(b)
}

/// A snapshot `document_sync` frame (no `seq`) around a document's raw JSON
/// text, as the room holds it.
pub fn document_frame_bytes(raw: &[u8]) -> Frame {
    let mut b = Vec::with_capacity(HEADROOM + raw.len() + DOCUMENT_PREFIX.len() + 1);
    b.resize(HEADROOM, 0);
    b.extend_from_slice(DOCUMENT_PREFIX);
    b.extend_from_slice(raw);
    b.push(b'}');
    ws::finish_text(b)
}

fn peer_left_frame(peer_id: &str, seq: u64) -> Frame {
    build(|b| {
        b.extend_from_slice(br#"{"type":"peer_left","peer_id":"#);
        b.extend_from_slice(json_str(peer_id).as_bytes());
        end_seq(b, seq);
    })
}

/// `{"type":"error","message":...}`
pub fn error_frame(message: &str) -> Frame {
    build(|b| {
        b.extend_from_slice(br#"{"type":"error","message":"#);
        b.extend_from_slice(json_str(message).as_bytes());
        b.push(b'}');
    })
}

fn not_in_room() -> Frame {
    error_frame("Not in a room")
}

/// `{"type":"pong"}`, shared by every connection.
pub fn pong_frame() -> Frame {
    Frame::from_static(b"\x81\x0f{\"type\":\"pong\"}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: u32) -> ConnRef {
        ConnRef { key, gen: 1 }
    }

    fn rand(b: &mut [u8]) {
        crate::util::fill_random(b)
    }

    /// A room plus helpers that render effects as readable strings.
    struct World {
        rooms: Rooms,
        sessions: HashMap<ConnRef, Session>,
        now: Instant,
    }

    fn payload(f: &Frame) -> String {
        let n = match f[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        String::from_utf8(f[n..].to_vec()).unwrap()
    }

    impl World {
        fn new() -> World {
            World {
                rooms: Rooms::new(Some(Duration::from_secs(2))),
                sessions: HashMap::new(),
                now: Instant::now(),
            }
        }
        fn create(&mut self, code: &str, host: &str) {
            let mut fx = Vec::new();
            self.rooms
                .create(
                    Some(code),
                    Some(host),
                    self.now,
                    SystemTime::now(),
                    &mut rand,
                    &mut fx,
                )
                .unwrap();
        }
        /// Renders effects as `to:payload` lines, expanding fan-outs.
        fn render(&mut self, fx: Vec<Effect>) -> Vec<String> {
            let mut out = Vec::new();
            for e in fx {
                match e {
                    Effect::Send(to, f) => out.push(format!("{}:{}", to.key, payload(&f))),
                    Effect::Fanout { to, frame } => {
                        for m in to {
                            out.push(format!("{}:{}", m.key, payload(&frame)));
                        }
                    }
                    Effect::Close(to, code, _) => {
                        self.sessions.remove(&to);
                        out.push(format!("{}:close {code}", to.key))
                    }
                    Effect::ExpireAt(..) => out.push("-:expire".into()),
                    Effect::Persist(..) => {}
                    Effect::Publish { frame, .. } => {
                        out.push(format!("publish:{}", payload(&frame)))
                    }
                }
            }
            out
        }
        fn join(&mut self, conn: ConnRef, code: &str, peer: &str, host: bool) -> Vec<String> {
            let mut fx = Vec::new();
            let mut s = self.sessions.remove(&conn).unwrap_or_default();
            self.rooms.join(
                conn,
                &mut s,
                code,
                peer,
                host,
                None,
                None,
                self.now,
                SystemTime::now(),
                &mut fx,
            );
            self.sessions.insert(conn, s);
            self.render(fx)
        }
        fn say(&mut self, conn: ConnRef, data: &str) -> Vec<String> {
            let mut fx = Vec::new();
            let raw = RawValue::from_string(json_str(data)).unwrap();
            let s = self.sessions.remove(&conn).unwrap_or_default();
            self.rooms.broadcast(conn, &s, &raw, self.now, &mut fx);
            self.sessions.insert(conn, s);
            self.render(fx)
        }
        fn leave(&mut self, conn: ConnRef) -> Vec<String> {
            let mut fx = Vec::new();
            let mut s = self.sessions.remove(&conn).unwrap_or_default();
            self.rooms.leave(conn, &mut s, self.now, &mut fx);
            self.render(fx)
        }
    }

    fn kinds(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                let (to, body) = l.split_once(':').unwrap();
                let t = body
                    .split("\"type\":\"")
                    .nth(1)
                    .map(|r| r.split('"').next().unwrap().to_string())
                    .unwrap_or_else(|| body.to_string());
                format!("{to}:{t}")
            })
            .collect()
    }

    /// Cluster mode: events are published, not fanned out; what comes back
    /// numbered is delivered to the local members, and peers of other nodes
    /// are part of the room.
    #[test]
    fn cluster_mode_publishes_and_delivers_what_comes_back() {
        let mut w = World::new();
        w.rooms.set_cluster(true);
        w.create("R1", "h");
        let out = w.join(c(1), "R1", "p1", false);
        assert_eq!(
            kinds(&out),
            ["publish:peer_joined", "1:room_info", "1:connected"]
        );
        assert!(out[0].ends_with(r#","seq":0}"#), "{}", out[0]);
        let (r, _) = w.rooms.find("R1").unwrap();
        let mut fx = Vec::new();
        w.rooms.cluster_start(
            r,
            "ep",
            7,
            vec![(
                "far".into(),
                r#"{"id":"far","joined_at":"x","is_host":false,"metadata":null}"#.into(),
            )],
            w.now,
            &mut fx,
        );
        assert!(w.rooms.get(r).unwrap().synced());
        assert_eq!(w.rooms.get(r).unwrap().peer_count(), 2);
        // A broadcast is published only; the sender's own copy comes back
        // from Redis and is not delivered to it.
        assert_eq!(kinds(&w.say(c(1), "hi")), ["publish:data"]);
        let deliver = |w: &mut World, seq, d: Delivery<'_>| {
            let mut fx = Vec::new();
            w.rooms.deliver("R1", seq, d, w.now, &mut fx);
            w.render(fx)
        };
        let body = br#"{"type":"data","from":"p1","data":"hi""#;
        let mine = Delivery {
            kind: b'd',
            mine: true,
            except: Some(c(1)),
            from: "p1",
            body,
        };
        assert!(deliver(&mut w, 8, mine).is_empty());
        // Another node's peer speaks: delivered with its number.
        let body = br#"{"type":"data","from":"far","data":"yo""#;
        let theirs = Delivery {
            kind: b'd',
            mine: false,
            except: Some(c(1)),
            from: "far",
            body,
        };
        assert_eq!(
            deliver(&mut w, 9, theirs),
            [r#"1:{"type":"data","from":"far","data":"yo","seq":9}"#]
        );
        // It leaves: gone from the room's peers.
        let body = br#"{"type":"peer_left","peer_id":"far""#;
        let left = Delivery {
            kind: b'l',
            mine: false,
            except: None,
            from: "far",
            body,
        };
        assert_eq!(kinds(&deliver(&mut w, 10, left)), ["1:peer_left"]);
        assert_eq!(w.rooms.get(r).unwrap().peer_count(), 1);
        assert_eq!(w.rooms.get(r).unwrap().seq(), 10);
        // The same peer id joined on another node: the local one is closed.
        let body = br#"{"type":"peer_left","peer_id":"p1""#;
        let replaced = Delivery {
            kind: b'r',
            mine: true,
            except: Some(c(1)),
            from: "p1",
            body,
        };
        assert_eq!(
            kinds(&deliver(&mut w, 11, replaced)),
            ["1:error", "1:close 1000"]
        );
        assert_eq!(w.rooms.get(r).unwrap().peer_count(), 0);
        // A gap that cannot be filled: members re-join (1013).
        w.join(c(2), "R1", "p2", false);
        let mut fx = Vec::new();
        w.rooms.cluster_reset("R1", w.now, &mut fx);
        let out = w.render(fx);
        assert_eq!(kinds(&out), ["2:close 1013", "publish:peer_left"]);
        assert!(!w.rooms.get(r).unwrap().synced());
    }

    #[test]
    fn join_order_and_replies() {
        let mut w = World::new();
        w.create("R1", "h");
        assert_eq!(
            kinds(&w.join(c(1), "R1", "h", true)),
            ["1:room_info", "1:connected"]
        );
        let out = w.join(c(2), "R1", "p2", false);
        assert_eq!(kinds(&out), ["1:peer_joined", "2:room_info", "2:connected"]);
        // The host is listed under its public id (rule 11).
        let public = w.rooms.find("R1").unwrap().1.host_public_id().to_string();
        assert!(out[1].contains(&format!(r#""peers":[{{"id":"{public}""#)));
        assert!(out[1].contains(r#"{"id":"p2""#));
        assert!(out[2].contains(r#""peer_id":"p2","room_code":"R1""#));
    }

    #[test]
    fn unknown_room_and_false_host() {
        let mut w = World::new();
        w.create("R1", "h");
        assert_eq!(
            w.join(c(1), "nope", "p", false),
            [r#"1:{"type":"error","message":"Room not found"}"#]
        );
        assert_eq!(kinds(&w.join(c(1), "R1", "p", true)), ["1:error"]);
        assert!(!w.sessions[&c(1)].in_room());
    }

    #[test]
    fn the_host_is_shown_by_its_public_id_only() {
        let mut w = World::new();
        w.create("R1", "secret-h");
        let public = w.rooms.find("R1").unwrap().1.host_public_id().to_string();
        w.join(c(2), "R1", "p2", false);
        let out = w.join(c(1), "R1", "secret-h", true);
        // Its own `room_info` and `connected` name the secret (the host may
        // see its own id); nothing anyone else gets does.
        assert_eq!(kinds(&out), ["2:peer_joined", "1:room_info", "1:connected"]);
        assert!(
            out[0].contains(&format!(r#""id":"{public}""#)),
            "{}",
            out[0]
        );
        let info: serde_json::Value = serde_json::from_str(&out[1][2..]).unwrap();
        assert_eq!(info["host_id"], "secret-h");
        let ids: Vec<_> = info["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["p2", "secret-h"]);
        assert_eq!(info["peers"][1]["is_host"], true);
        assert!(out[2].contains(r#""peer_id":"secret-h""#));
        let out = w.say(c(1), "x");
        assert_eq!(
            out,
            [format!(
                r#"2:{{"type":"data","from":"{public}","data":"x","seq":3}}"#
            )]
        );
        let out = w.join(c(3), "R1", "p3", false);
        assert!(out.iter().all(|l| !l.contains("secret-h")), "{out:?}");
        assert_eq!(
            w.rooms
                .find("R1")
                .unwrap()
                .1
                .peers_json()
                .matches(&*public)
                .count(),
            1
        );
        // Joining under the public id would impersonate the host.
        let out = w.join(c(4), "R1", &public, false);
        assert_eq!(kinds(&out), ["4:error"]);
        assert!(out[0].contains("reserved"));
        let out = w.leave(c(1));
        assert_eq!(
            out[0],
            format!(r#"2:{{"type":"peer_left","peer_id":"{public}","seq":5}}"#)
        );
        assert!(out.iter().all(|l| !l.contains("secret-h")), "{out:?}");
    }

    #[test]
    fn broadcast_reaches_others_in_join_order() {
        let mut w = World::new();
        w.create("R1", "h");
        for i in 1..=4 {
            w.join(c(i), "R1", &format!("p{i}"), false);
        }
        let out = w.say(c(2), "hi");
        assert_eq!(
            out,
            [
                // Four joins were events 1-4.
                r#"1:{"type":"data","from":"p2","data":"hi","seq":5}"#,
                r#"3:{"type":"data","from":"p2","data":"hi","seq":5}"#,
                r#"4:{"type":"data","from":"p2","data":"hi","seq":5}"#,
            ]
        );
    }

    #[test]
    fn not_in_room_errors() {
        let mut w = World::new();
        assert_eq!(kinds(&w.say(c(9), "x")), ["9:error"]);
        let mut fx = Vec::new();
        w.rooms.request_sync(c(9), &Session::default(), &mut fx);
        assert!(payload(match &fx[0] {
            Effect::Send(_, f) => f,
            _ => panic!(),
        })
        .contains("Not in a room"));
    }

    #[test]
    fn document_is_host_only_and_replayed_to_joiners() {
        let mut w = World::new();
        w.create("R1", "h");
        w.join(c(1), "R1", "h", true);
        w.join(c(2), "R1", "p", false);
        let doc = RawValue::from_string("\"DOC\"".into()).unwrap();
        let mut fx = Vec::new();
        w.rooms
            .sync_document(c(2), &w.sessions[&c(2)], &doc, &mut fx);
        assert_eq!(kinds(&w.render(fx)), ["2:error"]);
        let mut fx = Vec::new();
        w.rooms
            .sync_document(c(1), &w.sessions[&c(1)], &doc, &mut fx);
        assert_eq!(
            w.render(fx),
            [r#"2:{"type":"document_sync","document":"DOC","seq":3}"#]
        );
        let (_, room) = w.rooms.find("R1").unwrap();
        assert_eq!(room.document_frame_len(), document_frame_len(5));
        for n in [0, 88, 89, 90, 200, 65_498, 65_499, 70_000] {
            let raw = format!("\"{}\"", "x".repeat(n));
            assert_eq!(
                document_frame(&raw, None).len(),
                document_frame_len(raw.len())
            );
        }
        let out = w.join(c(3), "R1", "q", false);
        assert_eq!(
            kinds(&out),
            [
                "1:peer_joined",
                "2:peer_joined",
                "3:room_info",
                "3:connected",
                "3:document_sync"
            ]
        );
    }

    #[test]
    fn moving_rooms_and_replacement() {
        let mut w = World::new();
        w.create("A", "ha");
        w.create("B", "hb");
        w.join(c(1), "A", "x", false);
        w.join(c(2), "A", "y", false);
        w.join(c(3), "B", "z", false);
        let out = w.join(c(2), "B", "y", false);
        assert_eq!(
            kinds(&out),
            ["1:peer_left", "3:peer_joined", "2:room_info", "2:connected"]
        );
        // Same peer id from a new connection replaces the old one.
        let out = w.join(c(4), "B", "y", false);
        assert_eq!(
            kinds(&out),
            [
                "2:error",
                "2:close 1000",
                "3:peer_left",
                "3:peer_joined",
                "4:room_info",
                "4:connected"
            ]
        );
        assert!(out[0].contains("Replaced by a newer connection"));
        assert_eq!(w.rooms.find("B").unwrap().1.peer_count(), 2);
    }

    #[test]
    fn empty_room_expires_after_timeout_only() {
        let mut w = World::new(); // idle timeout 2 s
        let t0 = w.now;
        let secs = |n: u64| t0 + Duration::from_secs(n);
        let mut fx = Vec::new();
        w.create("R1", "h"); // empty from t0: its one timer is due at t0 + 2
        let (r, _) = w.rooms.find("R1").unwrap();
        w.join(c(1), "R1", "h", true);
        // Emptied at t0 + 1 while the first timer is pending: no second one.
        w.now = secs(1);
        assert!(!kinds(&w.leave(c(1))).contains(&"-:expire".to_string()));
        // The first timer fires at t0 + 2, too early now: it re-arms for
        // t0 + 3, strictly later.
        assert!(!w.rooms.expire(r, secs(2), &mut fx));
        assert!(matches!(fx.as_slice(), [Effect::ExpireAt(x, at)] if *x == r && *at == secs(3)));
        fx.clear();
        // A join in between keeps it: the timer then ends without a new one.
        w.join(c(2), "R1", "p", false);
        assert!(!w.rooms.expire(r, secs(3), &mut fx));
        assert!(fx.is_empty());
        // Emptied again at t0 + 4: a fresh timer, due at t0 + 6.
        w.now = secs(4);
        assert_eq!(kinds(&w.leave(c(2))), ["-:expire"]);
        assert!(!w.rooms.expire(r, secs(5), &mut fx));
        fx.clear();
        assert!(w.rooms.expire(r, secs(6), &mut fx));
        assert!(w.rooms.find("R1").is_none());
        assert_eq!(w.rooms.len(), 0);
    }

    #[test]
    fn a_lone_member_rejoining_in_a_loop_arms_one_timer() {
        let mut w = World::new();
        w.create("R1", "h");
        w.join(c(1), "R1", "p", false);
        let mut expiries = 0;
        for _ in 0..1000 {
            let out = w.join(c(1), "R1", "p", false);
            expiries += out.iter().filter(|l| *l == "-:expire").count();
        }
        assert_eq!(expiries, 0, "the creation's timer is still pending");
    }

    #[test]
    fn the_stored_document_shares_the_rooms_frame() {
        let mut w = World::new();
        w.create("R1", "h");
        w.join(c(1), "R1", "h", true);
        let big = format!("\"{}\"", "x".repeat(70_000)); // a 64-bit length header
        for doc in ["\"DOC\"", big.as_str()] {
            let raw = RawValue::from_string(doc.into()).unwrap();
            let mut fx = Vec::new();
            w.rooms
                .sync_document(c(1), &w.sessions[&c(1)], &raw, &mut fx);
            assert!(fx.iter().any(|e| matches!(e, Effect::Persist(_))));
            let room = w.rooms.find("R1").unwrap().1;
            let got = room.document_raw().unwrap();
            assert_eq!(&got[..], doc.as_bytes());
            let frame = match room.document.as_ref().unwrap() {
                Doc::Event { frame, .. } | Doc::Snapshot(frame) => frame,
            };
            let inside = frame.as_ptr_range();
            assert!(inside.contains(&got.as_ptr()), "a slice, not a copy");
            // The fan-out and the room share that one buffer.
            let fanned = fx.iter().find_map(|e| match e {
                Effect::Fanout { frame, .. } => Some(frame.clone()),
                _ => None,
            });
            assert_eq!(fanned.unwrap().as_ptr(), frame.as_ptr());
        }
        // A joiner gets a snapshot cut from it (no seq), and from then on
        // the room holds the snapshot alone.
        let out = w.join(c(2), "R1", "p", false);
        assert!(out
            .last()
            .unwrap()
            .starts_with(r#"2:{"type":"document_sync","document":"xx"#));
        assert!(!out.last().unwrap().contains(r#""seq""#));
        let room = w.rooms.find("R1").unwrap().1;
        assert!(matches!(room.document, Some(Doc::Snapshot(_))));
        assert_eq!(room.document_raw().unwrap().len(), big.len());
        assert_eq!(room.document_frame_len(), document_frame_len(big.len()));
    }

    #[test]
    fn a_restored_room_keeps_its_idle_time() {
        let mut r = Rooms::new(Some(Duration::from_secs(60)));
        let now = Instant::now();
        let mut fx = Vec::new();
        let doc = document_frame("\"D\"", None);
        let rr = r.restore(
            "R1",
            "id",
            "host",
            Some("host_public1"),
            Some("user1"),
            "2026-01-01T00:00:00.000Z",
            Some(doc),
            Duration::from_secs(50),
            now,
            &mut fx,
        );
        // Empty for 50 of its 60 s: gone 10 s later, however young the
        // monotonic clock is.
        assert!(matches!(fx.as_slice(), [Effect::ExpireAt(x, at)]
            if *x == rr && *at == now + Duration::from_secs(10)));
        let room = r.get(rr).unwrap();
        assert_eq!(room.idle_for(now), Some(Duration::from_secs(50)));
        assert_eq!(room.host_id(), "host");
        assert_eq!(room.host_public_id(), "host_public1");
        assert_eq!(room.owner(), Some("user1"));
        assert_eq!(&room.document_raw().unwrap()[..], b"\"D\"");
        fx.clear();
        assert!(!r.expire(rr, now + Duration::from_secs(9), &mut fx));
        fx.clear();
        assert!(r.expire(rr, now + Duration::from_secs(10), &mut fx));
        assert!(r.find("R1").is_none());
    }

    #[test]
    fn create_restores_existing_and_validates() {
        let mut r = Rooms::new(None);
        let mut fx = Vec::new();
        let now = Instant::now();
        let a = r
            .create(None, None, now, SystemTime::now(), &mut rand, &mut fx)
            .unwrap();
        let room = r.get(a.room).unwrap();
        assert_eq!(room.code().len(), 6);
        assert!(room.code().bytes().all(|b| CODE_ALPHABET.contains(&b)));
        assert!(room.host_id().starts_with("host_") && room.host_id().len() == 13);
        assert!(room.host_public_id().starts_with("host_"));
        assert_ne!(room.host_public_id(), room.host_id());
        let code = room.code().to_string();
        let host = room.host_id().to_string();
        let public = room.host_public_id().to_string();
        // Only the secret host id restores the room.
        for other in [Some("other"), None, Some(public.as_str())] {
            assert_eq!(
                r.create(
                    Some(&code),
                    other,
                    now,
                    SystemTime::now(),
                    &mut rand,
                    &mut fx,
                )
                .err(),
                Some(CreateError::Taken)
            );
        }
        let b = r
            .create(
                Some(&code),
                Some(&host),
                now,
                SystemTime::now(),
                &mut rand,
                &mut fx,
            )
            .unwrap();
        assert!(b.restored);
        assert_eq!(b.room, a.room);
        assert_eq!(
            r.create(
                Some("bad code"),
                None,
                now,
                SystemTime::now(),
                &mut rand,
                &mut fx
            )
            .err(),
            Some(CreateError::BadRoomCode)
        );
        assert_eq!(
            r.create(None, Some(""), now, SystemTime::now(), &mut rand, &mut fx)
                .err(),
            Some(CreateError::BadHostId)
        );
        assert!(
            fx.iter().all(|e| matches!(e, Effect::Persist(_))),
            "no idle timeout, no expiry"
        );
    }

    impl World {
        fn join_since(
            &mut self,
            conn: ConnRef,
            code: &str,
            peer: &str,
            since: Option<(&str, u64)>,
        ) -> Vec<String> {
            let mut fx = Vec::new();
            let mut s = self.sessions.remove(&conn).unwrap_or_default();
            let since = since.map(|(epoch, seq)| Since {
                epoch: epoch.into(),
                seq,
            });
            self.rooms.join(
                conn,
                &mut s,
                code,
                peer,
                false,
                None,
                since,
                self.now,
                SystemTime::now(),
                &mut fx,
            );
            self.sessions.insert(conn, s);
            self.render(fx)
        }
        fn sync(&mut self, conn: ConnRef, doc: &str) -> Vec<String> {
            let mut fx = Vec::new();
            let raw = RawValue::from_string(json_str(doc)).unwrap();
            let s = self.sessions.remove(&conn).unwrap_or_default();
            self.rooms.sync_document(conn, &s, &raw, &mut fx);
            self.sessions.insert(conn, s);
            self.render(fx)
        }
        fn position(&self, code: &str) -> (String, u64) {
            let (_, room) = self.rooms.find(code).unwrap();
            (room.epoch().to_owned(), room.seq())
        }
    }

    fn field(line: &str, key: &str) -> serde_json::Value {
        let json = &line[line.find(':').unwrap() + 1..];
        serde_json::from_str::<serde_json::Value>(json).unwrap()[key].clone()
    }

    #[test]
    fn reconnect_replays_missed_data_then_the_changed_document() {
        let mut w = World::new();
        w.create("R1", "h");
        w.join(c(1), "R1", "h", true);
        w.join(c(2), "R1", "p", false);
        let (epoch, seen) = w.position("R1");
        w.leave(c(2));
        w.say(c(1), "one");
        w.sync(c(1), "DOC");
        w.say(c(1), "two");
        let out = w.join_since(c(3), "R1", "p", Some((&epoch, seen)));
        assert_eq!(
            kinds(&out),
            [
                "1:peer_joined",
                "3:room_info",
                "3:connected",
                "3:data",
                "3:data",
                "3:document_sync"
            ]
        );
        assert_eq!(field(&out[1], "recovered"), true);
        assert_eq!(field(&out[1], "seq"), 7);
        assert_eq!(field(&out[3], "data"), "one");
        assert_eq!(field(&out[3], "seq"), 4);
        assert_eq!(field(&out[4], "data"), "two");
        assert_eq!(field(&out[4], "seq"), 6);
        // The current document, once, as a snapshot.
        assert_eq!(field(&out[5], "document"), "DOC");
        assert_eq!(field(&out[5], "seq"), serde_json::Value::Null);
    }

    #[test]
    fn reconnect_without_a_document_change_gets_no_document() {
        let mut w = World::new();
        w.create("R1", "h");
        w.join(c(1), "R1", "h", true);
        w.sync(c(1), "DOC");
        w.join(c(2), "R1", "p", false);
        let (epoch, seen) = w.position("R1");
        w.leave(c(2));
        w.say(c(1), "one");
        let out = w.join_since(c(3), "R1", "p", Some((&epoch, seen)));
        assert_eq!(
            kinds(&out),
            ["1:peer_joined", "3:room_info", "3:connected", "3:data"]
        );
        // Nothing missed: recovered, nothing replayed, no document.
        w.leave(c(3));
        let (epoch, seen) = w.position("R1");
        let out = w.join_since(c(4), "R1", "p", Some((&epoch, seen)));
        assert_eq!(kinds(&out), ["1:peer_joined", "4:room_info", "4:connected"]);
        assert_eq!(field(&out[1], "recovered"), true);
    }

    #[test]
    fn unrecoverable_positions_get_a_normal_join() {
        let mut w = World::new();
        w.rooms.set_history_limits(history::Limits {
            per_room: 2,
            ..history::Limits::default()
        });
        w.create("R1", "h");
        w.join(c(1), "R1", "h", true);
        w.sync(c(1), "DOC");
        let (epoch, seen) = w.position("R1");
        for i in 0..3 {
            w.say(c(1), &format!("m{i}"));
        }
        let normal = [
            "1:peer_joined",
            "2:room_info",
            "2:connected",
            "2:document_sync",
        ];
        for since in [
            (epoch.as_str(), seen),    // too old: m0 fell out
            ("other-epoch", seen + 3), // another incarnation
            (epoch.as_str(), 99),      // ahead of the stream
        ] {
            let out = w.join_since(c(2), "R1", "p", Some(since));
            assert_eq!(kinds(&out), normal, "{since:?}");
            assert_eq!(field(&out[1], "recovered"), false, "{since:?}");
            w.leave(c(2));
        }
        // A position the two held events cover is recovered.
        let out = w.join_since(c(2), "R1", "p", Some((&epoch, seen + 1)));
        assert_eq!(field(&out[1], "recovered"), true);
        assert_eq!(kinds(&out)[3..], ["2:data", "2:data"]);
    }

    #[test]
    fn a_peer_does_not_get_its_own_data_back_in_a_replay() {
        let mut w = World::new();
        w.create("R1", "h");
        w.join(c(1), "R1", "h", true);
        w.join(c(2), "R1", "p", false);
        let (epoch, seen) = w.position("R1");
        w.say(c(2), "mine");
        w.say(c(1), "theirs");
        w.leave(c(2));
        let out = w.join_since(c(3), "R1", "p", Some((&epoch, seen)));
        let data: Vec<_> = out
            .iter()
            .filter(|l| l.starts_with("3:") && field(l, "type") == "data")
            .map(|l| field(l, "data"))
            .collect();
        assert_eq!(data, ["theirs"]);
    }

    #[test]
    fn history_memory_is_released_with_the_room() {
        let mut w = World::new();
        w.create("R1", "h");
        w.join(c(1), "R1", "h", true);
        w.join(c(2), "R1", "p", false);
        w.say(c(1), "x");
        assert_eq!(w.rooms.history_usage().1, 1);
        w.leave(c(1));
        w.leave(c(2));
        let (r, _) = w.rooms.find("R1").unwrap();
        w.now += Duration::from_secs(3);
        assert!(w.rooms.expire(r, w.now, &mut Vec::new()));
        assert_eq!(w.rooms.history_usage(), (0, 0));
    }
}
