//! The user record, its validation rules and its JSON views.
//!
//! Owns what a valid email, password, role and profile field are, and what a
//! user looks like on the wire. Invariant: the JSON views built here never
//! contain `password_hash` or `token_version`; a user's `setup_token` appears
//! only in the admin list (admins hand the link out), never elsewhere.

use mongodb::bson::{oid::ObjectId, DateTime};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const MIN_PASSWORD_CHARS: usize = 8;
/// argon2 accepts any length; the cap only keeps request bodies from turning
/// into hashing work.
pub const MAX_PASSWORD_BYTES: usize = 1024;
pub const MAX_EMAIL_BYTES: usize = 254;
pub const MAX_PROFILE_CHARS: usize = 200;

pub const ROLE_ADMIN: &str = "admin";
pub const ROLE_USER: &str = "user";

/// Embedded profile. Field names are the browser client's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub nickname: Option<String>,
    #[serde(default)]
    pub position: Option<String>,
}

/// A document of the `users` collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// A UUID the browser client keys its own data on.
    pub user_id: String,
    /// Normalised: trimmed, lower-case. Unique index.
    pub email: String,
    pub role: String,
    /// PHC string, argon2id. `None` until the invitee sets a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    pub is_active: bool,
    /// Single-use invitation secret; removed once the password is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_token: Option<String>,
    /// When `setup_token` stops working. Absent on invitations made before
    /// expiry existed; those keep working until used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_token_expires_at: Option<DateTime>,
    /// Bumped by logout, password change and deactivation; a token whose
    /// `ver` claim differs is revoked.
    #[serde(default)]
    pub token_version: i64,
    #[serde(default)]
    pub discord_id: Option<String>,
    #[serde(default)]
    pub profile: Profile,
    pub created_at: DateTime,
    #[serde(default)]
    pub updated_at: Option<DateTime>,
}

impl User {
    pub fn id_hex(&self) -> String {
        self.id.to_hex()
    }

    pub fn is_admin(&self) -> bool {
        self.role == ROLE_ADMIN
    }

    /// The profile as the client sees it (with `discord_id`, which the old
    /// server kept beside the profile).
    pub fn profile_json(&self) -> Value {
        json!({
            "first_name": self.profile.first_name,
            "last_name": self.profile.last_name,
            "nickname": self.profile.nickname,
            "position": self.profile.position,
            "discord_id": self.discord_id,
        })
    }

    /// `GET /api/auth/me` body.
    pub fn me_json(&self) -> Value {
        json!({
            "success": true,
            "id": self.id_hex(),
            "user_id": self.user_id,
            "email": self.email,
            "role": self.role,
            "is_active": self.is_active,
            "discord_id": self.discord_id,
            "profile": self.profile_json(),
        })
    }

    /// One entry of `GET /api/auth/users` (admins only).
    pub fn admin_list_json(&self) -> Value {
        json!({
            "id": self.id_hex(),
            "user_id": self.user_id,
            "email": self.email,
            "role": self.role,
            "is_active": self.is_active,
            "has_password": self.password_hash.is_some(),
            "created_at": rfc3339(self.created_at),
            "setup_token": self.setup_token,
            "setup_link": self.setup_token.as_ref().map(|t| setup_link(t)),
            "setup_expires_at": self.setup_token_expires_at.map(rfc3339),
            "discord_id": self.discord_id,
            "profile": self.profile_json(),
        })
    }
}

/// How long an invitation's setup link works.
pub const SETUP_TOKEN_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

impl User {
    /// Whether `setup_token` may still be used at `now`.
    pub fn setup_token_live(&self, now: DateTime) -> bool {
        self.setup_token.is_some()
            && self
                .setup_token_expires_at
                .map_or(true, |exp| now.timestamp_millis() < exp.timestamp_millis())
    }
}

pub fn setup_link(token: &str) -> String {
    format!("/setup-password?token={token}")
}

fn rfc3339(t: DateTime) -> String {
    t.try_to_rfc3339_string().unwrap_or_default()
}

/// Trims and lower-cases an email and checks its shape. The result is what
/// the unique index holds, so "A@x.org " and "a@x.org" are the same account.
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("Email is required");
    }
    if email.len() > MAX_EMAIL_BYTES {
        return Err("Email is too long");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("Email address is not valid");
    };
    let bad_char =
        |c: char| c.is_whitespace() || c.is_control() || c == '@' || c == '<' || c == '>';
    if local.is_empty()
        || domain.is_empty()
        || email.chars().any(|c| c.is_whitespace() || c.is_control())
        || domain.chars().any(bad_char)
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return Err("Email address is not valid");
    }
    Ok(email)
}

/// Passwords: at least 8 characters, at most 1 KiB. Never trimmed.
pub fn validate_password(p: &str) -> Result<(), &'static str> {
    if p.chars().count() < MIN_PASSWORD_CHARS {
        return Err("Password must be at least 8 characters");
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err("Password must be at most 1024 bytes");
    }
    Ok(())
}

pub fn validate_role(r: &str) -> Result<String, &'static str> {
    match r.trim().to_ascii_lowercase().as_str() {
        ROLE_ADMIN => Ok(ROLE_ADMIN.to_string()),
        ROLE_USER => Ok(ROLE_USER.to_string()),
        _ => Err("Role must be \"admin\" or \"user\""),
    }
}

/// Trims a profile field; an empty value clears it (`None`).
pub fn clean_profile_field(v: &str) -> Result<Option<String>, &'static str> {
    let v = v.trim();
    if v.chars().count() > MAX_PROFILE_CHARS {
        return Err("Profile fields must be at most 200 characters");
    }
    if v.chars().any(char::is_control) {
        return Err("Profile fields must not contain control characters");
    }
    Ok(if v.is_empty() {
        None
    } else {
        Some(v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A normalised email is a fixed point, so the unique index sees
        /// one spelling per account however often it is normalised.
        #[test]
        fn email_normalisation_is_idempotent(raw in "\\PC{0,40}(@\\PC{0,20})?") {
            if let Ok(e) = normalize_email(&raw) {
                prop_assert_eq!(normalize_email(&e), Ok(e.clone()));
                prop_assert_eq!(e.trim(), e.as_str());
                prop_assert!(e.len() <= MAX_EMAIL_BYTES);
                prop_assert_eq!(e.matches('@').count() >= 1, true);
            }
        }

        /// Case and surrounding space never make two accounts.
        #[test]
        fn email_case_and_space_do_not_matter(local in "[a-zA-Z0-9._+-]{1,20}", domain in "[a-zA-Z0-9-]{1,20}\\.[a-zA-Z]{2,6}") {
            let plain = format!("{local}@{domain}");
            let noisy = format!("  {}\t", plain.to_uppercase());
            prop_assert_eq!(normalize_email(&plain), normalize_email(&noisy));
            prop_assert!(normalize_email(&plain).is_ok());
        }

        #[test]
        fn profile_fields_come_back_trimmed_and_clean(v in "\\PC{0,250}") {
            if let Ok(Some(c)) = clean_profile_field(&v) {
                prop_assert_eq!(c.trim(), c.as_str());
                prop_assert!(!c.is_empty());
                prop_assert!(!c.chars().any(char::is_control));
                prop_assert!(c.chars().count() <= MAX_PROFILE_CHARS);
            }
        }
    }

    #[test]
    fn email_normalisation() {
        assert_eq!(
            normalize_email("  Alice@Example.ORG\t").unwrap(),
            "alice@example.org"
        );
        assert_eq!(
            normalize_email("a.b+tag@sub.example.co.th").unwrap(),
            "a.b+tag@sub.example.co.th"
        );
        assert_eq!(
            normalize_email("ÉMILE@exemple.fr").unwrap(),
            "émile@exemple.fr"
        );
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "@example.org",
            "a@",
            "a b@example.org",
            "a@b@c",
            "a@.x",
            "a@x.",
            "a@x..y",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("{}@example.org", "a".repeat(250));
        assert!(normalize_email(&long).is_err());
    }

    #[test]
    fn password_rules() {
        assert!(validate_password("1234567").is_err());
        assert!(validate_password("12345678").is_ok());
        // Counted in characters, not bytes: eight Thai letters are enough.
        assert!(validate_password("กขฃคฅฆงจ").is_ok());
        assert!(validate_password("กขฃคฅฆง").is_err());
        assert!(validate_password(&"x".repeat(1025)).is_err());
        // Not trimmed: spaces count.
        assert!(validate_password("  abc   ").is_ok());
    }

    #[test]
    fn roles() {
        assert_eq!(validate_role("Admin").unwrap(), "admin");
        assert_eq!(validate_role("user").unwrap(), "user");
        assert!(validate_role("root").is_err());
        assert!(validate_role("").is_err());
    }

    #[test]
    fn profile_fields() {
        assert_eq!(
            clean_profile_field("  Som  ").unwrap().as_deref(),
            Some("Som")
        );
        assert_eq!(clean_profile_field("   ").unwrap(), None);
        assert!(clean_profile_field("a\u{0}b").is_err());
        assert!(clean_profile_field(&"x".repeat(201)).is_err());
    }

    #[test]
    fn views_never_show_secrets() {
        let u = User {
            id: ObjectId::new(),
            user_id: "u".into(),
            email: "a@b.c".into(),
            role: ROLE_ADMIN.into(),
            password_hash: Some("$argon2id$v=19$secret-hash".into()),
            is_active: true,
            setup_token: None,
            setup_token_expires_at: None,
            token_version: 7,
            discord_id: None,
            profile: Profile::default(),
            created_at: DateTime::now(),
            updated_at: None,
        };
        for v in [u.me_json(), u.admin_list_json()] {
            let s = v.to_string();
            assert!(!s.contains("argon2"), "{s}");
            assert!(!s.contains("password_hash"), "{s}");
            assert!(!s.contains("token_version"), "{s}");
        }
    }
}
