//! A small blocking HTTP/1.1 client for the REST side of the protocol:
//! creating rooms before a run, reading a room's state and timing
//! `GET /health`. None of this is on a measured hot path except `/health` in
//! the `stall` scenario, where a blocking call on its own thread is exactly
//! what a monitoring probe does.
//!
//! Room creation is pipelined (the contract says pipelined requests are
//! answered in order), so setting up thousands of rooms takes a few round
//! trips rather than thousands.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::scan;
use crate::ws::find_head_end;

/// One keep-alive connection to the server.
pub struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Client {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            stream: None,
            buf: Vec::new(),
            timeout,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.buf.clear();
            self.stream = Some(s);
        }
        Ok(self.stream.as_mut().expect("just set"))
    }

    fn request_bytes(&self, method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(b) = body {
            r.push_str("Content-Type: application/json\r\n");
            r.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        r.push_str("\r\n");
        if let Some(b) = body {
            r.push_str(b);
        }
        r.into_bytes()
    }

    /// Sends several requests in one write and reads all answers in order.
    /// On any error the connection is dropped so the next call reconnects.
    pub fn pipeline(&mut self, reqs: &[(&str, &str, Option<&str>)]) -> io::Result<Vec<Response>> {
        let mut out = Vec::new();
        for (m, p, b) in reqs {
            out.extend(self.request_bytes(m, p, *b));
        }
        let res = (|| {
            self.stream()?.write_all(&out)?;
            let mut answers = Vec::with_capacity(reqs.len());
            for _ in reqs {
                answers.push(self.read_response()?);
            }
            Ok(answers)
        })();
        if res.is_err() {
            self.stream = None;
        }
        res
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> io::Result<Response> {
        Ok(self
            .pipeline(&[(method, path, body)])?
            .pop()
            .expect("one answer"))
    }

    /// A request with one extra header (e.g. `Authorization`).
    pub fn request_with_header(
        &mut self,
        method: &str,
        path: &str,
        header: (&str, &str),
    ) -> io::Result<Response> {
        let mut out = self.request_bytes(method, path, None);
        // Before the blank line that ends the head.
        out.truncate(out.len() - 2);
        out.extend_from_slice(format!("{}: {}\r\n\r\n", header.0, header.1).as_bytes());
        let res = (|| {
            self.stream()?.write_all(&out)?;
            self.read_response()
        })();
        if res.is_err() {
            self.stream = None;
        }
        res
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream()?.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(e) = find_head_end(&self.buf) {
                break e;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut len = 0usize;
        let mut close = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().map_err(|_| bad("bad content-length"))?;
                } else if k.eq_ignore_ascii_case("connection")
                    && v.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad("chunked responses are not supported"));
                }
            }
        }
        while self.buf.len() < head_end + len {
            self.fill()?;
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        if close {
            self.stream = None;
        }
        Ok(Response { status, body })
    }
}

/// Creates rooms with the given codes and host ids, pipelining `batch`
/// requests at a time. Fails on the first answer that is not a success.
pub fn create_rooms(addr: SocketAddr, rooms: &[(String, String)]) -> Result<(), String> {
    let mut c = Client::new(addr, Duration::from_secs(10));
    let bodies: Vec<String> = rooms
        .iter()
        .map(|(code, host)| {
            format!("{{\"desired_room_code\":\"{code}\",\"desired_host_id\":\"{host}\"}}")
        })
        .collect();
    for chunk in bodies.chunks(64) {
        let reqs: Vec<(&str, &str, Option<&str>)> = chunk
            .iter()
            .map(|b| ("POST", "/api/rooms", Some(b.as_str())))
            .collect();
        let answers = c
            .pipeline(&reqs)
            .map_err(|e| format!("POST /api/rooms: {e}"))?;
        for a in answers {
            if a.status != 200
                || scan::field(&a.body, b"\"success\"").is_none_or(|v| !v.starts_with(b"true"))
            {
                return Err(format!(
                    "POST /api/rooms answered {}: {}",
                    a.status,
                    String::from_utf8_lossy(&a.body)
                ));
            }
        }
    }
    Ok(())
}

/// Whether `GET /api/rooms/<code>` reports a stored document.
pub fn room_has_document(c: &mut Client, code: &str) -> Result<bool, String> {
    let r = c
        .request("GET", &format!("/api/rooms/{code}"), None)
        .map_err(|e| format!("GET /api/rooms/{code}: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET /api/rooms/{code} answered {}", r.status));
    }
    Ok(scan::field(&r.body, b"\"has_document\"").is_some_and(|v| v.starts_with(b"true")))
}

/// Waits until `GET /health` answers 200, for scripts that start a server.
pub fn wait_ready(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut c = Client::new(addr, Duration::from_secs(1));
        match c.request("GET", "/health", None) {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => {
                if start.elapsed() > timeout {
                    return Err(format!("/health answered {}", r.status));
                }
            }
            Err(e) => {
                if start.elapsed() > timeout {
                    return Err(format!("/health: {e}"));
                }
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Result of polling `GET /health` on a background thread.
#[derive(Default)]
pub struct HealthLog {
    /// Latency of each answered check, ns.
    pub latencies: Vec<u64>,
    /// When each answered check was sent ([`crate::net::now_ns`] clock),
    /// in the order of `latencies`, so a scenario can keep the checks of
    /// one phase.
    pub sent_at: Vec<u64>,
    /// Checks that failed or timed out.
    pub failed: u64,
}

/// A background thread calling `GET /health` every `interval` over one
/// keep-alive connection, publishing the last `connections` figure.
pub struct HealthPoller {
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<HealthLog>>,
}

/// Value of `connections` before the first answer.
pub const UNKNOWN: u64 = u64::MAX;

impl HealthPoller {
    pub fn start(addr: SocketAddr, interval: Duration, timeout: Duration) -> HealthPoller {
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(UNKNOWN));
        let (s, c) = (stop.clone(), connections.clone());
        let handle = thread::spawn(move || {
            let mut log = HealthLog::default();
            let mut client = Client::new(addr, timeout);
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let sent = crate::net::now_ns();
                match client.request("GET", "/health", None) {
                    Ok(r) if r.status == 200 => {
                        log.latencies.push(t0.elapsed().as_nanos() as u64);
                        log.sent_at.push(sent);
                        if let Some(v) = scan::field(&r.body, b"\"connections\"") {
                            let digits: Vec<u8> =
                                v.iter().copied().take_while(u8::is_ascii_digit).collect();
                            if let Ok(x) = String::from_utf8_lossy(&digits).parse() {
                                c.store(x, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => log.failed += 1,
                }
                next += interval;
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            log
        });
        HealthPoller {
            stop,
            connections,
            handle: Some(handle),
        }
    }

    /// Last `connections` figure, or [`UNKNOWN`].
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn finish(mut self) -> HealthLog {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}
