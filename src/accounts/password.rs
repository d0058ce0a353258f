//! argon2id password hashing, bounded in memory.
//!
//! Owns the hashing parameters, the gate that limits how many hashes run at
//! once, and the memory the hashes work in. One hash with m = 19 MiB fills
//! 19 MiB of argon2 blocks; the gate allows [`MAX_CONCURRENT_HASHES`] at a
//! time, so hashing never holds more than 38 MiB however many workers there
//! are, which keeps the server inside its 100 MB budget.
//!
//! The blocks live in an anonymous `mmap` made for each hash and unmapped
//! right after, not on the heap. Measured: with heap buffers, glibc's
//! adaptive mmap threshold moves 19 MiB allocations into per-thread arenas
//! after the first free, fragmentation keeps them, and a burst of 50 logins
//! left the server at ~200 MB RSS for good; with mapped buffers the memory
//! goes back to the kernel when each hash ends.
//!
//! Verification of an unknown user (or one without a password) runs the
//! same computation on a fixed salt and discards it, so "no such user" costs
//! as much as "wrong password".

use std::ptr::NonNull;
use std::sync::{Condvar, Mutex, OnceLock};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// OWASP's first argon2id recommendation: m = 19 MiB, t = 2, p = 1.
pub const M_COST_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;
const OUTPUT_LEN: usize = 32;
const SALT_LEN: usize = 16;

/// Hashes allowed to run at the same time (each holds `M_COST_KIB`).
pub const MAX_CONCURRENT_HASHES: usize = 2;

/// Stored hashes asking for more memory than this are not computed (and
/// count as a mismatch): the cap must hold whatever is in the database.
const MAX_M_COST_KIB: u32 = 64 * 1024;

fn params() -> Params {
    // The constants are valid by construction (checked by a unit test).
    Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN)).expect("argon2 params")
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

/// argon2 blocks in a private anonymous mapping, unmapped on drop.
struct MappedBlocks {
    ptr: NonNull<Block>,
    len: usize,
}

impl MappedBlocks {
    fn new(len: usize) -> Result<MappedBlocks, String> {
        let bytes = len
            .checked_mul(std::mem::size_of::<Block>())
            .ok_or("argon2 memory size overflows")?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched. The result is checked against MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "cannot map {bytes} bytes for argon2: {}",
                std::io::Error::last_os_error()
            ));
        }
        let ptr = NonNull::new(p.cast::<Block>()).ok_or("mmap returned null")?;
        Ok(MappedBlocks { ptr, len })
    }
}

impl AsMut<[Block]> for MappedBlocks {
    fn as_mut(&mut self) -> &mut [Block] {
        // SAFETY: the mapping is `len` blocks long, page-aligned (more than
        // Block's 64-byte alignment), zero-filled by the kernel (all-zero is
        // a valid Block, which is plain u64 words), and exclusively ours for
        // as long as `self` lives; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedBlocks {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no slice of it
        // outlives `self`.
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.len * std::mem::size_of::<Block>(),
            );
        }
    }
}

/// One argon2 computation, inside the gate, in mapped memory.
fn compute(
    params: &Params,
    version: Version,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    let _slot = gate().acquire();
    let memory = MappedBlocks::new(params.block_count())?;
    Argon2::new(Algorithm::Argon2id, version, params.clone())
        .hash_password_into_with_memory(password, salt, out, memory)
        .map_err(|e| format!("argon2 failed: {e}"))
}

/// Hashes `password` with a fresh random salt; returns the PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let params = params();
    let mut out = [0u8; OUTPUT_LEN];
    compute(
        &params,
        Version::V0x13,
        password.as_bytes(),
        &salt,
        &mut out,
    )?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// Checks `password` against a stored PHC string. No stored hash, or one
/// that does not parse or is not argon2id within the memory cap, counts as a
/// mismatch after doing the same work as a real check.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    match stored.and_then(parse_stored) {
        Some((params, version, salt, expected)) => {
            let mut out = vec![0u8; expected.len()];
            if compute(&params, version, password.as_bytes(), &salt, &mut out).is_err() {
                return false;
            }
            // Output's equality is constant-time.
            Output::new(&out).map(|o| o == expected).unwrap_or(false)
        }
        None => {
            let mut out = [0u8; OUTPUT_LEN];
            let _ = compute(
                &params(),
                Version::V0x13,
                password.as_bytes(),
                b"no-such-user-salt",
                &mut out,
            );
            false
        }
    }
}

type Stored = (Params, Version, Vec<u8>, Output);

fn parse_stored(s: &str) -> Option<Stored> {
    let h = PasswordHash::new(s).ok()?;
    if h.algorithm != argon2::ARGON2ID_IDENT {
        return None;
    }
    let params = Params::try_from(&h).ok()?;
    if params.m_cost() > MAX_M_COST_KIB {
        return None;
    }
    let version = Version::try_from(h.version.unwrap_or(0x13)).ok()?;
    let mut buf = [0u8; 64];
    let salt = h.salt?.decode_b64(&mut buf).ok()?.to_vec();
    let expected = h.hash?;
    Some((params, version, salt, expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn params_are_valid() {
        let p = params();
        assert_eq!(p.m_cost(), 19456);
        assert_eq!(p.block_count(), 19456);
    }

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse battery", Some(&h)));
        assert!(!verify("correct horse batterY", Some(&h)));
        assert!(!verify("anything", None));
        assert!(!verify("anything", Some("not a phc string")));
        // Two hashes of one password differ (fresh salt).
        assert_ne!(h, hash("correct horse battery").unwrap());
    }

    #[test]
    fn compatible_with_the_reference_api() {
        // Our hand-built PHC string verifies with the crate's own verifier,
        // and a hash made by the crate's own hasher verifies with ours.
        let ours = hash("pässwörd with ü").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password("pässwörd with ü".as_bytes(), &parsed)
            .is_ok());

        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"another one", &salt)
        .unwrap()
        .to_string();
        assert!(verify("another one", Some(&theirs)));
        assert!(!verify("another two", Some(&theirs)));
    }

    #[test]
    fn refuses_other_algorithms_and_oversized_memory() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert!(!verify("pw", Some(&argon2i)));
        let huge = "$argon2id$v=19$m=1048576,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(parse_stored(huge).is_none());
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
