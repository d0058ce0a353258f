//! Cluster mode (`REDIS_URL`): several nodes serve the same rooms, one
//! ordered stream per room through Redis.
//!
//! Owns the cluster's configuration, the wire form of a room event in Redis
//! ([`Message`]), the order state ([`order`]) and the broker's threads
//! ([`broker`]); the connection engine drives them (`src/conn/cluster.rs`).
//!
//! Invariants:
//! * In cluster mode no stream event is fanned out where it happened: it is
//!   published (one Lua script numbers it, appends it to the room's capped
//!   stream and publishes it), and every node, the publishing one too,
//!   delivers only what comes back from Redis, in `seq` order
//!   ([`order::Order`]).
//! * A node follows a room's stream from a snapshot (epoch, seq, presence
//!   taken in one script); until then a join waits, and a room it cannot
//!   follow without a gap has its local members closed with 1013.
//! * Work handed to Redis is bounded ([`broker::COMMAND_QUEUE`] and
//!   [`MAX_IN_FLIGHT`]); past the bound, or while the command connection is
//!   down, stream actions are answered `Service unavailable`.

pub mod broker;
pub mod order;
pub mod scripts;

use crate::rooms::ConnRef;
use std::time::Duration;

/// Every key and channel of the server in Redis starts with this.
pub const PREFIX: &str = "kp:";

/// The text of every answer to an action that needs Redis while it is not
/// there.
pub const UNAVAILABLE: &str = "Service unavailable";

/// Publishes handed to the broker and not yet answered, at most.
pub const MAX_IN_FLIGHT: usize = 4096;

/// How long a stream read may take before the room is given up.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a join waits for the room's snapshot.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub redis_url: String,
    pub node_id: String,
    pub node_ttl: Duration,
    /// How long members stay while Redis is unreachable before they are
    /// closed with 1013.
    pub grace: Duration,
}

/// Whether `id` can name a node: it goes into keys and messages between
/// `|` separators.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl ClusterConfig {
    /// `REDIS_URL`, `NODE_ID`, `NODE_TTL_SECONDS`; `None` without
    /// `REDIS_URL`. `store_kind` is the configured `ROOM_STORE`: cluster
    /// mode needs the shared one.
    pub fn from_lookup(
        get: &dyn Fn(&str) -> Option<String>,
        store_kind: &str,
    ) -> Result<Option<ClusterConfig>, String> {
        let Some(url) = get("REDIS_URL") else {
            return Ok(None);
        };
        if !(url.starts_with("redis://") || url.starts_with("unix://")) {
            return Err(format!(
                "REDIS_URL must be a redis:// (or unix://) URL, got {url:?}"
            ));
        }
        if store_kind != "mongodb" {
            return Err(format!(
                "REDIS_URL (cluster mode) needs ROOM_STORE=mongodb, the room store every \
                 node shares; ROOM_STORE is {store_kind}"
            ));
        }
        let node_id = match get("NODE_ID") {
            Some(id) if valid_node_id(&id) => id,
            Some(id) => {
                return Err(format!(
                    "NODE_ID must be 1-64 characters of A-Z a-z 0-9 _ - ., got {id:?}"
                ))
            }
            None => format!(
                "node-{}",
                crate::util::random_string(
                    b"abcdefghijklmnopqrstuvwxyz0123456789",
                    10,
                    &mut crate::util::fill_random
                )
            ),
        };
        let ttl = match get("NODE_TTL_SECONDS") {
            None => 15,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (3..=3600).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "NODE_TTL_SECONDS must be a whole number from 3 to 3600, got {v:?}"
                    ))
                }
            },
        };
        let node_ttl = Duration::from_secs(ttl);
        Ok(Some(ClusterConfig {
            redis_url: url,
            node_id,
            node_ttl,
            // Well inside the TTL: members here are closed before the other
            // nodes could remove this node's peers.
            grace: node_ttl / 3,
        }))
    }
}

/// One room event as it comes back from Redis:
/// `<seq>|<epoch>|<node>|<conn or ->|<kind>|<from>\n<body>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    pub epoch: Box<str>,
    pub node: Box<str>,
    pub except: Option<ConnRef>,
    pub kind: u8,
    pub from: Box<str>,
    pub body: bytes::Bytes,
    /// A document entry read from the stream whose bytes Redis no longer
    /// holds (a later document replaced them long ago).
    pub missing_body: bool,
}

impl order::Event for Message {
    /// A document's notice as published: its bytes are read from their
    /// key ([`scripts::doc_key`]) before it is delivered.
    fn needs_body(&self) -> bool {
        self.kind == b's' && self.body.is_empty() && !self.missing_body
    }
}

/// `key.gen` of a connection in messages and presence values.
pub fn conn_text(c: ConnRef) -> String {
    format!("{}.{}", c.key, c.gen)
}

fn parse_conn(s: &str) -> Option<ConnRef> {
    let (k, g) = s.split_once('.')?;
    Some(ConnRef {
        key: k.parse().ok()?,
        gen: g.parse().ok()?,
    })
}

impl Message {
    /// Parses a message; `None` for anything malformed (never a panic on
    /// what Redis hands over).
    pub fn parse(raw: Vec<u8>) -> Option<Message> {
        let nl = raw.iter().position(|&b| b == b'\n')?;
        let head = std::str::from_utf8(&raw[..nl]).ok()?;
        let mut parts = head.splitn(6, '|');
        let seq = parts.next()?.parse().ok()?;
        let epoch = parts.next()?.into();
        let node = parts.next()?.into();
        let except = match parts.next()? {
            "-" => None,
            c => Some(parse_conn(c)?),
        };
        let kind = *parts.next()?.as_bytes().first()?;
        let from = parts.next()?.into();
        let mut body = bytes::Bytes::from(raw).slice(nl + 1..);
        let mut missing_body = false;
        if kind == b's' && body.last() == Some(&0) && body.len() == 1 {
            missing_body = true;
            body = bytes::Bytes::new();
        }
        Some(Message {
            seq,
            epoch,
            node,
            except,
            kind,
            from,
            body,
            missing_body,
        })
    }
}

/// What a node that starts following a room at `seq` can replay, from the
/// stream's last messages (oldest first) read with its snapshot: `(floor,
/// doc_seq, data events)`. Every `data` event numbered above `floor` (up
/// to `seq`) is among the events. `floor` is never below the last document
/// event read: a peer recovering from before it needs the whole state,
/// and this node's copy of the document came from the store, which may
/// not hold that document yet. `doc_seq` is that document event's number
/// (0: none read).
pub fn recent_history(seq: u64, recent: Vec<Vec<u8>>) -> (u64, u64, Vec<(u64, bytes::Bytes)>) {
    let msgs: Vec<Message> = recent
        .into_iter()
        .filter_map(Message::parse)
        .filter(|m| m.seq <= seq)
        .collect();
    // Entries are numbered one by one: a break means something is missing.
    let contiguous = msgs.windows(2).all(|w| w[1].seq == w[0].seq + 1)
        && msgs.last().map_or(true, |m| m.seq == seq);
    if !contiguous {
        return (seq, 0, Vec::new());
    }
    let doc_seq = msgs
        .iter()
        .filter(|m| m.kind == b's')
        .map(|m| m.seq)
        .max()
        .unwrap_or(0);
    let floor = msgs
        .first()
        .map_or(seq, |m| m.seq.saturating_sub(1))
        .max(doc_seq);
    let events = msgs
        .into_iter()
        .filter(|m| m.kind == b'd' && m.seq > floor)
        .map(|m| (m.seq, m.body))
        .collect();
    (floor, doc_seq, events)
}

/// The head of a published event (after `<seq>|<epoch>|`, which the
/// script adds).
pub fn head(node: &str, except: Option<ConnRef>, kind: u8, from: &str) -> String {
    let except = except.map_or_else(|| "-".to_owned(), conn_text);
    format!("{node}|{except}|{}|{from}\n", kind as char)
}

/// The JSON of a frame built with the placeholder `"seq":0`, without its
/// closing `,"seq":0}`; `None` when the frame does not end so.
pub fn body_of(frame: &crate::ws::Frame) -> Option<bytes::Bytes> {
    let b = frame.get(1).copied()? & 0x7f;
    let header = match b {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = frame.slice(header.min(frame.len())..);
    let tail = crate::protocol::out::SEQ_PLACEHOLDER;
    payload
        .ends_with(tail)
        .then(|| payload.slice(..payload.len() - tail.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn cluster_mode_needs_the_shared_store() {
        assert_eq!(ClusterConfig::from_lookup(&get(&[]), "file"), Ok(None));
        let e = ClusterConfig::from_lookup(&get(&[("REDIS_URL", "redis://127.0.0.1/")]), "file")
            .unwrap_err();
        assert!(
            e.contains("REDIS_URL") && e.contains("ROOM_STORE=mongodb"),
            "{e}"
        );
        let c = ClusterConfig::from_lookup(
            &get(&[("REDIS_URL", "redis://127.0.0.1/"), ("NODE_ID", "a-1")]),
            "mongodb",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.node_id, "a-1");
        assert_eq!(c.node_ttl, Duration::from_secs(15));
        for bad in [
            ("NODE_ID", "a|b"),
            ("NODE_TTL_SECONDS", "1"),
            ("REDIS_URL", "http://x"),
        ] {
            let mut vars = vec![("REDIS_URL", "redis://127.0.0.1/")];
            vars.retain(|(k, _)| *k != bad.0);
            vars.push(bad);
            let e = ClusterConfig::from_lookup(&get(&vars), "mongodb").unwrap_err();
            assert!(e.contains(bad.0), "{e}");
        }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let c = ConnRef { key: 7, gen: 9 };
        let mut raw = b"12|ep|".to_vec();
        raw.extend_from_slice(head("n1", Some(c), b'd', "peer|x").as_bytes());
        raw.extend_from_slice(br#"{"type":"data","from":"p","data":"x""#);
        let m = Message::parse(raw).unwrap();
        assert_eq!(m.seq, 12);
        assert_eq!(&*m.epoch, "ep");
        assert_eq!(&*m.node, "n1");
        assert_eq!(m.except, Some(c));
        assert_eq!(m.kind, b'd');
        assert_eq!(&*m.from, "peer|x");
        assert_eq!(&m.body[..], br#"{"type":"data","from":"p","data":"x""#);
        for bad in [
            &b""[..],
            b"x|e|n|-|d|p\n",
            b"1|e|n|zz|d|p\n",
            b"1|e|n|-|d|p",
            b"1|e\n",
        ] {
            assert_eq!(Message::parse(bad.to_vec()), None);
        }
        let m = Message::parse(b"3|e|n|-|s|h\n\0".to_vec()).unwrap();
        assert!(m.missing_body);
        use order::Event;
        assert!(!m.needs_body());
        // A document as published: the notice alone.
        let m = Message::parse(b"4|e|n|1.2|s|\n".to_vec()).unwrap();
        assert!(m.needs_body() && m.body.is_empty());
        let m = Message::parse(b"4|e|n|1.2|s|\n{\"type\":\"document_sync\"".to_vec()).unwrap();
        assert!(!m.needs_body());
        let m = Message::parse(b"5|e|n|-|d|\n".to_vec()).unwrap();
        assert!(!m.needs_body());
    }

    #[test]
    fn recent_history_starts_after_the_last_document() {
        let msg =
            |seq: u64, kind: char, body: &str| format!("{seq}|ep|n|-|{kind}|\n{body}").into_bytes();
        let d = |seq: u64| {
            msg(
                seq,
                'd',
                &format!(r#"{{"type":"data","from":"p","data":"{seq}""#),
            )
        };
        // Data only: everything above the oldest entry read.
        let (floor, doc, ev) = recent_history(7, vec![d(5), d(6), msg(7, 'j', "{}")]);
        assert_eq!((floor, doc), (4, 0));
        assert_eq!(ev.iter().map(|e| e.0).collect::<Vec<_>>(), [5, 6]);
        assert!(ev[0].1.ends_with(br#""data":"5""#));
        // A document in the window: nothing before it is replayable.
        let (floor, doc, ev) = recent_history(9, vec![d(5), msg(6, 's', ""), d(7), d(8), d(9)]);
        assert_eq!((floor, doc), (6, 6));
        assert_eq!(ev.iter().map(|e| e.0).collect::<Vec<_>>(), [7, 8, 9]);
        // Nothing read, or a hole: nothing replayable before the snapshot.
        assert_eq!(recent_history(3, vec![]).0, 3);
        let (floor, _, ev) = recent_history(9, vec![d(5), d(7), d(9)]);
        assert_eq!((floor, ev.len()), (9, 0));
        let (floor, _, ev) = recent_history(9, vec![d(5), d(6)]);
        assert_eq!((floor, ev.len()), (9, 0));
    }

    #[test]
    fn a_placeholder_frame_gives_its_body() {
        let f = crate::ws::text(br#"{"type":"peer_left","peer_id":"a","seq":0}"#);
        assert_eq!(
            &body_of(&f).unwrap()[..],
            br#"{"type":"peer_left","peer_id":"a""#
        );
        let big = format!(
            r#"{{"type":"data","data":"{}","seq":0}}"#,
            "x".repeat(70_000)
        );
        let f = crate::ws::text(big.as_bytes());
        assert_eq!(body_of(&f).unwrap().len(), big.len() - 9);
        assert_eq!(body_of(&crate::ws::text(b"{}")), None);
    }
}
