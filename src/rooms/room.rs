//! One room: its members in join order, its document (held once, as a
//! ready frame), its stream position and replay log, and what each member
//! may see of the others (the host under its public id).

use super::history::Log;
use crate::protocol::out::*;
use crate::refs::ConnRef;
use crate::util::json_str;
use crate::ws::{self, Frame};
use std::time::{Duration, Instant};

pub(super) struct Member {
    pub(super) conn: ConnRef,
    /// The id the peer joined with (for the host: the secret host id;
    /// others see [`Room::shown`] of it).
    pub(super) peer_id: Box<str>,
    /// The peer object as JSON: `{"id","joined_at","is_host","metadata"}`.
    pub(super) peer_json: Box<str>,
    /// With `REQUIRE_AUTH`: the account that joined under this peer id;
    /// another account may not replace it.
    pub(super) account: Option<Box<str>>,
}

/// A room's document, kept as a ready frame.
pub(super) enum Doc {
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
    pub(super) fn raw(&self) -> bytes::Bytes {
        let (f, tail) = match self {
            Doc::Event { frame, tail } => (frame, *tail),
            Doc::Snapshot(frame) => (frame, 1),
        };
        let start = (ws::header_len(f) + DOCUMENT_PREFIX.len()).min(f.len());
        let end = f.len().saturating_sub(tail).max(start);
        f.slice(start..end)
    }
    pub(super) fn frame_len(&self) -> usize {
        match self {
            Doc::Event { frame, .. } | Doc::Snapshot(frame) => frame.len(),
        }
    }
}

/// One room.
pub struct Room {
    pub(super) code: Box<str>,
    pub(super) room_id: Box<str>,
    pub(super) host_id: Box<str>,
    /// The host's name towards everyone else (protocol §2 rule 11).
    pub(super) host_public_id: Box<str>,
    /// With `REQUIRE_AUTH`: the account that created the room; only it (or
    /// an admin) may join as the host.
    pub(super) owner: Option<Box<str>>,
    pub(super) created_at: Box<str>,
    pub(super) gen: u32,
    pub(super) members: Vec<Member>,
    /// The stored document, as one frame in either form (never both: a
    /// 10 MiB document is held once).
    pub(super) document: Option<Doc>,
    /// Names this incarnation of the room's stream; a client's `since` from
    /// another epoch is never replayed.
    pub(super) epoch: Box<str>,
    /// The number of the room's last stream event (0: none yet).
    pub(super) seq: u64,
    /// The number of the event that last changed the document (0: never).
    pub(super) doc_seq: u64,
    /// Recent `data` events, for replay.
    pub(super) log: Log,
    /// Cluster mode: the peers on other nodes, `(shown id, peer json)`.
    pub(super) remote: Vec<(Box<str>, Box<str>)>,
    /// Cluster mode: this node follows the room's stream (its `epoch`,
    /// `seq` and `remote` are the cluster's).
    pub(super) synced: bool,
    pub(super) empty_since: Option<Instant>,
    /// How long it had been empty before `empty_since` (a room read back
    /// from the store after a restart; the monotonic clock may not reach
    /// back that far). Zero once anybody joins.
    pub(super) idle_before: Duration,
    /// The engine holds a pending expiry timer for this room. At most one is
    /// ever pending: a room that empties again while one is (a lone member
    /// re-joining in a loop) waits for it, and [`Rooms::expire`] re-arms it
    /// for the later time, so the timer heap holds one entry per room.
    pub(super) expiry_armed: bool,
}

/// Who a room is, as created or as read back from the store.
pub(super) struct Identity<'a> {
    pub(super) code: &'a str,
    pub(super) room_id: &'a str,
    pub(super) host_id: &'a str,
    pub(super) host_public_id: &'a str,
    pub(super) owner: Option<&'a str>,
    pub(super) created_at: &'a str,
}

impl Room {
    /// An empty room (since `now`) at the start of stream `epoch`.
    pub(super) fn new(id: Identity<'_>, gen: u32, epoch: String, now: Instant) -> Room {
        Room {
            code: id.code.into(),
            room_id: id.room_id.into(),
            host_id: id.host_id.into(),
            host_public_id: id.host_public_id.into(),
            owner: id.owner.map(Into::into),
            created_at: id.created_at.into(),
            gen,
            members: Vec::new(),
            document: None,
            epoch: epoch.into(),
            seq: 0,
            doc_seq: 0,
            log: Log::default(),
            remote: Vec::new(),
            synced: false,
            empty_since: Some(now),
            idle_before: Duration::ZERO,
            expiry_armed: false,
        }
    }

    /// Numbers the room's next stream event.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
    /// The number a new event's frame carries: the next `seq`, or in
    /// cluster mode the placeholder 0 (Redis numbers it).
    pub(super) fn stamp(&mut self, cluster: bool) -> u64 {
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
    pub(super) fn shown<'a>(&'a self, peer_id: &'a str) -> &'a str {
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
    pub(super) fn peers_json_for_host(&self, host: ConnRef) -> String {
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
    pub(super) fn recipients(&self, except: Option<ConnRef>) -> Vec<ConnRef> {
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
    pub(super) fn snapshot(&mut self) -> Option<Frame> {
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
