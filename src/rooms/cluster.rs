//! Cluster mode's side of the rooms: following a room's stream from a
//! Redis snapshot, delivering the events Redis numbered (this node's own
//! too) in `seq` order, and letting go of members when a gap cannot be
//! filled.

use super::*;

impl Rooms {
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
        let Some(room) = live_room(&mut self.rooms, r) else {
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

    /// Cluster mode, right after [`Rooms::cluster_start`]: the room's
    /// recent `data` events, read from its stream with the snapshot
    /// (bodies without the closing `,"seq":N}`), every one numbered above
    /// `floor` up to the snapshot's `seq`. They go into the replay history,
    /// so a `since` recovery works on a node that has only just begun to
    /// follow the room. `doc_seq`: the last document event among them.
    pub fn cluster_history(
        &mut self,
        r: RoomRef,
        floor: u64,
        doc_seq: u64,
        events: Vec<(u64, bytes::Bytes)>,
        now: Instant,
    ) {
        let Some(room) = self
            .rooms
            .get_mut(r.key as usize)
            .filter(|room| room.gen == r.gen && room.synced && floor <= room.seq)
        else {
            return;
        };
        let top = room.seq;
        room.doc_seq = doc_seq;
        let mut log = std::mem::take(&mut room.log);
        log.restart(&mut self.ledger, floor);
        for (seq, body) in events {
            if seq <= floor || seq > top {
                continue;
            }
            let frame = event_frame(&[&body], seq);
            self.ledger
                .hold(r, &mut log, seq, &frame, now, &mut self.rooms);
        }
        self.rooms[r.key as usize].log = log;
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
            try_again_later(fx, m.conn);
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
                try_again_later(fx, m.conn);
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
        let frame = event_frame(&[d.body], seq);
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
                    let json = d.body.get(PEER_JOINED_PREFIX.len()..).unwrap_or_default();
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
                        replaced(fx, m.conn);
                    } else {
                        try_again_later(fx, m.conn);
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
}
