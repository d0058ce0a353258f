//! Accounts configuration read from the environment.
//!
//! Owns the parsing and validation of every accounts variable. Invariant: an
//! [`AccountsConfig`] that exists is usable: the URI parses, the JWT secret is
//! at least 32 bytes, the bootstrap admin (if any) has a valid email and
//! password. Errors name the offending variable and never echo a secret.

use std::fmt;
use std::time::Duration;

use super::model;

/// Smallest accepted `JWT_SECRET`, in bytes (HS256 wants a key at least as
/// long as its 256-bit output).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The bootstrap admin from `INITIAL_ADMIN_*`.
#[derive(Clone)]
pub struct InitialAdmin {
    /// Normalised (trimmed, lower-case).
    pub email: String,
    pub password: String,
    pub nickname: Option<String>,
}

impl fmt::Debug for InitialAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitialAdmin")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .field("nickname", &self.nickname)
            .finish()
    }
}

/// Login attempt budgets (token buckets). A bucket holds `burst` attempts and
/// refills one attempt every `refill`. The "email" budget is kept per client
/// address and email together: a guesser elsewhere must not lock the
/// account's owner out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_ip_burst: u32,
    pub per_ip_refill: Duration,
    pub per_email_burst: u32,
    pub per_email_refill: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        // 20 attempts per minute from one address, 10 per 5 minutes against
        // one email: plenty for people who mistype, far too slow for guessing.
        LoginLimits {
            per_ip_burst: 20,
            per_ip_refill: Duration::from_secs(3),
            per_email_burst: 10,
            per_email_refill: Duration::from_secs(30),
        }
    }
}

/// Everything the accounts layer needs, from `MONGODB_URI`, `DB_NAME`,
/// `JWT_SECRET`, `INITIAL_SETUP_TOKEN`, `INITIAL_ADMIN_EMAIL` / `_PASSWORD` /
/// `_NICKNAME`, `ACCOUNT_WORKERS`, `ACCOUNT_QUEUE`, `REQUIRE_AUTH`,
/// `LOGIN_RATE_PER_IP` and `LOGIN_RATE_PER_EMAIL`.
#[derive(Clone)]
pub struct AccountsConfig {
    pub mongodb_uri: String,
    pub db_name: String,
    pub jwt_secret: Vec<u8>,
    pub setup_token: Option<String>,
    pub initial_admin: Option<InitialAdmin>,
    pub workers: usize,
    pub queue: usize,
    pub require_auth: bool,
    pub login_limits: LoginLimits,
    pub setup_limits: SetupLimits,
}

/// Budgets for wrong `X-Setup-Token` values: per client address and for the
/// whole server. Only failures spend; a client (or everyone) out of budget
/// gets 429 before its token is even compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupLimits {
    pub per_ip_burst: u32,
    pub per_ip_refill: Duration,
    pub total_burst: u32,
    pub total_refill: Duration,
}

impl Default for SetupLimits {
    fn default() -> Self {
        // 5 wrong tokens per client, then one a minute; 20 in all, then one
        // every 10 s. A 16-character token is out of reach either way.
        SetupLimits {
            per_ip_burst: 5,
            per_ip_refill: Duration::from_secs(60),
            total_burst: 20,
            total_refill: Duration::from_secs(10),
        }
    }
}

/// Shortest `INITIAL_SETUP_TOKEN` accepted at start-up.
pub const MIN_SETUP_TOKEN_CHARS: usize = 16;

impl fmt::Debug for AccountsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URI may carry a password; only say whether things are set.
        f.debug_struct("AccountsConfig")
            .field("db_name", &self.db_name)
            .field("setup_token", &self.setup_token.as_ref().map(|_| "<set>"))
            .field("initial_admin", &self.initial_admin)
            .field("workers", &self.workers)
            .field("queue", &self.queue)
            .field("require_auth", &self.require_auth)
            .field("login_limits", &self.login_limits)
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_DB_NAME: &str = "tracker-db";
pub const DEFAULT_WORKERS: usize = 2;
pub const MAX_WORKERS: usize = 64;
pub const DEFAULT_QUEUE: usize = 64;
pub const MAX_QUEUE: usize = 1_000_000;

impl AccountsConfig {
    /// Reads the accounts variables through `get` (normally `std::env::var`).
    /// `Ok(None)` when `MONGODB_URI` is unset or empty (accounts disabled);
    /// `Err(message naming the variable)` on a bad value.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<AccountsConfig>, String> {
        // An empty variable counts as unset: `FOO=` in an env file is common.
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());

        let require_auth = match var("REQUIRE_AUTH") {
            None => false,
            Some(v) => parse_bool(&v)
                .ok_or_else(|| format!("REQUIRE_AUTH must be true or false (got {v:?})"))?,
        };

        let Some(mongodb_uri) = var("MONGODB_URI") else {
            if require_auth {
                return Err(
                    "REQUIRE_AUTH=true needs MONGODB_URI (accounts are off without it)".into(),
                );
            }
            return Ok(None);
        };
        let mongodb_uri = mongodb_uri.trim().to_string();
        // Pure syntax check, no I/O: a typo stops start-up instead of turning
        // into 503s forever.
        mongodb::options::ConnectionString::parse(&mongodb_uri).map_err(|e| {
            format!(
                "MONGODB_URI is not a valid MongoDB connection string: {}",
                redact_uri_error(&e)
            )
        })?;

        let db_name = var("DB_NAME").unwrap_or_else(|| DEFAULT_DB_NAME.to_string());
        let db_name = db_name.trim().to_string();
        if db_name.len() > 63
            || db_name
                .chars()
                .any(|c| "/\\. \"$*<>:|?".contains(c) || c.is_control())
        {
            return Err(format!("DB_NAME is not a valid database name: {db_name:?}"));
        }

        // The core's lookup has trimmed every value, secrets too (see
        // `Config::from_lookup`).
        let jwt_secret = get("JWT_SECRET")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "JWT_SECRET is required when MONGODB_URI is set".to_string())?;
        if jwt_secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(format!(
                "JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes (got {})",
                jwt_secret.len()
            ));
        }

        let setup_token = get("INITIAL_SETUP_TOKEN").filter(|s| !s.is_empty());
        if let Some(t) = &setup_token {
            let n = t.chars().count();
            if n < MIN_SETUP_TOKEN_CHARS {
                return Err(format!(
                    "INITIAL_SETUP_TOKEN must be at least {MIN_SETUP_TOKEN_CHARS} characters (got {n}); \
                     a short one can be guessed (try: openssl rand -hex 16)"
                ));
            }
        }

        let initial_admin = match (
            var("INITIAL_ADMIN_EMAIL"),
            get("INITIAL_ADMIN_PASSWORD").filter(|s| !s.is_empty()),
        ) {
            (None, None) => None,
            (Some(_), None) => {
                return Err("INITIAL_ADMIN_PASSWORD is required with INITIAL_ADMIN_EMAIL".into())
            }
            (None, Some(_)) => {
                return Err("INITIAL_ADMIN_EMAIL is required with INITIAL_ADMIN_PASSWORD".into())
            }
            (Some(email), Some(password)) => {
                let email = model::normalize_email(&email)
                    .map_err(|e| format!("INITIAL_ADMIN_EMAIL: {e}"))?;
                model::validate_password(&password)
                    .map_err(|e| format!("INITIAL_ADMIN_PASSWORD: {e}"))?;
                let nickname = match var("INITIAL_ADMIN_NICKNAME") {
                    None => None,
                    Some(n) => model::clean_profile_field(&n)
                        .map_err(|e| format!("INITIAL_ADMIN_NICKNAME: {e}"))?,
                };
                Some(InitialAdmin {
                    email,
                    password,
                    nickname,
                })
            }
        };

        let workers = parse_count(&var, "ACCOUNT_WORKERS", DEFAULT_WORKERS, MAX_WORKERS)?;
        let queue = parse_count(&var, "ACCOUNT_QUEUE", DEFAULT_QUEUE, MAX_QUEUE)?;

        let mut login_limits = LoginLimits::default();
        if let Some(v) = var("LOGIN_RATE_PER_IP") {
            let n = parse_rate(&v).ok_or_else(|| {
                format!("LOGIN_RATE_PER_IP must be a number of attempts per minute, 1 to 100000 (got {v:?})")
            })?;
            login_limits.per_ip_burst = n;
            login_limits.per_ip_refill = Duration::from_secs(60) / n;
        }
        if let Some(v) = var("LOGIN_RATE_PER_EMAIL") {
            let n = parse_rate(&v).ok_or_else(|| {
                format!("LOGIN_RATE_PER_EMAIL must be a number of attempts per 5 minutes, 1 to 100000 (got {v:?})")
            })?;
            login_limits.per_email_burst = n;
            login_limits.per_email_refill = Duration::from_secs(300) / n;
        }

        Ok(Some(AccountsConfig {
            mongodb_uri,
            db_name,
            jwt_secret: jwt_secret.into_bytes(),
            setup_token,
            initial_admin,
            workers,
            queue,
            require_auth,
            login_limits,
            setup_limits: SetupLimits::default(),
        }))
    }

    /// `REQUIRE_AUTH`: rooms need a valid bearer token.
    pub fn require_auth(&self) -> bool {
        self.require_auth
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_count(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, String> {
    match var(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "{name} must be a whole number from 1 to {max} (got {v:?})"
            )),
        },
    }
}

fn parse_rate(v: &str) -> Option<u32> {
    v.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=100_000).contains(n))
}

/// The driver's parse errors can quote the URI, password included; keep only
/// the kind of problem.
fn redact_uri_error(e: &mongodb::error::Error) -> String {
    match &*e.kind {
        mongodb::error::ErrorKind::InvalidArgument { .. } => "invalid argument".to_string(),
        _ => "unparsable".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn disabled_without_uri() {
        assert!(AccountsConfig::from_lookup(lookup(&[])).unwrap().is_none());
        assert!(AccountsConfig::from_lookup(lookup(&[("MONGODB_URI", " ")]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn require_auth_needs_uri() {
        let e = AccountsConfig::from_lookup(lookup(&[("REQUIRE_AUTH", "true")])).unwrap_err();
        assert!(e.contains("REQUIRE_AUTH"), "{e}");
        assert!(
            AccountsConfig::from_lookup(lookup(&[("REQUIRE_AUTH", "false")]))
                .unwrap()
                .is_none()
        );
        let e = AccountsConfig::from_lookup(lookup(&[("REQUIRE_AUTH", "maybe")])).unwrap_err();
        assert!(e.contains("REQUIRE_AUTH"), "{e}");
    }

    #[test]
    fn defaults() {
        let c = AccountsConfig::from_lookup(lookup(&[
            ("MONGODB_URI", "mongodb://127.0.0.1:27017"),
            ("JWT_SECRET", SECRET),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.db_name, "tracker-db");
        assert_eq!(c.workers, 2);
        assert_eq!(c.queue, 64);
        assert!(!c.require_auth());
        assert!(c.setup_token.is_none());
        assert!(c.initial_admin.is_none());
        assert_eq!(c.login_limits, LoginLimits::default());
    }

    #[test]
    fn jwt_secret_rules() {
        let e = AccountsConfig::from_lookup(lookup(&[("MONGODB_URI", "mongodb://h")])).unwrap_err();
        assert!(e.contains("JWT_SECRET"), "{e}");
        let e = AccountsConfig::from_lookup(lookup(&[
            ("MONGODB_URI", "mongodb://h"),
            ("JWT_SECRET", "short"),
        ]))
        .unwrap_err();
        assert!(e.contains("JWT_SECRET") && e.contains("32"), "{e}");
        assert!(!e.contains("short"), "the secret must not be echoed: {e}");
    }

    #[test]
    fn a_short_setup_token_stops_start_up() {
        let base = [("MONGODB_URI", "mongodb://h"), ("JWT_SECRET", SECRET)];
        let e =
            AccountsConfig::from_lookup(lookup(&[base[0], base[1], ("INITIAL_SETUP_TOKEN", "ab")]))
                .unwrap_err();
        assert!(e.contains("INITIAL_SETUP_TOKEN") && e.contains("16"), "{e}");
        assert!(!e.contains("\"ab\""), "the token must not be echoed: {e}");
        let fifteen = "x".repeat(15);
        assert!(AccountsConfig::from_lookup(lookup(&[
            base[0],
            base[1],
            ("INITIAL_SETUP_TOKEN", &fifteen)
        ]))
        .is_err());
        let c = AccountsConfig::from_lookup(lookup(&[
            base[0],
            base[1],
            ("INITIAL_SETUP_TOKEN", "0123456789abcdef"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.setup_token.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("MONGODB_URI", "http://nope"),
            ("DB_NAME", "a/b"),
            ("ACCOUNT_WORKERS", "0"),
            ("ACCOUNT_WORKERS", "two"),
            ("ACCOUNT_QUEUE", "-1"),
            ("INITIAL_ADMIN_EMAIL", "not-an-email"),
            ("LOGIN_RATE_PER_IP", "0"),
            ("LOGIN_RATE_PER_EMAIL", "x"),
        ] {
            let mut pairs = vec![("MONGODB_URI", "mongodb://h"), ("JWT_SECRET", SECRET)];
            if name == "INITIAL_ADMIN_EMAIL" {
                pairs.push(("INITIAL_ADMIN_PASSWORD", "long enough"));
            }
            pairs.retain(|(k, _)| *k != name);
            pairs.push((name, value));
            let e = AccountsConfig::from_lookup(lookup(&pairs)).unwrap_err();
            assert!(e.contains(name), "{name}={value}: {e}");
        }
    }

    #[test]
    fn uri_password_not_echoed() {
        let e = AccountsConfig::from_lookup(lookup(&[
            (
                "MONGODB_URI",
                "mongodb://user:hunter2secret@h/?bogusOption=%zz",
            ),
            ("JWT_SECRET", SECRET),
        ]));
        if let Err(e) = e {
            assert!(!e.contains("hunter2secret"), "{e}");
        }
    }

    #[test]
    fn initial_admin() {
        let c = AccountsConfig::from_lookup(lookup(&[
            ("MONGODB_URI", "mongodb://h"),
            ("JWT_SECRET", SECRET),
            ("INITIAL_ADMIN_EMAIL", "  Boss@Example.COM "),
            ("INITIAL_ADMIN_PASSWORD", "correct horse"),
            ("INITIAL_ADMIN_NICKNAME", "Boss"),
            ("ACCOUNT_WORKERS", "3"),
            ("REQUIRE_AUTH", "TRUE"),
            ("LOGIN_RATE_PER_IP", "120"),
        ]))
        .unwrap()
        .unwrap();
        let a = c.initial_admin.as_ref().unwrap();
        assert_eq!(a.email, "boss@example.com");
        assert_eq!(a.nickname.as_deref(), Some("Boss"));
        assert_eq!(c.workers, 3);
        assert!(c.require_auth());
        assert_eq!(c.login_limits.per_ip_burst, 120);
        assert_eq!(c.login_limits.per_ip_refill, Duration::from_millis(500));
        assert!(!format!("{c:?}").contains("correct horse"));

        let e = AccountsConfig::from_lookup(lookup(&[
            ("MONGODB_URI", "mongodb://h"),
            ("JWT_SECRET", SECRET),
            ("INITIAL_ADMIN_EMAIL", "a@b.c"),
        ]))
        .unwrap_err();
        assert!(e.contains("INITIAL_ADMIN_PASSWORD"), "{e}");
        let e = AccountsConfig::from_lookup(lookup(&[
            ("MONGODB_URI", "mongodb://h"),
            ("JWT_SECRET", SECRET),
            ("INITIAL_ADMIN_EMAIL", "a@b.c"),
            ("INITIAL_ADMIN_PASSWORD", "short"),
        ]))
        .unwrap_err();
        assert!(
            e.contains("INITIAL_ADMIN_PASSWORD") && !e.contains("short\""),
            "{e}"
        );
    }
}
