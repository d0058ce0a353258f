//! The admin inspector: who may see it, its page, and what its JSON says.
//!
//! Access (protocol §8): with accounts, an active admin's bearer token
//! (checked by the accounts workers against the stored user); without
//! accounts, the bearer `ADMIN_TOKEN` (compared in constant time with
//! `subtle`); with neither, every `/admin` and `/api/admin/…` path is 404 as
//! if it did not exist. Failed attempts are charged to the client's address
//! (the shell keeps the limiter); the page and its assets hold no secret and
//! are served to anyone when access is configured.
//!
//! The page is three files compiled into the binary (`assets/`), no CDN. Its
//! Content-Security-Policy allows scripts, styles and fetches from this
//! origin only, no inline script, and no framing.
//!
//! Invariants: answers list at most [`MAX_ROOMS_LISTED`] rooms (the most
//! recently active first), so one request's work is bounded; nothing here
//! writes to the rooms.

use crate::http::Answer;
use crate::rooms::{RoomRef, Rooms};
use serde_json::{json, Value};
use std::time::{Instant, SystemTime};

/// Most rooms one `GET /api/admin/rooms` lists.
pub const MAX_ROOMS_LISTED: usize = 1000;

/// Failed admin authentications per client: burst, then one per this many
/// seconds.
pub const FAIL_BURST: f64 = 10.0;
pub const FAIL_RATE_PER_SEC: f64 = 0.2;

const PAGE: &str = include_str!("assets/admin.html");
const SCRIPT: &str = include_str!("assets/admin.js");
const STYLE: &str = include_str!("assets/admin.css");

/// The page's headers: scripts, styles and fetches from this origin only,
/// no inline script, no framing, no referrer.
const PAGE_HEADERS: &str = "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
Content-Security-Policy: default-src 'none'; script-src 'self'; \
style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n";

/// How admins prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// An admin account's bearer token (`MONGODB_URI` set).
    Accounts,
    /// The `ADMIN_TOKEN` bearer.
    Token,
    /// Neither: the inspector does not exist (404).
    Off,
}

impl Access {
    /// `accounts`: whether the accounts service is configured.
    pub fn of(accounts: bool, ops: &super::OpsConfig) -> Access {
        if accounts {
            Access::Accounts
        } else if ops.admin_token.is_some() {
            Access::Token
        } else {
            Access::Off
        }
    }
}

/// What an `/admin…` or `/api/admin…` path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Page,
    Script,
    Style,
    /// JSON: node figures and the room table.
    Rooms,
    /// JSON: one room and its members.
    Room(String),
    NotFound,
}

impl Target {
    pub fn of(path: &str) -> Target {
        match path {
            "/admin" | "/admin/" => Target::Page,
            "/admin/admin.js" => Target::Script,
            "/admin/admin.css" => Target::Style,
            "/api/admin/rooms" => Target::Rooms,
            p => match p.strip_prefix("/api/admin/rooms/") {
                Some(code) if !code.is_empty() && !code.contains('/') => {
                    Target::Room(code.to_owned())
                }
                _ => Target::NotFound,
            },
        }
    }

    /// JSON under `/api/admin/`: needs the admin's credential.
    pub fn needs_auth(&self) -> bool {
        matches!(self, Target::Rooms | Target::Room(_))
    }
}

/// The static parts: the page (told which sign-in to show) and its assets.
pub fn asset(target: &Target, access: Access) -> Option<Answer> {
    let (content_type, body) = match target {
        Target::Page => (
            "text/html; charset=utf-8",
            PAGE.replace(
                "{{MODE}}",
                if access == Access::Accounts {
                    "accounts"
                } else {
                    "token"
                },
            )
            .into_bytes(),
        ),
        Target::Script => ("text/javascript; charset=utf-8", SCRIPT.as_bytes().to_vec()),
        Target::Style => ("text/css; charset=utf-8", STYLE.as_bytes().to_vec()),
        _ => return None,
    };
    Some(Answer {
        headers: PAGE_HEADERS,
        ..super::answer(200, content_type, body)
    })
}

/// Whether `given` is the configured token, in time that does not depend
/// on where they differ.
pub fn token_matches(given: &str, expected: &str) -> bool {
    crate::util::constant_time_eq(given.as_bytes(), expected.as_bytes())
}

/// When each room last saw a message or a member come or go, kept by the
/// shell beside the rooms (indexed by the room's slab key, with its
/// generation so a reused slot starts afresh). One slot write per message.
#[derive(Debug, Default)]
pub struct RoomActivity {
    slots: Vec<(u32, Instant)>,
}

impl RoomActivity {
    #[inline]
    pub fn touch(&mut self, room: RoomRef, now: Instant) {
        let i = room.key as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, (u32::MAX, now));
        }
        self.slots[i] = (room.gen, now);
    }

    pub fn last(&self, room: RoomRef) -> Option<Instant> {
        self.slots
            .get(room.key as usize)
            .filter(|(gen, _)| *gen == room.gen)
            .map(|(_, t)| *t)
    }
}

/// The wall-clock time of a loop instant.
fn wall_of(t: Instant, now: Instant, wall: SystemTime) -> SystemTime {
    wall.checked_sub(now.saturating_duration_since(t))
        .unwrap_or(wall)
}

/// One row of the room table.
#[derive(serde::Serialize)]
struct Row<'a> {
    code: &'a str,
    members: usize,
    host_present: bool,
    document_bytes: usize,
    created_at: &'a str,
    last_activity: std::borrow::Cow<'a, str>,
}

fn room_row<'a>(
    r: RoomRef,
    room: &'a crate::rooms::Room,
    activity: &RoomActivity,
    now: Instant,
    wall: SystemTime,
) -> Row<'a> {
    let last_activity = match activity.last(r) {
        Some(t) => crate::util::rfc3339(wall_of(t, now, wall)).into(),
        None => room.created_at().into(),
    };
    Row {
        code: room.code(),
        members: room.peer_count(),
        host_present: room.host_present(),
        document_bytes: room.document_bytes(),
        created_at: room.created_at(),
        last_activity,
    }
}

/// `GET /api/admin/rooms`: `node` figures and the rooms, most recently
/// active first, at most [`MAX_ROOMS_LISTED`]. Serialized straight from
/// borrowed rows (no intermediate JSON tree): this runs on the loop.
pub fn rooms_answer(
    rooms: &Rooms,
    activity: &RoomActivity,
    node: Value,
    now: Instant,
    wall: SystemTime,
) -> Answer {
    #[derive(serde::Serialize)]
    struct List<'a> {
        success: bool,
        node: Value,
        total_rooms: usize,
        truncated: bool,
        rooms: Vec<Row<'a>>,
    }
    let mut all: Vec<(Option<Instant>, RoomRef)> =
        rooms.iter().map(|(r, _)| (activity.last(r), r)).collect();
    // Rooms never touched (created, nobody came yet) sort last.
    all.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
    let truncated = all.len() > MAX_ROOMS_LISTED;
    all.truncate(MAX_ROOMS_LISTED);
    let list = List {
        success: true,
        node,
        total_rooms: rooms.len(),
        truncated,
        rooms: all
            .iter()
            .filter_map(|(_, r)| {
                rooms
                    .get(*r)
                    .map(|room| room_row(*r, room, activity, now, wall))
            })
            .collect(),
    };
    let mut a = super::json(200, &Value::Null);
    a.body = serde_json::to_vec(&list).unwrap_or_default();
    a
}

/// `GET /api/admin/rooms/:code`: the room's row plus its members (the same
/// peer objects the room's peers see).
pub fn room_answer(
    rooms: &Rooms,
    activity: &RoomActivity,
    code: &str,
    now: Instant,
    wall: SystemTime,
) -> Answer {
    let Some((r, room)) = rooms.find(code) else {
        return super::error(404, "Room not found");
    };
    let members: Value = serde_json::from_str(&room.peers_json()).unwrap_or_else(|_| json!([]));
    let mut row = serde_json::to_value(room_row(r, room, activity, now, wall)).unwrap_or_default();
    row["success"] = true.into();
    row["peers"] = members;
    super::json(200, &row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::{ConnRef, Session};
    use std::time::Duration;

    #[test]
    fn targets() {
        assert_eq!(Target::of("/admin"), Target::Page);
        assert_eq!(Target::of("/admin/admin.js"), Target::Script);
        assert_eq!(Target::of("/api/admin/rooms"), Target::Rooms);
        assert_eq!(
            Target::of("/api/admin/rooms/AB12"),
            Target::Room("AB12".into())
        );
        assert_eq!(Target::of("/api/admin/rooms/"), Target::NotFound);
        assert_eq!(Target::of("/admin/../etc"), Target::NotFound);
        assert!(Target::of("/api/admin/rooms").needs_auth());
        assert!(!Target::of("/admin").needs_auth());
    }

    #[test]
    fn token_compare() {
        let t = "0123456789abcdef0123456789abcdef";
        assert!(token_matches(t, t));
        assert!(!token_matches("0123456789abcdef0123456789abcdeF", t));
        assert!(!token_matches("0123", t));
        assert!(!token_matches("", t));
    }

    #[test]
    fn page_has_no_inline_script_and_strict_headers() {
        let a = asset(&Target::Page, Access::Token).unwrap();
        let html = String::from_utf8(a.body).unwrap();
        assert!(html.contains(r#"data-mode="token""#));
        // Every <script> loads a file; none has a body.
        for part in html.split("<script").skip(1) {
            let (open, rest) = part.split_once('>').unwrap();
            assert!(open.contains("src="), "{open}");
            assert!(rest.starts_with("</script>"), "{rest}");
        }
        for handler in [
            "onclick=",
            "onload=",
            "onsubmit=",
            "onerror=",
            "javascript:",
        ] {
            assert!(!html.contains(handler), "inline handler {handler}");
        }
        assert!(a.headers.contains("frame-ancestors 'none'"));
        assert!(a.headers.contains("script-src 'self'"));
        assert!(!a.headers.contains("unsafe-inline"));
    }

    #[test]
    fn room_table_rows() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut rooms = Rooms::new(None);
        let mut fx = Vec::new();
        let mut rand = |b: &mut [u8]| b.fill(7);
        let a = rooms
            .create(Some("AAA"), Some("hostA"), t0, wall, &mut rand, &mut fx)
            .unwrap()
            .room;
        rooms
            .create(Some("BBB"), Some("hostB"), t0, wall, &mut rand, &mut fx)
            .unwrap();
        let mut s = Session::default();
        let c = ConnRef { key: 1, gen: 1 };
        rooms.join(
            c, &mut s, "AAA", "hostA", true, None, None, t0, wall, &mut fx,
        );
        // A guest whose id and metadata spell the host flag is no host.
        let mut g = Session::default();
        let meta = serde_json::value::RawValue::from_string(r#"{"is_host":true}"#.into()).unwrap();
        rooms.join(
            ConnRef { key: 2, gen: 1 },
            &mut g,
            "BBB",
            r#"x","is_host":true"#,
            false,
            Some(&meta),
            None,
            t0,
            wall,
            &mut fx,
        );
        let mut act = RoomActivity::default();
        act.touch(a, t0 + Duration::from_secs(5));
        let ans = rooms_answer(&rooms, &act, json!({}), t0 + Duration::from_secs(5), wall);
        let v: Value = serde_json::from_slice(&ans.body).unwrap();
        assert_eq!(v["total_rooms"], 2);
        assert_eq!(v["rooms"][0]["code"], "AAA");
        assert_eq!(v["rooms"][0]["members"], 1);
        assert_eq!(v["rooms"][0]["host_present"], true);
        assert_eq!(v["rooms"][1]["code"], "BBB");
        assert_eq!(v["rooms"][1]["host_present"], false);
        let one = room_answer(&rooms, &act, "AAA", t0, wall);
        let v: Value = serde_json::from_slice(&one.body).unwrap();
        assert_eq!(v["peers"].as_array().unwrap().len(), 1);
        assert_eq!(room_answer(&rooms, &act, "ZZZ", t0, wall).status, 404);
    }
}
