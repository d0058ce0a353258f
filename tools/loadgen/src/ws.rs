//! A minimal WebSocket client codec (RFC 6455), written for the load
//! generator rather than borrowed from a library.
//!
//! Why our own: a general library allocates a `Vec` per message and wants a
//! blocking or async stream per connection. The generator drives thousands of
//! non-blocking sockets from one thread and must stay cheaper than the server
//! it measures, so it decodes frames straight out of a shared read buffer and
//! hands out borrowed slices. Only what a client needs is here:
//!
//! * the upgrade request and the check of `Sec-WebSocket-Accept` (with a small
//!   SHA-1 and base64, used once per connection);
//! * masked client frames (the RFC requires clients to mask);
//! * a streaming decoder for the server's unmasked frames that never buffers a
//!   large message: a 10 MiB `document_sync` is reduced to its first
//!   [`HEAD_KEEP`] and last [`TAIL_KEEP`] bytes plus its length, which is all
//!   the generator needs to recognise it.

use std::fmt;

/// Opcodes used by the generator.
pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Unfragmented data frames up to this size are delivered zero-copy from the
/// read buffer (the connection keeps the partial frame until it is whole).
/// Larger or fragmented messages are streamed through an [`Assembly`].
pub const SMALL_FRAME: u64 = 64 * 1024;
/// Bytes kept from the start of a streamed message.
pub const HEAD_KEEP: usize = 64 * 1024;
/// Bytes kept from the end of a streamed message.
pub const TAIL_KEEP: usize = 4096;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// SHA-1, needed only to verify the handshake's `Sec-WebSocket-Accept`.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = Vec::with_capacity(data.len() + 72);
    msg.extend_from_slice(data);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    let mut w = [0u32; 80];
    for block in msg.chunks_exact(64) {
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hv, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hv = hv.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `Sec-WebSocket-Accept` value a server must answer for `key`.
pub fn expected_accept(key: &str) -> String {
    let mut s = String::with_capacity(key.len() + WS_GUID.len());
    s.push_str(key);
    s.push_str(WS_GUID);
    base64(&sha1(s.as_bytes()))
}

/// The HTTP upgrade request for `GET /ws`.
pub fn upgrade_request(host_header: &str, key: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Index just past the `\r\n\r\n` that ends an HTTP head, if present.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Checks the server's answer to the upgrade request: status 101 and the
/// right accept token. `head` is the response head including the blank line.
pub fn check_upgrade_response(head: &[u8], accept: &str) -> Result<(), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        return Err(format!("upgrade refused: {status}"));
    }
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-accept") {
                return if value.trim() == accept {
                    Ok(())
                } else {
                    Err(format!("bad Sec-WebSocket-Accept {}", value.trim()))
                };
            }
        }
    }
    Err("no Sec-WebSocket-Accept in upgrade response".into())
}

/// XORs `buf` with the 4-byte mask, eight bytes at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let m64 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ m64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the mask phase restarts at 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends one complete (FIN) masked client frame to `out`.
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let len = payload.len();
    out.reserve(len + 14);
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// Size on the wire of an unmasked server frame carrying `payload_len` bytes.
pub fn server_frame_len(payload_len: u64) -> u64 {
    payload_len
        + if payload_len < 126 {
            2
        } else if payload_len <= 0xFFFF {
            4
        } else {
            10
        }
}

/// A data message as the decoder hands it out. For a message that was not
/// streamed `head` is the whole payload and `tail` is empty; for a streamed
/// one the middle is gone and `len` still tells the full size.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub head: &'a [u8],
    pub tail: &'a [u8],
    pub len: u64,
}

impl Msg<'_> {
    /// True when `head` holds the entire payload.
    pub fn is_whole(&self) -> bool {
        self.tail.is_empty() && self.head.len() as u64 == self.len
    }
}

/// One decoded frame or message.
#[derive(Debug)]
pub enum Frame<'a> {
    Text(Msg<'a>),
    /// Binary message (the server never sends one; it is skipped).
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// Close status code (if the frame carried one) and reason bytes.
    Close(Option<u16>, &'a [u8]),
}

/// Ways the server can break the framing rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    ReservedBits,
    MaskedServerFrame,
    BadOpcode(u8),
    BadControlFrame,
    UnexpectedContinuation,
    ExpectedContinuation,
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::ReservedBits => write!(f, "reserved bits set"),
            WsError::MaskedServerFrame => write!(f, "server frame is masked"),
            WsError::BadOpcode(o) => write!(f, "unknown opcode {o:#x}"),
            WsError::BadControlFrame => write!(f, "fragmented or oversized control frame"),
            WsError::UnexpectedContinuation => write!(f, "continuation without a message"),
            WsError::ExpectedContinuation => write!(f, "new message inside a fragmented one"),
        }
    }
}

struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    header_len: usize,
}

fn parse_header(b: &[u8]) -> Result<Option<Header>, WsError> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[0] & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    if b[1] & 0x80 != 0 {
        return Err(WsError::MaskedServerFrame);
    }
    let (len, header_len) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(l), 10)
        }
        n => (u64::from(n), 2),
    };
    Ok(Some(Header {
        fin: b[0] & 0x80 != 0,
        opcode: b[0] & 0x0f,
        len,
        header_len,
    }))
}

/// A streamed (large or fragmented) message being received: its length so
/// far, its first [`HEAD_KEEP`] bytes and a window over its last bytes.
struct Assembly {
    opcode: u8,
    len: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Assembly {
    fn push(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        let room = HEAD_KEEP - self.head.len();
        let (a, b) = data.split_at(room.min(data.len()));
        self.head.extend_from_slice(a);
        if !b.is_empty() {
            self.tail.extend_from_slice(b);
            if self.tail.len() > 2 * TAIL_KEEP {
                let cut = self.tail.len() - TAIL_KEEP;
                self.tail.drain(..cut);
            }
        }
    }

    fn msg(&self) -> Msg<'_> {
        Msg {
            head: &self.head,
            tail: &self.tail[self.tail.len().saturating_sub(TAIL_KEEP)..],
            len: self.len,
        }
    }
}

/// Incremental decoder of server frames. Feed it whatever bytes are
/// available; it reports how many it consumed, and the caller keeps the rest
/// (an incomplete header or small frame) for the next call.
#[derive(Default)]
pub struct Decoder {
    /// Payload bytes of the current streamed frame still to come.
    streaming: u64,
    stream_fin: bool,
    asm: Option<Box<Assembly>>,
}

impl Decoder {
    /// Bytes of the streamed message received so far (0 if none).
    pub fn partial_len(&self) -> u64 {
        self.asm.as_ref().map_or(0, |a| a.len)
    }

    /// Decodes as many frames as `buf` holds, calling `on` for each complete
    /// message or control frame. Returns the number of bytes consumed.
    pub fn decode(&mut self, buf: &[u8], on: &mut impl FnMut(Frame<'_>)) -> Result<usize, WsError> {
        let mut pos = 0;
        loop {
            if self.streaming > 0 {
                let n = self.streaming.min((buf.len() - pos) as u64) as usize;
                if n == 0 {
                    break;
                }
                if let Some(a) = self.asm.as_mut() {
                    a.push(&buf[pos..pos + n]);
                }
                pos += n;
                self.streaming -= n as u64;
                if self.streaming == 0 && self.stream_fin {
                    self.finish(on);
                }
                continue;
            }
            let Some(h) = parse_header(&buf[pos..])? else {
                break;
            };
            let avail = (buf.len() - pos) as u64;
            if h.opcode >= 8 {
                if !h.fin || h.len > 125 {
                    return Err(WsError::BadControlFrame);
                }
                let total = h.header_len as u64 + h.len;
                if avail < total {
                    break;
                }
                let p = &buf[pos + h.header_len..pos + total as usize];
                match h.opcode {
                    OP_CLOSE => {
                        let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                        on(Frame::Close(code, p.get(2..).unwrap_or(&[])));
                    }
                    OP_PING => on(Frame::Ping(p)),
                    OP_PONG => on(Frame::Pong),
                    o => return Err(WsError::BadOpcode(o)),
                }
                pos += total as usize;
                continue;
            }
            match h.opcode {
                OP_CONT if self.asm.is_none() => return Err(WsError::UnexpectedContinuation),
                OP_TEXT | OP_BINARY if self.asm.is_some() => {
                    return Err(WsError::ExpectedContinuation)
                }
                OP_CONT | OP_TEXT | OP_BINARY => {}
                o => return Err(WsError::BadOpcode(o)),
            }
            if h.opcode != OP_CONT && h.fin && h.len <= SMALL_FRAME {
                let total = h.header_len as u64 + h.len;
                if avail < total {
                    break;
                }
                let m = Msg {
                    head: &buf[pos + h.header_len..pos + total as usize],
                    tail: &[],
                    len: h.len,
                };
                on(if h.opcode == OP_TEXT {
                    Frame::Text(m)
                } else {
                    Frame::Binary
                });
                pos += total as usize;
                continue;
            }
            if h.opcode != OP_CONT {
                self.asm = Some(Box::new(Assembly {
                    opcode: h.opcode,
                    len: 0,
                    head: Vec::new(),
                    tail: Vec::new(),
                }));
            }
            pos += h.header_len;
            self.streaming = h.len;
            self.stream_fin = h.fin;
            if h.len == 0 && h.fin {
                self.finish(on);
            }
        }
        Ok(pos)
    }

    fn finish(&mut self, on: &mut impl FnMut(Frame<'_>)) {
        if let Some(a) = self.asm.take() {
            let m = a.msg();
            on(if a.opcode == OP_TEXT {
                Frame::Text(m)
            } else {
                Frame::Binary
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Builds an unmasked server frame, as the server would send it.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            v.push(len as u8);
        } else if len <= 0xFFFF {
            v.push(126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[derive(Debug, PartialEq)]
    enum Got {
        Text(Vec<u8>, Vec<u8>, u64),
        Ping(Vec<u8>),
        Close(Option<u16>),
    }

    fn decode_all(dec: &mut Decoder, buf: &[u8]) -> (usize, Vec<Got>) {
        let mut got = Vec::new();
        let n = dec
            .decode(buf, &mut |f| match f {
                Frame::Text(m) => got.push(Got::Text(m.head.to_vec(), m.tail.to_vec(), m.len)),
                Frame::Ping(p) => got.push(Got::Ping(p.to_vec())),
                Frame::Close(c, _) => got.push(Got::Close(c)),
                _ => {}
            })
            .unwrap();
        (n, got)
    }

    #[test]
    fn sha1_known_vectors() {
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        let long = vec![b'a'; 1000];
        assert_eq!(
            hex(&sha1(&long)),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn rfc6455_accept_example() {
        assert_eq!(
            expected_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_response_check() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                   sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(check_upgrade_response(ok, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=").is_ok());
        assert!(check_upgrade_response(ok, "other").is_err());
        assert!(check_upgrade_response(b"HTTP/1.1 400 Bad\r\n\r\n", "x").is_err());
        assert_eq!(find_head_end(b"ab\r\n\r\ncd"), Some(6));
    }

    #[test]
    fn client_frames_are_masked_and_roundtrip() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut out = Vec::new();
            encode_client_frame(&mut out, OP_TEXT, &payload, mask);
            assert_eq!(out[0], 0x81);
            assert!(out[1] & 0x80 != 0, "mask bit");
            let (plen, hl) = match out[1] & 0x7f {
                126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            assert_eq!(plen, len);
            assert_eq!(&out[hl..hl + 4], &mask);
            let mut body = out[hl + 4..].to_vec();
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn decodes_small_frames_and_leaves_partial_bytes() {
        let mut buf = server_frame(true, OP_TEXT, b"hello");
        buf.extend(server_frame(true, OP_PING, b"p"));
        buf.extend(server_frame(true, OP_TEXT, &[b'x'; 300]));
        let cut = buf.len() - 10;
        let mut dec = Decoder::default();
        let (n, got) = decode_all(&mut dec, &buf[..cut]);
        assert_eq!(
            got,
            vec![
                Got::Text(b"hello".to_vec(), vec![], 5),
                Got::Ping(b"p".to_vec())
            ]
        );
        let rest = [&buf[n..cut], &buf[cut..]].concat();
        let (n2, got2) = decode_all(&mut dec, &rest);
        assert_eq!(n2, rest.len());
        assert_eq!(got2, vec![Got::Text(vec![b'x'; 300], vec![], 300)]);
    }

    #[test]
    fn streams_large_message_byte_by_byte_ranges() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let buf = server_frame(true, OP_TEXT, &payload);
        let mut dec = Decoder::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        for chunk in buf.chunks(777) {
            pending.extend_from_slice(chunk);
            let (n, g) = decode_all(&mut dec, &pending);
            pending.drain(..n);
            got.extend(g);
        }
        assert!(pending.is_empty());
        assert_eq!(got.len(), 1);
        let Got::Text(head, tail, len) = &got[0] else {
            panic!()
        };
        assert_eq!(*len, 200_000);
        assert_eq!(&head[..], &payload[..HEAD_KEEP]);
        assert_eq!(&tail[..], &payload[payload.len() - TAIL_KEEP..]);
    }

    #[test]
    fn fragmented_message_with_interleaved_ping() {
        let mut buf = server_frame(false, OP_TEXT, b"abc");
        buf.extend(server_frame(true, OP_PING, b""));
        buf.extend(server_frame(false, OP_CONT, b"def"));
        buf.extend(server_frame(true, OP_CONT, b"g"));
        buf.extend(server_frame(true, OP_CLOSE, &[0x03, 0xF0, b'x']));
        let mut dec = Decoder::default();
        let (n, got) = decode_all(&mut dec, &buf);
        assert_eq!(n, buf.len());
        assert_eq!(
            got,
            vec![
                Got::Ping(vec![]),
                Got::Text(b"abcdefg".to_vec(), vec![], 7),
                Got::Close(Some(1008)),
            ]
        );
    }

    #[test]
    fn rejects_protocol_violations() {
        let mut dec = Decoder::default();
        let masked = [0x81, 0x81, 0, 0, 0, 0, b'a'];
        assert_eq!(
            dec.decode(&masked, &mut |_| {}),
            Err(WsError::MaskedServerFrame)
        );
        let mut dec = Decoder::default();
        let cont = server_frame(true, OP_CONT, b"x");
        assert_eq!(
            dec.decode(&cont, &mut |_| {}),
            Err(WsError::UnexpectedContinuation)
        );
    }
}
