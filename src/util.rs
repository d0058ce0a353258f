//! Small helpers with no better home: RFC 3339 timestamps, random
//! identifiers, JSON string quoting.

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats a wall-clock time as RFC 3339 in UTC with millisecond precision,
/// e.g. `2026-11-22T04:12:00.123Z` (always three digits, unlike `time`'s
/// `Rfc3339`, which drops trailing zeros). Times before 1970 read as 1970.
pub fn rfc3339(t: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    time::OffsetDateTime::from_unix_timestamp_nanos(d.as_nanos() as i128)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

/// Compares two byte strings in time that depends only on their lengths
/// (and leaks nothing about where they differ), for secrets a client sends.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Joins worker threads that each send one message on `exited` as they
/// end, waiting `wait` at most. Returns how many were still running; those
/// are left detached (a thread stuck in a blocking call must not hold up
/// the process's exit).
pub fn join_within<T>(
    threads: &mut Vec<std::thread::JoinHandle<()>>,
    exited: &std::sync::mpsc::Receiver<T>,
    wait: std::time::Duration,
) -> usize {
    let deadline = std::time::Instant::now() + wait;
    let mut left = threads.len();
    while left > 0 {
        let now = std::time::Instant::now();
        if now >= deadline || exited.recv_timeout(deadline - now).is_err() {
            break;
        }
        left -= 1;
    }
    if left == 0 {
        for t in threads.drain(..) {
            let _ = t.join();
        }
    }
    left
}

/// Fills `buf` from the operating system's generator.
///
/// Failure here means the OS cannot give randomness at all; identifiers
/// drawn without it would be guessable, so the process stops.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random generator failed");
}

/// `n` characters drawn uniformly from `alphabet` (at most 256 symbols),
/// using `rand` for bytes; rejection sampling avoids modulo bias.
pub fn random_string(alphabet: &[u8], n: usize, rand: &mut dyn FnMut(&mut [u8])) -> String {
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(n);
    let mut pool = [0u8; 32];
    while out.len() < n {
        rand(&mut pool);
        for &b in &pool {
            if (b as usize) < limit && out.len() < n {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// A random UUID version 4 string (the `uuid` crate sets the version and
/// variant bits of 16 random bytes).
pub fn uuid_v4(rand: &mut dyn FnMut(&mut [u8])) -> String {
    let mut b = [0u8; 16];
    rand(&mut b);
    uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// `s` as a JSON string literal, quotes included.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_within_waits_for_the_quick_and_leaves_the_stuck() {
        use std::sync::mpsc;
        let (exit_tx, exit_rx) = mpsc::channel();
        let mut threads: Vec<_> = (0..3)
            .map(|_| {
                let tx = exit_tx.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(());
                })
            })
            .collect();
        assert_eq!(
            join_within(&mut threads, &exit_rx, Duration::from_secs(30)),
            0
        );
        assert!(threads.is_empty());

        let (release_tx, release_rx) = mpsc::channel::<()>();
        let tx = exit_tx.clone();
        let mut stuck = vec![std::thread::spawn(move || {
            let _ = release_rx.recv();
            let _ = tx.send(());
        })];
        assert_eq!(
            join_within(&mut stuck, &exit_rx, Duration::from_millis(20)),
            1
        );
        assert_eq!(stuck.len(), 1, "a busy thread is left, not joined");
        release_tx.send(()).unwrap();
        assert_eq!(
            join_within(&mut stuck, &exit_rx, Duration::from_secs(30)),
            0
        );
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        // Length difference that is a multiple of 256 must still differ.
        assert!(!constant_time_eq(&[0u8; 256], b""));
    }
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_321_920_123);
        assert_eq!(rfc3339(t), "2026-11-22T04:32:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
        // Trailing zeros stay; sub-millisecond digits are cut, not rounded.
        let t = UNIX_EPOCH + Duration::from_nanos(1_795_321_920_120_999_999);
        assert_eq!(rfc3339(t), "2026-11-22T04:32:00.120Z");
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn random_strings_use_only_the_alphabet() {
        let mut counter = 0u8;
        let mut rand = |b: &mut [u8]| {
            for x in b.iter_mut() {
                *x = counter;
                counter = counter.wrapping_add(7);
            }
        };
        let s = random_string(b"ABC", 50, &mut rand);
        assert_eq!(s.len(), 50);
        assert!(s.bytes().all(|c| b"ABC".contains(&c)));
    }

    #[test]
    fn uuid_has_version_and_variant() {
        let u = uuid_v4(&mut fill_random);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
    }
}
