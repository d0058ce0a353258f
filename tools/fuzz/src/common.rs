//! Helpers shared by the targets: reading fuzzer bytes as choices, split
//! points, a deterministic random source, and checks of server frames.

use serde_json::Value;

/// Reads choices off the front of the fuzzer's input. Reading past the end
/// gives zeros, so every input is valid.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Reads a count byte and that many 16-bit offsets: the raw material for
/// [`cut_points`], taken before the data they cut is known.
pub fn read_cuts(input: &mut Input<'_>) -> Vec<u16> {
    let n = (input.byte() % 17) as usize;
    (0..n).map(|_| input.u16()).collect()
}

/// Sorted, distinct cut points strictly inside `0..len`.
pub fn cut_points(raw: &[u16], len: usize) -> Vec<usize> {
    if len < 2 {
        return Vec::new();
    }
    let mut cuts: Vec<usize> = raw.iter().map(|&r| 1 + r as usize % (len - 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// The chunks of `data` between consecutive cut points.
pub fn chunks<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts {
        out.push(&data[start..c]);
        start = c;
    }
    out.push(&data[start..]);
    out
}

/// A small deterministic generator (xorshift64*) standing in for the OS
/// random source, so that a replayed input behaves exactly the same.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Parses one complete frame the server wrote and returns its opcode and
/// payload. Asserts what every server frame must be: final, no reserved
/// bits, unmasked, minimal length encoding, and exactly one frame.
pub fn server_frame(f: &[u8]) -> (u8, &[u8]) {
    assert!(f.len() >= 2, "server frame shorter than a header: {f:?}");
    assert_eq!(f[0] & 0xf0, 0x80, "server frame not final or has RSV bits");
    assert_eq!(f[1] & 0x80, 0, "server frames are never masked");
    let (len, head) = match f[1] & 0x7f {
        126 => {
            assert!(f.len() >= 4);
            let n = u16::from_be_bytes([f[2], f[3]]) as usize;
            assert!(n >= 126, "16-bit length used for a short payload");
            (n, 4)
        }
        127 => {
            assert!(f.len() >= 10);
            let n = u64::from_be_bytes(f[2..10].try_into().unwrap());
            assert!(n > 0xffff, "64-bit length used for a 16-bit payload");
            (n as usize, 10)
        }
        n => (n as usize, 2),
    };
    assert_eq!(
        f.len(),
        head + len,
        "frame length does not match its header"
    );
    (f[0] & 0x0f, &f[head..])
}

/// The message types of §2 the server may send.
pub const SERVER_TYPES: &[&str] = &[
    "connected",
    "room_info",
    "peer_joined",
    "peer_left",
    "document_sync",
    "data",
    "error",
    "pong",
];

/// Parses JSON text as RFC 8259 defines it, which serde_json does not
/// quite: a lone surrogate escape such as `\uD83D` (browsers send one for a
/// string cut inside an emoji) and a number beyond `f64` such as `1e999`
/// (JavaScript reads it as Infinity) are valid JSON that the server rightly
/// forwards verbatim, but serde_json refuses them. So every surrogate escape
/// becomes U+FFFD and every well-formed but infinite number becomes 0 before
/// parsing; applying the same mapping to both sides of a comparison keeps
/// it exact for everything else, and malformed text stays malformed.
pub fn lenient_json(text: &[u8]) -> serde_json::Result<Value> {
    let mut out = Vec::with_capacity(text.len());
    let mut in_string = false;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if in_string {
            if b == b'\\' && i + 1 < text.len() {
                let esc = &text[i..text.len().min(i + 6)];
                let surrogate = esc.len() == 6
                    && esc[1] == b'u'
                    && std::str::from_utf8(&esc[2..])
                        .ok()
                        .and_then(|h| u16::from_str_radix(h, 16).ok())
                        .is_some_and(|c| (0xd800..=0xdfff).contains(&c));
                let n = if surrogate { 6 } else { 2 };
                out.extend_from_slice(if surrogate {
                    b"\\ufffd"
                } else {
                    &text[i..i + 2]
                });
                i += n;
                continue;
            }
            in_string = b != b'"';
            out.push(b);
            i += 1;
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < text.len()
                && matches!(text[i], b'0'..=b'9' | b'+' | b'-' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            let token = &text[start..i];
            let infinite = json_number(token)
                && std::str::from_utf8(token)
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
                    .is_some_and(f64::is_infinite);
            out.extend_from_slice(if infinite { b"0" } else { token });
        } else {
            in_string = b == b'"';
            out.push(b);
            i += 1;
        }
    }
    serde_json::from_slice(&out)
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, RFC 8259's number.
fn json_number(t: &[u8]) -> bool {
    let digits = |t: &[u8], i: &mut usize| {
        let s = *i;
        while *i < t.len() && t[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > s
    };
    let mut i = usize::from(t.first() == Some(&b'-'));
    if t.get(i) == Some(&b'0') {
        i += 1;
    } else if !digits(t, &mut i) {
        return false;
    }
    if t.get(i) == Some(&b'.') {
        i += 1;
        if !digits(t, &mut i) {
            return false;
        }
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(t, &mut i) {
            return false;
        }
    }
    i == t.len()
}

/// Checks that a server frame is one text message holding a JSON object
/// with a known `type`, and returns that object.
pub fn server_message(f: &[u8]) -> Value {
    let (opcode, payload) = server_frame(f);
    assert_eq!(opcode, 1, "room messages are text frames");
    let v: Value = lenient_json(payload).unwrap_or_else(|e| {
        panic!(
            "server sent invalid JSON ({e}): {:?}",
            String::from_utf8_lossy(payload)
        )
    });
    let ty = v
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("server message without a string type: {v}"));
    assert!(SERVER_TYPES.contains(&ty), "unknown server type {ty}");
    v
}

/// The `type` of a checked server message.
pub fn msg_type(v: &Value) -> &str {
    v["type"].as_str().unwrap_or_default()
}

/// One client frame as RFC 6455 §5.2 has a client send it: masked with
/// `mask`, the length in its shortest encoding.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    sync_server::ws::client_frame(opcode, fin, payload, mask)
}

/// The `Sec-WebSocket-Key` the harnesses' clients send.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Its `Sec-WebSocket-Accept` (RFC 6455 §1.3's own example).
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A browser's upgrade request for `/ws`.
pub fn upgrade_request() -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: sync.example\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\nOrigin: https://tracker.example\r\n\r\n"
    )
    .into_bytes()
}

/// The length of the complete server frame at the start of `buf`, if it
/// is all there.
pub fn server_frame_len(buf: &[u8]) -> Option<usize> {
    let (len, head) = match *buf.get(1)? & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let total = head + len;
    (buf.len() >= total).then_some(total)
}

/// One HTTP answer as a client reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    /// It says `Connection: close`.
    pub close: bool,
    /// The body; for a `101`, its `Sec-WebSocket-Accept` value.
    pub body: Vec<u8>,
}

/// Reads the complete answers at the start of `buf`. `is_head(k)` says
/// whether the k-th final answer (interim `1xx` ones not counted) answers a
/// HEAD request, which has no body whatever its `Content-Length`. Interim
/// `100 Continue` answers are skipped; a `101` ends the HTTP part. Returns
/// the answers and the bytes they took. Asserts each head is well formed
/// and carries a `Content-Length` (every final answer but a 101 or a 204
/// does).
pub fn http_answers(buf: &[u8], is_head: impl Fn(usize) -> bool) -> (Vec<HttpAnswer>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(&buf[pos..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => break,
            Err(e) => panic!("server wrote a malformed answer ({e}): {:?}", &buf[pos..]),
        };
        let status = resp.code.expect("status code");
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if status == 100 {
            pos += head;
            continue;
        }
        if status == 101 {
            // The accept key of whatever key was sent: base64 of a SHA-1.
            let accept = header("sec-websocket-accept").expect("101 without an accept key");
            assert_eq!(accept.len(), 28, "accept key {accept:?}");
            out.push(HttpAnswer {
                status,
                close,
                body: accept.into_bytes(),
            });
            pos += head;
            break;
        }
        // RFC 9110 §8.6: a 204 has no body and must not say how long it is.
        let len: usize = if status == 204 {
            assert_eq!(header("content-length"), None, "a 204 with Content-Length");
            0
        } else {
            header("content-length")
                .unwrap_or_else(|| panic!("answer {status} without Content-Length"))
                .parse()
                .expect("numeric Content-Length")
        };
        let len = if is_head(out.len()) { 0 } else { len };
        if buf.len() < pos + head + len {
            break;
        }
        out.push(HttpAnswer {
            status,
            close,
            body: buf[pos + head..pos + head + len].to_vec(),
        });
        pos += head + len;
    }
    (out, pos)
}
