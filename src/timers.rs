//! Sans-io deadlines: a min-heap of `(instant, what)` with lazy deletion.
//!
//! The loop's poll timeout is the time to the earliest entry. Entries are
//! never removed when their subject goes away; whoever pops a timer checks
//! that it still applies (connection generation, room generation, the
//! deadline stored on the subject). That keeps arming O(log n) and
//! cancelling free.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// A heap of deadlines carrying values of type `T`.
#[derive(Debug)]
pub struct Timers<T: Ord> {
    heap: BinaryHeap<Reverse<(Instant, u64, T)>>,
    seq: u64,
}

impl<T: Ord> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T: Ord> Timers<T> {
    pub fn arm(&mut self, at: Instant, what: T) {
        // The sequence number keeps equal deadlines in arming order.
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, what)));
    }

    /// Time until the earliest deadline, capped at `max`; zero if overdue.
    pub fn timeout(&self, now: Instant, max: Duration) -> Duration {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) => at.saturating_duration_since(now).min(max),
            None => max,
        }
    }

    /// Pops one timer due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, T)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((at, _, what))| (at, what))
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The pending entries, in no particular order (read-only: for tests
    /// and fuzz oracles).
    pub fn iter(&self) -> impl Iterator<Item = (Instant, &T)> + '_ {
        self.heap.iter().map(|Reverse((at, _, t))| (*at, t))
    }

    /// Drops every entry `keep` rejects; used to shed stale entries when the
    /// heap has grown far beyond the live subjects.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let old = std::mem::take(&mut self.heap);
        self.heap = old
            .into_iter()
            .filter(|Reverse((_, _, t))| keep(t))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.arm(t0 + Duration::from_secs(3), 'c');
        t.arm(t0 + Duration::from_secs(1), 'a');
        t.arm(t0 + Duration::from_secs(1), 'b');
        assert_eq!(
            t.timeout(t0, Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(t.pop_due(t0), None);
        let at = t0 + Duration::from_secs(2);
        assert_eq!(t.pop_due(at).map(|x| x.1), Some('a'));
        assert_eq!(t.pop_due(at).map(|x| x.1), Some('b'));
        assert_eq!(t.pop_due(at), None);
        assert_eq!(
            t.timeout(at, Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(
            t.timeout(t0 + Duration::from_secs(9), Duration::from_secs(60)),
            Duration::ZERO
        );
        t.retain(|c| *c != 'c');
        assert!(t.is_empty());
        assert_eq!(
            t.timeout(at, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
