//! Server configuration, read once from the environment at start-up.
//!
//! Every knob of the wire contract (§4 of the protocol) lives here with its
//! default. Parsing is a pure function of a lookup closure so tests can build
//! a configuration without touching the process environment. A value that
//! does not parse is an error naming the variable; start-up stops on it.

use std::net::IpAddr;
use std::time::Duration;

/// Largest HTTP request head; owned by the HTTP core, named here too
/// because it is part of the server's fixed limits.
pub use crate::http::MAX_HEADER_BYTES;

/// Upper bound for every `*_SECONDS` setting: one year.
pub const MAX_TIMER_SECONDS: u64 = 365 * 24 * 3600;

/// Runtime configuration. Cheap to clone; the loop keeps one copy.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub log_level: log::LevelFilter,
    /// `None` keeps empty rooms forever (`ROOM_IDLE_TIMEOUT_SECONDS=0`).
    pub room_idle_timeout: Option<Duration>,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    /// Largest message from a WebSocket that has not joined a room, and
    /// from every WebSocket while the memory guard is engaged.
    pub max_prejoin_message_bytes: usize,
    /// Bytes of unfinished WebSocket messages held across all connections.
    pub max_reassembly_bytes: usize,
    /// What queued HTTP answers may cost across all connections before
    /// pipelining peers with unread answers are held back.
    pub max_http_backlog_bytes: usize,
    /// WebSocket messages handled from one connection per loop turn before
    /// the others get their go.
    pub max_messages_per_turn: usize,
    /// A connection's sustained WebSocket message rate (per second) and
    /// burst; over it, it is not read until it is back under.
    pub message_rate: f64,
    pub message_burst: f64,
    pub max_outbound_bytes: usize,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub ping_interval: Duration,
    pub room_create_rate: f64,
    pub room_create_burst: f64,
    /// Per-client budget for looking up room codes that do not exist
    /// (REST 404s and `Room not found` joins): refill per second and burst.
    pub room_miss_rate: f64,
    pub room_miss_burst: f64,
    pub trust_proxy: Option<IpAddr>,
    /// `None` means any origin (`*`).
    pub cors_allowed_origins: Option<Vec<String>>,
    /// Replay history bounds (`ROOM_HISTORY_SIZE`, `ROOM_HISTORY_SECONDS`,
    /// `HISTORY_MEMORY_BYTES`).
    pub history: crate::rooms::history::Limits,
    /// Accounts are enabled when `MONGODB_URI` is set; `REQUIRE_AUTH` lives
    /// in there too.
    pub accounts: Option<crate::accounts::AccountsConfig>,
    /// Where rooms are kept (`ROOM_STORE`, `DATA_DIR`, `ROOM_SAVE_*`).
    pub room_store: crate::store::StoreConfig,
    /// `ADMIN_TOKEN` and `LOG_FORMAT` (§8).
    pub ops: crate::ops::OpsConfig,
    /// Cluster mode: `REDIS_URL`, `NODE_ID`, `NODE_TTL_SECONDS` (§7).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, String> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds a configuration from any key → value lookup.
    pub fn from_lookup(raw: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        // Every value is trimmed, secrets too: an env file with CRLF line
        // ends must not put a `\r` into the JWT key or the setup token
        // (whose HTTP header arrives trimmed, so it could never match).
        let get = |k: &str| {
            raw(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let num = |k: &str, default: u64, min: u64| -> Result<u64, String> {
            match get(k) {
                None => Ok(default),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n >= min => Ok(n),
                    Ok(_) => Err(format!("{k} must be at least {min}, got {v:?}")),
                    Err(_) => Err(format!("{k} must be a whole number, got {v:?}")),
                },
            }
        };
        // Timer settings feed `Instant + Duration`; a bound keeps that sum
        // representable on every platform, and nobody needs more than a year.
        let secs = |k: &str, default: u64, min: u64| -> Result<u64, String> {
            let n = num(k, default, min)?;
            if n > MAX_TIMER_SECONDS {
                return Err(format!(
                    "{k} must be at most {MAX_TIMER_SECONDS} (one year), got {n}"
                ));
            }
            Ok(n)
        };
        let float = |k: &str, default: f64| -> Result<f64, String> {
            match get(k) {
                None => Ok(default),
                Some(v) => match v.parse::<f64>() {
                    Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
                    _ => Err(format!("{k} must be a positive number, got {v:?}")),
                },
            }
        };

        let host = get("HOST").unwrap_or_else(|| "0.0.0.0".to_owned());
        if host.parse::<IpAddr>().is_err() && host != "localhost" {
            return Err(format!("HOST must be an IP address, got {host:?}"));
        }
        let port = match get("PORT") {
            None => 3001,
            Some(v) => v
                .parse::<u16>()
                .map_err(|_| format!("PORT must be a port number (0-65535), got {v:?}"))?,
        };
        let log_level = match get("RUST_LOG") {
            None => log::LevelFilter::Info,
            Some(v) => parse_level(&v).ok_or_else(|| {
                format!("RUST_LOG must be one of off/error/warn/info/debug/trace, got {v:?}")
            })?,
        };
        let idle = secs("ROOM_IDLE_TIMEOUT_SECONDS", 3600, 0)?;
        let trust_proxy = match get("TRUST_PROXY") {
            None => None,
            Some(v) => Some(
                v.parse::<IpAddr>()
                    .map_err(|_| format!("TRUST_PROXY must be an IP address, got {v:?}"))?,
            ),
        };
        let cors = match get("CORS_ALLOWED_ORIGINS") {
            None => None,
            Some(v) if v == "*" => None,
            Some(v) => {
                let list: Vec<String> = v
                    .split(',')
                    .map(|s| s.trim().trim_end_matches('/').to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                if list
                    .iter()
                    .any(|o| o.chars().any(|c| c.is_control() || c == ' '))
                {
                    return Err(format!("CORS_ALLOWED_ORIGINS has an invalid origin: {v:?}"));
                }
                Some(list)
            }
        };
        // Read by the memory guard itself; checked here so that a typo stops
        // start-up like any other bad value instead of being ignored.
        if let Some(v) = get("MEMORY_LIMIT_BYTES") {
            if v.parse::<u64>().is_err() {
                return Err(format!(
                    "MEMORY_LIMIT_BYTES must be a byte count (0 turns the guard off), got {v:?}"
                ));
            }
        }
        let accounts = crate::accounts::AccountsConfig::from_lookup(|k| get(k))?;
        let mut room_store = room_store(&get, &num)?;
        let ops = crate::ops::OpsConfig::from_lookup(|k| get(k))?;
        let cluster = crate::cluster::ClusterConfig::from_lookup(&get, room_store.kind.name())?;
        if cluster.is_some() {
            // Other nodes find rooms in the shared store: a room is written
            // as soon as it changes, not after the single-node delays.
            room_store.save_delay = Duration::ZERO;
            room_store.save_max_delay = Duration::ZERO;
            // ... and a code another node created a moment ago may not be
            // written yet when this node is asked about it.
            room_store.recheck_misses = true;
        }

        Ok(Config {
            host,
            port,
            log_level,
            room_idle_timeout: (idle > 0).then(|| Duration::from_secs(idle)),
            max_connections: num("MAX_CONNECTIONS", 10_000, 1)? as usize,
            max_message_bytes: num("MAX_MESSAGE_BYTES", 16 * 1024 * 1024, 64)? as usize,
            max_prejoin_message_bytes: num("MAX_PREJOIN_MESSAGE_BYTES", 64 * 1024, 1024)? as usize,
            max_reassembly_bytes: num("MAX_REASSEMBLY_BYTES", 32 * 1024 * 1024, 64 * 1024)?
                as usize,
            max_http_backlog_bytes: num("MAX_HTTP_BACKLOG_BYTES", 8 * 1024 * 1024, 0)? as usize,
            max_messages_per_turn: num("MAX_MESSAGES_PER_TURN", 64, 1)? as usize,
            message_rate: float("MESSAGE_RATE", 10_000.0)?,
            message_burst: float("MESSAGE_BURST", 20_000.0)?,
            max_outbound_bytes: num("MAX_OUTBOUND_BYTES", 32 * 1024 * 1024, 1024)? as usize,
            max_body_bytes: num("MAX_BODY_BYTES", 1024 * 1024, 0)? as usize,
            request_timeout: Duration::from_secs(secs("REQUEST_TIMEOUT_SECONDS", 10, 1)?),
            ping_interval: Duration::from_secs(secs("PING_INTERVAL_SECONDS", 30, 1)?),
            room_create_rate: float("ROOM_CREATE_RATE", 2.0)?,
            room_create_burst: float("ROOM_CREATE_BURST", 5.0)?,
            room_miss_rate: float("ROOM_MISS_RATE", 1.0)?,
            room_miss_burst: float("ROOM_MISS_BURST", 20.0)?,
            trust_proxy,
            cors_allowed_origins: cors,
            history: crate::rooms::history::Limits {
                per_room: num("ROOM_HISTORY_SIZE", 200, 0)? as usize,
                max_age: Duration::from_secs(secs("ROOM_HISTORY_SECONDS", 300, 0)?),
                total_bytes: num("HISTORY_MEMORY_BYTES", 8 * 1024 * 1024, 0)? as usize,
            },
            accounts,
            room_store,
            ops,
            cluster,
        })
    }

    /// Whether protected-rooms mode is on.
    pub fn require_auth(&self) -> bool {
        self.accounts.as_ref().is_some_and(|a| a.require_auth())
    }
}

/// `ROOM_STORE`, `DATA_DIR`, `ROOM_SAVE_DELAY_MS`, `ROOM_SAVE_MAX_DELAY_MS`.
fn room_store(
    get: &dyn Fn(&str) -> Option<String>,
    num: &dyn Fn(&str, u64, u64) -> Result<u64, String>,
) -> Result<crate::store::StoreConfig, String> {
    use crate::store::{StoreConfig, StoreKind};
    const HOUR_MS: u64 = 3_600_000;
    let uri = get("MONGODB_URI");
    let default = if uri.is_some() { "mongodb" } else { "file" };
    let kind = match get("ROOM_STORE").as_deref().unwrap_or(default) {
        "file" => StoreKind::File(get("DATA_DIR").unwrap_or_else(|| "data".into()).into()),
        "memory" => StoreKind::Memory,
        "mongodb" => {
            let Some(uri) = uri else {
                return Err("ROOM_STORE=mongodb needs MONGODB_URI".into());
            };
            StoreKind::Mongo {
                uri,
                db: get("DB_NAME").unwrap_or_else(|| "tracker-db".into()),
            }
        }
        v => {
            return Err(format!(
                "ROOM_STORE must be file, memory or mongodb, got {v:?}"
            ))
        }
    };
    let delay = num("ROOM_SAVE_DELAY_MS", 1000, 0)?;
    let max_delay = num("ROOM_SAVE_MAX_DELAY_MS", 5000, 0)?;
    if delay > HOUR_MS || max_delay > HOUR_MS {
        return Err(
            "ROOM_SAVE_DELAY_MS and ROOM_SAVE_MAX_DELAY_MS must be at most 3600000 (one hour)"
                .into(),
        );
    }
    if max_delay < delay {
        return Err(format!(
            "ROOM_SAVE_MAX_DELAY_MS ({max_delay}) must be at least ROOM_SAVE_DELAY_MS ({delay})"
        ));
    }
    Ok(StoreConfig {
        recheck_misses: false,
        kind,
        save_delay: std::time::Duration::from_millis(delay),
        save_max_delay: std::time::Duration::from_millis(max_delay),
    })
}

fn parse_level(v: &str) -> Option<log::LevelFilter> {
    // Accept the plain level and the common `crate=level` form by taking the
    // most verbose level mentioned, so `RUST_LOG=sync_server=debug` works.
    let mut best: Option<log::LevelFilter> = None;
    for part in v.split(',') {
        let level = part.rsplit('=').next()?.trim();
        let l = match level.to_ascii_lowercase().as_str() {
            "off" => log::LevelFilter::Off,
            "error" => log::LevelFilter::Error,
            "warn" | "warning" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            _ => return None,
        };
        best = Some(best.map_or(l, |b| b.max(l)));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[cfg(feature = "accounts")]
    #[test]
    fn secrets_are_trimmed_like_every_value() {
        let c = cfg(&[
            ("MONGODB_URI", " mongodb://127.0.0.1:27017 "),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef\r"),
            ("INITIAL_SETUP_TOKEN", " setup-token-0123456789\r\n"),
        ])
        .unwrap();
        let a = c.accounts.expect("accounts on");
        assert_eq!(a.jwt_secret, b"0123456789abcdef0123456789abcdef");
        assert_eq!(a.setup_token.as_deref(), Some("setup-token-0123456789"));
        assert_eq!(a.mongodb_uri, "mongodb://127.0.0.1:27017");
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.host, "0.0.0.0");
        assert_eq!(c.port, 3001);
        assert_eq!(c.room_idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_message_bytes, 16_777_216);
        assert_eq!(c.max_prejoin_message_bytes, 65_536);
        assert_eq!(c.max_reassembly_bytes, 33_554_432);
        assert_eq!(c.max_http_backlog_bytes, 8_388_608);
        assert_eq!(c.max_messages_per_turn, 64);
        assert_eq!((c.message_rate, c.message_burst), (10_000.0, 20_000.0));
        assert_eq!(c.max_outbound_bytes, 33_554_432);
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.room_create_rate, 2.0);
        assert_eq!(c.room_create_burst, 5.0);
        assert_eq!((c.room_miss_rate, c.room_miss_burst), (1.0, 20.0));
        assert!(c.trust_proxy.is_none());
        assert!(c.cors_allowed_origins.is_none());
        assert!(c.accounts.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("PORT", "http"),
            ("PORT", "70000"),
            ("MAX_CONNECTIONS", "-1"),
            ("MAX_CONNECTIONS", "0"),
            ("ROOM_CREATE_RATE", "fast"),
            ("ROOM_MISS_BURST", "0"),
            ("TRUST_PROXY", "proxy.local"),
            ("RUST_LOG", "loud"),
            ("PING_INTERVAL_SECONDS", "0"),
            ("PING_INTERVAL_SECONDS", "18446744073709551615"),
            ("REQUEST_TIMEOUT_SECONDS", "31536001"),
            ("ROOM_IDLE_TIMEOUT_SECONDS", "99999999999"),
            ("MEMORY_LIMIT_BYTES", "100M"),
            ("ROOM_STORE", "disk"),
            ("ROOM_STORE", "mongodb"),
            ("ROOM_SAVE_DELAY_MS", "soon"),
            ("ROOM_SAVE_MAX_DELAY_MS", "999"),
            ("ROOM_SAVE_MAX_DELAY_MS", "3600001"),
        ] {
            let err = cfg(&[(k, v)]).unwrap_err();
            assert!(err.contains(k), "{err} should name {k}");
        }
    }

    #[test]
    fn room_store_defaults_and_choices() {
        use crate::store::StoreKind;
        let c = cfg(&[]).unwrap().room_store;
        assert_eq!(c.kind, StoreKind::File("data".into()));
        assert_eq!(c.save_delay, Duration::from_millis(1000));
        assert_eq!(c.save_max_delay, Duration::from_millis(5000));
        let c = cfg(&[("DATA_DIR", "/var/lib/x"), ("ROOM_SAVE_DELAY_MS", "0")])
            .unwrap()
            .room_store;
        assert_eq!(c.kind, StoreKind::File("/var/lib/x".into()));
        assert_eq!(c.save_delay, Duration::ZERO);
        let c = cfg(&[("ROOM_STORE", "memory")]).unwrap().room_store;
        assert_eq!(c.kind, StoreKind::Memory);
    }

    #[cfg(feature = "accounts")]
    #[test]
    fn room_store_defaults_to_mongodb_with_mongodb_uri() {
        use crate::store::StoreKind;
        let uri = ("MONGODB_URI", "mongodb://127.0.0.1:27017");
        let jwt = ("JWT_SECRET", "0123456789abcdef0123456789abcdef");
        let c = cfg(&[uri, jwt, ("DB_NAME", "db1")]).unwrap().room_store;
        assert_eq!(
            c.kind,
            StoreKind::Mongo {
                uri: uri.1.into(),
                db: "db1".into()
            }
        );
        let c = cfg(&[uri, jwt, ("ROOM_STORE", "file")]).unwrap().room_store;
        assert_eq!(c.kind, StoreKind::File("data".into()));
    }

    #[test]
    fn zero_idle_timeout_means_forever() {
        assert_eq!(
            cfg(&[("ROOM_IDLE_TIMEOUT_SECONDS", "0")])
                .unwrap()
                .room_idle_timeout,
            None
        );
    }

    #[test]
    fn cors_list_is_split_and_trimmed() {
        let c = cfg(&[(
            "CORS_ALLOWED_ORIGINS",
            "https://a.example, http://b.example/",
        )])
        .unwrap();
        assert_eq!(
            c.cors_allowed_origins.unwrap(),
            vec![
                "https://a.example".to_string(),
                "http://b.example".to_string()
            ]
        );
    }

    #[test]
    fn log_level_accepts_module_form() {
        assert_eq!(
            parse_level("sync_server=debug"),
            Some(log::LevelFilter::Debug)
        );
        assert_eq!(parse_level("WARN"), Some(log::LevelFilter::Warn));
    }
}
