//! Sans-io write-behind policy: which rooms have unsaved changes, when each
//! is due to be written, and what happens after a write succeeds or fails.
//!
//! It is a plain function of calls and `now`; the shell asks [`Policy::poll`]
//! for due operations and reports each outcome with [`Policy::finished`].
//!
//! Invariants:
//! * Versions come from one counter that only grows ([`Policy::next_version`],
//!   seeded above the wall clock and above every version seen in the
//!   store), so a later change always carries a higher version than any
//!   record already written, across restarts too.
//! * At most one operation per room is in flight; a change made meanwhile is
//!   written after it, with the then latest version (only the latest version
//!   of a room is ever queued).
//! * An entry leaves the table only once its latest version is known to be
//!   written; failures keep it and retry with a capped exponential backoff.
//!   Nothing is dropped while its room is in memory.
//! * A change is due `delay` after the last change and never later than
//!   `max_delay` after the first unsaved one; in urgent mode (shutdown)
//!   everything is due at once. A delete is due at once.
//! * The heap holds at most one live entry per room (`queued_at` names it);
//!   others are stale and skipped when popped.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// First retry after a failed write; doubles per failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between retries (shorter in urgent mode: shutdown has a
/// deadline).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
const URGENT_MAX_BACKOFF: Duration = Duration::from_millis(500);

/// An operation the shell must hand to the store's writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write the room's current state under this version.
    Save(Box<str>, u64),
    /// Remove the room's record if its version is at most this one.
    Delete(Box<str>, u64),
}

#[derive(Debug)]
struct Entry {
    /// The latest change's version (or the delete's guard version).
    version: u64,
    delete: bool,
    /// The oldest change not yet known to be written.
    unsaved_since: Instant,
    /// The first change not included in any write handed out yet (`None`
    /// when the write in flight holds every change).
    first_pending: Option<Instant>,
    last_change: Instant,
    in_flight: Option<u64>,
    failures: u32,
    retry_at: Option<Instant>,
    /// The deadline of this room's live heap entry.
    queued_at: Option<Instant>,
}

/// Whether the store answered lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Unavailable,
}

/// The write-behind table.
#[derive(Debug)]
pub struct Policy {
    delay: Duration,
    max_delay: Duration,
    entries: HashMap<Box<str>, Entry>,
    heap: BinaryHeap<Reverse<(Instant, Box<str>)>>,
    urgent: bool,
    next_version: u64,
    status: Status,
}

impl Policy {
    /// `version_seed` should be the wall clock in microseconds: versions of
    /// this run then start above those of earlier runs.
    pub fn new(delay: Duration, max_delay: Duration, version_seed: u64) -> Policy {
        Policy {
            delay,
            max_delay: max_delay.max(delay),
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
            urgent: false,
            next_version: version_seed,
            status: Status::Ok,
        }
    }

    /// A fresh version, higher than every one handed out or seen.
    pub fn next_version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    /// A version read from the store: later ones must be higher.
    pub fn observe_version(&mut self, v: u64) {
        self.next_version = self.next_version.max(v);
    }

    /// The room `code` changed at `now`.
    pub fn changed(&mut self, code: &str, now: Instant) {
        let v = self.next_version();
        let e = self.entry(code, now);
        e.version = v;
        e.delete = false;
        e.first_pending.get_or_insert(now);
        e.last_change = now;
        self.schedule(code);
    }

    /// The room `code` is gone: remove its record if not newer than
    /// `version`. Replaces any unsaved change of it.
    pub fn deleted(&mut self, code: &str, version: u64, now: Instant) {
        self.observe_version(version);
        let e = self.entry(code, now);
        e.version = e.version.max(version);
        e.delete = true;
        e.first_pending.get_or_insert(now);
        e.last_change = now;
        self.schedule(code);
    }

    fn entry(&mut self, code: &str, now: Instant) -> &mut Entry {
        self.entries.entry(code.into()).or_insert(Entry {
            version: 0,
            delete: false,
            unsaved_since: now,
            first_pending: None,
            last_change: now,
            in_flight: None,
            failures: 0,
            retry_at: None,
            queued_at: None,
        })
    }

    /// When the entry's next operation is due, if it has one to hand out.
    fn due(&self, e: &Entry) -> Option<Instant> {
        if e.in_flight.is_some() {
            return None;
        }
        let first = e.first_pending?;
        if let Some(at) = e.retry_at {
            return Some(at);
        }
        if e.delete || self.urgent {
            return Some(first);
        }
        Some((e.last_change + self.delay).min(first + self.max_delay))
    }

    fn schedule(&mut self, code: &str) {
        let Some(e) = self.entries.get(code) else {
            return;
        };
        let Some(at) = self.due(e) else { return };
        if e.queued_at.is_some_and(|q| q <= at) {
            // The live heap entry fires no later; it re-checks then.
            return;
        }
        self.entries.get_mut(code).expect("present").queued_at = Some(at);
        self.heap.push(Reverse((at, code.into())));
    }

    /// The earliest instant [`Policy::poll`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Hands out the operations due at `now`, at most `max`, and marks them
    /// in flight.
    pub fn poll(&mut self, now: Instant, max: usize, out: &mut Vec<Op>) {
        let mut n = 0;
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now || n >= max {
                break;
            }
            let Reverse((at, code)) = self.heap.pop().expect("peeked");
            let Some(e) = self.entries.get_mut(&code) else {
                continue;
            };
            if e.queued_at != Some(at) {
                continue; // stale
            }
            e.queued_at = None;
            let Some(due) = self.due(self.entries.get(&code).expect("present")) else {
                continue;
            };
            if due > now {
                self.schedule(&code);
                continue;
            }
            let e = self.entries.get_mut(&code).expect("present");
            n += 1;
            e.in_flight = Some(e.version);
            e.first_pending = None;
            e.retry_at = None;
            out.push(if e.delete {
                Op::Delete(code, e.version)
            } else {
                Op::Save(code, e.version)
            });
        }
    }

    /// The outcome of the operation for `code` at `version`.
    pub fn finished(&mut self, code: &str, version: u64, ok: bool, now: Instant) {
        self.status = if ok { Status::Ok } else { Status::Unavailable };
        let urgent = self.urgent;
        let Some(e) = self.entries.get_mut(code) else {
            return;
        };
        if e.in_flight != Some(version) {
            return;
        }
        e.in_flight = None;
        if ok {
            e.failures = 0;
            match e.first_pending {
                None => {
                    self.entries.remove(code);
                    return;
                }
                Some(first) => e.unsaved_since = first,
            }
        } else {
            e.failures = e.failures.saturating_add(1);
            let cap = if urgent {
                URGENT_MAX_BACKOFF
            } else {
                MAX_BACKOFF
            };
            let backoff = FIRST_BACKOFF
                .saturating_mul(1u32 << (e.failures - 1).min(16))
                .min(cap);
            e.retry_at = Some(now + backoff);
            // What was in flight is still unsaved.
            let since = e.unsaved_since;
            e.first_pending = Some(e.first_pending.map_or(since, |f| f.min(since)));
        }
        self.schedule(code);
    }

    /// A read of the store succeeded or failed (for the status only).
    pub fn note_read(&mut self, ok: bool) {
        self.status = if ok { Status::Ok } else { Status::Unavailable };
    }

    /// Shutdown: everything unsaved is due now, retries come quickly.
    pub fn flush_all(&mut self) {
        self.urgent = true;
        let codes: Vec<Box<str>> = self.entries.keys().cloned().collect();
        for code in codes {
            if let Some(e) = self.entries.get_mut(&code) {
                if let Some(r) = e.retry_at.as_mut() {
                    // A long backoff would outlast the shutdown deadline.
                    let first = e.first_pending.unwrap_or(*r);
                    *r = (*r).min(first + URGENT_MAX_BACKOFF);
                }
            }
            self.schedule(&code);
        }
    }

    /// Whether `code` has changes not known to be written (such a room must
    /// stay in memory).
    pub fn is_unsaved(&self, code: &str) -> bool {
        self.entries.get(code).is_some_and(|e| !e.delete)
    }

    /// Whether `code` is being deleted (its stored record, if any, is dead).
    pub fn is_deleting(&self, code: &str) -> bool {
        self.entries.get(code).is_some_and(|e| e.delete)
    }

    /// Rooms with anything unwritten (saves and deletes).
    pub fn unsaved(&self) -> usize {
        self.entries.len()
    }

    /// Age of the oldest unwritten change.
    pub fn oldest_unsaved(&self, now: Instant) -> Duration {
        self.entries
            .values()
            .map(|e| now.saturating_duration_since(e.unsaved_since))
            .max()
            .unwrap_or_default()
    }

    pub fn is_idle(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn status(&self) -> Status {
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(1000);
    const MAX: Duration = Duration::from_millis(5000);

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn poll(p: &mut Policy, now: Instant) -> Vec<Op> {
        let mut v = Vec::new();
        p.poll(now, usize::MAX, &mut v);
        v
    }

    #[test]
    fn poll_hands_out_at_most_max_and_keeps_the_rest_due() {
        let t0 = Instant::now();
        let mut p = Policy::new(D, MAX, 0);
        for c in ["A", "B", "C"] {
            p.changed(c, t0);
        }
        let mut v = Vec::new();
        p.poll(ms(t0, 1000), 2, &mut v);
        assert_eq!(v.len(), 2);
        assert_eq!(p.next_deadline(), Some(ms(t0, 1000)));
        p.poll(ms(t0, 1000), 2, &mut v);
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn a_change_is_saved_after_the_delay_with_the_latest_version() {
        let t0 = Instant::now();
        let mut p = Policy::new(D, MAX, 100);
        p.changed("A", t0);
        p.changed("A", ms(t0, 400));
        assert_eq!(p.next_deadline(), Some(ms(t0, 1000)), "first entry fires");
        assert!(poll(&mut p, ms(t0, 999)).is_empty());
        // The heap entry at 1000 re-checks and moves to 1400.
        assert!(poll(&mut p, ms(t0, 1000)).is_empty());
        assert_eq!(p.next_deadline(), Some(ms(t0, 1400)));
        assert_eq!(poll(&mut p, ms(t0, 1400)), [Op::Save("A".into(), 102)]);
        assert_eq!(p.unsaved(), 1);
        p.finished("A", 102, true, ms(t0, 1450));
        assert!(p.is_idle());
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn steady_changes_are_saved_by_the_max_delay() {
        let t0 = Instant::now();
        let mut p = Policy::new(D, MAX, 0);
        let mut saves = Vec::new();
        // A change every 50 ms for 12 s: the delay never passes quietly.
        for i in 0..240 {
            let now = ms(t0, i * 50);
            p.changed("A", now);
            for op in poll(&mut p, now) {
                let Op::Save(_, v) = op else { panic!() };
                saves.push(i * 50);
                p.finished("A", v, true, now);
            }
        }
        assert_eq!(saves, [5000, 10050], "once per max delay");
        assert_eq!(p.oldest_unsaved(ms(t0, 11950)), Duration::from_millis(1850));
    }

    #[test]
    fn a_change_during_a_write_is_written_after_it() {
        let t0 = Instant::now();
        let mut p = Policy::new(D, MAX, 0);
        p.changed("A", t0);
        let ops = poll(&mut p, ms(t0, 1000));
        assert_eq!(ops, [Op::Save("A".into(), 1)]);
        p.changed("A", ms(t0, 1100));
        assert!(
            poll(&mut p, ms(t0, 5000)).is_empty(),
            "one write in flight per room"
        );
        p.finished("A", 1, true, ms(t0, 5000));
        assert!(p.is_unsaved("A"));
        assert_eq!(p.oldest_unsaved(ms(t0, 5000)), Duration::from_millis(3900));
        // Due at 2100 (1100 + delay): at once.
        assert_eq!(poll(&mut p, ms(t0, 5000)), [Op::Save("A".into(), 2)]);
        p.finished("A", 2, true, ms(t0, 5001));
        assert!(p.is_idle());
    }

    #[test]
    fn failures_retry_with_backoff_and_keep_the_change() {
        let t0 = Instant::now();
        let mut p = Policy::new(D, MAX, 0);
        p.changed("A", t0);
        let mut now = ms(t0, 1000);
        let mut waits = Vec::new();
        for _ in 0..8 {
            let ops = poll(&mut p, now);
            assert_eq!(ops.len(), 1);
            p.finished("A", 1, false, now);
            assert_eq!(p.status(), Status::Unavailable);
            let next = p.next_deadline().unwrap();
            waits.push((next - now).as_millis());
            now = next;
        }
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(p.unsaved(), 1);
        assert_eq!(p.oldest_unsaved(now), now - t0);
        // A change meanwhile rides along with the next retry, latest version.
        p.changed("A", now);
        let next = p.next_deadline().unwrap();
        assert_eq!(poll(&mut p, next), [Op::Save("A".into(), 2)]);
        p.finished("A", 2, true, next);
        assert_eq!(p.status(), Status::Ok);
        assert!(p.is_idle());
    }

    #[test]
    fn a_stale_or_unknown_result_changes_nothing() {
        let t0 = Instant::now();
        let mut p = Policy::new(D, MAX, 0);
        p.finished("nobody", 7, true, t0);
        p.changed("A", t0);
        poll(&mut p, ms(t0, 1000));
        p.finished("A", 99, true, ms(t0, 1000));
        assert!(p.is_unsaved("A"));
    }

    #[test]
    fn a_delete_replaces_unsaved_changes_and_is_due_at_once() {
        let t0 = Instant::now();
        let mut p = Policy::new(D, MAX, 0);
        p.changed("A", t0);
        p.deleted("A", 50, ms(t0, 10));
        assert!(!p.is_unsaved("A") && p.is_deleting("A"));
        assert_eq!(poll(&mut p, ms(t0, 10)), [Op::Delete("A".into(), 50)]);
        // A re-creation while the delete is in flight gets a higher version.
        p.changed("A", ms(t0, 20));
        p.finished("A", 50, true, ms(t0, 30));
        assert!(p.is_unsaved("A"));
        assert_eq!(poll(&mut p, ms(t0, 1020)), [Op::Save("A".into(), 51)]);
    }

    #[test]
    fn flush_all_makes_everything_due_now_and_retries_fast() {
        let t0 = Instant::now();
        let mut p = Policy::new(D, MAX, 0);
        p.changed("A", t0);
        p.changed("B", t0);
        p.changed("C", t0);
        // C failed before the shutdown and waits for a long backoff.
        for _ in 0..6 {
            let now = p.next_deadline().unwrap();
            for op in poll(&mut p, now) {
                if let Op::Save(c, v) = op {
                    let ok = &*c != "C";
                    p.finished(&c, v, ok, now);
                }
            }
        }
        // C's next retry is at 16750 ms; a shutdown at 9000 ms cannot wait.
        let now = ms(t0, 9_000);
        p.changed("D", now);
        p.flush_all();
        let ops = poll(&mut p, now);
        assert_eq!(ops.len(), 2, "C and D at once: {ops:?}");
        for op in ops {
            let Op::Save(c, v) = op else { panic!() };
            p.finished(&c, v, &*c != "C", now);
        }
        assert_eq!(p.unsaved(), 1);
        let next = p.next_deadline().unwrap();
        assert!(next <= now + URGENT_MAX_BACKOFF, "urgent retries are quick");
    }

    #[test]
    fn versions_only_grow_and_pass_what_the_store_holds() {
        let mut p = Policy::new(D, MAX, 10);
        p.observe_version(500);
        assert_eq!(p.next_version(), 501);
        p.observe_version(20);
        assert_eq!(p.next_version(), 502);
    }
}
