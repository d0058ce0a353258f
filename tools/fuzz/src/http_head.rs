//! `http_head`: arbitrary bytes into the sans-io request parser
//! `http::parse_request`, as the bytes received so far on a connection.
//!
//! Checks, for every input:
//! * the answer is a request, "need more", or an error whose status is
//!   exactly 400, 413, 431 or 501 with a non-empty message;
//! * "need more" never holds more than the limits allow
//!   (`http::request_bound`: skipped line ends, a 16 KiB head, the body
//!   limit and, for chunked bodies, bounded framing and trailers), so a peer
//!   cannot make a connection buffer without bound;
//! * a request used at most the whole buffer and at most those limits, its
//!   body is within the body limit, its path is absolute (or `*` for
//!   `OPTIONS`) with the query
//!   split off, and parsing exactly its own bytes gives the same request,
//!   while one byte less is "need more" (a request needs all its bytes);
//! * an accepted `Content-Length` is `1*DIGIT` (RFC 9110 §8.6), so a
//!   proxy and this server cannot disagree about where a body ends;
//! * header lookups (`query_param`, `keep_alive`) never panic.
//!
//! The summary starts with `req`, `more`, `e400`, `e413`, `e431` or `e501`.

use sync_server::http::{parse_request, request_bound, HttpError, Request};

/// A small body limit, so that 413 is within the fuzzer's reach.
pub const MAX_BODY: usize = 1024;

pub fn run(data: &[u8]) -> String {
    let result = parse_request(data, MAX_BODY);
    check(data, MAX_BODY, &result);
    describe(&result)
}

/// The checks above, for one call on `buf`; shared with `http_stream`.
pub fn check(buf: &[u8], max_body: usize, result: &Result<Option<(Request, usize)>, HttpError>) {
    let bound = request_bound(max_body);
    match result {
        Ok(Some((req, n))) => {
            let n = *n;
            assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
            assert!(n <= bound, "request of {n} bytes is over the limits");
            assert!(req.body.len() <= max_body);
            // Absolute, or `*` for `OPTIONS *` (RFC 9112 §3.2.4).
            assert!(
                req.path.starts_with('/')
                    || (req.path == "*" && req.method() == sync_server::http::Method::Options),
                "path {:?}",
                req.path
            );
            assert!(!req.path.contains('?'));
            let again = parse_request(&buf[..n], max_body);
            assert_eq!(
                again.as_ref().ok().and_then(|o| o.as_ref()),
                Some(&(req.clone(), n)),
                "a request's own bytes must parse to the same request"
            );
            assert_eq!(
                parse_request(&buf[..n - 1], max_body),
                Ok(None),
                "a request without its last byte must need more"
            );
            check_content_length(head_of(&buf[..n]));
            let _ = req.keep_alive();
            for name in ["token", "", "a"] {
                let _ = req.query_param(name);
            }
        }
        Ok(None) => {
            assert!(
                buf.len() < bound,
                "needs more after {} bytes, over the limits",
                buf.len()
            );
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 413 | 431 | 501), "{e:?}");
            assert!(!e.message().is_empty());
        }
    }
}

/// The head of an accepted request: up to its first empty line, after the
/// blank lines the parser skips (a chunked body may hold lines of its own).
fn head_of(req: &[u8]) -> &[u8] {
    let start = req
        .iter()
        .take(4)
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let rest = &req[start..];
    let end = (1..rest.len())
        .find(|&i| rest[i - 1] == b'\n' && (rest[i] == b'\n' || rest[i..].starts_with(b"\r\n")))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Every `Content-Length` line of an accepted request's head is digits
/// only (optional spaces or tabs around them).
fn check_content_length(head: &[u8]) {
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        let value = trim_ows(&line[colon + 1..]);
        assert!(
            !value.is_empty() && value.iter().all(u8::is_ascii_digit),
            "accepted Content-Length {:?}",
            String::from_utf8_lossy(value)
        );
    }
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `req <METHOD> <path> body=<n>`, `more`, or `e<status>`.
pub fn describe(result: &Result<Option<(Request, usize)>, HttpError>) -> String {
    match result {
        Ok(Some((req, n))) => format!(
            "req {} {} body={} used={n}",
            req.method().as_str(),
            req.path,
            req.body.len()
        ),
        Ok(None) => "more".into(),
        Err(e) => format!("e{} {}", e.status(), e.message()),
    }
}
