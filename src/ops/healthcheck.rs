//! The `sync-server healthcheck` subcommand: a tiny blocking HTTP client that
//! asks the running server for `GET /health` and turns the answer into an exit
//! code (0 healthy, 1 anything else).
//!
//! It exists so that container runtimes (Docker `HEALTHCHECK`, compose) can
//! probe the server from inside a distroless image that has no shell and no
//! curl. It uses only `std::net` and reads the same `HOST`/`PORT` variables as
//! the server itself, so the probe always targets what the server bound.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Connect and per-read timeout. Docker's default healthcheck timeout is 30 s;
/// staying far below it means our own message, not Docker's kill, explains a
/// failure.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Whole exchange bound, so a server that drips one byte per second cannot
/// keep the probe alive forever.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(5);
/// `/health` answers are a few hundred bytes; anything far larger is not ours.
const MAX_RESPONSE: usize = 64 * 1024;

const DEFAULT_HOST: &str = "0.0.0.0";
const DEFAULT_PORT: u16 = 3001;

/// Reads `HOST`/`PORT` (defaults `0.0.0.0`/`3001`), probes `/health` and
/// returns the process exit code: 0 when the server answered 200 with
/// `"status":"healthy"`, otherwise 1 after printing one line to stderr.
pub fn run_from_env() -> i32 {
    let host = std::env::var("HOST").unwrap_or_else(|_| DEFAULT_HOST.to_string());
    let port = match std::env::var("PORT") {
        Ok(p) => match p.trim().parse::<u16>() {
            Ok(p) => p,
            Err(_) => {
                eprintln!("healthcheck: PORT={p:?} is not a valid port");
                return 1;
            }
        },
        Err(_) => DEFAULT_PORT,
    };
    let addrs = match target_addrs(&host, port) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return 1;
        }
    };
    match probe_any(&addrs, &host_header(&host, port)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            1
        }
    }
}

/// Where to connect for a server configured with `HOST=host`. A wildcard bind
/// address is not something one can connect to, so it maps to the loopback of
/// the same family.
pub fn target_addrs(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(h);
    if let Ok(ip) = h.parse::<IpAddr>() {
        let ip = match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            other => other,
        };
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = (h, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve HOST={h:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("HOST={h:?} resolves to no address"));
    }
    Ok(addrs)
}

fn host_header(host: &str, port: u16) -> String {
    let h = host.trim();
    if h.contains(':') && !h.starts_with('[') {
        format!("[{h}]:{port}")
    } else {
        format!("{h}:{port}")
    }
}

/// Tries each address in turn; the first healthy answer wins, otherwise the
/// last error is reported.
fn probe_any(addrs: &[SocketAddr], host_header: &str) -> Result<(), String> {
    let mut last = String::from("no address to probe");
    for addr in addrs {
        match probe(*addr, host_header) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One `GET /health` against `addr`, checked with [`check_response`].
pub fn probe(addr: SocketAddr, host_header: &str) -> Result<(), String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("socket setup failed: {e}"))?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: sync-server-healthcheck\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send request to {addr}: {e}"))?;

    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if response_complete(&buf) {
            break;
        }
        if started.elapsed() > TOTAL_TIMEOUT {
            return Err(format!(
                "no complete answer from {addr} within {TOTAL_TIMEOUT:?}"
            ));
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(format!("answer from {addr} exceeds {MAX_RESPONSE} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the answer from {addr} failed: {e}")),
        }
    }
    check_response(&buf)
}

/// Splits a raw response into (head, body) at the blank line.
fn split_head(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (&raw[..i], &raw[i + 4..]))
}

fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// True once the head and a `Content-Length` body are in. Without a length we
/// rely on `Connection: close` and read to EOF.
fn response_complete(raw: &[u8]) -> bool {
    match split_head(raw) {
        Some((head, body)) => content_length(head).is_some_and(|len| body.len() >= len),
        None => false,
    }
}

/// The health verdict on a raw HTTP response: status 200 and a body containing
/// `"status":"healthy"` (whitespace after the colon tolerated).
pub fn check_response(raw: &[u8]) -> Result<(), String> {
    let (head, body) = split_head(raw).ok_or_else(|| {
        if raw.is_empty() {
            "connection closed without an answer".to_string()
        } else {
            "incomplete HTTP answer".to_string()
        }
    })?;
    let status_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line);
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP answer: {status_line:?}"));
    }
    if code != "200" {
        return Err(format!("/health answered {status_line:?}"));
    }
    let body = match content_length(head) {
        Some(len) if body.len() >= len => &body[..len],
        Some(len) => return Err(format!("body truncated: {} of {len} bytes", body.len())),
        None => body,
    };
    if body_is_healthy(body) {
        Ok(())
    } else {
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]);
        Err(format!("/health body does not say healthy: {shown}"))
    }
}

fn body_is_healthy(body: &[u8]) -> bool {
    // Compact form first (what the server writes); then a tolerant scan so a
    // pretty-printed body from a future version still passes.
    const NEEDLE: &[u8] = br#""status":"healthy""#;
    if body.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return true;
    }
    let squeezed: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    squeezed.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// Serves exactly one connection with `answer`, after reading the request
    /// head, and returns the request it saw.
    fn one_shot(answer: &'static [u8]) -> (SocketAddr, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let h = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(answer).unwrap();
            String::from_utf8(req).unwrap()
        });
        (addr, h)
    }

    #[test]
    fn healthy_answer_passes_and_request_is_well_formed() {
        let (addr, h) = one_shot(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 58\r\n\r\n\
              {\"status\":\"healthy\",\"rooms\":0,\"connections\":0,\"store\":\"x\"}",
        );
        assert_eq!(probe(addr, "localhost:1"), Ok(()));
        let req = h.join().unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nHost: localhost:1\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    }

    #[test]
    fn non_200_fails() {
        let (addr, h) = one_shot(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 20\r\n\r\n{\"status\":\"healthy\"}",
        );
        let err = probe(addr, "x").unwrap_err();
        assert!(err.contains("503"), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn unhealthy_body_fails() {
        let (addr, h) =
            one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 23\r\n\r\n{\"status\":\"degraded\"}  ");
        let err = probe(addr, "x").unwrap_err();
        assert!(err.contains("does not say healthy"), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn body_without_length_is_read_to_eof() {
        let (addr, h) = one_shot(b"HTTP/1.1 200 OK\r\n\r\n{ \"status\": \"healthy\" }");
        assert_eq!(probe(addr, "x"), Ok(()));
        h.join().unwrap();
    }

    #[test]
    fn closed_without_answer_fails() {
        let (addr, h) = one_shot(b"");
        let err = probe(addr, "x").unwrap_err();
        assert!(err.contains("without an answer"), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn nothing_listening_fails() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = probe(addr, "x").unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[test]
    fn truncated_body_fails() {
        assert!(check_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{\"status\":\"healthy\"}"
        )
        .unwrap_err()
        .contains("truncated"));
        assert!(check_response(b"garbage\r\n\r\n").is_err());
        assert!(check_response(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
    }

    #[test]
    fn wildcard_hosts_map_to_loopback() {
        assert_eq!(
            target_addrs("0.0.0.0", 3001).unwrap(),
            vec!["127.0.0.1:3001".parse().unwrap()]
        );
        assert_eq!(
            target_addrs("::", 3001).unwrap(),
            vec!["[::1]:3001".parse().unwrap()]
        );
        assert_eq!(
            target_addrs("[::]", 8).unwrap(),
            vec!["[::1]:8".parse().unwrap()]
        );
        assert_eq!(
            target_addrs("127.0.0.2", 9).unwrap(),
            vec!["127.0.0.2:9".parse().unwrap()]
        );
        assert_eq!(host_header("::1", 5), "[::1]:5");
        assert_eq!(host_header("localhost", 5), "localhost:5");
    }
}
