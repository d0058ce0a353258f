//! `ws_frames`: arbitrary bytes as the raw stream of a WebSocket connection
//! after the upgrade, into the frame decoder alone (`ws::Decoder`), called
//! as its contract asks of any caller: the bytes not yet consumed, events
//! taken until it needs more, stopping at the peer's close frame or at a
//! protocol error. The engine's own use of the decoder, from the upgrade
//! on, is fuzzed by `ws_client_message` and the property tests.
//!
//! Input layout: a limit byte (bit 7: the default 16 MiB message limit;
//! otherwise 64 + 16 × the low bits, so the limit is within reach), a cut
//! count with 16-bit cut offsets, then the stream.
//!
//! Checks:
//! * the connection either continues or ends in a defined close: the
//!   peer's own close frame, or an error whose code is 1002, 1007 or 1009;
//! * no unbounded buffering: after every call the decoder holds at most the
//!   message limit (`Decoder::buffered()`), and what the connection keeps
//!   unconsumed is at most one frame header plus the limit;
//! * every text message is at most the limit, every ping at most 125 bytes,
//!   and `ws::frame_len` agrees with what the decoder consumed;
//! * the events and the ending are the same whole, in the fuzzer's pieces,
//!   and (for short streams) one byte at a time;
//! * every text message also goes through `protocol::decode` (no panic).
//!
//! The summary starts with the ending (`c1002`, `c1007`, `c1009`,
//! `peer-close`, `more`, `end`), then the events.

use super::common::{chunks, cut_points, read_cuts, Input};
use sync_server::protocol;
use sync_server::ws::{self, Decoder, Event};

/// The longest client frame header: 2 + 8 length bytes + 4 mask bytes.
const MAX_FRAME_HEAD: usize = 14;

#[derive(Debug, PartialEq, Eq, Clone)]
enum Ev {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Everything was decoded; the connection goes on.
    Clean,
    /// A frame is incomplete; this many bytes are held.
    More(usize),
    /// The peer sent a close frame (with this code).
    PeerClose(Option<u16>),
    /// The server closes with this code.
    Error(u16),
}

pub fn run(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let limit = input.byte();
    let max_message = if limit & 0x80 != 0 {
        16 * 1024 * 1024
    } else {
        64 + 16 * (limit & 0x7f) as usize
    };
    let raw_cuts = read_cuts(&mut input);
    let stream = input.rest();

    let whole = feed(&[stream], max_message);
    let cuts = cut_points(&raw_cuts, stream.len());
    let split = feed(&chunks(stream, &cuts), max_message);
    assert_eq!(whole, split, "cut at {cuts:?}");
    if stream.len() <= 512 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(whole, feed(&bytes, max_message), "one byte at a time");
    }

    let (events, end) = whole;
    let end = match end {
        End::Clean => "end".to_string(),
        End::More(n) => format!("more {n}"),
        End::PeerClose(code) => format!("peer-close {code:?}"),
        End::Error(code) => format!("c{code}"),
    };
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            Ev::Text(t) => format!("text:{}", t.len()),
            Ev::Binary => "binary".into(),
            Ev::Ping(p) => format!("ping:{}", p.len()),
            Ev::Pong => "pong".into(),
        })
        .collect();
    format!("{end} {kinds:?}")
}

/// Decodes a sequence of arrivals, each appended to what is not consumed.
fn feed(arrivals: &[&[u8]], max_message: usize) -> (Vec<Ev>, End) {
    let mut decoder = Decoder::default();
    let mut inbuf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    for chunk in arrivals {
        inbuf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            let expected_len = ws::frame_len(&inbuf[pos..]);
            let step = decoder.next(&mut inbuf[pos..], max_message);
            let step = match step {
                Ok(None) => None,
                Ok(Some((event, used))) => {
                    if let Some(n) = expected_len {
                        assert_eq!(n, used, "frame_len disagrees with the decoder");
                    }
                    let ev = match event {
                        None => None,
                        Some(Event::Text(t)) => {
                            assert!(t.len() <= max_message, "text over the limit");
                            let _ = protocol::decode(t);
                            Some(Ok(Ev::Text(t.to_owned())))
                        }
                        Some(Event::Binary) => Some(Ok(Ev::Binary)),
                        Some(Event::Ping(p)) => {
                            assert!(p.len() <= 125, "ping payload over 125 bytes");
                            Some(Ok(Ev::Ping(p.to_vec())))
                        }
                        Some(Event::Pong) => Some(Ok(Ev::Pong)),
                        Some(Event::Close(code)) => Some(Err(code)),
                    };
                    Some((ev, used))
                }
                Err(e) => {
                    let code = e.close_code();
                    assert!(matches!(code, 1002 | 1007 | 1009), "{e:?}");
                    assert!(!e.reason().is_empty() && e.reason().len() <= 123);
                    assert!(decoder.buffered() <= max_message, "buffered over the limit");
                    return (events, End::Error(code));
                }
            };
            assert!(
                decoder.buffered() <= max_message,
                "decoder holds {} bytes, limit {max_message}",
                decoder.buffered()
            );
            let Some((ev, used)) = step else { break };
            pos += used;
            match ev {
                None => {}
                Some(Ok(ev)) => events.push(ev),
                Some(Err(code)) => return (events, End::PeerClose(code)),
            }
        }
        inbuf.drain(..pos);
        assert!(
            inbuf.len() <= MAX_FRAME_HEAD + max_message.max(125),
            "{} bytes held for one frame, limit {max_message}",
            inbuf.len()
        );
    }
    let end = if inbuf.is_empty() {
        End::Clean
    } else {
        End::More(inbuf.len())
    };
    (events, end)
}
