//! Session tokens: HS256 JWTs signed with `JWT_SECRET`.
//!
//! Claims are `sub` (the user's `_id` as hex), `role`, `iat`, `exp` (issue
//! time + 7 days) and `ver`, the user's `token_version` when the token was
//! issued. Owns signing and checking signatures and expiry; revocation is the
//! caller's half: a token is revoked when its `ver` differs from the user's
//! current `token_version`. A counter rather than a `tokens_valid_after` time
//! because `iat` has one-second resolution: a login in the same second as a
//! logout must give a working token, and an old token from that second must
//! not keep working.
//!
//! Only HS256 is accepted: `alg:none`, other algorithms, bad signatures,
//! missing claims and expired tokens all fail [`Keys::verify`]. No leeway:
//! there is one clock, ours.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub const TOKEN_LIFETIME_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    pub iat: u64,
    pub exp: u64,
    pub ver: i64,
}

pub struct Keys {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Keys {
    pub fn new(secret: &[u8]) -> Keys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        Keys {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Signs a token for `sub` valid from now for 7 days.
    pub fn issue(&self, sub: &str, role: &str, ver: i64) -> Result<String, String> {
        let iat = now_secs();
        self.sign(&Claims {
            sub: sub.to_string(),
            role: role.to_string(),
            iat,
            exp: iat + TOKEN_LIFETIME_SECS,
            ver,
        })
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        encode(&Header::new(Algorithm::HS256), claims, &self.enc)
            .map_err(|e| format!("signing failed: {e}"))
    }

    /// Signature, algorithm and expiry check. Revocation is not checked here.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        decode::<Claims>(token, &self.dec, &self.validation)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives as a token is refused without a panic, unless
        /// it is one we signed.
        #[test]
        fn arbitrary_tokens_are_refused(t in "\\PC{0,200}", dots in "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}") {
            let k = Keys::new(SECRET);
            prop_assert!(k.verify(&t).is_none());
            prop_assert!(k.verify(&dots).is_none());
        }

        /// Changing any one character of a real token either breaks it or
        /// (only in the signature's unused low bits) leaves the same claims.
        #[test]
        fn a_changed_character_breaks_the_token(pos in 0usize..1000, with in "[A-Za-z0-9_.-]") {
            let k = Keys::new(SECRET);
            let good = k.issue("abc", "user", 1).unwrap();
            let pos = pos % good.len();
            prop_assume!(good[pos..pos + 1] != with);
            let mut bad = good.clone();
            bad.replace_range(pos..pos + 1, &with);
            match k.verify(&bad) {
                None => {}
                Some(c) => {
                    prop_assert_eq!(c, k.verify(&good).unwrap());
                    prop_assert!(pos > good.rfind('.').unwrap(), "payload change accepted");
                }
            }
        }
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn b64(s: &[u8]) -> String {
        // Tiny base64url (no padding) so the tests can forge tokens by hand.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in s.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn roundtrip() {
        let k = Keys::new(SECRET);
        let t = k.issue("abc", "admin", 3).unwrap();
        let c = k.verify(&t).unwrap();
        assert_eq!(c.sub, "abc");
        assert_eq!(c.role, "admin");
        assert_eq!(c.ver, 3);
        assert_eq!(c.exp - c.iat, TOKEN_LIFETIME_SECS);
        assert!(c.iat.abs_diff(now_secs()) <= 1);
    }

    #[test]
    fn rejects_other_secret_and_tampering() {
        let k = Keys::new(SECRET);
        let other = Keys::new(b"another secret of thirty-two bytes!!");
        let t = other.issue("abc", "admin", 0).unwrap();
        assert!(k.verify(&t).is_none());

        let t = k.issue("abc", "user", 0).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let forged_payload = b64(format!(
            r#"{{"sub":"abc","role":"admin","iat":{0},"exp":{1},"ver":0}}"#,
            now_secs(),
            now_secs() + 60
        )
        .as_bytes());
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(k.verify(&forged).is_none());
        assert!(k.verify("garbage").is_none());
        assert!(k.verify("").is_none());
    }

    #[test]
    fn rejects_alg_none() {
        let k = Keys::new(SECRET);
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(format!(
            r#"{{"sub":"abc","role":"admin","iat":{0},"exp":{1},"ver":0}}"#,
            now_secs(),
            now_secs() + 60
        )
        .as_bytes());
        assert!(k.verify(&format!("{header}.{payload}.")).is_none());
        assert!(k.verify(&format!("{header}.{payload}")).is_none());
    }

    #[test]
    fn rejects_expired_and_missing_claims() {
        let k = Keys::new(SECRET);
        let now = now_secs();
        let expired = k
            .sign(&Claims {
                sub: "a".into(),
                role: "user".into(),
                iat: now - 100,
                exp: now - 1,
                ver: 0,
            })
            .unwrap();
        assert!(k.verify(&expired).is_none());
        let fresh = k
            .sign(&Claims {
                sub: "a".into(),
                role: "user".into(),
                iat: now,
                exp: now + 5,
                ver: 0,
            })
            .unwrap();
        assert!(k.verify(&fresh).is_some());
        // Signed correctly but without `ver`.
        #[derive(Serialize)]
        struct NoVer {
            sub: String,
            role: String,
            iat: u64,
            exp: u64,
        }
        let t = encode(
            &Header::new(Algorithm::HS256),
            &NoVer {
                sub: "a".into(),
                role: "user".into(),
                iat: now,
                exp: now + 60,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(k.verify(&t).is_none());
        // HS512 with the right secret is still refused: only HS256 is ours.
        let t = encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                sub: "a".into(),
                role: "user".into(),
                iat: now,
                exp: now + 60,
                ver: 0,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(k.verify(&t).is_none());
    }
}
