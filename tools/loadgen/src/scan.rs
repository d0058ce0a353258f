//! Byte scanning of server messages, so that the generator never parses JSON
//! per message.
//!
//! Every server message is one JSON object with a `type` field. We find the
//! type by looking for the key `"type"` followed by `:` and a string, and we
//! find our own stamp inside a `data` message the same way. This is sound for
//! the messages we care about: inside a JSON string every `"` is escaped as
//! `\"`, so the byte sequence `"type"` followed by a colon can only be a real
//! key, never text inside a value. All payloads the generator sends are plain
//! ASCII letters and digits, so the server never needs to escape them.
//!
//! The stamp that the generator puts at the start of every `broadcast`
//! payload is fixed width lowercase hex: sender (8), sequence number (8),
//! send time in ns since the generator started (16), then filler up to the
//! payload size. Fixed width keeps parsing to a few dozen byte operations.

use crate::ws::Msg;

/// Server message types the generator distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data,
    DocumentSync,
    RoomInfo,
    Connected,
    PeerJoined,
    PeerLeft,
    Pong,
    Error,
    Other,
}

/// First index of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..hay.len() - rest.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                let at = i + p;
                if &hay[at + 1..at + needle.len()] == rest {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// The bytes of the value of the top-level key `key` (given with its quotes,
/// e.g. `b"\"type\""`), starting at the value's first byte.
pub fn field<'a>(msg: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(p) = find(&msg[from..], key) {
        let mut i = from + p + key.len();
        while i < msg.len() && msg[i] == b' ' {
            i += 1;
        }
        if i < msg.len() && msg[i] == b':' {
            i += 1;
            while i < msg.len() && msg[i] == b' ' {
                i += 1;
            }
            return Some(&msg[i..]);
        }
        from = i;
    }
    None
}

/// The contents of the string value of `key` (between its quotes), as long
/// as it contains no escapes and is not cut by the end of `msg`.
pub fn string_field<'a>(msg: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let v = field(msg, key)?;
    let v = v.strip_prefix(b"\"")?;
    let end = v.iter().position(|&b| b == b'"' || b == b'\\')?;
    (v[end] == b'"').then(|| &v[..end])
}

/// The message type of one complete (or head-only) message.
pub fn kind(msg: &[u8]) -> Kind {
    match string_field(msg, b"\"type\"") {
        Some(b"data") => Kind::Data,
        Some(b"document_sync") => Kind::DocumentSync,
        Some(b"room_info") => Kind::RoomInfo,
        Some(b"connected") => Kind::Connected,
        Some(b"peer_joined") => Kind::PeerJoined,
        Some(b"peer_left") => Kind::PeerLeft,
        Some(b"pong") => Kind::Pong,
        Some(b"error") => Kind::Error,
        _ => Kind::Other,
    }
}

/// Type of a possibly streamed message: the key is looked for in the kept
/// head, then in the kept tail (a server may put `type` after a huge field).
pub fn kind_of(m: &Msg<'_>) -> Kind {
    match kind(m.head) {
        Kind::Other if !m.tail.is_empty() => kind(m.tail),
        k => k,
    }
}

/// Length of the stamp at the start of each payload.
pub const STAMP_LEN: usize = 32;

/// A parsed stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sender: u32,
    pub seq: u32,
    pub ts_ns: u64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut Vec<u8>, v: u64, digits: usize) {
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (4 * i)) & 15) as usize]);
    }
}

fn get_hex(b: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in b {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// Appends a payload of exactly `size` bytes (at least [`STAMP_LEN`]):
/// the stamp, then `x` filler.
pub fn write_payload(out: &mut Vec<u8>, stamp: Stamp, size: usize) {
    put_hex(out, u64::from(stamp.sender), 8);
    put_hex(out, u64::from(stamp.seq), 8);
    put_hex(out, stamp.ts_ns, 16);
    out.resize(out.len() + size.saturating_sub(STAMP_LEN), b'x');
}

/// Reads the stamp at the start of a payload.
pub fn read_stamp(b: &[u8]) -> Option<Stamp> {
    if b.len() < STAMP_LEN {
        return None;
    }
    Some(Stamp {
        sender: get_hex(&b[0..8])? as u32,
        seq: get_hex(&b[8..16])? as u32,
        ts_ns: get_hex(&b[16..32])?,
    })
}

/// The stamp of a `data` message, found by scanning for the `data` key.
pub fn data_stamp(msg: &[u8]) -> Option<Stamp> {
    let v = field(msg, b"\"data\"")?;
    read_stamp(v.strip_prefix(b"\"")?)
}

/// Writes the `broadcast` action for one stamped payload.
pub fn write_broadcast(out: &mut Vec<u8>, stamp: Stamp, size: usize) {
    out.extend_from_slice(b"{\"action\":\"broadcast\",\"data\":\"");
    write_payload(out, stamp, size);
    out.extend_from_slice(b"\"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_works_at_edges() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"aaa", b"a"), Some(0));
        assert_eq!(find(b"xya", b"a"), Some(2));
        assert_eq!(find(b"", b"a"), None);
    }

    #[test]
    fn kinds() {
        assert_eq!(
            kind(br#"{"type":"data","from":"p1","data":"x"}"#),
            Kind::Data
        );
        assert_eq!(
            kind(br#"{"document":"..","type" : "document_sync"}"#),
            Kind::DocumentSync
        );
        assert_eq!(
            kind(br#"{"type":"connected","peer_id":"a","room_code":"R"}"#),
            Kind::Connected
        );
        assert_eq!(kind(br#"{"type":"pong"}"#), Kind::Pong);
        assert_eq!(
            kind(br#"{"type":"peer_joined","peer":{}}"#),
            Kind::PeerJoined
        );
        assert_eq!(
            kind(br#"{"type":"error","message":"Room not found"}"#),
            Kind::Error
        );
        // `"type"` inside a string value is escaped and never matches.
        assert_eq!(
            kind(br#"{"data":"\"type\":\"pong\"","type":"data"}"#),
            Kind::Data
        );
        assert_eq!(kind(b"{}"), Kind::Other);
    }

    #[test]
    fn stamp_roundtrip_through_server_message() {
        let s = Stamp {
            sender: 7,
            seq: 123_456,
            ts_ns: 987_654_321_012,
        };
        let mut payload = Vec::new();
        write_payload(&mut payload, s, 100);
        assert_eq!(payload.len(), 100);
        assert_eq!(read_stamp(&payload), Some(s));
        let msg = [
            br#"{"type":"data","from":"p7","data":""#.as_slice(),
            &payload,
            br#""}"#,
        ]
        .concat();
        assert_eq!(kind(&msg), Kind::Data);
        assert_eq!(data_stamp(&msg), Some(s));
        // Field order does not matter.
        let msg2 = [br#"{"data":""#.as_slice(), &payload, br#"","type":"data"}"#].concat();
        assert_eq!(data_stamp(&msg2), Some(s));
    }

    #[test]
    fn broadcast_action_shape() {
        let mut out = Vec::new();
        write_broadcast(
            &mut out,
            Stamp {
                sender: 1,
                seq: 2,
                ts_ns: 3,
            },
            40,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with(r#"{"action":"broadcast","data":"0000000100000002"#));
        assert!(s.ends_with(r#"xxxxxxxx"}"#));
        assert_eq!(s.len(), 40 + 32);
        assert_eq!(
            string_field(s.as_bytes(), b"\"action\""),
            Some(&b"broadcast"[..])
        );
    }
}
