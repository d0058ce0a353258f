//! `ratelimit`: the per-client token buckets in front of
//! `POST /api/rooms` (`ratelimit::RateLimiter`), with any rate and burst
//! the configuration accepts (finite and positive, as
//! `ROOM_CREATE_RATE` / `ROOM_CREATE_BURST` are parsed) and a stream of
//! requests from many addresses at increasing times.
//!
//! Input layout: 8 bytes of rate and 8 of burst (as `f64` bits; values the
//! configuration would refuse become the defaults 2 and 5), a capacity byte,
//! then (key, milliseconds-later) pairs.
//!
//! Checks: never a panic; the map never holds more than its capacity; a
//! refusal says to wait a positive time, and `Retry-After` is at least 1;
//! a client refused at one instant is refused again at the same instant;
//! a client's first request is always allowed (the burst is at least 1).
//!
//! The summary `a<allowed>r<refused>` counts the answers.

use super::common::Input;
use std::time::{Duration, Instant};
use sync_server::ratelimit::{retry_after_secs, RateLimiter};

fn config_float(bits: u64, default: f64) -> f64 {
    let v = f64::from_bits(bits);
    if v.is_finite() && v > 0.0 {
        v
    } else {
        default
    }
}

fn u64_of(input: &mut Input<'_>) -> u64 {
    let mut b = [0u8; 8];
    for x in &mut b {
        *x = input.byte();
    }
    u64::from_le_bytes(b)
}

pub fn run(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let rate = config_float(u64_of(&mut input), 2.0);
    let burst = config_float(u64_of(&mut input), 5.0);
    let capacity = 1 + (input.byte() % 16) as usize;
    let ops = input.rest();

    let mut rl: RateLimiter<u8> = RateLimiter::new(rate, burst, capacity);
    let mut now = Instant::now();
    let mut seen = [false; 32];
    let (mut allowed, mut refused) = (0, 0);
    for pair in ops.chunks_exact(2).take(512) {
        let key = pair[0] % 32;
        now += Duration::from_millis(pair[1] as u64 * 37);
        let first = !seen[key as usize];
        seen[key as usize] = true;
        match rl.check(&key, now) {
            Ok(()) => allowed += 1,
            Err(wait) => {
                assert!(!first, "a first request was refused");
                assert!(retry_after_secs(wait) >= 1);
                assert!(rl.check(&key, now).is_err(), "allowed at the same instant");
                refused += 1;
            }
        }
        assert!(
            rl.len() <= capacity,
            "{} buckets, capacity {capacity}",
            rl.len()
        );
    }
    format!("a{allowed}r{refused}")
}
