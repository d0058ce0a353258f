//! Sans-io HTTP/1.1: request parsing and response writing.
//!
//! [`parse_request`] is a pure function of the bytes received so far. It
//! returns a complete request plus the number of bytes it used, `None` when
//! more bytes are needed, or a [`HttpError`] that maps to exactly one status
//! code. It never looks past [`MAX_HEADER_BYTES`] of head or the configured
//! body limit, so a peer cannot make it buffer more than that. Pipelined
//! requests are handled by calling it again on the remaining bytes.
//!
//! Bodies come with `Content-Length` or `Transfer-Encoding: chunked`. A
//! chunked body is bounded three ways: its decoded size by the body limit
//! (413), its trailers by the head limit (431), and its chunk count by
//! [`MAX_CHUNKS`], so that re-parsing a growing buffer stays cheap however
//! the peer slices it. A request carrying both framings is refused (400): a
//! proxy in front may pick the other one, which is how requests get smuggled.
//!
//! Responses are written by [`write_response`] into a caller-owned buffer;
//! every response carries CORS headers and, except 101/204, a JSON body.

/// Largest HTTP request head (request line plus headers); beyond it: 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most headers a request may carry; more is answered like an oversized head.
const MAX_HEADERS: usize = 64;

/// Most chunks one chunked body may have. Clients write a JSON document in a
/// handful of chunks; thousands of tiny ones only make every re-parse longer.
pub const MAX_CHUNKS: usize = 1024;

/// Longest chunk-size line (size plus extensions) we wait for.
pub const MAX_CHUNK_LINE: usize = 256;

/// The most bytes one request can occupy on the wire, complete or not, for a
/// given body limit: skipped blank lines, the head, and either a
/// `Content-Length` body or a chunked one with its framing and trailers.
/// [`parse_request`] answers (a request or an error) before a buffer grows
/// past it, which bounds a connection's input buffer.
pub const fn request_bound(max_body: usize) -> usize {
    4 + MAX_HEADER_BYTES + max_body + (MAX_CHUNKS + 1) * (MAX_CHUNK_LINE + 4) + MAX_HEADER_BYTES + 1
}

/// The request methods the server routes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl Method {
    fn parse(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// A parsed request. Only the headers the server acts on are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: Option<Method>,
    pub path: String,
    pub query: Option<String>,
    /// `true` for HTTP/1.1, `false` for HTTP/1.0.
    pub http11: bool,
    pub host: Option<String>,
    /// How many `Host` headers came (RFC 9112 §3.2 wants exactly one on
    /// HTTP/1.1; the router answers 400 otherwise).
    pub host_count: u8,
    pub origin: Option<String>,
    /// The `Connection` header asked for `close`.
    pub conn_close: bool,
    /// The `Connection` header asked for `keep-alive` (matters for 1.0).
    pub conn_keep_alive: bool,
    /// The `Connection` header lists `upgrade`.
    pub conn_upgrade: bool,
    /// `Upgrade: websocket` was present.
    pub upgrade_websocket: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    pub forwarded_for: Option<String>,
    pub real_ip: Option<String>,
    pub forwarded_proto: Option<String>,
    pub authorization: Option<String>,
    pub setup_token: Option<String>,
    /// `Expect: 100-continue` was sent: the client waits for an interim
    /// `100 Continue` before sending the body.
    pub expect_continue: bool,
    pub body: Vec<u8>,
    /// Never from the wire: a fresh room code the server has checked the
    /// room store does not hold, for a `POST /api/rooms` without a
    /// `desired_room_code` (so a new room never lands on a stored one).
    pub room_code_hint: Option<String>,
}

impl Request {
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }

    /// Whether the connection stays open after the answer to this request.
    /// Only HTTP/1.1 connections are kept: an HTTP/1.0 client that asks for
    /// keep-alive waits for `Connection: keep-alive` in the answer, and
    /// closing after the answer serves it just as correctly.
    pub fn keep_alive(&self) -> bool {
        self.http11 && !self.conn_close
    }

    /// The value of one query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(self.query.as_deref(), name)
    }
}

/// Why a request could not be parsed; each maps to one status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// 400: not HTTP, or a header we need is malformed.
    BadRequest(&'static str),
    /// 431: the head is over [`MAX_HEADER_BYTES`].
    HeadersTooLarge,
    /// 431: more than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// 413: the declared body is over the configured limit.
    BodyTooLarge,
    /// 501: a transfer coding other than `chunked`.
    UnsupportedCoding,
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::HeadersTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::UnsupportedCoding => 501,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HttpError::BadRequest(m) => m,
            HttpError::HeadersTooLarge => "Request headers are too large (limit 16 KiB)",
            HttpError::TooManyHeaders => "Too many request headers (limit 64)",
            HttpError::BodyTooLarge => "Request body is too large",
            HttpError::UnsupportedCoding => {
                "Transfer-Encoding is not supported; only chunked is understood"
            }
        }
    }
}

/// Parses one request from the front of `buf`.
///
/// `Ok(None)` means the request is not complete yet. A returned request
/// consumed exactly the returned number of bytes.
pub fn parse_request(buf: &[u8], max_body: usize) -> Result<Option<(Request, usize)>, HttpError> {
    // Browsers and proxies may send an empty line between keep-alive
    // requests (RFC 9112 §2.2 says to ignore it).
    let mut skip = 0;
    while skip < buf.len() && (buf[skip] == b'\r' || buf[skip] == b'\n') && skip < 4 {
        skip += 1;
    }
    let buf = &buf[skip..];

    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    // Parse at most one byte past the limit: what lies beyond cannot be a
    // head we accept, and looking at it would make the answer depend on how
    // the bytes arrived (a bad byte past 16 KiB was 400 when it came in the
    // same read, 431 when the first read already held 16 KiB).
    let window = &buf[..buf.len().min(MAX_HEADER_BYTES + 1)];
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEADER_BYTES {
                return Err(HttpError::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(HttpError::BadRequest("Unsupported HTTP version"));
        }
        Err(_) => return Err(HttpError::BadRequest("Malformed HTTP request")),
    };
    if head_len > MAX_HEADER_BYTES {
        return Err(HttpError::HeadersTooLarge);
    }

    let method = req.method.map(Method::parse);
    let target = req.path.unwrap_or("/");
    // `OPTIONS *` asks about the server as a whole (RFC 9112 §3.2.4).
    let asterisk = target == "*" && method == Some(Method::Options);
    if !target.starts_with('/') && !asterisk {
        return Err(HttpError::BadRequest(
            "Request target must be an absolute path",
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let mut out = Request {
        method,
        path: path.to_owned(),
        query,
        http11: req.version == Some(1),
        ..Request::default()
    };

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        let name = h.name;
        let value = || -> Result<String, HttpError> {
            std::str::from_utf8(h.value)
                .map(|s| s.trim().to_owned())
                .map_err(|_| HttpError::BadRequest("Header value is not valid UTF-8"))
        };
        if name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6: 1*DIGIT and nothing else. `u64::from_str`
            // alone takes "+5" and `str::trim` drops Unicode spaces; a proxy
            // in front may read either differently and disagree with us
            // about where the body ends.
            let bad = HttpError::BadRequest("Invalid Content-Length");
            let v = std::str::from_utf8(h.value)
                .map_err(|_| bad)?
                .trim_matches([' ', '\t']);
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad);
            }
            let n = v.parse::<u64>().map_err(|_| bad)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::BadRequest("Conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked`, once, and last (RFC 9112 §6.1); no
            // compression codings are understood.
            for coding in value()?.split(',').map(str::trim) {
                if chunked {
                    return Err(HttpError::BadRequest(
                        "Chunked must be the last transfer coding",
                    ));
                }
                if !coding.eq_ignore_ascii_case("chunked") {
                    return Err(HttpError::UnsupportedCoding);
                }
                chunked = true;
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if value()?.eq_ignore_ascii_case("100-continue") {
                out.expect_continue = true;
            } else {
                return Err(HttpError::BadRequest("Unsupported Expect header"));
            }
        } else if name.eq_ignore_ascii_case("host") {
            out.host = Some(value()?);
            out.host_count = out.host_count.saturating_add(1);
        } else if name.eq_ignore_ascii_case("origin") {
            out.origin = Some(value()?);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value()?.split(',') {
                let t = token.trim();
                if t.eq_ignore_ascii_case("close") {
                    out.conn_close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    out.conn_keep_alive = true;
                } else if t.eq_ignore_ascii_case("upgrade") {
                    out.conn_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            if value()?
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
            {
                out.upgrade_websocket = true;
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.ws_key = Some(value()?);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            out.ws_version = Some(value()?);
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            out.forwarded_for = Some(value()?);
        } else if name.eq_ignore_ascii_case("x-real-ip") {
            out.real_ip = Some(value()?);
        } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
            out.forwarded_proto = Some(value()?);
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = Some(value()?);
        } else if name.eq_ignore_ascii_case("x-setup-token") {
            out.setup_token = Some(value()?);
        }
    }

    if chunked {
        if content_length.is_some() {
            return Err(HttpError::BadRequest(
                "Content-Length and Transfer-Encoding together are not allowed",
            ));
        }
        if !out.http11 {
            return Err(HttpError::BadRequest("Chunked bodies need HTTP/1.1"));
        }
        return Ok(
            decode_chunked(&buf[head_len..], max_body)?.map(|(body, used)| {
                out.body = body;
                (out, skip + head_len + used)
            }),
        );
    }

    let body_len = content_length.unwrap_or(0);
    if body_len > max_body as u64 {
        return Err(HttpError::BodyTooLarge);
    }
    let body_len = body_len as usize;
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    out.body = buf[head_len..total].to_vec();
    Ok(Some((out, skip + total)))
}

/// For a request still incomplete in `buf`: `None` while its head is not
/// all in, then whether that head asks for `100 Continue` (the client holds
/// the body back until it hears it). Meant for the "need more" answers of
/// [`parse_request`], once per request.
pub fn head_expects_continue(buf: &[u8]) -> Option<bool> {
    let start = buf
        .iter()
        .take(4)
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let buf = &buf[start..];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let window = &buf[..buf.len().min(MAX_HEADER_BYTES + 1)];
    match req.parse(window) {
        // HTTP/1.0 has no interim answers (RFC 9110 §15.2).
        Ok(httparse::Status::Complete(_)) => Some(
            req.version == Some(1)
                && req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("expect")
                        && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
                }),
        ),
        _ => None,
    }
}

/// Decodes a chunked body from the front of `buf` (the bytes after the
/// head): the body and the bytes used, or `None` while incomplete.
///
/// Nothing is copied until the last chunk and the trailers are in, so an
/// incomplete body costs a walk over at most [`MAX_CHUNKS`] size lines.
fn decode_chunked(buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let malformed = HttpError::BadRequest("Malformed chunked body");
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut total = 0usize;
    let mut pos = 0usize;
    loop {
        let (line_len, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(x)) => x,
            Ok(httparse::Status::Partial) => {
                if buf.len() - pos > MAX_CHUNK_LINE {
                    return Err(HttpError::BadRequest("Chunk size line is too long"));
                }
                return Ok(None);
            }
            Err(_) => return Err(malformed),
        };
        if line_len > MAX_CHUNK_LINE {
            return Err(HttpError::BadRequest("Chunk size line is too long"));
        }
        pos += line_len;
        if size == 0 {
            break;
        }
        if size > (max_body - total) as u64 {
            return Err(HttpError::BodyTooLarge);
        }
        if spans.len() == MAX_CHUNKS {
            return Err(HttpError::BadRequest("Too many chunks in the body"));
        }
        let size = size as usize;
        total += size;
        spans.push((pos, size));
        let end = pos + size;
        if buf.len() < end + 2 {
            // A wrong byte where the CRLF belongs is an error already.
            if buf.len() > end && buf[end] != b'\r' {
                return Err(malformed);
            }
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(malformed);
        }
        pos = end + 2;
    }
    // Trailer fields, then the empty line. They are checked for syntax and
    // size, and otherwise ignored: no route reads them.
    let rest = &buf[pos..];
    let window = &rest[..rest.len().min(MAX_HEADER_BYTES + 1)];
    let mut trailers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let used = match httparse::parse_headers(window, &mut trailers) {
        Ok(httparse::Status::Complete((n, _))) => n,
        Ok(httparse::Status::Partial) => {
            if rest.len() > MAX_HEADER_BYTES {
                return Err(HttpError::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(_) => return Err(malformed),
    };
    let mut body = Vec::with_capacity(total);
    for (start, len) in spans {
        body.extend_from_slice(&buf[start..start + len]);
    }
    Ok(Some((body, pos + used)))
}

/// Whether an answer with this status ends the connection (400, 408, 413,
/// 431): after them the peer and the server may no longer agree where the
/// next request starts.
pub fn closes_connection(status: u16) -> bool {
    matches!(status, 400 | 408 | 413 | 431)
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any
/// case, token trimmed); `None` for another scheme or an empty token.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, rest) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim();
    (!t.is_empty()).then_some(t)
}

/// The decoded value of `name` in a raw query string, as a browser's
/// `URLSearchParams` reads it (`application/x-www-form-urlencoded`: `+` is
/// a space, `%XX` a byte, a `%` without two hex digits stays as it is, and
/// invalid UTF-8 becomes U+FFFD), by `form_urlencoded`.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The reason phrase for the status codes the server uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A finished HTTP answer, as [`write_response`] writes it: every route
/// answers with one (the REST routes, the accounts workers' `HttpReply`
/// converted, and the operator's routes with their own content types and
/// headers).
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra header lines, each ending in CRLF.
    pub headers: &'static str,
    pub allow: Option<&'static str>,
    pub retry_after: Option<u64>,
    /// A CORS preflight (adds the `Access-Control-Allow-*` set).
    pub preflight: bool,
    /// Carries the CORS headers (and `Vary: Origin`): every answer of the
    /// contract; the admin inspector's answers do not.
    pub cors: bool,
}

/// The content type of the contract's answers.
pub const JSON: &str = "application/json";

impl Answer {
    /// An answer with `body` as it is.
    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Answer {
        Answer {
            status,
            content_type,
            body,
            headers: "",
            allow: None,
            retry_after: None,
            preflight: false,
            cors: true,
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer::bytes(status, JSON, serde_json::to_vec(&body).unwrap_or_default())
    }

    pub fn error(status: u16, message: &str) -> Answer {
        Answer::bytes(status, JSON, error_body(message))
    }
}

/// Appends the complete response for `a` to `out`. `cors_origin` is what
/// [`api::cors_origin`] allows for the request; `close` says
/// `Connection: close`; `head` leaves the body out (a `HEAD` request).
pub fn write_response(
    out: &mut Vec<u8>,
    a: &Answer,
    cors_origin: Option<&str>,
    close: bool,
    head: bool,
) {
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", a.status, reason(a.status));
    if a.status != 204 {
        let _ = write!(
            out,
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            a.content_type,
            a.body.len()
        );
    }
    out.extend_from_slice(a.headers.as_bytes());
    if a.cors {
        write_cors(out, cors_origin, a.preflight.then_some(a.allow).flatten());
    }
    if let Some(allow) = a.allow {
        let _ = write!(out, "Allow: {allow}\r\n");
    }
    if let Some(secs) = a.retry_after {
        let _ = write!(out, "Retry-After: {secs}\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if a.status != 204 && !head {
        out.extend_from_slice(&a.body);
    }
}

/// The CORS headers of every response, the 101 included.
///
/// `origin` is the `Access-Control-Allow-Origin` value (see
/// [`crate::conn::routes::cors_origin`]): `*` only for a request that named no
/// origin, else the page's own origin, which is what a browser needs before
/// it hands a credentialed (`credentials: "include"`) response to the page,
/// together with `Allow-Credentials`. `None` (a disallowed origin) writes
/// no CORS headers, so the browser blocks the answer. Answers differ by
/// `Origin`, so every one says `Vary: Origin` for caches in between.
/// `preflight` carries the route's methods for `Allow-Methods`.
pub fn write_cors(out: &mut Vec<u8>, origin: Option<&str>, preflight: Option<&str>) {
    use std::io::Write;
    out.extend_from_slice(b"Vary: Origin\r\n");
    let Some(origin) = origin else { return };
    let _ = write!(out, "Access-Control-Allow-Origin: {origin}\r\n");
    if origin != "*" {
        out.extend_from_slice(b"Access-Control-Allow-Credentials: true\r\n");
    }
    if let Some(methods) = preflight {
        let _ = write!(
            out,
            "Access-Control-Allow-Methods: {methods}\r\n\
             Access-Control-Allow-Headers: Content-Type, Authorization, X-Setup-Token\r\n\
             Access-Control-Max-Age: 86400\r\n"
        );
    }
}

/// The `101 Switching Protocols` that opens a WebSocket for the client key
/// `key`. The contract puts CORS headers on every response; browsers do not
/// check them on an upgrade, other clients may.
pub fn write_switching(out: &mut Vec<u8>, key: &str, cors_origin: Option<&str>) {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    out.extend_from_slice(b"Sec-WebSocket-Accept: ");
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    write_cors(out, cors_origin, None);
    out.extend_from_slice(b"\r\n");
}

/// `{"success":false,"error":"..."}` for any error sentence.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"success": false, "error": message})).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert_eq!(
            query_param(Some("token=abc"), "token").as_deref(),
            Some("abc")
        );
        assert_eq!(
            query_param(Some("x=1&token=a%2Bb+c"), "token").as_deref(),
            Some("a+b c")
        );
        assert_eq!(query_param(Some("tokens=1"), "token"), None);
        assert_eq!(query_param(Some("token"), "token").as_deref(), Some(""));
        // As URLSearchParams: a stray `%` is kept, never an error.
        assert_eq!(
            query_param(Some("token=%zz"), "token").as_deref(),
            Some("%zz")
        );
        assert_eq!(query_param(None, "token"), None);
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Some("abc"));
        assert_eq!(bearer(Some("BEARER abc")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }

    const GET: &[u8] =
        b"GET /api/rooms/ABC?x=1 HTTP/1.1\r\nHost: example.org\r\nOrigin: http://a\r\n\r\n";

    #[test]
    fn parses_a_simple_get() {
        let (req, n) = parse_request(GET, 1024).unwrap().unwrap();
        assert_eq!(n, GET.len());
        assert_eq!(req.method(), Method::Get);
        assert_eq!(req.path, "/api/rooms/ABC");
        assert_eq!(req.query.as_deref(), Some("x=1"));
        assert_eq!(req.host.as_deref(), Some("example.org"));
        assert!(req.keep_alive());
    }

    #[test]
    fn every_split_point_needs_more_then_completes() {
        let body = br#"{"desired_room_code":"R1"}"#;
        let mut raw = format!(
            "POST /api/rooms HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        for cut in 0..raw.len() {
            assert_eq!(parse_request(&raw[..cut], 1024), Ok(None), "cut at {cut}");
        }
        let (req, n) = parse_request(&raw, 1024).unwrap().unwrap();
        assert_eq!(n, raw.len());
        assert_eq!(req.body, body);
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let mut raw = Vec::new();
        raw.extend_from_slice(b"GET /a HTTP/1.1\r\n\r\n");
        raw.extend_from_slice(b"GET /b HTTP/1.1\r\n\r\n");
        let (a, n) = parse_request(&raw, 0).unwrap().unwrap();
        let (b, m) = parse_request(&raw[n..], 0).unwrap().unwrap();
        assert_eq!((a.path.as_str(), b.path.as_str()), ("/a", "/b"));
        assert_eq!(n + m, raw.len());
    }

    #[test]
    fn oversized_head_is_431_even_before_it_ends() {
        let mut raw = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 1));
        assert_eq!(parse_request(&raw, 0), Err(HttpError::HeadersTooLarge));
    }

    #[test]
    fn body_over_limit_is_413_before_the_body_arrives() {
        let raw = b"POST /api/rooms HTTP/1.1\r\nContent-Length: 2000\r\n\r\n";
        assert_eq!(parse_request(raw, 1000), Err(HttpError::BodyTooLarge));
    }

    #[test]
    fn garbage_is_400() {
        assert!(matches!(
            parse_request(b"\x16\x03\x01\x02\x00 hello\r\n\r\n", 0),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 0),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            parse_request(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                0
            ),
            Err(HttpError::BadRequest(_))
        ));
        assert_eq!(
            parse_request(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                9
            ),
            Err(HttpError::UnsupportedCoding)
        );
    }

    const CHUNKED: &[u8] =
        b"POST /api/rooms HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\n{\"a\":\r\n3\r\n12}\r\n0\r\nX-Trailer: t\r\n\r\n";

    #[test]
    fn chunked_body_is_decoded_at_every_split_point() {
        for cut in 0..CHUNKED.len() {
            assert_eq!(
                parse_request(&CHUNKED[..cut], 1024),
                Ok(None),
                "cut at {cut}"
            );
        }
        let mut raw = CHUNKED.to_vec();
        raw.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let (req, n) = parse_request(&raw, 1024).unwrap().unwrap();
        assert_eq!(req.body, br#"{"a":12}"#);
        assert_eq!(n, CHUNKED.len());
        let (next, _) = parse_request(&raw[n..], 1024).unwrap().unwrap();
        assert_eq!(next.path, "/next");
    }

    #[test]
    fn chunked_body_limits() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        // Over the body limit as soon as the size line says so.
        let mut raw = head.clone();
        raw.extend_from_slice(b"5\r\nab");
        assert_eq!(parse_request(&raw, 4), Err(HttpError::BodyTooLarge));
        // Sizes that add up past the limit.
        let mut raw = head.clone();
        raw.extend_from_slice(b"3\r\nabc\r\n3\r\n");
        assert_eq!(parse_request(&raw, 5), Err(HttpError::BodyTooLarge));
        // A size too large for any integer.
        let mut raw = head.clone();
        raw.extend_from_slice(b"ffffffffffffffffffff\r\n");
        assert!(matches!(
            parse_request(&raw, 5),
            Err(HttpError::BadRequest(_))
        ));
        // Data longer than its size line said.
        let mut raw = head.clone();
        raw.extend_from_slice(b"2\r\nabc\r\n0\r\n\r\n");
        assert!(matches!(
            parse_request(&raw, 9),
            Err(HttpError::BadRequest(_))
        ));
        // Too many chunks.
        let mut raw = head.clone();
        for _ in 0..=MAX_CHUNKS {
            raw.extend_from_slice(b"1\r\na\r\n");
        }
        assert!(matches!(
            parse_request(&raw, 1 << 20),
            Err(HttpError::BadRequest(_))
        ));
        // Endless trailers.
        let mut raw = head.clone();
        raw.extend_from_slice(b"0\r\nX: ");
        raw.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 1));
        assert_eq!(parse_request(&raw, 9), Err(HttpError::HeadersTooLarge));
        // HTTP/1.0 has no chunked coding.
        assert!(matches!(
            parse_request(
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                9
            ),
            Err(HttpError::BadRequest(_))
        ));
    }

    #[test]
    fn expect_continue_is_noted_and_others_refused() {
        let raw = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi";
        assert!(parse_request(raw, 9).unwrap().unwrap().0.expect_continue);
        assert_eq!(head_expects_continue(&raw[..raw.len() - 2]), Some(true));
        assert_eq!(head_expects_continue(&raw[..20]), None);
        assert_eq!(
            head_expects_continue(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n"),
            Some(false)
        );
        assert_eq!(
            head_expects_continue(
                b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"
            ),
            Some(false)
        );
        assert!(matches!(
            parse_request(b"POST / HTTP/1.1\r\nExpect: teapot\r\n\r\n", 9),
            Err(HttpError::BadRequest(_))
        ));
    }

    #[test]
    fn connection_header_tokens() {
        let (r, _) = parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 0)
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive());
        let (r, _) = parse_request(b"GET / HTTP/1.0\r\n\r\n", 0)
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive());
        let (r, _) = parse_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0)
            .unwrap()
            .unwrap();
        assert!(r.conn_keep_alive);
        assert!(
            !r.keep_alive(),
            "HTTP/1.0 connections are closed after the answer"
        );
        let (r, _) = parse_request(
            b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
            0,
        )
        .unwrap()
        .unwrap();
        assert!(r.conn_upgrade && r.upgrade_websocket);
    }

    #[test]
    fn query_params_are_decoded() {
        let (r, _) = parse_request(b"GET /x?token=a%2Bb+c&y HTTP/1.1\r\n\r\n", 0)
            .unwrap()
            .unwrap();
        assert_eq!(r.query_param("token").as_deref(), Some("a+b c"));
        assert_eq!(r.query_param("y").as_deref(), Some(""));
        assert_eq!(r.query_param("z"), None);
    }

    #[test]
    fn response_has_cors_and_length() {
        let mut out = Vec::new();
        let a = Answer {
            retry_after: Some(3),
            ..Answer::bytes(429, JSON, b"{}".to_vec())
        };
        write_response(&mut out, &a, Some("*"), false, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(s.contains("Content-Type: application/json\r\n"));
        assert!(s.contains("Content-Length: 2\r\n"));
        assert!(s.contains("Access-Control-Allow-Origin: *\r\n"));
        assert!(s.contains("Retry-After: 3\r\n"));
        assert!(s.ends_with("\r\n\r\n{}"));
    }
}
