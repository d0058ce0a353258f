//! The REST routes of §1, as plain functions of a parsed request.
//!
//! [`route`] decides what a request is (answer now, upgrade, hand to the
//! accounts workers, create a room after authorization) without touching
//! sockets; the answers' JSON bodies are built here too.

use crate::config::Config;
use crate::http::{bearer, Answer, Method, Request};
use crate::ratelimit::{retry_after_secs, RateLimiter};
use crate::rooms::{CreateError, Rooms};
use crate::util::rfc3339;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

/// What the engine must do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    Answer(Answer),
    /// A valid WebSocket upgrade on `/ws`.
    Upgrade,
    /// `/api/auth/*` with accounts enabled: hand to the workers.
    Accounts,
    /// `POST /api/rooms` under `REQUIRE_AUTH`: authorize this bearer token,
    /// then call [`create_room`].
    AuthorizeThenCreate(String),
}

/// The 503 text while memory admission control is engaged.
pub const NEAR_MEMORY_LIMIT: &str = "Server is near its memory limit; try again later";

/// Live figures `/health` reports, and the admission state routes need.
pub struct Stats<'a> {
    pub connections: usize,
    pub started: Instant,
    pub store: &'a str,
    /// Memory admission control lets new rooms in. When it does not,
    /// `POST /api/rooms` may still restore a room that exists (that costs
    /// nothing), but a new one is 503.
    pub admit_new_rooms: bool,
    /// The `room_store` object of `/health`.
    pub room_store: crate::store::Health,
    /// Cluster mode: the `cluster` object of `/health`.
    pub cluster: Option<serde_json::Value>,
}

const ROUTES: &[&str] = &[
    "GET /",
    "GET /health",
    "GET /livez",
    "GET /readyz",
    "GET /metrics",
    "POST /api/rooms",
    "GET /api/rooms/:room_code",
    "GET /ws",
    "/api/auth/*",
];

/// The address a request is attributed to: the TCP peer, or the
/// forwarding headers when the peer is the trusted proxy.
pub fn client_ip(cfg: &Config, peer: IpAddr, req: &Request) -> IpAddr {
    if cfg.trust_proxy != Some(peer) {
        return peer;
    }
    // The proxy appends the address it saw to X-Forwarded-For; entries to
    // its left came from the client and prove nothing.
    let from_xff = req
        .forwarded_for
        .as_deref()
        .and_then(|v| v.rsplit(',').next())
        .and_then(|s| s.trim().parse().ok());
    let from_real = req.real_ip.as_deref().and_then(|s| s.trim().parse().ok());
    from_xff.or(from_real).unwrap_or(peer)
}

/// Routes one request.
#[allow(clippy::too_many_arguments)]
pub fn route(
    cfg: &Config,
    rooms: &mut Rooms,
    limiter: &mut RateLimiter<IpAddr>,
    misses: &mut RateLimiter<IpAddr>,
    stats: &Stats<'_>,
    peer: IpAddr,
    req: &Request,
    now: Instant,
    fx: &mut Vec<crate::rooms::Effect>,
) -> Routed {
    let m = req.method();
    let path = req.path.as_str();
    // RFC 9112 §3.2: an HTTP/1.1 request without a Host header, or any
    // request with two, is answered 400 (two may mean two hops disagree).
    if req.host_count > 1 || (req.http11 && req.host_count == 0) {
        return Routed::Answer(Answer::error(
            400,
            "A request must carry exactly one Host header",
        ));
    }
    if m == Method::Options {
        return Routed::Answer(Answer {
            allow: Some(route_methods(path)),
            preflight: true,
            ..Answer::bytes(204, crate::http::JSON, Vec::new())
        });
    }
    if path == "/api/auth" || path.starts_with("/api/auth/") {
        return if cfg.accounts.is_some() {
            Routed::Accounts
        } else {
            Routed::Answer(Answer::error(503, "Accounts are not configured"))
        };
    }
    let get_only = |answer: fn() -> Answer| {
        if m == Method::Get || m == Method::Head {
            Routed::Answer(answer())
        } else {
            Routed::Answer(method_not_allowed("GET, OPTIONS"))
        }
    };
    match path {
        "/" => get_only(|| {
            Answer::json(
                200,
                json!({
                    "name": "khun-phaen-sync-server",
                    "version": env!("CARGO_PKG_VERSION"),
                    "status": "running",
                    "websocket": "/ws",
                    "api": ROUTES,
                }),
            )
        }),
        "/health" => {
            if m != Method::Get && m != Method::Head {
                return Routed::Answer(method_not_allowed("GET, OPTIONS"));
            }
            let mut body = json!({
                "status": "healthy",
                "rooms": rooms.len(),
                "connections": stats.connections,
                "uptime_seconds": now.saturating_duration_since(stats.started).as_secs(),
                "store": stats.store,
                "room_store": stats.room_store,
                "timestamp": rfc3339(SystemTime::now()),
            });
            if let Some(c) = &stats.cluster {
                body["cluster"] = c.clone();
            }
            Routed::Answer(Answer::json(200, body))
        }
        "/ws" => {
            if m != Method::Get {
                return Routed::Answer(method_not_allowed("GET, OPTIONS"));
            }
            // RFC 6455 §4.1: the opening handshake is an HTTP/1.1 request.
            if !(req.upgrade_websocket && req.conn_upgrade && req.http11) {
                return Routed::Answer(Answer::error(400, "Expected a WebSocket upgrade request"));
            }
            if req.ws_version.as_deref() != Some("13") {
                return Routed::Answer(Answer::error(
                    400,
                    "Unsupported WebSocket version (use 13)",
                ));
            }
            match req.ws_key.as_deref() {
                Some(k) if valid_ws_key(k) => {}
                _ => {
                    return Routed::Answer(Answer::error(
                        400,
                        "Missing or invalid Sec-WebSocket-Key",
                    ))
                }
            }
            if !origin_allowed(cfg, req.origin.as_deref()) {
                return Routed::Answer(Answer::error(403, "Origin not allowed"));
            }
            Routed::Upgrade
        }
        "/api/rooms" => {
            if m != Method::Post {
                return Routed::Answer(method_not_allowed("POST, OPTIONS"));
            }
            let ip = client_ip(cfg, peer, req);
            if let Err(wait) = limiter.check(&ip, now) {
                let mut a = Answer::error(429, "Too many rooms created; try again later");
                a.retry_after = Some(retry_after_secs(wait));
                return Routed::Answer(a);
            }
            if cfg.require_auth() {
                return match bearer(req.authorization.as_deref()) {
                    Some(t) => Routed::AuthorizeThenCreate(t.to_owned()),
                    None => Routed::Answer(Answer::error(401, "Authentication required")),
                };
            }
            Routed::Answer(create_room(
                cfg,
                rooms,
                peer,
                req,
                now,
                stats.admit_new_rooms,
                None,
                fx,
            ))
        }
        p if p.starts_with("/api/rooms/") => {
            if m != Method::Get && m != Method::Head {
                return Routed::Answer(method_not_allowed("GET, OPTIONS"));
            }
            let code = &p["/api/rooms/".len()..];
            let ip = client_ip(cfg, peer, req);
            if let Err(wait) = misses.check_lookup(&ip, rooms.find(code).is_some(), now) {
                return Routed::Answer(lookups_limited(wait));
            }
            Routed::Answer(match rooms.find(code) {
                Some((_, room)) => {
                    // `peers` goes out as the stored JSON text. Parsing it
                    // into a Value failed on a lone surrogate escape in a
                    // peer's metadata (valid JSON text, which browsers
                    // send), and the answer then listed no peers at all.
                    #[derive(serde::Serialize)]
                    struct Info<'a> {
                        success: bool,
                        room_code: &'a str,
                        host_id: &'a str,
                        peers: &'a RawValue,
                        peer_count: usize,
                        created_at: &'a str,
                        has_document: bool,
                    }
                    let peers = RawValue::from_string(room.peers_json())
                        .unwrap_or_else(|_| RawValue::from_string("[]".into()).unwrap());
                    let info = Info {
                        success: true,
                        room_code: room.code(),
                        // The secret host id stays with the creator.
                        host_id: room.host_public_id(),
                        peers: &peers,
                        peer_count: room.peer_count(),
                        created_at: room.created_at(),
                        has_document: room.has_document(),
                    };
                    Answer::bytes(
                        200,
                        crate::http::JSON,
                        serde_json::to_vec(&info).unwrap_or_default(),
                    )
                }
                None => Answer::error(404, "Room not found"),
            })
        }
        _ => Routed::Answer(Answer::error(404, "Not found")),
    }
}

/// The methods a route answers, for `Allow` and a preflight's
/// `Access-Control-Allow-Methods` (browsers check that the method they are
/// about to send is listed). An unknown path lists every method we use, so
/// the browser goes on to the real request and reads its 404.
pub fn route_methods(path: &str) -> &'static str {
    match path {
        "/" | "/health" | "/ws" => "GET, OPTIONS",
        "/api/rooms" => "POST, OPTIONS",
        "/api/auth/invite"
        | "/api/auth/setup-password"
        | "/api/auth/login"
        | "/api/auth/logout" => "POST, OPTIONS",
        "/api/auth/setup-info" | "/api/auth/users" => "GET, OPTIONS",
        "/api/auth/me" => "GET, PUT, OPTIONS",
        p if p.starts_with("/api/rooms/") => "GET, OPTIONS",
        p if p.starts_with("/api/auth/users/") => "PUT, DELETE, OPTIONS",
        _ => "GET, POST, PUT, DELETE, OPTIONS",
    }
}

/// A refusal by the room-lookup budget (REST and `join`), with the wait.
pub fn lookups_limited_text(wait: std::time::Duration) -> String {
    format!(
        "Rate limited: too many lookups of rooms that do not exist; try again in {} s",
        retry_after_secs(wait)
    )
}

/// 429 for a client over its budget of lookups of unknown room codes.
fn lookups_limited(wait: std::time::Duration) -> Answer {
    let mut a = Answer::error(429, &lookups_limited_text(wait));
    a.retry_after = Some(retry_after_secs(wait));
    a
}

/// The room a request names when that room must be in memory to answer it:
/// `GET /api/rooms/:code`, or `POST /api/rooms` with a `desired_room_code`.
/// (A room not in memory is then looked up in the room store first.)
pub fn room_code_of(req: &Request) -> Option<String> {
    let m = req.method();
    if let Some(code) = req.path.strip_prefix("/api/rooms/") {
        return (m == Method::Get || m == Method::Head).then(|| code.to_owned());
    }
    if req.path != "/api/rooms" || m != Method::Post {
        return None;
    }
    // A lenient read of the body: anything malformed is for `create_room`
    // to refuse, with its own words.
    #[derive(Deserialize)]
    struct Peek {
        desired_room_code: Option<String>,
    }
    serde_json::from_slice::<Peek>(&req.body)
        .ok()?
        .desired_room_code
}

fn method_not_allowed(allow: &'static str) -> Answer {
    let mut a = Answer::error(405, "Method not allowed");
    a.allow = Some(allow);
    a
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    desired_room_code: Option<String>,
    #[serde(default)]
    desired_host_id: Option<String>,
}

/// `POST /api/rooms` once any rate limit and authorization have passed.
/// `owner` (under `REQUIRE_AUTH`: the authorized account) is bound to the
/// host role of a room this call creates.
#[allow(clippy::too_many_arguments)]
pub fn create_room(
    cfg: &Config,
    rooms: &mut Rooms,
    peer: IpAddr,
    req: &Request,
    now: Instant,
    admit_new: bool,
    owner: Option<&str>,
    fx: &mut Vec<crate::rooms::Effect>,
) -> Answer {
    let body = if req.body.iter().all(u8::is_ascii_whitespace) {
        CreateBody {
            desired_room_code: None,
            desired_host_id: None,
        }
    } else if req.body.trim_ascii_start().first() != Some(&b'{') {
        // serde would also take an array of the fields in order
        // (`["CODE","host"]`); the contract's body is an object.
        return Answer::error(400, "Invalid request body: expected a JSON object");
    } else {
        match serde_json::from_slice::<CreateBody>(&req.body) {
            Ok(b) => b,
            Err(e) => {
                let detail = crate::protocol::detail(e);
                return Answer::error(400, &format!("Invalid request body: {detail}"));
            }
        }
    };
    let restoring = body
        .desired_room_code
        .as_deref()
        .and_then(|c| rooms.find(c))
        .is_some_and(|(_, r)| body.desired_host_id.as_deref() == Some(r.host_id()));
    if !admit_new && !restoring {
        return Answer::error(503, NEAR_MEMORY_LIMIT);
    }
    // Without a desired code, the code the engine checked against the room
    // store (unless a room in memory took it meanwhile: then a fresh draw).
    let fresh = req
        .room_code_hint
        .as_deref()
        .filter(|c| body.desired_room_code.is_none() && rooms.find(c).is_none());
    let created = match rooms.create(
        body.desired_room_code.as_deref().or(fresh),
        body.desired_host_id.as_deref(),
        now,
        SystemTime::now(),
        &mut crate::util::fill_random,
        fx,
    ) {
        Ok(c) => c,
        Err(CreateError::BadRoomCode) => {
            return Answer::error(
                400,
                "desired_room_code must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
            );
        }
        Err(CreateError::BadHostId) => {
            return Answer::error(
                400,
                "desired_host_id must be 1-128 characters without control characters",
            );
        }
        Err(CreateError::Taken) => {
            return Answer::error(
                409,
                "A room with this code exists; only its host may restore it",
            );
        }
    };
    if let Some(owner) = owner.filter(|_| !created.restored) {
        rooms.set_owner(created.room, owner);
    }
    let room = rooms.get(created.room).expect("just created or found");
    let scheme = if cfg.trust_proxy == Some(peer)
        && req
            .forwarded_proto
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    {
        "wss"
    } else {
        "ws"
    };
    let host = req
        .host
        .clone()
        .filter(|h| !h.is_empty() && !h.chars().any(|c| c.is_control() || c == '/' || c == ' '))
        .unwrap_or_else(|| format!("localhost:{}", cfg.port));
    let mut body = json!({
        "success": true,
        "room_code": room.code(),
        "room_id": room.room_id(),
        "host_id": room.host_id(),
        "websocket_url": format!("{scheme}://{host}/ws"),
    });
    if created.restored {
        body["restored"] = json!(true);
        body["has_document"] = json!(room.has_document());
    }
    Answer::json(200, body)
}

fn valid_ws_key(k: &str) -> bool {
    // 16 random bytes in base64: 22 significant characters plus "==".
    k.len() == 24
        && k.ends_with("==")
        && k[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Whether a request's `Origin` passes `CORS_ALLOWED_ORIGINS`.
pub fn origin_allowed(cfg: &Config, origin: Option<&str>) -> bool {
    match (&cfg.cors_allowed_origins, origin) {
        (None, _) | (Some(_), None) => true,
        (Some(list), Some(o)) => list.iter().any(|a| a == o.trim_end_matches('/')),
    }
}

/// The `Access-Control-Allow-Origin` value for a request, if any.
///
/// An allowed origin is echoed (never `*`), so that a browser page calling
/// with `credentials: "include"` may read the answer; under the default
/// `CORS_ALLOWED_ORIGINS=*` every origin is allowed that way. That is safe
/// because the server honours no ambient credential (no cookie, no HTTP
/// auth): a request is authenticated by its `Authorization: Bearer` header
/// alone, which a page of another origin cannot make the browser add.
/// A request that names no origin (not a browser) gets `*`.
pub fn cors_origin<'a>(cfg: &Config, origin: Option<&'a str>) -> Option<&'a str> {
    match (&cfg.cors_allowed_origins, origin) {
        (None, Some(o)) => Some(o),
        (None, None) => Some("*"),
        (Some(list), Some(o)) if list.iter().any(|a| a == o.trim_end_matches('/')) => Some(o),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checked_fresh_code_names_the_new_room() {
        let cfg = Config::from_lookup(|_| None).unwrap();
        let mut rooms = Rooms::new(None);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        let mut fx = Vec::new();
        let mut create = |rooms: &mut Rooms, hint: Option<&str>, body: &str| {
            let req = Request {
                method: Some(Method::Post),
                path: "/api/rooms".into(),
                body: body.as_bytes().to_vec(),
                room_code_hint: hint.map(str::to_owned),
                ..Request::default()
            };
            let a = create_room(&cfg, rooms, peer, &req, now, true, None, &mut fx);
            assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
            serde_json::from_slice::<serde_json::Value>(&a.body).unwrap()
        };
        let a = create(&mut rooms, Some("CHECKD"), "");
        assert_eq!(a["room_code"], "CHECKD");
        assert!(a.get("restored").is_none(), "a new room: {a}");
        // Taken in memory meanwhile: a fresh draw, never the existing room.
        let b = create(&mut rooms, Some("CHECKD"), "");
        assert_ne!(b["room_code"], "CHECKD");
        assert!(b.get("restored").is_none(), "{b}");
        // A desired code wins over the hint.
        let c = create(
            &mut rooms,
            Some("OTHER1"),
            r#"{"desired_room_code":"MINE"}"#,
        );
        assert_eq!(c["room_code"], "MINE");
    }

    #[test]
    fn ws_key_shape() {
        assert!(valid_ws_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_ws_key("short=="));
        assert!(!valid_ws_key("dGhlIHNhbXBsZSBub25jZQ!!"));
    }

    #[test]
    fn forwarded_headers_only_from_the_trusted_proxy() {
        let cfg = Config::from_lookup(|k| (k == "TRUST_PROXY").then(|| "10.0.0.1".into())).unwrap();
        let req = Request {
            forwarded_for: Some("6.6.6.6, 1.2.3.4".into()),
            ..Request::default()
        };
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(
            client_ip(&cfg, proxy, &req),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&cfg, other, &req), other);
    }
}
