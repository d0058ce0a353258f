//! Shared helpers for the integration tests: a real `sync-server` process on
//! `127.0.0.1:0`, raw HTTP over TCP, and blocking tungstenite clients.
#![allow(dead_code)]

pub mod cdp;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// A running server process; killed on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    /// The room store's directory when the test did not choose one.
    own_data: Option<TempDir>,
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let mut n = [0u8; 8];
        getrandom::fill(&mut n).unwrap();
        let p = std::env::temp_dir().join(format!(
            "sync-test-{tag}-{}-{}",
            std::process::id(),
            u64::from_le_bytes(n)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestServer {
    /// Starts the binary on a listener bound here to port 0 of `HOST` (from
    /// `env`, else 127.0.0.1) and handed over as systemd does
    /// (`LISTEN_FDS`), so the address is known before the server runs; then
    /// waits until it says it serves. Unless `env`
    /// names `DATA_DIR` or `ROOM_STORE`, the default (file) room store gets
    /// a fresh directory of its own, removed on drop.
    pub fn start(env: &[(&str, &str)]) -> TestServer {
        let host = env
            .iter()
            .find(|(k, _)| *k == "HOST")
            .map_or("127.0.0.1", |(_, v)| *v);
        let listener = std::net::TcpListener::bind((host, 0)).expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let mut cmd = listening_command(env!("CARGO_BIN_EXE_sync-server"), &listener);
        cmd.env_clear()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let own_data = (!env
            .iter()
            .any(|(k, _)| *k == "DATA_DIR" || *k == "ROOM_STORE"))
        .then(|| TempDir::new("data"));
        if let Some(d) = &own_data {
            cmd.env("DATA_DIR", d.path());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sync-server");
        // The child has its own copy; ours would keep the port open after it.
        drop(listener);
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Serving: its signal handlers and workers are in place.
                if line.contains("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = child.kill();
            panic!("server did not start; log:\n{}", log.lock().unwrap());
        }
        TestServer {
            addr,
            child,
            log,
            own_data,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for exit up to `limit`; returns the exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn ws(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn post_room(&self, body: &str) -> Value {
        let r = http(self.addr, "POST", "/api/rooms", &[], body.as_bytes());
        assert_eq!(r.status, 200, "create room: {}", r.text());
        r.json()
    }

    /// Creates a room with a fixed code and host id.
    pub fn room(&self, code: &str, host: &str) -> Value {
        self.post_room(&format!(
            r#"{{"desired_room_code":"{code}","desired_host_id":"{host}"}}"#
        ))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command that runs `bin` with `listener` handed over the way systemd
/// does it: as fd 3, with `LISTEN_FDS=1` and `LISTEN_PID` naming the
/// process (set by a shell that then `exec`s the binary, keeping its pid).
pub fn listening_command(bin: &str, listener: &std::net::TcpListener) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; exec "$0""#)
        .arg(bin);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `s` (Content-Length framing).
pub fn read_response(s: &mut TcpStream) -> Option<Response> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => buf.push(byte[0]),
        }
    }
    let head = String::from_utf8(buf).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(Response {
        status,
        headers,
        body,
    })
}

/// One request on a fresh connection.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut s).expect("a response")
}

/// A raw socket that has sent a WebSocket upgrade request (with the RFC's
/// sample key) and nothing else; the test speaks frames by hand.
pub fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    s
}

/// A blocking WebSocket client with a read deadline.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_path(addr, "/ws")
    }

    pub fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{addr}{path}"), s).expect("handshake");
        Client { ws }
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    pub fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t.to_string())).unwrap();
    }

    /// The next text message as JSON (control frames are skipped).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(&t).unwrap(),
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(other) => panic!("expected text, got {other:?}"),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next message's `type`.
    pub fn recv_type(&mut self) -> String {
        self.recv()["type"].as_str().unwrap().to_string()
    }

    /// Reads until a close frame and returns its code (or None on a bare
    /// TCP close).
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => return None,
                Err(tungstenite::Error::Io(e))
                    if e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut =>
                {
                    return None
                }
                Err(e) => panic!("waiting for close: {e}"),
            }
        }
    }

    /// Sets how long `recv` waits.
    pub fn timeout(&mut self, d: Duration) {
        self.ws.get_ref().set_read_timeout(Some(d)).unwrap();
    }

    /// Whether nothing arrives within `d`.
    pub fn silent_for(&mut self, d: Duration) -> bool {
        self.timeout(d);
        let r = match self.ws.read() {
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                true
            }
            Ok(Message::Ping(_)) => true,
            _ => false,
        };
        self.timeout(Duration::from_secs(10));
        r
    }

    /// Joins and consumes `room_info` and `connected`; returns room_info.
    pub fn join(&mut self, code: &str, peer: &str, host: bool) -> Value {
        self.send(
            serde_json::json!({"action":"join","room_code":code,"peer_id":peer,"is_host":host}),
        );
        let info = self.recv();
        assert_eq!(info["type"], "room_info", "{info}");
        let connected = self.recv();
        assert_eq!(connected["type"], "connected", "{connected}");
        info
    }
}

pub fn close_code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// One masked client WebSocket frame, built by hand so that tests can send
/// what a conforming client library would refuse to (fragments, odd sizes).
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    sync_server::ws::client_frame(opcode, fin, payload, mask)
}
