//! argon2id password hashing, bounded in memory.
//!
//! Owns the hashing parameters and the gate that limits how many hashes run
//! at once. One hash with these parameters fills 19 MiB of argon2 blocks for a few
//! tens of milliseconds (release build); the gate allows
//! [`MAX_CONCURRENT_HASHES`] of them, so hashing never holds more than
//! 38 MiB however many workers there are, which keeps the server inside its
//! 100 MB budget. Verification of an unknown user runs against a dummy hash
//! made with the same parameters, so "no such user" costs as much as "wrong
//! password".

use std::sync::{Condvar, Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// OWASP's first argon2id recommendation: m = 19 MiB, t = 2, p = 1.
pub const M_COST_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

/// Hashes allowed to run at the same time (each holds `M_COST_KIB`).
pub const MAX_CONCURRENT_HASHES: usize = 2;

fn hasher() -> Argon2<'static> {
    // The constants are valid by construction (checked by a unit test).
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).expect("argon2 params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A counting gate: `acquire` blocks a worker until a slot is free.
struct Gate {
    free: Mutex<usize>,
    cv: Condvar,
}

struct Slot<'a>(&'a Gate);

impl Gate {
    fn acquire(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
        self.0.cv.notify_one();
    }
}

fn gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| Gate {
        free: Mutex::new(MAX_CONCURRENT_HASHES),
        cv: Condvar::new(),
    })
}

/// Hashes `password` with a fresh random salt; returns the PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$...`).
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let _slot = gate().acquire();
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("argon2 failed: {e}"))
}

/// Checks `password` against a stored PHC string. A stored value that does
/// not parse counts as a mismatch (after doing the same work as a real one).
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    let real = stored.and_then(|s| PasswordHash::new(s).ok());
    let _slot = gate().acquire();
    match real {
        Some(h) => hasher().verify_password(password.as_bytes(), &h).is_ok(),
        None => {
            // Same cost as a real check, and always false.
            let dummy = dummy_hash();
            if let Ok(h) = PasswordHash::new(dummy) {
                let _ = hasher().verify_password(password.as_bytes(), &h);
            }
            false
        }
    }
}

/// A hash of a random password nobody knows, made once with the same parameters.
/// Computing it takes one hash's time; the maintenance thread warms it at
/// start so the first unknown-email login is not slower than the rest.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 32];
        // Without randomness the dummy is still never matched: verify() ignores
        // its result.
        let _ = getrandom::fill(&mut secret);
        let salt = SaltString::encode_b64(&secret[..16]).expect("16-byte salt");
        hasher()
            .hash_password(&secret, &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_valid() {
        let p = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap();
        assert_eq!(p.m_cost(), 19456);
    }

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_eq!(
            PasswordHash::new(&h).unwrap().algorithm.as_str(),
            "argon2id"
        );
        assert!(verify("correct horse battery", Some(&h)));
        assert!(!verify("correct horse batterY", Some(&h)));
        assert!(!verify("anything", None));
        assert!(!verify("anything", Some("not a phc string")));
        // Two hashes of one password differ (fresh salt).
        assert_ne!(h, hash("correct horse battery").unwrap());
    }

    #[test]
    fn gate_bounds_concurrency() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let g = Arc::new(Gate {
            free: Mutex::new(2),
            cv: Condvar::new(),
        });
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (g, running, peak) = (g.clone(), running.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _s = g.acquire();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 2);
        assert_eq!(*g.free.lock().unwrap(), 2);
    }
}
