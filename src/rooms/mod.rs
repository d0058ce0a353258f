//! Sans-io room state: who is in which room, in what order, and what each
//! event makes the server send.
//!
//! Rooms live in a slab with a map from room code to key. Functions take the
//! acting connection, its [`Session`] (owned by the engine) and `now`, and
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
//! * An empty room carries `empty_since`; the engine holds at most one timer
//!   per room (re-armed later when the room emptied again meanwhile) for
//!   `empty_since + idle_timeout` (less `idle_before`, the idle time a room
//!   read back from the store brought along) and calls [`Rooms::expire`]
//!   when it fires.
//! * Every change to what the room store keeps (creation, document, the
//!   room emptying or filling) emits [`Effect::Persist`].

mod cluster;
pub mod history;
mod room;

pub use room::Room;
use room::{Doc, Identity, Member};

use self::history::{Ledger, Log, Logs};
use crate::protocol::out::*;
use crate::protocol::{Since, MAX_METADATA_BYTES};
use crate::util::{json_str, random_string, rfc3339, uuid_v4};
use crate::ws::{self, Frame};
use serde_json::value::RawValue;
use slab::Slab;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

pub use crate::refs::{ConnRef, RoomRef};

/// Per-connection room state, kept by the engine in the connection.
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

/// What the engine must do after a room operation.
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
        let member = live_room(&mut self.rooms, r)
            .and_then(|room| room.members.iter_mut().find(|m| m.conn == conn));
        if let Some(m) = member {
            m.account = Some(account.into());
        }
    }

    /// Binds the room's host role to an account (`REQUIRE_AUTH`).
    pub fn set_owner(&mut self, r: RoomRef, owner: &str) {
        if let Some(room) = live_room(&mut self.rooms, r) {
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
        let room = Room::new(
            Identity {
                code: &code,
                room_id: &uuid_v4(rand),
                host_id: &host_id,
                host_public_id: &host_public_id,
                owner: None,
                created_at: &rfc3339(wall),
            },
            self.next_gen,
            random_string(EPOCH_ALPHABET, 12, rand),
            now,
        );
        let r = self.insert(room, now, fx);
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
            replaced(fx, old.conn);
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
        let peer_json = peer_object(
            &shown_json,
            &rfc3339(wall),
            is_host,
            metadata.map_or("null", |m| m.get()),
        );
        let seq = room.stamp(self.cluster);
        let joined_frame = peer_joined_frame(&peer_json, seq);
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
        let info = room_info_frame(
            &room.code,
            host_shown,
            &peers,
            &room.epoch,
            room.seq,
            recovered,
        );
        fx.push(Effect::Send(conn, info));
        let connected = connected_frame(&id_json, &room.code);
        fx.push(Effect::Send(conn, connected));
        let prefix = data_prefix(&shown_json);
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
        let Some(room) = live_room(&mut self.rooms, r) else {
            fx.push(Effect::Send(conn, not_in_room()));
            return;
        };
        let seq = room.stamp(self.cluster);
        let raw = data.get().as_bytes();
        let frame = event_frame(&[&session.data_prefix, raw], seq);
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
        let Some(room) = session.room.and_then(|r| live_room(&mut self.rooms, r)) else {
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
        let Some(room) = live_room(&mut self.rooms, r) else {
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
        // A new incarnation of the stream: positions from before the
        // restart are not replayable (its history was not kept).
        let epoch = random_string(EPOCH_ALPHABET, 12, &mut crate::util::fill_random);
        let mut room = Room::new(
            Identity {
                code,
                room_id,
                host_id,
                host_public_id: &host_public_id,
                owner,
                created_at,
            },
            self.next_gen,
            epoch,
            now,
        );
        room.document = document.map(Doc::Snapshot);
        room.idle_before = idle_for;
        self.insert(room, now, fx)
    }

    /// Adds a room made with the current `next_gen`, findable by its code,
    /// with its expiry armed (it starts empty).
    fn insert(&mut self, room: Room, now: Instant, fx: &mut Vec<Effect>) -> RoomRef {
        let code = room.code.clone();
        let key = self.rooms.insert(room);
        self.by_code.insert(code, key);
        let r = RoomRef {
            key: key as u32,
            gen: self.next_gen,
        };
        self.arm_expiry(r, now, fx);
        r
    }

    /// Asks the engine for an expiry timer at `since + idle_timeout` unless
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
        let Some(room) = live_room(&mut self.rooms, r) else {
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

/// The room `r` names, if it is still the same one (slab keys are reused;
/// the generation tells rooms apart).
fn live_room(rooms: &mut Slab<Room>, r: RoomRef) -> Option<&mut Room> {
    rooms
        .get_mut(r.key as usize)
        .filter(|room| room.gen == r.gen)
}

/// Tells a member a newer connection took its peer id, and closes it.
fn replaced(fx: &mut Vec<Effect>, conn: ConnRef) {
    const WHY: &str = "Replaced by a newer connection";
    fx.push(Effect::Send(conn, error_frame(WHY)));
    fx.push(Effect::Close(conn, ws::close::NORMAL, WHY));
}

/// Closes a member with 1013: its room's stream here cannot go on without a
/// gap, so it re-joins.
fn try_again_later(fx: &mut Vec<Effect>, conn: ConnRef) {
    fx.push(Effect::Close(
        conn,
        ws::close::TRY_AGAIN_LATER,
        "Try again later",
    ));
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

#[cfg(test)]
mod tests;
