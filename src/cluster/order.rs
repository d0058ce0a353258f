//! One order per room across nodes: the sans-io core that turns what comes
//! back from Redis (pub/sub messages and stream reads, each numbered by the
//! room's `seq`) into deliveries in `seq` order.
//!
//! Plain functions of input and `now`; the shell feeds it and carries out
//! what it returns ([`Out`]).
//!
//! Invariants:
//! * For a tracked room, deliveries are exactly `last+1, last+2, …` of one
//!   epoch: never a skip, never a repeat, never another order.
//! * An event ahead of `last+1` is held (at most `limit` per room) and the
//!   missing range is asked for from the room's stream ([`Out::Fetch`]), one
//!   read at a time per room.
//! * When the gap cannot be filled (the stream no longer holds it, the read
//!   failed or took longer than `fetch_timeout`, too much is held, or the
//!   epoch changed because Redis lost the room's keys), the room is given up
//!   ([`Out::Reset`]): the shell closes its local members with 1013 so they
//!   re-join, and the room is no longer tracked until it is started again.
//! * An event that arrives without its bytes (a document's notice,
//!   [`Event::needs_body`]) stops the room's deliveries when its turn
//!   comes: its bytes are asked for ([`Out::Body`]) and nothing after it
//!   is delivered before them, so every node keeps the one order. Bytes
//!   that cannot be had reset the room as a gap would.

use std::collections::{btree_map, BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// What the order core needs to know of an event.
pub trait Event {
    /// The event came without its bytes (they are read separately before
    /// it may be delivered).
    fn needs_body(&self) -> bool {
        false
    }
}

/// What the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Out<E> {
    /// Deliver this event of the room to the local members now.
    Deliver { room: Box<str>, seq: u64, ev: E },
    /// Read the room's stream from `from` on (inclusive) and hand the answer
    /// to [`Order::fetched`] (or [`Order::fetch_failed`]).
    Fetch { room: Box<str>, from: u64 },
    /// The room's order cannot be continued without a gap: close its local
    /// members (1013); it is no longer tracked.
    Reset { room: Box<str> },
    /// The next event, `seq`, came without its bytes: read them and hand
    /// them to [`Order::body`] (or [`Order::body_failed`]).
    Body { room: Box<str>, seq: u64 },
}

struct Track<E> {
    epoch: Box<str>,
    last: u64,
    held: BTreeMap<u64, E>,
    /// A stream read is outstanding since then.
    fetching: Option<Instant>,
    /// The bytes of event `.0` (always `last + 1`) are being read since
    /// `.1`.
    awaiting: Option<(u64, Instant)>,
}

/// The order state of every room this node follows.
pub struct Order<E> {
    rooms: HashMap<Box<str>, Track<E>>,
    limit: usize,
    fetch_timeout: Duration,
}

impl<E> Track<E> {
    /// Asks for the stream from the first event not delivered yet.
    fn read_on(&mut self, room: &str, now: Instant, out: &mut Vec<Out<E>>) {
        self.fetching = Some(now);
        out.push(Out::Fetch {
            room: room.into(),
            from: self.last + 1,
        });
    }
}

impl<E: Event> Order<E> {
    /// `limit`: events held ahead of a gap per room; `fetch_timeout`: how
    /// long a stream read may take.
    pub fn new(limit: usize, fetch_timeout: Duration) -> Order<E> {
        Order {
            rooms: HashMap::new(),
            limit: limit.max(1),
            fetch_timeout,
        }
    }

    /// Follows `room` from the snapshot point `(epoch, last)`: the next
    /// delivery is `last + 1`. Replaces any earlier state of the room.
    pub fn start(&mut self, room: &str, epoch: &str, last: u64) {
        self.rooms.insert(
            room.into(),
            Track {
                epoch: epoch.into(),
                last,
                held: BTreeMap::new(),
                fetching: None,
                awaiting: None,
            },
        );
    }

    /// Stops following `room` (gone from memory).
    pub fn forget(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    pub fn tracking(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// The room's epoch and last delivered `seq`.
    pub fn position(&self, room: &str) -> Option<(&str, u64)> {
        self.rooms.get(room).map(|t| (&*t.epoch, t.last))
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Events held ahead of a gap, over all rooms.
    pub fn held(&self) -> usize {
        self.rooms.values().map(|t| t.held.len()).sum()
    }

    fn reset(&mut self, room: &str, out: &mut Vec<Out<E>>) {
        if self.rooms.remove(room).is_some() {
            out.push(Out::Reset { room: room.into() });
        }
    }

    /// Delivers what is now contiguous, up to an event still without its
    /// bytes (asked for once).
    fn drain(room: &str, t: &mut Track<E>, now: Instant, out: &mut Vec<Out<E>>) {
        // Everything held is above `last`: the next event, if here, is
        // the first.
        while let Some(first) = t.held.first_entry() {
            let next = t.last + 1;
            if *first.key() != next {
                break;
            }
            if first.get().needs_body() {
                if t.awaiting.map(|(s, _)| s) != Some(next) {
                    t.awaiting = Some((next, now));
                    out.push(Out::Body {
                        room: room.into(),
                        seq: next,
                    });
                }
                break;
            }
            let ev = first.remove();
            t.last = next;
            out.push(Out::Deliver {
                room: room.into(),
                seq: next,
                ev,
            });
        }
        if t.awaiting.is_some_and(|(s, _)| s <= t.last) {
            t.awaiting = None;
        }
        // Anything at or below `last` can no longer be delivered.
        while let Some((&s, _)) = t.held.first_key_value() {
            if s > t.last {
                break;
            }
            t.held.pop_first();
        }
    }

    /// One event as published (pub/sub). Events of rooms not followed are
    /// ignored.
    pub fn event(
        &mut self,
        room: &str,
        epoch: &str,
        seq: u64,
        ev: E,
        now: Instant,
        out: &mut Vec<Out<E>>,
    ) {
        let Some(t) = self.rooms.get_mut(room) else {
            return;
        };
        if *t.epoch != *epoch {
            self.reset(room, out);
            return;
        }
        if seq <= t.last {
            return;
        }
        t.held.insert(seq, ev);
        Self::drain(room, t, now, out);
        self.check_held(room, now, out);
    }

    /// After a drain: too much held gives the room up; a number missing
    /// before what is held is read from the stream (one read at a time).
    fn check_held(&mut self, room: &str, now: Instant, out: &mut Vec<Out<E>>) {
        let Some(t) = self.rooms.get_mut(room) else {
            return;
        };
        if t.held.len() > self.limit {
            self.reset(room, out);
            return;
        }
        // Held behind an event waiting for its bytes is no gap.
        let gap = t
            .held
            .first_key_value()
            .is_some_and(|(&s, _)| s > t.last + 1);
        if gap && t.fetching.is_none() {
            t.read_on(room, now, out);
        }
    }

    /// The answer to a [`Out::Fetch`]: the room's epoch and `seq` now
    /// (`None`: Redis holds no stream for it), and the stream's events from
    /// the asked position on, in order (possibly cut short by a count).
    pub fn fetched(
        &mut self,
        room: &str,
        epoch: Option<&str>,
        current: u64,
        events: Vec<(u64, E)>,
        now: Instant,
        out: &mut Vec<Out<E>>,
    ) {
        let Some(t) = self.rooms.get_mut(room) else {
            return;
        };
        t.fetching = None;
        match epoch {
            Some(e) if *e == *t.epoch => {}
            // Nothing was ever published (the snapshot made the epoch, then
            // Redis lost it) and nothing is awaited: still no gap.
            None if current == 0 && t.held.is_empty() && t.last == 0 => return,
            _ => {
                self.reset(room, out);
                return;
            }
        }
        let before = t.last;
        let mut first = None;
        for (seq, ev) in events {
            first.get_or_insert(seq);
            if seq > t.last {
                match t.held.entry(seq) {
                    btree_map::Entry::Vacant(v) => {
                        v.insert(ev);
                    }
                    // The stream's copy comes with the bytes a notice lacks.
                    btree_map::Entry::Occupied(mut o) => {
                        if o.get().needs_body() && !ev.needs_body() {
                            o.insert(ev);
                        }
                    }
                }
            }
        }
        Self::drain(room, t, now, out);
        let wanted = current.max(t.held.last_key_value().map_or(0, |(&s, _)| s));
        if t.last >= wanted || t.awaiting.is_some() {
            // Caught up, or up to a document whose bytes are on their way
            // (what follows it is held or still coming by pub/sub).
            return;
        }
        // The stream did not start where we asked: what we need is gone.
        if first.map_or(true, |f| f > before + 1) || t.last == before {
            self.reset(room, out);
            return;
        }
        // Progress, but a count cut the read short: read on.
        t.read_on(room, now, out);
    }

    /// The bytes of event `seq` (asked for by [`Out::Body`]): `fill` puts
    /// them into the held event, which is then delivered with whatever
    /// follows it. An answer no longer awaited is ignored.
    pub fn body(
        &mut self,
        room: &str,
        seq: u64,
        fill: impl FnOnce(&mut E),
        now: Instant,
        out: &mut Vec<Out<E>>,
    ) {
        let Some(t) = self.rooms.get_mut(room) else {
            return;
        };
        if t.awaiting.map(|(s, _)| s) != Some(seq) {
            return;
        }
        t.awaiting = None;
        let filled = t.held.get_mut(&seq).is_some_and(|ev| {
            fill(ev);
            !ev.needs_body()
        });
        if !filled {
            // Filled with nothing: no skipping it.
            self.reset(room, out);
            return;
        }
        Self::drain(room, t, now, out);
        self.check_held(room, now, out);
    }

    /// Redis no longer holds the bytes of event `seq`: a gap that cannot
    /// be filled. An answer no longer awaited is ignored.
    pub fn body_failed(&mut self, room: &str, seq: u64, out: &mut Vec<Out<E>>) {
        if self
            .rooms
            .get(room)
            .is_some_and(|t| t.awaiting.is_some_and(|(s, _)| s == seq))
        {
            self.reset(room, out);
        }
    }

    /// Reading the bytes failed because Redis is out of reach: the room
    /// waits as for [`Order::fetch_deferred`]; the read after the
    /// subscriber is back brings the bytes from the stream.
    pub fn body_deferred(&mut self, room: &str, seq: u64) {
        if let Some(t) = self.rooms.get_mut(room) {
            if t.awaiting.is_some_and(|(s, _)| s == seq) {
                t.awaiting = None;
            }
        }
    }

    /// A stream read failed: the gap cannot be filled.
    pub fn fetch_failed(&mut self, room: &str, out: &mut Vec<Out<E>>) {
        self.reset(room, out);
    }

    /// A read that failed because Redis is out of reach: the room keeps
    /// what it holds and waits. [`Order::catch_up`] reads again once the
    /// subscriber is back; if Redis stays away, the outage's grace period
    /// closes the members instead (the shell's job). Nothing is skipped.
    pub fn fetch_deferred(&mut self, room: &str) {
        if let Some(t) = self.rooms.get_mut(room) {
            t.fetching = None;
        }
    }

    /// After the subscriber (re)connected: messages may have been missed
    /// while it was down, so every followed room reads its stream from
    /// `last + 1` (a read that finds nothing new is no gap).
    pub fn catch_up(&mut self, now: Instant, out: &mut Vec<Out<E>>) {
        for (room, t) in &mut self.rooms {
            if t.fetching.is_none() {
                t.read_on(room, now, out);
            }
        }
    }

    /// Reads the room's stream from `last + 1` unless a read is under way
    /// (events published around the snapshot may have been passed over).
    pub fn check(&mut self, room: &str, now: Instant, out: &mut Vec<Out<E>>) {
        if let Some(t) = self.rooms.get_mut(room) {
            if t.fetching.is_none() {
                t.read_on(room, now, out);
            }
        }
    }

    /// Gives up on reads that took too long.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Out<E>>) {
        let late: Vec<Box<str>> = self
            .rooms
            .iter()
            .filter(|(_, t)| {
                t.fetching
                    .into_iter()
                    .chain(t.awaiting.map(|(_, at)| at))
                    .any(|at| now.saturating_duration_since(at) >= self.fetch_timeout)
            })
            .map(|(r, _)| r.clone())
            .collect();
        for r in late {
            self.reset(&r, out);
        }
    }

    /// The earliest instant [`Order::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.rooms
            .values()
            .flat_map(|t| t.fetching.into_iter().chain(t.awaiting.map(|(_, at)| at)))
            .map(|at| at + self.fetch_timeout)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl Event for u64 {}

    /// `(seq, has its bytes)`.
    impl Event for (u64, bool) {
        fn needs_body(&self) -> bool {
            !self.1
        }
    }

    fn seqs(out: &[Out<(u64, bool)>]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Out::Deliver { seq, ev, .. } => {
                    assert!(ev.1, "delivered without its bytes");
                    Some(*seq)
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_notice_waits_for_its_bytes_and_holds_what_follows() {
        let mut o: Order<(u64, bool)> = Order::new(100, Duration::from_secs(2));
        o.start("R", "e1", 10);
        let now = Instant::now();
        let mut out = Vec::new();
        o.event("R", "e1", 11, (11, true), now, &mut out);
        o.event("R", "e1", 12, (12, false), now, &mut out);
        o.event("R", "e1", 13, (13, true), now, &mut out);
        assert_eq!(seqs(&out), [11]);
        assert_eq!(
            out.last(),
            Some(&Out::Body {
                room: "R".into(),
                seq: 12
            }),
            "asked once, and no gap read: {out:?}"
        );
        assert_eq!(out.len(), 2);
        assert_eq!(o.next_deadline(), Some(now + Duration::from_secs(2)));
        out.clear();
        // A stale answer changes nothing; the awaited one delivers on.
        o.body("R", 11, |e| e.1 = true, now, &mut out);
        assert!(out.is_empty());
        o.body("R", 12, |e| e.1 = true, now, &mut out);
        assert_eq!(seqs(&out), [12, 13]);
        assert_eq!(o.next_deadline(), None);
        // A number lost behind a notice is read once the notice is through.
        out.clear();
        o.event("R", "e1", 14, (14, false), now, &mut out);
        o.event("R", "e1", 16, (16, true), now, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        out.clear();
        o.body("R", 14, |e| e.1 = true, now, &mut out);
        assert_eq!(seqs(&out), [14]);
        assert_eq!(
            out.last(),
            Some(&Out::Fetch {
                room: "R".into(),
                from: 15
            })
        );
    }

    #[test]
    fn bytes_that_cannot_be_had_reset_the_room() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut o: Order<(u64, bool)> = Order::new(100, Duration::from_secs(2));
        o.start("R", "e1", 0);
        o.event("R", "e1", 1, (1, false), now, &mut out);
        out.clear();
        o.body_failed("R", 1, &mut out);
        assert_eq!(out, [Out::Reset { room: "R".into() }]);
        // Too slow.
        o.start("R", "e1", 0);
        out.clear();
        o.event("R", "e1", 1, (1, false), now, &mut out);
        out.clear();
        o.tick(now + Duration::from_secs(2), &mut out);
        assert_eq!(out, [Out::Reset { room: "R".into() }]);
        // Filled with nothing.
        o.start("R", "e1", 0);
        out.clear();
        o.event("R", "e1", 1, (1, false), now, &mut out);
        out.clear();
        o.body("R", 1, |_| {}, now, &mut out);
        assert_eq!(out, [Out::Reset { room: "R".into() }]);
    }

    #[test]
    fn an_outage_defers_the_bytes_and_the_stream_read_brings_them() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut o: Order<(u64, bool)> = Order::new(100, Duration::from_secs(2));
        o.start("R", "e1", 0);
        o.event("R", "e1", 1, (1, false), now, &mut out);
        o.event("R", "e1", 2, (2, true), now, &mut out);
        out.clear();
        o.body_deferred("R", 1);
        assert_eq!(o.next_deadline(), None);
        o.catch_up(now, &mut out);
        assert_eq!(
            out,
            [Out::Fetch {
                room: "R".into(),
                from: 1
            }]
        );
        out.clear();
        o.fetched("R", Some("e1"), 2, vec![(1, (1, true))], now, &mut out);
        assert_eq!(seqs(&out), [1, 2]);
        assert!(o.tracking("R"));
    }

    fn delivered(out: &[Out<u64>]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Out::Deliver { seq, ev, .. } => {
                    assert_eq!(seq, ev);
                    Some(*seq)
                }
                _ => None,
            })
            .collect()
    }

    fn order() -> Order<u64> {
        let mut o = Order::new(100, Duration::from_secs(2));
        o.start("R", "e1", 10);
        o
    }

    #[test]
    fn in_order_events_are_delivered_at_once() {
        let mut o = order();
        let now = Instant::now();
        let mut out = Vec::new();
        for s in 11..=13 {
            o.event("R", "e1", s, s, now, &mut out);
        }
        assert_eq!(delivered(&out), [11, 12, 13]);
        assert_eq!(out.len(), 3);
        assert_eq!(o.position("R"), Some(("e1", 13)));
    }

    #[test]
    fn old_and_duplicate_events_are_ignored() {
        let mut o = order();
        let now = Instant::now();
        let mut out = Vec::new();
        o.event("R", "e1", 9, 9, now, &mut out);
        o.event("R", "e1", 10, 10, now, &mut out);
        o.event("R", "e1", 11, 11, now, &mut out);
        o.event("R", "e1", 11, 11, now, &mut out);
        assert_eq!(delivered(&out), [11]);
    }

    #[test]
    fn a_read_deferred_by_an_outage_keeps_the_room_and_is_retried() {
        let mut o = order();
        let now = Instant::now();
        let mut out = Vec::new();
        o.event("R", "e1", 13, 13, now, &mut out);
        assert!(matches!(out.as_slice(), [Out::Fetch { from: 11, .. }]));
        out.clear();
        // Redis went away: no reset, the held event stays held.
        o.fetch_deferred("R");
        assert!(out.is_empty());
        assert_eq!(o.position("R"), Some(("e1", 10)));
        // The subscriber is back: the gap is read again, then filled.
        o.catch_up(now, &mut out);
        assert_eq!(
            out,
            [Out::Fetch {
                room: "R".into(),
                from: 11
            }]
        );
        out.clear();
        o.fetched("R", Some("e1"), 13, vec![(11, 11), (12, 12)], now, &mut out);
        assert_eq!(delivered(&out), [11, 12, 13]);
    }

    #[test]
    fn a_gap_is_read_from_the_stream_then_delivered_in_order() {
        let mut o = order();
        let now = Instant::now();
        let mut out = Vec::new();
        o.event("R", "e1", 13, 13, now, &mut out);
        o.event("R", "e1", 14, 14, now, &mut out);
        assert_eq!(
            out,
            [Out::Fetch {
                room: "R".into(),
                from: 11
            }]
        );
        out.clear();
        o.fetched(
            "R",
            Some("e1"),
            14,
            vec![(11, 11), (12, 12), (13, 13)],
            now,
            &mut out,
        );
        assert_eq!(delivered(&out), [11, 12, 13, 14]);
        assert_eq!(o.held(), 0);
    }

    #[test]
    fn a_gap_the_stream_no_longer_holds_resets_the_room() {
        let mut o = order();
        let now = Instant::now();
        let mut out = Vec::new();
        o.event("R", "e1", 20, 20, now, &mut out);
        out.clear();
        // The stream was trimmed: it starts at 15.
        o.fetched("R", Some("e1"), 20, vec![(15, 15), (16, 16)], now, &mut out);
        assert_eq!(out, [Out::Reset { room: "R".into() }]);
        assert!(!o.tracking("R"));
        out.clear();
        o.event("R", "e1", 21, 21, now, &mut out);
        assert!(out.is_empty(), "an untracked room delivers nothing");
    }

    #[test]
    fn another_epoch_resets_the_room() {
        let mut o = order();
        let now = Instant::now();
        let mut out = Vec::new();
        o.event("R", "e2", 1, 1, now, &mut out);
        assert_eq!(out, [Out::Reset { room: "R".into() }]);
    }

    #[test]
    fn a_slow_or_failed_read_resets_the_room() {
        let mut o = order();
        let now = Instant::now();
        let mut out = Vec::new();
        o.event("R", "e1", 12, 12, now, &mut out);
        assert_eq!(o.next_deadline(), Some(now + Duration::from_secs(2)));
        out.clear();
        o.tick(now + Duration::from_secs(1), &mut out);
        assert!(out.is_empty());
        o.tick(now + Duration::from_secs(2), &mut out);
        assert_eq!(out, [Out::Reset { room: "R".into() }]);

        let mut o = order();
        out.clear();
        o.event("R", "e1", 12, 12, now, &mut out);
        out.clear();
        o.fetch_failed("R", &mut out);
        assert_eq!(out, [Out::Reset { room: "R".into() }]);
    }

    #[test]
    fn catch_up_finding_nothing_new_is_no_gap() {
        let mut o = order();
        let now = Instant::now();
        let mut out = Vec::new();
        o.catch_up(now, &mut out);
        assert_eq!(
            out,
            [Out::Fetch {
                room: "R".into(),
                from: 11
            }]
        );
        out.clear();
        o.fetched("R", Some("e1"), 10, vec![], now, &mut out);
        assert!(out.is_empty());
        assert!(o.tracking("R"));
        // Missed while the subscriber was away, still in the stream.
        o.catch_up(now, &mut out);
        out.clear();
        o.fetched("R", Some("e1"), 12, vec![(11, 11), (12, 12)], now, &mut out);
        assert_eq!(delivered(&out), [11, 12]);
        // Missed and no longer in the stream.
        o.catch_up(now, &mut out);
        out.clear();
        o.fetched("R", Some("e1"), 30, vec![(25, 25)], now, &mut out);
        assert_eq!(out, [Out::Reset { room: "R".into() }]);
    }

    #[test]
    fn a_read_cut_short_reads_on() {
        let mut o = order();
        let now = Instant::now();
        let mut out = Vec::new();
        o.event("R", "e1", 15, 15, now, &mut out);
        out.clear();
        o.fetched("R", Some("e1"), 15, vec![(11, 11), (12, 12)], now, &mut out);
        assert_eq!(delivered(&out), [11, 12]);
        assert_eq!(
            out.last(),
            Some(&Out::Fetch {
                room: "R".into(),
                from: 13
            })
        );
    }

    #[test]
    fn too_much_held_resets_the_room() {
        let mut o = Order::new(3, Duration::from_secs(2));
        o.start("R", "e1", 0);
        let now = Instant::now();
        let mut out = Vec::new();
        for s in 2..=5 {
            o.event("R", "e1", s, s, now, &mut out);
        }
        assert_eq!(out.last(), Some(&Out::Reset { room: "R".into() }));
    }

    proptest! {
        /// Whatever pub/sub loses, repeats or reorders, and however much the
        /// stream has been trimmed, a room's deliveries are a contiguous run
        /// after the start point, and the room is either caught up with
        /// everything published or was reset.
        #[test]
        fn deliveries_are_contiguous_or_the_room_resets(
            total in 1u64..60,
            kept in 0u64..60,
            fates in proptest::collection::vec(0u8..6, 60),
            swaps in proptest::collection::vec((0usize..60, 0usize..60), 0..20),
        ) {
            let now = Instant::now();
            let mut o: Order<(u64, bool)> = Order::new(1000, Duration::from_secs(2));
            o.start("R", "e", 0);
            // The stream holds the last `kept` events.
            let floor = total.saturating_sub(kept);
            let mut arrivals = Vec::new();
            for s in 1..=total {
                match fates[(s - 1) as usize] {
                    0 => {}                                  // lost
                    1 => { arrivals.push(s); arrivals.push(s) } // twice
                    _ => arrivals.push(s),
                }
            }
            for (a, b) in swaps {
                if a < arrivals.len() && b < arrivals.len() {
                    arrivals.swap(a, b);
                }
            }
            let mut out = Vec::new();
            let mut seen = Vec::new();
            let mut reset = false;
            type Ev = (u64, bool);
            let step = |o: &mut Order<Ev>, out: &mut Vec<Out<Ev>>, seen: &mut Vec<u64>, reset: &mut bool| {
                while let Some(x) = (!out.is_empty()).then(|| out.remove(0)) {
                    match x {
                        Out::Deliver { seq, ev, .. } => {
                            assert!(ev.1 && ev.0 == seq);
                            seen.push(seq)
                        }
                        Out::Reset { .. } => *reset = true,
                        Out::Fetch { from, .. } => {
                            let events: Vec<(u64, Ev)> = (from.max(floor + 1)..=total)
                                .take(7)
                                .map(|s| (s, (s, true)))
                                .collect();
                            let mut more = Vec::new();
                            o.fetched("R", Some("e"), total, events, now, &mut more);
                            out.extend(more);
                        }
                        Out::Body { seq, .. } => {
                            let mut more = Vec::new();
                            o.body("R", seq, |e| e.1 = true, now, &mut more);
                            out.extend(more);
                        }
                    }
                }
            };
            for s in arrivals {
                // Every fifth event is a notice without its bytes.
                o.event("R", "e", s, (s, s % 5 != 0), now, &mut out);
                step(&mut o, &mut out, &mut seen, &mut reset);
            }
            // The subscriber's reconnect check finds whatever is left.
            o.catch_up(now, &mut out);
            step(&mut o, &mut out, &mut seen, &mut reset);
            let want: Vec<u64> = (1..=seen.len() as u64).collect();
            prop_assert_eq!(&seen, &want);
            prop_assert!(reset || seen.len() as u64 == total);
        }
    }
}
