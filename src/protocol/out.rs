//! Server → client messages (§2, §6): each built once into a ready
//! WebSocket text [`Frame`] that every recipient shares.
//!
//! Frames are written after [`HEADROOM`] bytes so that the header goes in
//! front without a copy ([`ws::finish_text`]). Stream events end with
//! their `seq` ([`end_seq`]); in cluster mode they are built with
//! [`SEQ_PLACEHOLDER`], which the delivering node replaces.

use crate::util::json_str;
use crate::ws::{self, Frame, HEADROOM};
use std::io::Write as _;

/// Builds a text frame whose payload `f` writes after the header room.
pub fn build(f: impl FnOnce(&mut Vec<u8>)) -> Frame {
    let mut b = Vec::with_capacity(128);
    b.resize(HEADROOM, 0);
    f(&mut b);
    ws::finish_text(b)
}

/// The closing bytes of an event frame built in cluster mode, replaced by
/// the real number on delivery.
pub const SEQ_PLACEHOLDER: &[u8] = br#","seq":0}"#;

pub fn end_seq(b: &mut Vec<u8>, seq: u64) {
    let _ = write!(b, r#","seq":{seq}}}"#);
}

/// The length of what [`end_seq`] writes.
pub fn document_frame_tail(seq: u64) -> usize {
    let digits = seq.checked_ilog10().unwrap_or(0) as usize + 1;
    r#","seq":}"#.len() + digits
}

/// The length of the stored `document_sync` snapshot frame for a document
/// whose raw JSON string is `raw_len` bytes.
pub fn document_frame_len(raw_len: usize) -> usize {
    let payload = DOCUMENT_PREFIX.len() + raw_len + 1;
    let header = match payload {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    header + payload
}

pub const DOCUMENT_PREFIX: &[u8] = br#"{"type":"document_sync","document":"#;

/// `document_sync`: numbered when it is the stream event, plain when it is
/// a snapshot.
pub fn document_frame(raw: &str, seq: Option<u64>) -> Frame {
    let mut b = Vec::with_capacity(HEADROOM + raw.len() + 64);
    b.resize(HEADROOM, 0);
    b.extend_from_slice(DOCUMENT_PREFIX);
    b.extend_from_slice(raw.as_bytes());
    match seq {
        Some(seq) => end_seq(&mut b, seq),
        None => b.push(b'}'),
    }
    ws::finish_text(b)
}

/// A snapshot `document_sync` frame (no `seq`) around a document's raw JSON
/// text, as the room holds it.
pub fn document_frame_bytes(raw: &[u8]) -> Frame {
    let mut b = Vec::with_capacity(HEADROOM + raw.len() + DOCUMENT_PREFIX.len() + 1);
    b.resize(HEADROOM, 0);
    b.extend_from_slice(DOCUMENT_PREFIX);
    b.extend_from_slice(raw);
    b.push(b'}');
    ws::finish_text(b)
}

pub fn peer_left_frame(peer_id: &str, seq: u64) -> Frame {
    build(|b| {
        b.extend_from_slice(br#"{"type":"peer_left","peer_id":"#);
        b.extend_from_slice(json_str(peer_id).as_bytes());
        end_seq(b, seq);
    })
}

/// `{"type":"error","message":...}`
pub fn error_frame(message: &str) -> Frame {
    build(|b| {
        b.extend_from_slice(br#"{"type":"error","message":"#);
        b.extend_from_slice(json_str(message).as_bytes());
        b.push(b'}');
    })
}

pub fn not_in_room() -> Frame {
    error_frame("Not in a room")
}

/// `{"type":"pong"}`, shared by every connection.
pub fn pong_frame() -> Frame {
    Frame::from_static(b"\x81\x0f{\"type\":\"pong\"}")
}

/// `peer_joined` around a peer object (see [`peer_object`]).
pub fn peer_joined_frame(peer_json: &str, seq: u64) -> Frame {
    build(|b| {
        b.extend_from_slice(PEER_JOINED_PREFIX);
        b.extend_from_slice(peer_json.as_bytes());
        end_seq(b, seq);
    })
}

/// What a `peer_joined` frame's payload starts with, before the peer.
pub const PEER_JOINED_PREFIX: &[u8] = br#"{"type":"peer_joined","peer":"#;

/// One entry of a peers list: `{"id","joined_at","is_host","metadata"}`.
/// `id_json` is already a JSON string; `metadata` raw JSON or `null`.
pub fn peer_object(id_json: &str, joined_at: &str, is_host: bool, metadata: &str) -> String {
    format!(
        r#"{{"id":{id_json},"joined_at":"{joined_at}","is_host":{is_host},"metadata":{metadata}}}"#
    )
}

/// `room_info` for a joiner: the room, its host as this joiner may see it,
/// the peers (a JSON array), the stream's position, and for a join with
/// `since` whether the replay follows.
pub fn room_info_frame(
    code: &str,
    host_shown: &str,
    peers_json: &str,
    epoch: &str,
    seq: u64,
    recovered: Option<bool>,
) -> Frame {
    build(|b| {
        b.extend_from_slice(br#"{"type":"room_info","room_code":"#);
        b.extend_from_slice(json_str(code).as_bytes());
        b.extend_from_slice(br#","host_id":"#);
        b.extend_from_slice(json_str(host_shown).as_bytes());
        b.extend_from_slice(br#","peers":"#);
        b.extend_from_slice(peers_json.as_bytes());
        b.extend_from_slice(br#","epoch":"#);
        b.extend_from_slice(json_str(epoch).as_bytes());
        let _ = write!(b, r#","seq":{seq}"#);
        if let Some(r) = recovered {
            let _ = write!(b, r#","recovered":{r}"#);
        }
        b.push(b'}');
    })
}

/// `connected`: the joiner's own id (`id_json`, a JSON string) and room.
pub fn connected_frame(id_json: &str, code: &str) -> Frame {
    build(|b| {
        b.extend_from_slice(br#"{"type":"connected","peer_id":"#);
        b.extend_from_slice(id_json.as_bytes());
        b.extend_from_slice(br#","room_code":"#);
        b.extend_from_slice(json_str(code).as_bytes());
        b.push(b'}');
    })
}

/// `{"type":"data","from":<shown_json>,"data":` — the start of every `data`
/// a member sends, built once at its join.
pub fn data_prefix(shown_json: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(shown_json.len() + 32);
    prefix.extend_from_slice(br#"{"type":"data","from":"#);
    prefix.extend_from_slice(shown_json.as_bytes());
    prefix.extend_from_slice(br#","data":"#);
    prefix
}

/// A numbered event whose payload is `parts` in order, then its `seq`:
/// `data` (a member's prefix and the raw JSON string it sent), or an event
/// delivered from Redis (its body).
pub fn event_frame(parts: &[&[u8]], seq: u64) -> Frame {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut b = Vec::with_capacity(HEADROOM + len + 28);
    b.resize(HEADROOM, 0);
    for p in parts {
        b.extend_from_slice(p);
    }
    end_seq(&mut b, seq);
    ws::finish_text(b)
}
