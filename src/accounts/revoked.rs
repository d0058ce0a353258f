//! What this server remembers about revoked tokens, for the one moment it
//! cannot ask the database: `REQUIRE_AUTH` admits a signed, unexpired token
//! during an outage so that rooms keep working, and this memory keeps a
//! token that was revoked here (logout, password change, role change,
//! deactivation, deletion) from being one of them.
//!
//! Owns a map from user id to the lowest token version still valid
//! ([`ALL`] when none is: the user was deleted). It is filled
//! from revocations this server made and from user records it read, so it
//! knows revocations other instances made only once it has seen the user
//! since. Invariants: an entry only ever rises (a stale read cannot undo a
//! revocation); at most `cap` entries, and entries older than a token's
//! lifetime go first, since every token they could refuse has expired.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// No token version of the user is valid any more.
pub const ALL: i64 = i64::MAX;

#[derive(Debug)]
pub struct Revocations<K> {
    cap: usize,
    lifetime: Duration,
    /// User → (lowest valid version, when it was last raised).
    min_valid: HashMap<K, (i64, Instant)>,
}

impl<K: Hash + Eq + Clone> Revocations<K> {
    pub fn new(cap: usize, lifetime: Duration) -> Revocations<K> {
        Revocations {
            cap: cap.max(1),
            lifetime,
            min_valid: HashMap::new(),
        }
    }

    /// Tokens of `user` with a version below `min_version` are revoked.
    /// Versions 0 and below carry no information and are not stored.
    pub fn note(&mut self, user: &K, min_version: i64, now: Instant) {
        if min_version <= 0 {
            return;
        }
        if let Some(e) = self.min_valid.get_mut(user) {
            if min_version > e.0 {
                *e = (min_version, now);
            }
            return;
        }
        if self.min_valid.len() >= self.cap {
            self.prune(now);
            if self.min_valid.len() >= self.cap {
                // Full of live entries: this one is not remembered, and its
                // tokens fall back to the signature check during an outage.
                return;
            }
        }
        self.min_valid.insert(user.clone(), (min_version, now));
    }

    /// Whether a token of `user` with `version` is still valid as far as
    /// this memory knows.
    pub fn allows(&self, user: &K, version: i64) -> bool {
        match self.min_valid.get(user) {
            None => true,
            Some(&(min, _)) => min != ALL && version >= min,
        }
    }

    fn prune(&mut self, now: Instant) {
        let lifetime = self.lifetime;
        self.min_valid
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < lifetime);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.min_valid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn unknown_users_and_current_versions_pass() {
        let mut r = Revocations::new(10, DAY);
        let t = Instant::now();
        assert!(r.allows(&"a", 0));
        r.note(&"a", 3, t);
        assert!(!r.allows(&"a", 2));
        assert!(r.allows(&"a", 3));
        assert!(r.allows(&"a", 4));
        assert!(r.allows(&"b", 0));
    }

    #[test]
    fn entries_only_rise() {
        let mut r = Revocations::new(10, DAY);
        let t = Instant::now();
        r.note(&"a", 5, t);
        r.note(&"a", 2, t);
        assert!(!r.allows(&"a", 4));
        r.note(&"a", ALL, t);
        assert!(!r.allows(&"a", 1_000));
        r.note(&"a", 9, t);
        assert!(!r.allows(&"a", 9), "a deleted user stays revoked");
    }

    #[test]
    fn nothing_is_stored_for_version_zero() {
        let mut r = Revocations::new(10, DAY);
        r.note(&"a", 0, Instant::now());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn bounded_and_old_entries_go_first() {
        let mut r = Revocations::new(3, DAY);
        let t = Instant::now();
        for k in 0..3 {
            r.note(&k, 1, t);
        }
        r.note(&99, 1, t);
        assert_eq!(r.len(), 3);
        assert!(
            r.allows(&99, 0),
            "not remembered while full of live entries"
        );
        let later = t + DAY + Duration::from_secs(1);
        r.note(&99, 1, later);
        assert_eq!(r.len(), 1);
        assert!(!r.allows(&99, 0));
    }
}
