//! The operator's view (protocol §8): `/metrics`, `/livez`, `/readyz`, the
//! `/admin` inspector and its `/api/admin/…` JSON, and JSON log lines.
//!
//! This module owns the pure parts: route classes, the counters and their
//! rendering ([`metrics`]), the admin API's access rules and answers
//! ([`admin`]), the JSON logger ([`logjson`]) and the operator settings
//! ([`OpsConfig`]), the memory guard ([`memguard`]), the service manager's
//! notifications ([`notify`]) and the `healthcheck` subcommand
//! ([`healthcheck`]). The engine's side (reading its own state, parking an
//! admin request on the accounts workers) is the engine's child module
//! `conn/ops.rs`, so that it can see the engine's private state without
//! widening it.
//!
//! Invariants: nothing here names a room, peer or token in a metric label;
//! `ADMIN_TOKEN` is never logged or printed (its `Debug` is redacted) and is
//! compared in constant time; every answer here carries its own complete
//! headers (operators' routes are not part of the CORS contract).

pub mod admin;
pub mod healthcheck;
pub mod logjson;
pub mod memguard;
pub mod metrics;
pub mod notify;

use crate::http::Method;
use crate::http::{Answer, JSON};
pub use metrics::Route;

/// Shortest `ADMIN_TOKEN` accepted: shorter ones stop start-up.
pub const MIN_ADMIN_TOKEN: usize = 32;

/// How log lines are written (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// simplelog's human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Operator settings from the environment.
#[derive(Clone, Default)]
pub struct OpsConfig {
    /// Bearer token for `/api/admin/…` when accounts are off.
    pub admin_token: Option<String>,
    pub log_format: LogFormat,
}

impl std::fmt::Debug for OpsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsConfig")
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("log_format", &self.log_format)
            .finish()
    }
}

impl OpsConfig {
    /// `get` returns trimmed, non-empty values (as `Config` passes them).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<OpsConfig, String> {
        let admin_token = get("ADMIN_TOKEN");
        if let Some(t) = &admin_token {
            if t.chars().count() < MIN_ADMIN_TOKEN {
                // Never echo the value: it is a secret even when too short.
                return Err(format!(
                    "ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters (it has {})",
                    t.chars().count()
                ));
            }
        }
        let log_format = match get("LOG_FORMAT").as_deref() {
            None => LogFormat::Text,
            Some(v) if v.eq_ignore_ascii_case("text") => LogFormat::Text,
            Some(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
            Some(v) => return Err(format!("LOG_FORMAT must be text or json, got {v:?}")),
        };
        Ok(OpsConfig {
            admin_token,
            log_format,
        })
    }
}

/// The route class of a request, for metrics and for the ops routes.
pub fn route_class(method: Method, path: &str) -> Route {
    if method == Method::Options {
        return Route::Preflight;
    }
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    match path {
        "/" => Route::Root,
        "/health" => Route::Health,
        "/livez" => Route::Livez,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        "/api/rooms" => Route::RoomsCreate,
        "/ws" => Route::Ws,
        p if p.starts_with("/api/rooms/") => Route::RoomsGet,
        _ if under("/api/auth") => Route::Auth,
        _ if under("/admin") || under("/api/admin") => Route::Admin,
        _ => Route::Other,
    }
}

/// Headers every operator's answer carries: nothing is cached, nothing
/// sniffed.
pub const COMMON_HEADERS: &str = "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n";

/// An operator's answer: not part of the CORS contract (the probes and
/// `/metrics` add CORS where they are answered), never cached.
pub fn answer(status: u16, content_type: &'static str, body: Vec<u8>) -> Answer {
    Answer {
        headers: COMMON_HEADERS,
        cors: false,
        ..Answer::bytes(status, content_type, body)
    }
}

/// An operator's JSON answer.
pub fn json(status: u16, v: &serde_json::Value) -> Answer {
    answer(status, JSON, serde_json::to_vec(v).unwrap_or_default())
}

/// An operator's error answer, worded as every other.
pub fn error(status: u16, message: &str) -> Answer {
    answer(status, JSON, crate::http::error_body(message))
}

pub fn method_not_allowed() -> Answer {
    let mut a = error(405, "Method not allowed");
    a.allow = Some("GET, HEAD");
    a
}

/// `/livez`: the loop answered, so it turns.
pub fn livez(loop_turns: u64, uptime_seconds: u64) -> Answer {
    json(
        200,
        &serde_json::json!({
            "status": "alive",
            "loop_turns": loop_turns,
            "uptime_seconds": uptime_seconds,
        }),
    )
}

/// What `/readyz` looks at.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    pub draining: bool,
    pub memory_guard_engaged: bool,
    /// `None` without accounts; else whether the database answers.
    pub accounts_up: Option<bool>,
    /// `None` without a durable room store; else whether it answers.
    pub store_up: Option<bool>,
    /// `None` outside cluster mode; else whether both Redis connections
    /// are up (and this node's presence there is known).
    pub redis_up: Option<bool>,
}

/// `/readyz`: 200 when every configured dependency answers, the server is
/// not draining and the memory guard lets new work in; else 503 naming the
/// check that failed.
pub fn readyz(r: Readiness) -> Answer {
    let ok = !r.draining
        && !r.memory_guard_engaged
        && r.accounts_up != Some(false)
        && r.store_up != Some(false)
        && r.redis_up != Some(false);
    let word = |up: Option<bool>| match up {
        None => "disabled",
        Some(true) => "ok",
        Some(false) => "unavailable",
    };
    let mut body = serde_json::json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {
            "draining": r.draining,
            "memory_guard": if r.memory_guard_engaged { "engaged" } else { "ok" },
            "accounts": word(r.accounts_up),
            "room_store": word(r.store_up),
        },
    });
    // Only in cluster mode: a single node's answer stays as it was.
    if r.redis_up.is_some() {
        body["checks"]["redis"] = word(r.redis_up).into();
    }
    json(if ok { 200 } else { 503 }, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_classes_never_carry_a_code() {
        assert_eq!(
            route_class(Method::Get, "/api/rooms/ABC123"),
            Route::RoomsGet
        );
        assert_eq!(route_class(Method::Post, "/api/rooms"), Route::RoomsCreate);
        assert_eq!(route_class(Method::Get, "/api/auth/me"), Route::Auth);
        assert_eq!(route_class(Method::Get, "/api/authx"), Route::Other);
        assert_eq!(route_class(Method::Get, "/admin"), Route::Admin);
        assert_eq!(route_class(Method::Get, "/admin/app.js"), Route::Admin);
        assert_eq!(route_class(Method::Get, "/api/admin/rooms"), Route::Admin);
        assert_eq!(route_class(Method::Get, "/adminx"), Route::Other);
        assert_eq!(route_class(Method::Options, "/metrics"), Route::Preflight);
    }

    #[test]
    fn admin_token_rules() {
        let get = |t: &'static str| move |k: &str| (k == "ADMIN_TOKEN").then(|| t.to_owned());
        let err = OpsConfig::from_lookup(get("short-secret")).unwrap_err();
        assert!(err.contains("32") && !err.contains("short-secret"), "{err}");
        let ok = OpsConfig::from_lookup(get("0123456789abcdef0123456789abcdef")).unwrap();
        assert!(ok.admin_token.is_some());
        assert!(!format!("{ok:?}").contains("0123456789"));
    }

    #[test]
    fn log_format_values() {
        let get = |v: &'static str| move |k: &str| (k == "LOG_FORMAT").then(|| v.to_owned());
        assert_eq!(
            OpsConfig::from_lookup(get("json")).unwrap().log_format,
            LogFormat::Json
        );
        assert_eq!(
            OpsConfig::from_lookup(get("TEXT")).unwrap().log_format,
            LogFormat::Text
        );
        assert!(OpsConfig::from_lookup(get("yaml")).is_err());
    }

    #[test]
    fn readiness_fails_on_any_check() {
        let base = Readiness {
            draining: false,
            memory_guard_engaged: false,
            accounts_up: None,
            store_up: None,
            redis_up: None,
        };
        assert_eq!(
            readyz(Readiness {
                redis_up: Some(true),
                ..base
            })
            .status,
            200
        );
        assert_eq!(
            readyz(Readiness {
                redis_up: Some(false),
                ..base
            })
            .status,
            503
        );
        assert_eq!(readyz(base).status, 200);
        assert_eq!(
            readyz(Readiness {
                store_up: Some(true),
                ..base
            })
            .status,
            200
        );
        assert_eq!(
            readyz(Readiness {
                accounts_up: Some(true),
                ..base
            })
            .status,
            200
        );
        for r in [
            Readiness {
                draining: true,
                ..base
            },
            Readiness {
                memory_guard_engaged: true,
                ..base
            },
            Readiness {
                store_up: Some(false),
                ..base
            },
            Readiness {
                accounts_up: Some(false),
                ..base
            },
            Readiness {
                store_up: Some(false),
                ..base
            },
        ] {
            assert_eq!(readyz(r).status, 503);
        }
    }
}
