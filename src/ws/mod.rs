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
//! [`Decoder::next`] is a function of the buffered bytes and the decoder's
//! own state: it yields one event at a time with the number of bytes
//! consumed, or a [`WsError`] that maps to the close code the server must
//! send. Limits are checked against the declared frame length before any
//! payload is buffered. A data frame's payload is unmasked and UTF-8
//! checked as its bytes arrive (the decoder remembers how far it got), so
//! the turn that completes a large message does not redo that work; the
//! caller must hand back the unconsumed bytes unchanged.

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
    /// Payload bytes of the data frame at the front of the caller's buffer
    /// already unmasked in place (and UTF-8 checked, for text); 0 when no
    /// frame is under way.
    done: usize,
    /// The UTF-8 check of the text message in progress, which may span
    /// frames.
    utf8: Utf8,
}

/// What a data frame contributes to, decided from its header and the
/// reassembly state (before any payload is looked at).
#[derive(Clone, Copy)]
enum Part {
    /// A whole message in one frame.
    Whole { text: bool },
    /// The first frame of a fragmented message.
    First { text: bool },
    /// A continuation frame.
    More { text: bool },
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
    ///
    /// The payload of a data frame is unmasked and UTF-8 checked as far as
    /// it has arrived, so a 16 MiB message costs its last call no more
    /// than its last piece: after `Ok(None)` the caller must pass the same
    /// unconsumed bytes again (more may follow them), as a connection's
    /// input buffer does. Invalid UTF-8 is therefore refused (1007) as soon
    /// as it arrives, before the frame or message is complete.
    pub fn next<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        max_message: usize,
    ) -> Result<Option<(Option<Event<'a>>, usize)>, WsError> {
        if self.assembled.capacity() > 0 {
            self.assembled = Vec::new();
        }
        let step = self.step(buf, max_message);
        if !matches!(step, Ok(None)) {
            // The frame is consumed (or the connection ends).
            self.done = 0;
        }
        if step.is_err() {
            self.utf8 = Utf8::default();
        }
        let Some(Complete {
            done,
            head_len,
            used,
        }) = step?
        else {
            return Ok(None);
        };
        let payload = &buf[head_len..used];
        let event = match done {
            Done::Ping => Some(Event::Ping(payload)),
            Done::Pong => Some(Event::Pong),
            Done::Close => Some(Event::Close(parse_close(payload)?)),
            Done::Fragment => None,
            Done::Whole { text: false } | Done::Assembled { text: false } => Some(Event::Binary),
            Done::Whole { text: true } => Some(Event::Text(checked_str(payload)?)),
            Done::Assembled { text: true } => Some(Event::Text(checked_str(&self.assembled)?)),
        };
        Ok(Some((event, used)))
    }

    /// Parses the frame at the front of `buf`, does the work its arrived
    /// bytes allow, and says what the frame amounts to once complete.
    fn step(&mut self, buf: &mut [u8], max_message: usize) -> Result<Option<Complete>, WsError> {
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
        let part = match header.opcode {
            OpCode::Control(Control::Reserved(_)) => {
                return Err(WsError::Protocol("Reserved control opcode"));
            }
            OpCode::Control(c) => {
                // At most 125 bytes: handled once complete.
                if buf.len() - head_len < len {
                    return Ok(None);
                }
                let used = head_len + len;
                unmask(&mut buf[head_len..used], mask, 0);
                let done = match c {
                    Control::Ping => Done::Ping,
                    Control::Pong => Done::Pong,
                    _ => Done::Close,
                };
                return Ok(Some(Complete {
                    done,
                    head_len,
                    used,
                }));
            }
            OpCode::Data(Data::Reserved(_)) => {
                return Err(WsError::Protocol("Reserved data opcode"));
            }
            OpCode::Data(Data::Continue) => match &self.partial {
                Some((text, _)) => Part::More { text: *text },
                None => return Err(WsError::Protocol("Continuation without a message")),
            },
            OpCode::Data(d) => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol("New message inside a fragmented one"));
                }
                let text = d == Data::Text;
                if header.is_final {
                    Part::Whole { text }
                } else {
                    Part::First { text }
                }
            }
        };
        let text = match part {
            Part::Whole { text } | Part::First { text } | Part::More { text } => text,
        };
        // Unmask (and check) what has arrived since the last call.
        let arrived = (buf.len() - head_len).min(len);
        if arrived > self.done {
            let fresh = &mut buf[head_len + self.done..head_len + arrived];
            unmask(fresh, mask, self.done);
            if text {
                self.utf8.feed(fresh)?;
            }
            self.done = arrived;
        }
        if arrived < len {
            return Ok(None);
        }
        let used = head_len + len;
        let payload = &buf[head_len..used];
        let done = match part {
            Part::Whole { text } => {
                if text {
                    std::mem::take(&mut self.utf8).finish()?;
                }
                Done::Whole { text }
            }
            Part::First { text } => {
                self.partial = Some((text, payload.to_vec()));
                Done::Fragment
            }
            Part::More { text } => {
                // `partial` is there: `part` was decided from it.
                let (_, mut acc) = self.partial.take().unwrap_or_default();
                // Grow geometrically but never past the limit: a plain
                // extend may double the capacity beyond `max_message`.
                let need = acc.len() + payload.len();
                if need > acc.capacity() {
                    let cap = need.max(acc.capacity().saturating_mul(2)).min(max_message);
                    acc.reserve_exact(cap - acc.len());
                }
                acc.extend_from_slice(payload);
                if !header.is_final {
                    self.partial = Some((text, acc));
                    Done::Fragment
                } else {
                    if text {
                        std::mem::take(&mut self.utf8).finish()?;
                    }
                    self.assembled = acc;
                    Done::Assembled { text }
                }
            }
        };
        Ok(Some(Complete {
            done,
            head_len,
            used,
        }))
    }
}

/// A complete frame: what it amounts to, where its payload starts, and its
/// whole length.
struct Complete {
    done: Done,
    head_len: usize,
    used: usize,
}

/// What a complete frame amounts to.
enum Done {
    Ping,
    Pong,
    Close,
    /// A fragment taken into the message in progress.
    Fragment,
    /// A one-frame message; its payload is in the caller's buffer.
    Whole {
        text: bool,
    },
    /// The last fragment; the message is in `Decoder::assembled`.
    Assembled {
        text: bool,
    },
}

/// A complete text message as `str`.
///
/// [`Utf8`] has already accepted every byte as it arrived (which is what
/// refuses bad text early), but the bytes sat in the caller's buffer in
/// between, so the conversion checks them again rather than trust the
/// caller with an unchecked one. For ASCII this pass costs about 0.7 ms
/// per 16 MiB here.
fn checked_str(bytes: &[u8]) -> Result<&str, WsError> {
    std::str::from_utf8(bytes).map_err(|_| WsError::InvalidUtf8)
}

/// An incremental UTF-8 check over a message that arrives in pieces,
/// which may cut a character anywhere.
#[derive(Debug, Default)]
struct Utf8 {
    /// The start of a character cut off at the end of the last piece.
    carry: [u8; 4],
    carry_len: usize,
}

impl Utf8 {
    /// Checks `bytes`, which continue the text fed so far.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), WsError> {
        if self.carry_len > 0 {
            let k = self.carry_len;
            let take = (4 - k).min(bytes.len());
            let mut joined = self.carry;
            joined[k..k + take].copy_from_slice(&bytes[..take]);
            match std::str::from_utf8(&joined[..k + take]) {
                Ok(_) => bytes = &bytes[take..],
                Err(e) if e.error_len().is_some() => return Err(WsError::InvalidUtf8),
                // Still cut off: all of `bytes` went into `joined`.
                Err(e) if e.valid_up_to() == 0 => {
                    self.carry = joined;
                    self.carry_len = k + take;
                    return Ok(());
                }
                // The carried character is whole; what follows it in
                // `joined` is checked again below, with the rest.
                Err(e) => bytes = &bytes[e.valid_up_to() - k..],
            }
            self.carry_len = 0;
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(WsError::InvalidUtf8),
            Err(e) => {
                let rest = &bytes[e.valid_up_to()..];
                self.carry[..rest.len()].copy_from_slice(rest);
                self.carry_len = rest.len();
                Ok(())
            }
        }
    }

    /// The message ended: a character cut off at its end is invalid.
    fn finish(self) -> Result<(), WsError> {
        if self.carry_len > 0 {
            Err(WsError::InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

/// Unmasks `payload`, which starts `offset` bytes into its frame's payload.
fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let mask: [u8; 4] = std::array::from_fn(|i| mask[(i + offset) & 3]);
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

/// One frame as a client sends it (RFC 6455 §5.2: masked with `mask`, the
/// length in its shortest form), written by tungstenite's encoder. For
/// tests, fuzz harnesses and tools that must send what a conforming client
/// library would refuse to (fragments, reserved opcodes, odd sizes).
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let header = FrameHeader {
        is_final: fin,
        opcode: OpCode::from(opcode),
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let frame = tungstenite::protocol::frame::Frame::from_payload(header, payload.to_vec().into());
    let mut out = Vec::with_capacity(payload.len() + 14);
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        super::client_frame(opcode, fin, payload, [0x12, 0x34, 0x56, 0x78])
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
    fn unmask_matches_bytewise_from_any_offset() {
        let mask = [1, 2, 3, 4];
        let a: Vec<u8> = (0..37).collect();
        let b: Vec<u8> = a.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]).collect();
        for cut in 0..a.len() {
            let mut c = a.clone();
            let (head, tail) = c.split_at_mut(cut);
            unmask(head, mask, 0);
            unmask(tail, mask, cut);
            assert_eq!(c, b, "cut at {cut}");
        }
    }

    /// Feeds `raw` to one decoder the way a connection does (append, decode
    /// until "need more", drop what was used), in pieces of `step` bytes.
    fn decode_in_pieces(raw: &[u8], step: usize, max: usize) -> Result<Vec<String>, WsError> {
        let mut d = Decoder::default();
        let mut inbuf = Vec::new();
        let mut out = Vec::new();
        for piece in raw.chunks(step) {
            inbuf.extend_from_slice(piece);
            let mut pos = 0;
            while let Some((ev, n)) = d.next(&mut inbuf[pos..], max)? {
                if let Some(Event::Text(t)) = ev {
                    out.push(t.to_string());
                }
                pos += n;
            }
            inbuf.drain(..pos);
        }
        assert!(inbuf.is_empty(), "all bytes consumed");
        Ok(out)
    }

    #[test]
    fn text_arriving_in_pieces_is_unmasked_and_checked_as_it_comes() {
        // Multi-byte characters cut at every possible place, within one
        // frame and across fragments.
        let text = "ขุนแผน é 😀 ascii ".repeat(5);
        let mut raw = client_frame(1, true, text.as_bytes());
        let (a, b) = text.as_bytes().split_at(7);
        let (b, c) = b.split_at(13);
        raw.extend(client_frame(1, false, a));
        raw.extend(client_frame(9, true, b"p"));
        raw.extend(client_frame(0, false, b));
        raw.extend(client_frame(0, true, c));
        for step in 1..=raw.len() {
            assert_eq!(
                decode_in_pieces(&raw, step, 1 << 20).unwrap(),
                [text.clone(), text.clone()],
                "pieces of {step}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_refused_before_the_frame_is_complete() {
        let mut payload = vec![b'x'; 1000];
        payload[10] = 0xff;
        let raw = client_frame(1, true, &payload);
        let mut first = raw[..100].to_vec();
        assert_eq!(
            Decoder::default().next(&mut first, 1 << 20),
            Err(WsError::InvalidUtf8)
        );
        // A character cut off by the end of the message is invalid too,
        // while one cut off by the end of what has arrived is not (yet).
        let cut = client_frame(1, true, &"é".as_bytes()[..1]);
        assert_eq!(
            decode_all(&cut, 100).unwrap_err().close_code(),
            close::INVALID_DATA
        );
        let whole = client_frame(1, true, "aé".as_bytes());
        let mut part = whole[..whole.len() - 1].to_vec();
        assert_eq!(Decoder::default().next(&mut part, 100), Ok(None));
        let mut frag = client_frame(1, false, &"é".as_bytes()[..1]);
        frag.extend(client_frame(0, true, b"x"));
        assert_eq!(
            decode_all(&frag, 100).unwrap_err().close_code(),
            close::INVALID_DATA
        );
        // Binary payloads are not text.
        assert_eq!(
            decode_all(&client_frame(2, true, &[0xff]), 100).unwrap(),
            ["binary"]
        );
    }

    #[test]
    fn utf8_check_accepts_exactly_what_from_utf8_accepts() {
        let samples: [&[u8]; 8] = [
            "ขุนแผน".as_bytes(),
            "a😀b".as_bytes(),
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"\xe2\x82",
            b"ok\xe2\x82\xac",
            b"\x80",
        ];
        for bytes in samples {
            let want = std::str::from_utf8(bytes).is_ok();
            for i in 0..=bytes.len() {
                for j in i..=bytes.len() {
                    let mut u = Utf8::default();
                    let got = u
                        .feed(&bytes[..i])
                        .and_then(|()| u.feed(&bytes[i..j]))
                        .and_then(|()| u.feed(&bytes[j..]))
                        .and_then(|()| u.finish());
                    assert_eq!(got.is_ok(), want, "{bytes:?} cut at {i}, {j}");
                }
            }
        }
    }
}
