//! `http_stream`: one connection's bytes, delivered whole and delivered in
//! pieces cut where the fuzzer says, through the same loop the server runs
//! (append what arrived, parse until "need more", drop what was used).
//!
//! Input layout: a flags byte (bit 7: start the stream with a head just
//! under the 16 KiB limit, so the limit itself is within reach; bit 0: a
//! 16-byte body limit instead of 1 KiB), a cut count with 16-bit cut
//! offsets, then the stream.
//!
//! Checks:
//! * every single parse passes the `http_head` checks;
//! * the requests (all fields, in order) and how the stream ends (a status,
//!   "need more" with the same leftover, a clean end, `Connection: close`
//!   or a WebSocket upgrade, after which HTTP parsing stops) are the same
//!   for the whole stream, the fuzzer's pieces, and (for short streams)
//!   one byte at a time;
//! * pipelined requests come out in order: their byte ranges tile the
//!   stream from the start, and each range alone parses to its request.
//!
//! The summary starts with how the stream ended (`end`, `more`, `close`,
//! `upgrade`, `e400`, `e413`, `e431`), then the request count.

use super::common::{chunks, cut_points, read_cuts, Input};
use super::http_head;
use sync_server::config::MAX_HEADER_BYTES;
use sync_server::http::{parse_request, Request};

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every byte was used by a request.
    Clean,
    /// The stream stopped inside a request; this many bytes are held.
    More(usize),
    /// A request without keep-alive: the server reads no further.
    Close,
    /// A WebSocket upgrade: the rest belongs to the frame decoder.
    Upgrade,
    Error(u16),
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    requests: Vec<(Request, usize)>,
    end: End,
}

pub fn run(data: &[u8]) -> String {
    let mut input = Input::new(data);
    let flags = input.byte();
    let raw_cuts = read_cuts(&mut input);
    let body = input.rest();
    let max_body = if flags & 1 != 0 { 16 } else { 1024 };
    let stream = if flags & 0x80 != 0 {
        let mut s = b"POST /api/rooms HTTP/1.1\r\nX-Filler: ".to_vec();
        s.resize(MAX_HEADER_BYTES - 64, b'f');
        s.extend_from_slice(body);
        s
    } else {
        body.to_vec()
    };

    let whole = feed(&[&stream], max_body);
    let cuts = cut_points(&raw_cuts, stream.len());
    let split = feed(&chunks(&stream, &cuts), max_body);
    assert_eq!(whole, split, "cut at {cuts:?}");
    if stream.len() <= 256 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(whole, feed(&bytes, max_body), "one byte at a time");
    }

    // In order: the requests' ranges tile the stream from its start.
    let mut pos = 0;
    for (req, n) in &whole.requests {
        let own = parse_request(&stream[pos..pos + n], max_body);
        assert_eq!(own, Ok(Some((req.clone(), *n))));
        pos += n;
    }
    match whole.end {
        End::Clean => assert_eq!(pos, stream.len()),
        End::More(left) => assert_eq!(pos + left, stream.len()),
        _ => assert!(pos <= stream.len()),
    }

    let end = match whole.end {
        End::Clean => "end".to_string(),
        End::More(n) => format!("more {n}"),
        End::Close => "close".into(),
        End::Upgrade => "upgrade".into(),
        End::Error(s) => format!("e{s}"),
    };
    let paths: Vec<&str> = whole
        .requests
        .iter()
        .map(|(r, _)| r.path.as_str())
        .collect();
    format!("{end} after {} requests {paths:?}", whole.requests.len())
}

/// The server's read loop over a sequence of arrivals.
fn feed(arrivals: &[&[u8]], max_body: usize) -> Outcome {
    let mut inbuf: Vec<u8> = Vec::new();
    let mut requests = Vec::new();
    for chunk in arrivals {
        inbuf.extend_from_slice(chunk);
        loop {
            let result = parse_request(&inbuf, max_body);
            http_head::check(&inbuf, max_body, &result);
            match result {
                Ok(Some((req, n))) => {
                    inbuf.drain(..n);
                    let upgrade = req.upgrade_websocket && req.conn_upgrade;
                    let keep_alive = req.keep_alive();
                    requests.push((req, n));
                    if upgrade {
                        return Outcome {
                            requests,
                            end: End::Upgrade,
                        };
                    }
                    if !keep_alive {
                        return Outcome {
                            requests,
                            end: End::Close,
                        };
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        requests,
                        end: End::Error(e.status()),
                    }
                }
            }
        }
    }
    let end = if inbuf.is_empty() {
        End::Clean
    } else {
        End::More(inbuf.len())
    };
    Outcome { requests, end }
}
