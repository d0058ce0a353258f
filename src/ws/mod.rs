//! Sans-io WebSocket framing for the server side of RFC 6455.
//!
//! Header parsing and formatting come from tungstenite's frame module; this
//! module drives it over a caller-owned buffer instead of letting a
//! `tungstenite::WebSocket` own the socket, for two reasons the server's
//! budget depends on:
//!
//! * Outbound messages are built once as complete frames ([`Frame`] = one
//!   `Bytes` holding header and payload) and shared by reference count with
//!   every recipient. tungstenite's writer copies each message into a
//!   per-connection buffer, which would make a 10 MiB document sent to 50
//!   peers cost 500 MiB.
//! * tungstenite's read buffer grows to the largest frame seen and keeps that
//!   capacity for the life of the connection. Here the connection owns the
//!   input buffer and releases it whenever it drains.
//!
//! [`Decoder::next`] is a pure function of the buffered bytes: it yields one
//! event at a time with the number of bytes consumed, or a [`WsError`] that
//! maps to the close code the server must send. Limits are checked against
//! the declared frame length before any payload is buffered.

use bytes::Bytes;
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// An encoded server frame (header and payload), cheap to clone.
pub type Frame = Bytes;

/// Close codes the server sends.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// The server cannot take the message now (a memory bound); the client
    /// may try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// A protocol violation, and the close code that answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsError {
    Protocol(&'static str),
    InvalidUtf8,
    TooBig,
}

impl WsError {
    pub fn close_code(self) -> u16 {
        match self {
            WsError::Protocol(_) => close::PROTOCOL,
            WsError::InvalidUtf8 => close::INVALID_DATA,
            WsError::TooBig => close::TOO_BIG,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            WsError::Protocol(r) => r,
            WsError::InvalidUtf8 => "Text message is not valid UTF-8",
            WsError::TooBig => "Message too big",
        }
    }
}

/// One thing the peer said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message, UTF-8 checked.
    Text(&'a str),
    /// A complete binary message (the protocol answers it with an error).
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// The peer's close frame, with its code if it sent one.
    Close(Option<u16>),
}

/// Reassembly state between frames. Empty (no allocation) between messages.
#[derive(Debug, Default)]
pub struct Decoder {
    /// A fragmented message in progress: whether it is text, and its bytes.
    partial: Option<(bool, Vec<u8>)>,
    /// The last reassembled message, kept only so the returned event can
    /// borrow it; released on the next call.
    assembled: Vec<u8>,
}

impl Decoder {
    /// Bytes held for a fragmented message in progress.
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |(_, v)| v.capacity()) + self.assembled.capacity()
    }

    /// Frees the buffer of the last reassembled message; call once its
    /// event has been handled, so an idle connection holds nothing.
    pub fn release(&mut self) {
        self.assembled = Vec::new();
    }

    /// Decodes the next event from the front of `buf`, unmasking in place.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete frame yet, and
    /// otherwise the event with the bytes it consumed. A consumed frame that
    /// only continues a fragmented message returns `Ok(Some((None, n)))`.
    pub fn next<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        max_message: usize,
    ) -> Result<Option<(Option<Event<'a>>, usize)>, WsError> {
        if self.assembled.capacity() > 0 {
            self.assembled = Vec::new();
        }
        let mut cursor = Cursor::new(&*buf);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(_) => return Err(WsError::Protocol("Malformed frame header")),
        };
        let head_len = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Protocol("Reserved bits set without an extension"));
        }
        let Some(mask) = header.mask else {
            return Err(WsError::Protocol("Client frames must be masked"));
        };
        let is_control = matches!(header.opcode, OpCode::Control(_));
        if is_control && (!header.is_final || len > 125) {
            return Err(WsError::Protocol("Invalid control frame"));
        }
        // RFC 6455 §5.2: the most significant bit of a 64-bit length is 0.
        if len > i64::MAX as u64 {
            return Err(WsError::Protocol("Frame length out of range"));
        }
        // Refuse by declared length, before buffering the payload.
        let already = self.partial.as_ref().map_or(0, |(_, v)| v.len() as u64);
        if !is_control && already.saturating_add(len) > max_message as u64 {
            return Err(WsError::TooBig);
        }
        let len = len as usize;
        if buf.len() - head_len < len {
            return Ok(None);
        }
        let used = head_len + len;
        let payload = &mut buf[head_len..used];
        unmask(payload, mask);

        let event = match header.opcode {
            OpCode::Control(Control::Ping) => Some(Event::Ping(payload)),
            OpCode::Control(Control::Pong) => Some(Event::Pong),
            OpCode::Control(Control::Close) => Some(Event::Close(parse_close(payload)?)),
            OpCode::Control(Control::Reserved(_)) => {
                return Err(WsError::Protocol("Reserved control opcode"));
            }
            OpCode::Data(Data::Reserved(_)) => {
                return Err(WsError::Protocol("Reserved data opcode"));
            }
            OpCode::Data(Data::Continue) => {
                let Some((is_text, mut acc)) = self.partial.take() else {
                    return Err(WsError::Protocol("Continuation without a message"));
                };
                // Grow geometrically but never past the limit: a plain
                // extend may double the capacity beyond `max_message`.
                let need = acc.len() + payload.len();
                if need > acc.capacity() {
                    let cap = need.max(acc.capacity().saturating_mul(2)).min(max_message);
                    acc.reserve_exact(cap - acc.len());
                }
                acc.extend_from_slice(payload);
                if !header.is_final {
                    self.partial = Some((is_text, acc));
                    return Ok(Some((None, used)));
                }
                self.assembled = acc;
                let event = if is_text {
                    Event::Text(
                        std::str::from_utf8(&self.assembled).map_err(|_| WsError::InvalidUtf8)?,
                    )
                } else {
                    Event::Binary
                };
                return Ok(Some((Some(event), used)));
            }
            OpCode::Data(d) => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol("New message inside a fragmented one"));
                }
                let is_text = d == Data::Text;
                if !header.is_final {
                    self.partial = Some((is_text, payload.to_vec()));
                    return Ok(Some((None, used)));
                }
                if is_text {
                    Some(Event::Text(
                        std::str::from_utf8(payload).map_err(|_| WsError::InvalidUtf8)?,
                    ))
                } else {
                    Some(Event::Binary)
                }
            }
        };
        Ok(Some((event, used)))
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // Eight bytes at a time; the mask repeats every four so a doubled mask
    // lines up with every 8-byte chunk.
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("Close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(WsError::InvalidUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// Formats a frame header for an unmasked server frame into `out`,
/// returning its length (2, 4 or 10 bytes).
fn header_into(opcode: OpCode, len: usize, out: &mut [u8; 10]) -> usize {
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    let n = header.len(len as u64);
    let mut cursor = Cursor::new(&mut out[..]);
    header
        .format(len as u64, &mut cursor)
        .expect("a 10-byte buffer holds any unmasked header");
    n
}

/// The whole length (header plus payload) of the frame starting at `buf`,
/// once its header is complete; lets the reader reserve exactly once.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut cursor = Cursor::new(buf);
    match FrameHeader::parse(&mut cursor) {
        Ok(Some((_, len))) => usize::try_from(len)
            .ok()?
            .checked_add(cursor.position() as usize),
        _ => None,
    }
}

/// Room at the front of a frame buffer for the longest server header.
pub const HEADROOM: usize = 10;

/// The length of the header of a frame the server built (unmasked): where
/// its payload starts.
pub fn header_len(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

/// Turns a buffer whose first [`HEADROOM`] bytes are reserved and whose rest
/// is a text payload into one shareable frame, without copying the payload.
pub fn finish_text(mut buf: Vec<u8>) -> Frame {
    let len = buf.len() - HEADROOM;
    let mut head = [0u8; 10];
    let n = header_into(OpCode::Data(Data::Text), len, &mut head);
    let start = HEADROOM - n;
    buf[start..HEADROOM].copy_from_slice(&head[..n]);
    Bytes::from(buf).slice(start..)
}

/// A text frame from a complete payload (copies it; for small messages).
pub fn text(payload: &[u8]) -> Frame {
    let mut buf = Vec::with_capacity(HEADROOM + payload.len());
    buf.resize(HEADROOM, 0);
    buf.extend_from_slice(payload);
    finish_text(buf)
}

fn control(opcode: Control, payload: &[u8]) -> Frame {
    debug_assert!(payload.len() <= 125);
    let mut head = [0u8; 10];
    let n = header_into(OpCode::Control(opcode), payload.len(), &mut head);
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&head[..n]);
    v.extend_from_slice(payload);
    Bytes::from(v)
}

/// A close frame with a status code and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Frame {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    // Control payloads are at most 125 bytes; cut on a char boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    control(Control::Close, &p)
}

/// A pong answering a ping with `payload`.
pub fn pong(payload: &[u8]) -> Frame {
    if payload.is_empty() {
        // The common case costs no allocation, like the keepalive ping.
        return Bytes::from_static(&[0x8A, 0x00]);
    }
    control(Control::Pong, payload)
}

/// The keepalive ping; every connection shares one static frame.
pub fn ping() -> Frame {
    Bytes::from_static(&[0x89, 0x00])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n < 65536 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<String>, WsError> {
        let mut buf = bytes.to_vec();
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((ev, n)) = d.next(&mut buf[pos..], max)? {
            match ev {
                Some(Event::Text(t)) => out.push(format!("text:{t}")),
                Some(Event::Binary) => out.push("binary".into()),
                Some(Event::Ping(p)) => out.push(format!("ping:{}", p.len())),
                Some(Event::Pong) => out.push("pong".into()),
                Some(Event::Close(c)) => out.push(format!("close:{c:?}")),
                None => {}
            }
            pos += n;
        }
        assert_eq!(pos, buf.len(), "all bytes consumed");
        Ok(out)
    }

    #[test]
    fn text_binary_control_round() {
        let mut raw = client_frame(1, true, b"hello");
        raw.extend(client_frame(2, true, &[0, 1]));
        raw.extend(client_frame(9, true, b"abc"));
        raw.extend(client_frame(10, true, b""));
        raw.extend(client_frame(8, true, &1000u16.to_be_bytes()));
        assert_eq!(
            decode_all(&raw, 1 << 20).unwrap(),
            ["text:hello", "binary", "ping:3", "pong", "close:Some(1000)"]
        );
    }

    #[test]
    fn fragments_reassemble_with_interleaved_ping() {
        let mut raw = client_frame(1, false, "héllo ".as_bytes());
        raw.extend(client_frame(9, true, b""));
        raw.extend(client_frame(0, true, "wörld".as_bytes()));
        assert_eq!(
            decode_all(&raw, 1 << 20).unwrap(),
            ["ping:0", "text:héllo wörld"]
        );
    }

    #[test]
    fn every_split_point_waits_for_the_frame() {
        let raw = client_frame(1, true, &[b'x'; 300]);
        for cut in 0..raw.len() {
            let mut part = raw[..cut].to_vec();
            assert_eq!(Decoder::default().next(&mut part, 1 << 20), Ok(None));
        }
    }

    #[test]
    fn limits_and_violations_map_to_close_codes() {
        let big = client_frame(1, true, &[b'x'; 2000]);
        // Only the header is needed to refuse an oversized frame.
        let mut head = big[..8].to_vec();
        assert_eq!(
            Decoder::default().next(&mut head, 1000),
            Err(WsError::TooBig)
        );
        let mut frag = client_frame(1, false, &[b'x'; 600]);
        frag.extend(client_frame(0, true, &[b'x'; 600]));
        assert_eq!(
            decode_all(&frag, 1000).unwrap_err().close_code(),
            close::TOO_BIG
        );

        // A 64-bit length with its top bit set is malformed, not just big.
        let mut top_bit = vec![0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(
            Decoder::default()
                .next(&mut top_bit, 1000)
                .unwrap_err()
                .close_code(),
            close::PROTOCOL
        );

        let bad_utf8 = client_frame(1, true, &[0xff, 0xfe]);
        assert_eq!(
            decode_all(&bad_utf8, 100).unwrap_err().close_code(),
            close::INVALID_DATA
        );

        let mut unmasked = vec![0x81, 0x02, b'h', b'i'];
        assert_eq!(
            Decoder::default()
                .next(&mut unmasked, 100)
                .unwrap_err()
                .close_code(),
            close::PROTOCOL
        );
        let stray = client_frame(0, true, b"x");
        assert_eq!(
            decode_all(&stray, 100).unwrap_err().close_code(),
            close::PROTOCOL
        );
        let long_ping = client_frame(9, true, &[0; 126]);
        assert_eq!(
            decode_all(&long_ping, 1000).unwrap_err().close_code(),
            close::PROTOCOL
        );
        let rsv = {
            let mut f = client_frame(1, true, b"x");
            f[0] |= 0x40;
            f
        };
        assert_eq!(
            decode_all(&rsv, 100).unwrap_err().close_code(),
            close::PROTOCOL
        );
        let mut nested = client_frame(1, false, b"a");
        nested.extend(client_frame(1, true, b"b"));
        assert_eq!(
            decode_all(&nested, 100).unwrap_err().close_code(),
            close::PROTOCOL
        );
    }

    #[test]
    fn server_frames_have_minimal_headers() {
        assert_eq!(&text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = text(&[b'a'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        let f = text(&vec![b'a'; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_010);
        assert_eq!(
            &close_frame(1009, "big")[..],
            &[0x88, 5, 0x03, 0xf1, b'b', b'i', b'g']
        );
        assert_eq!(&ping()[..], &[0x89, 0]);
    }

    #[test]
    fn unmask_matches_bytewise() {
        let mask = [1, 2, 3, 4];
        let mut a: Vec<u8> = (0..37).collect();
        let b: Vec<u8> = a.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]).collect();
        unmask(&mut a, mask);
        assert_eq!(a, b);
    }
}
