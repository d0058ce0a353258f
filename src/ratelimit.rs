//! Sans-io token buckets: one [`TokenBucket`] (a connection's message rate)
//! and [`RateLimiter`], a bounded map of buckets per key (client addresses
//! for room creation and lookups, admin failures, and the accounts' login
//! and setup limits through `accounts::ratelimit`).
//!
//! A bucket holds up to `burst` tokens and regains `rate` per second. The
//! map is bounded: when it reaches its capacity, buckets that have refilled
//! completely (and so carry no information) are dropped first; if it is
//! still full of draining buckets, the least recently used half goes. A
//! client with that many addresses gains a few attempts; the alternative,
//! unbounded memory, is worse.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long until `tokens` reach one at `rate` per second. A tiny
/// configured rate makes the wait too long for a `Duration`
/// (`from_secs_f64` would panic): cap it.
fn wait_for_token(tokens: f64, rate: f64) -> Duration {
    Duration::try_from_secs_f64((1.0 - tokens) / rate).unwrap_or(Duration::MAX)
}

/// One token bucket on its own: `burst` tokens refilled at `rate` per
/// second, both given on each call (the caller's configuration owns them).
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst.max(1.0),
            updated: now,
        }
    }

    /// The tokens there would be at `now`, without changing anything.
    fn level(&self, rate: f64, burst: f64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst.max(1.0))
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        self.tokens = self.level(rate, burst, now);
        self.updated = now;
    }

    /// Whether a token is there; `Err(wait)` until one will be.
    pub fn check(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(wait_for_token(self.tokens, rate))
        }
    }

    /// Spends a token (after a successful [`Self::check`]).
    pub fn take(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

/// A set of per-key token buckets.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    capacity: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate: f64, burst: f64, capacity: usize) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            capacity: capacity.max(1),
            buckets: HashMap::new(),
        }
    }

    /// The bucket of `key`, a full one if it has none (making room first).
    fn bucket(&mut self, key: &K, now: Instant) -> &mut TokenBucket {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.capacity {
            self.prune(now);
        }
        let burst = self.burst;
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(burst, now))
    }

    /// Takes one token for `key`. `Err(wait)` says how long until one is
    /// available.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, self.burst);
        let b = self.bucket(key, now);
        b.check(rate, burst, now)?;
        b.take();
        Ok(())
    }

    /// Whether `key` has a token, without taking it. A key without a bucket
    /// has a full one.
    pub fn peek(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let Some(b) = self.buckets.get(key) else {
            return Ok(());
        };
        let tokens = b.level(self.rate, self.burst, now);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(wait_for_token(tokens, self.rate))
        }
    }

    /// Spends one token for `key` whether or not there is one (after a
    /// successful [`Self::peek`], when several limits must all agree
    /// before any is spent).
    pub fn spend(&mut self, key: &K, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        let b = self.bucket(key, now);
        b.refill(rate, burst, now);
        b.take();
    }

    /// Gives back one token spent earlier (capped at the burst), for an
    /// attempt that turned out not to count. A bucket that is full again
    /// carries no information and is dropped.
    pub fn refund(&mut self, key: &K, now: Instant) {
        let Some(b) = self.buckets.get_mut(key) else {
            return;
        };
        b.refill(self.rate, self.burst, now);
        b.tokens += 1.0;
        if b.tokens >= self.burst {
            self.buckets.remove(key);
        }
    }

    /// The budget for looking up room codes (protocol rule 12): a lookup
    /// of a code that does not exist takes a token; one that finds its
    /// room takes none, but is refused too while the budget is spent, or a
    /// guesser over its budget would still tell its hits from its misses.
    pub fn check_lookup(&mut self, key: &K, found: bool, now: Instant) -> Result<(), Duration> {
        if found {
            self.peek(key, now)
        } else {
            self.check(key, now)
        }
    }

    fn prune(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .retain(|_, b| b.level(rate, burst, now) < burst);
        if self.buckets.len() >= self.capacity {
            // Still full of live buckets: forget the least recently used
            // half (a linear-time selection, not a sort: this can run on
            // the loop with a large map).
            let mut ages: Vec<Instant> = self.buckets.values().map(|b| b.updated).collect();
            let half = self.capacity / 2;
            if half == 0 {
                self.buckets.clear();
                return;
            }
            let (_, cut, _) = ages.select_nth_unstable(half - 1);
            let cut = *cut;
            let mut dropped = 0;
            self.buckets.retain(|_, b| {
                let old = b.updated <= cut && dropped < half;
                dropped += old as usize;
                !old
            });
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Seconds for a `Retry-After` header: whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(2.0, 5.0, 100);
        for _ in 0..5 {
            assert!(rl.check(&1, t0).is_ok());
        }
        let wait = rl.check(&1, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::from_millis(400));
        assert_eq!(retry_after_secs(wait), 1);
        // Another client is unaffected.
        assert!(rl.check(&2, t0).is_ok());
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(rl.check(&1, t1).is_ok());
        assert!(rl.check(&1, t1).is_err());
    }

    #[test]
    fn lookups_of_existing_rooms_cost_nothing() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1.0, 3.0, 100);
        for _ in 0..1000 {
            assert!(rl.check_lookup(&1, true, t0).is_ok());
        }
        assert!(rl.is_empty(), "a hit leaves no bucket behind");
        for _ in 0..3 {
            assert!(rl.check_lookup(&1, false, t0).is_ok());
        }
        // Spent: misses and hits alike wait, others are unaffected.
        assert!(rl.check_lookup(&1, false, t0).is_err());
        let wait = rl.check_lookup(&1, true, t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(rl.check_lookup(&2, false, t0).is_ok());
        let t1 = t0 + Duration::from_secs(1);
        assert!(rl.check_lookup(&1, true, t1).is_ok());
        assert!(rl.check_lookup(&1, true, t1).is_ok(), "a hit took no token");
    }

    #[test]
    fn peek_takes_nothing() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1.0, 2.0, 100);
        assert!(rl.peek(&1, t0).is_ok());
        assert!(rl.check(&1, t0).is_ok());
        for _ in 0..10 {
            assert!(rl.peek(&1, t0).is_ok());
        }
        assert!(rl.check(&1, t0).is_ok());
        assert!(rl.peek(&1, t0).is_err());
        assert!(rl.peek(&1, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn a_lone_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3.0, t0);
        for _ in 0..3 {
            assert!(b.check(10.0, 3.0, t0).is_ok());
            b.take();
        }
        let wait = b.check(10.0, 3.0, t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(b.check(10.0, 3.0, t0 + Duration::from_millis(100)).is_ok());
        // Never above the burst however long it rests.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.check(10.0, 3.0, later).is_ok());
            b.take();
        }
        assert!(b.check(10.0, 3.0, later).is_err());
    }

    #[test]
    fn map_stays_bounded() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1.0, 1.0, 10);
        for k in 0..1000 {
            let _ = rl.check(&k, t0);
            assert!(rl.len() <= 10);
        }
        // Full buckets are the first to go once they have refilled.
        let later = t0 + Duration::from_secs(5);
        let _ = rl.check(&5000, later);
        assert_eq!(rl.len(), 1);
    }
}
