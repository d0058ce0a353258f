//! Login rate limits: token buckets keyed by client address and by email.
//!
//! Every attempt spends from both buckets before the password is checked
//! (so concurrent guesses cannot all slip past one check), and a successful
//! login is refunded: only failures count against a client, so an office
//! behind one address can log in all at once.
//!
//! The buckets are the server's ([`crate::ratelimit::RateLimiter`]); this
//! module says them in the accounts' terms. A bucket holds up to `burst`
//! attempts and regains one every `refill`; an attempt on an empty bucket is
//! refused with the number of whole seconds until the next attempt would be
//! allowed (the `Retry-After` value). IPv6 clients are keyed by their /64,
//! the block one subscriber usually gets, so rotating addresses inside it does
//! not buy fresh attempts. Memory is bounded by `max_keys` live buckets.

use crate::ratelimit::{retry_after_secs, RateLimiter};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Limiter<K> {
    buckets: RateLimiter<K>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(burst: u32, refill: Duration, max_keys: usize) -> Limiter<K> {
        let refill = refill.max(Duration::from_millis(1));
        Limiter {
            buckets: RateLimiter::new(
                1.0 / refill.as_secs_f64(),
                burst.max(1) as f64,
                max_keys.max(16),
            ),
        }
    }

    /// Would an attempt be allowed now? Does not spend anything.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), u64> {
        self.buckets.peek(key, now).map_err(retry_after_secs)
    }

    /// Spends one attempt (after a successful [`check`](Self::check)).
    pub fn spend(&mut self, key: &K, now: Instant) {
        self.buckets.spend(key, now);
    }

    /// Gives back one attempt spent earlier (capped at the burst), for an
    /// attempt that turned out not to count.
    pub fn refund(&mut self, key: &K, now: Instant) {
        self.buckets.refund(key, now);
    }

    /// `check` then `spend`.
    #[cfg(test)]
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), u64> {
        self.check(key, now)?;
        self.spend(key, now);
        Ok(())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// The rate-limit key of a client address: IPv4 as is, IPv6 by /64
/// (IPv4-mapped IPv6 addresses count as their IPv4 address).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let mut s = v6.segments();
            s[4..].iter_mut().for_each(|x| *x = 0);
            IpAddr::V6(s.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut l = Limiter::new(3, Duration::from_secs(10), 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take(&"k", t0), Ok(()));
        }
        assert_eq!(l.take(&"k", t0), Err(10));
        assert_eq!(l.take(&"k", t0 + Duration::from_secs(4)), Err(6));
        assert_eq!(l.take(&"k", t0 + Duration::from_secs(10)), Ok(()));
        assert!(l.take(&"k", t0 + Duration::from_secs(10)).is_err());
        // Other keys are independent.
        assert_eq!(l.take(&"other", t0), Ok(()));
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.take(&"k", later), Ok(()));
        }
        assert!(l.take(&"k", later).is_err());
    }

    #[test]
    fn check_does_not_spend() {
        let mut l = Limiter::new(1, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        assert!(l.check(&1, t0).is_ok());
        assert!(l.check(&1, t0).is_ok());
        l.spend(&1, t0);
        assert_eq!(l.check(&1, t0), Err(60));
    }

    #[test]
    fn refund_gives_one_attempt_back() {
        let mut l = Limiter::new(2, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        l.take(&1, t0).unwrap();
        l.take(&1, t0).unwrap();
        assert!(l.check(&1, t0).is_err());
        l.refund(&1, t0);
        assert!(l.take(&1, t0).is_ok());
        assert!(l.check(&1, t0).is_err());
        // Never above the burst, and a full bucket is forgotten.
        l.refund(&1, t0);
        l.refund(&1, t0);
        l.refund(&1, t0);
        assert_eq!(l.len(), 0);
        l.refund(&2, t0);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let mut l = Limiter::new(1, Duration::from_millis(100), 100);
        let t0 = Instant::now();
        l.take(&1, t0).unwrap();
        assert_eq!(l.check(&1, t0), Err(1));
    }

    #[test]
    fn memory_is_bounded() {
        let mut l = Limiter::new(2, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            l.take(&i, t0 + Duration::from_millis(i as u64)).unwrap();
            assert!(l.len() <= 100);
        }
        // Buckets that have refilled completely are pruned first.
        let mut l = Limiter::new(1, Duration::from_secs(1), 16);
        for i in 0..16u32 {
            l.take(&i, t0).unwrap();
        }
        l.take(&100, t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn ipv6_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), v4);
    }
}
