//! Small helpers with no better home: RFC 3339 timestamps, random
//! identifiers, JSON string quoting.

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats a wall-clock time as RFC 3339 in UTC with millisecond precision,
/// e.g. `2026-11-22T04:12:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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

/// A random UUID version 4 string.
pub fn uuid_v4(rand: &mut dyn FnMut(&mut [u8])) -> String {
    let mut b = [0u8; 16];
    rand(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `s` as a JSON string literal, quotes included.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_321_920_123);
        assert_eq!(rfc3339(t), "2026-11-22T04:32:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
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
