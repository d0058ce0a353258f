//! The replay history of the numbered room stream (§6): the recent `data`
//! events of each room, kept so that a peer that reconnects with
//! `since {epoch, seq}` gets what it missed instead of a gap.
//!
//! Sans-io: plain functions of events and `now`. A [`Log`] belongs to one
//! room; the [`Ledger`] is shared by all rooms and holds the total bound.
//!
//! Invariants:
//! * A log holds `data` events in `seq` order, and every `data` event of its
//!   room with a number above [`Log::floor`] is in it. Dropping an event (any
//!   bound) raises the floor to that event's number, so a later recovery that
//!   needs it is refused (`recovered:false`) rather than replayed with a hole.
//! * A held event shares the fan-out's frame (a reference count, no copy).
//! * Bounds: at most `per_room` events and `max_age` per room; at most
//!   `total_bytes` across all rooms, dropping the oldest event of the whole
//!   server first. The ledger's queue of positions holds at most about twice
//!   the live events (stale positions are compacted away).

use crate::refs::RoomRef;
use crate::ws::{self, Frame};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What one held event is charged beyond its frame's bytes: the entry, the
/// ledger's position and the allocator's share.
pub const HELD_OVERHEAD: usize = 64;

/// The history bounds, from `ROOM_HISTORY_SIZE`, `ROOM_HISTORY_SECONDS` and
/// `HISTORY_MEMORY_BYTES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_room: usize,
    pub max_age: Duration,
    pub total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_room: 200,
            max_age: Duration::from_secs(300),
            total_bytes: 8 << 20,
        }
    }
}

struct Held {
    seq: u64,
    at: Instant,
    frame: Frame,
}

impl Held {
    fn cost(&self) -> usize {
        self.frame.len() + HELD_OVERHEAD
    }
}

/// One room's held `data` events.
#[derive(Default)]
pub struct Log {
    held: VecDeque<Held>,
    /// Every `data` event numbered above this is held.
    floor: u64,
}

impl Log {
    /// Whether every `data` event after `seq` is still held.
    pub fn covers(&self, seq: u64) -> bool {
        seq >= self.floor
    }

    /// The held frames after `seq`, in order, but those whose payload
    /// starts with `own` (a peer's `{"type":"data","from":<id>,"data":`:
    /// a peer does not get its own `data` back, in a replay either).
    pub fn after<'a>(&'a self, seq: u64, own: &'a [u8]) -> impl Iterator<Item = &'a Frame> + 'a {
        let start = self.held.partition_point(|h| h.seq <= seq);
        self.held
            .range(start..)
            .map(|h| &h.frame)
            .filter(move |f| !f[ws::header_len(f)..].starts_with(own))
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn pop_front(&mut self, ledger: &mut Ledger) {
        if let Some(h) = self.held.pop_front() {
            self.floor = self.floor.max(h.seq);
            ledger.bytes -= h.cost();
            ledger.live -= 1;
        }
    }

    /// Drops what has been held for `max_age` or longer.
    pub fn expire(&mut self, ledger: &mut Ledger, now: Instant) {
        while let Some(h) = self.held.front() {
            if now.saturating_duration_since(h.at) < ledger.limits.max_age {
                break;
            }
            self.pop_front(ledger);
        }
    }

    /// Releases everything and starts over at `seq`: nothing up to it is
    /// held (a node that starts following a room's stream in cluster mode).
    pub fn restart(&mut self, ledger: &mut Ledger, seq: u64) {
        self.clear(ledger);
        self.floor = seq;
    }

    /// Releases everything (the room is gone).
    pub fn clear(&mut self, ledger: &mut Ledger) {
        while !self.held.is_empty() {
            self.pop_front(ledger);
        }
    }
}

/// Lends the log of any room by reference, for the total bound (`None` for
/// a room that no longer exists).
pub trait Logs {
    fn log_mut(&mut self, r: RoomRef) -> Option<&mut Log>;
}

/// No other rooms.
impl Logs for () {
    fn log_mut(&mut self, _: RoomRef) -> Option<&mut Log> {
        None
    }
}

/// The accounting shared by every room's log.
pub struct Ledger {
    limits: Limits,
    bytes: usize,
    live: usize,
    /// Positions of held events in the order they were held, across rooms;
    /// a position whose event a room already dropped is stale.
    order: VecDeque<(RoomRef, u64)>,
}

impl Ledger {
    pub fn new(limits: Limits) -> Ledger {
        Ledger {
            limits,
            bytes: 0,
            live: 0,
            order: VecDeque::new(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes charged for held events.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Held events across all rooms.
    pub fn events(&self) -> usize {
        self.live
    }

    /// Holds a `data` event of room `r` in `log` (taken out of its room for
    /// the call), then enforces every bound; `others` lends the other rooms'
    /// logs for the total bound.
    #[allow(clippy::too_many_arguments)]
    pub fn hold(
        &mut self,
        r: RoomRef,
        log: &mut Log,
        seq: u64,
        frame: &Frame,
        now: Instant,
        others: &mut impl Logs,
    ) {
        log.expire(self, now);
        let held = Held {
            seq,
            at: now,
            frame: frame.clone(),
        };
        if self.limits.per_room == 0 || held.cost() > self.limits.total_bytes {
            log.floor = seq;
            return;
        }
        while log.held.len() >= self.limits.per_room {
            log.pop_front(self);
        }
        self.bytes += held.cost();
        self.live += 1;
        log.held.push_back(held);
        self.order.push_back((r, seq));
        // The total bound, oldest event of the whole server first. The
        // room that just grew is `log`, which `others` cannot lend.
        while self.bytes > self.limits.total_bytes {
            let Some((owner, s)) = self.order.pop_front() else {
                break;
            };
            let target = if owner == r {
                Some(&mut *log)
            } else {
                others.log_mut(owner)
            };
            if let Some(l) = target {
                if l.held.front().is_some_and(|h| h.seq == s) {
                    l.pop_front(self);
                }
            }
        }
        if self.order.len() > 2 * self.live + 1024 {
            self.compact(r, log, others);
        }
    }

    /// Forgets stale positions. A position is live when its room still
    /// holds that event: logs drop from the front only, so it is live iff it
    /// is not before the room's oldest held event.
    fn compact(&mut self, r: RoomRef, log: &Log, others: &mut impl Logs) {
        self.order.retain(|&(owner, s)| {
            let front = if owner == r {
                log.held.front().map(|h| h.seq)
            } else {
                others
                    .log_mut(owner)
                    .and_then(|l| l.held.front().map(|h| h.seq))
            };
            front.is_some_and(|f| s >= f)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `n` bytes in all (a 2-byte header below 126).
    fn frame(n: usize) -> Frame {
        Frame::from(vec![b'x'; n])
    }

    fn data_from(who: &str) -> Frame {
        ws::text(format!(r#"{{"type":"data","from":"{who}","data":"x"}}"#).as_bytes())
    }

    fn room(key: u32) -> RoomRef {
        RoomRef { key, gen: 1 }
    }

    #[test]
    fn per_room_bound_drops_the_oldest_and_raises_the_floor() {
        let mut ledger = Ledger::new(Limits {
            per_room: 3,
            ..Limits::default()
        });
        let mut log = Log::default();
        let now = Instant::now();
        for seq in 1..=5 {
            ledger.hold(room(0), &mut log, seq, &frame(10), now, &mut ());
        }
        assert_eq!(log.len(), 3);
        assert!(!log.covers(1));
        assert!(log.covers(2));
        assert_eq!(log.after(2, b"nobody").count(), 3);
        assert_eq!(log.after(4, b"nobody").count(), 1);
        assert_eq!(ledger.events(), 3);
        assert_eq!(ledger.bytes(), 3 * (10 + HELD_OVERHEAD));
    }

    #[test]
    fn a_replay_leaves_out_what_the_peer_sent() {
        let mut ledger = Ledger::new(Limits::default());
        let mut log = Log::default();
        let now = Instant::now();
        for (seq, who) in [(1, "a"), (2, "b"), (3, "a"), (4, "ab")] {
            ledger.hold(room(0), &mut log, seq, &data_from(who), now, &mut ());
        }
        let own = br#"{"type":"data","from":"a","data":"#;
        let kept: Vec<_> = log.after(0, own).collect();
        assert_eq!(kept, [&data_from("b"), &data_from("ab")]);
    }

    #[test]
    fn age_bound_drops_what_is_too_old() {
        let mut ledger = Ledger::new(Limits {
            max_age: Duration::from_secs(10),
            ..Limits::default()
        });
        let mut log = Log::default();
        let t0 = Instant::now();
        ledger.hold(room(0), &mut log, 1, &frame(1), t0, &mut ());
        ledger.hold(
            room(0),
            &mut log,
            2,
            &frame(1),
            t0 + Duration::from_secs(5),
            &mut (),
        );
        log.expire(&mut ledger, t0 + Duration::from_secs(10));
        assert_eq!(log.len(), 1);
        assert!(!log.covers(0));
        assert!(log.covers(1));
    }

    #[test]
    fn total_bound_drops_the_oldest_across_rooms() {
        let per = 100 + HELD_OVERHEAD;
        let mut ledger = Ledger::new(Limits {
            total_bytes: 3 * per,
            ..Limits::default()
        });
        let mut logs = [Log::default(), Log::default()];
        let now = Instant::now();
        // Room 0 holds seq 1 and 2, then room 1 holds three events.
        for seq in 1..=2 {
            let (l0, _) = logs.split_at_mut(1);
            ledger.hold(room(0), &mut l0[0], seq, &frame(100), now, &mut ());
        }
        struct One<'a>(&'a mut Log);
        impl Logs for One<'_> {
            fn log_mut(&mut self, r: RoomRef) -> Option<&mut Log> {
                (r == room(0)).then_some(&mut *self.0)
            }
        }
        for seq in 1..=3 {
            let (l0, l1) = logs.split_at_mut(1);
            let mut others = One(&mut l0[0]);
            ledger.hold(room(1), &mut l1[0], seq, &frame(100), now, &mut others);
        }
        assert!(ledger.bytes() <= 3 * per);
        assert_eq!(logs[1].len(), 3, "the newest events stay");
        assert_eq!(logs[0].len(), 0, "the oldest room's events went first");
        assert!(!logs[0].covers(1));
    }

    #[test]
    fn stale_positions_are_compacted() {
        let mut ledger = Ledger::new(Limits {
            per_room: 1,
            ..Limits::default()
        });
        let mut log = Log::default();
        let now = Instant::now();
        for seq in 1..=10_000 {
            ledger.hold(room(0), &mut log, seq, &frame(1), now, &mut ());
        }
        assert!(ledger.order.len() <= 2 * ledger.events() + 1024 + 1);
        assert_eq!(ledger.events(), 1);
    }
}
