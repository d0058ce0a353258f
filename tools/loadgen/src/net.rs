//! The connection engine: thousands of non-blocking WebSocket client
//! connections driven by one `mio` poll loop on one thread.
//!
//! Design notes (the why):
//! * **Sockets** are made with `socket2` so that a connection can be bound to
//!   a chosen loopback source address (127.0.0.1, 127.0.0.2, ...) before
//!   `connect`: each source address has its own ~28k ephemeral ports, which is
//!   what lets one generator open more connections than one address allows.
//!   `IP_BIND_ADDRESS_NO_PORT` defers the port choice to `connect`, so a
//!   bound socket does not reserve a port for every destination.
//!   `TCP_NODELAY` is set because latency is measured per message.
//! * **Reads** go into one shared scratch buffer and frames are decoded in
//!   place; a connection only owns a buffer while it holds a partial frame.
//!   20,000 idle connections therefore cost the generator almost nothing.
//! * **Writes** are queued per connection ([`Tx`]) and flushed once per loop
//!   turn, so many messages queued in one turn leave in one `write`.
//! * The scenario's handler is called with `&mut Tx` while a connection's
//!   input is decoded, so it can queue messages on *any* connection (e.g. the
//!   sender's next message when a receiver acknowledges one) without the
//!   borrow of the connection table getting in the way.
//! * WebSocket pings from the server are answered inside the engine; a close
//!   frame is answered and reported to the scenario with its code.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::ws::{self, Frame, Msg};

/// Index of a connection in the engine (also its mio token).
pub type ConnId = usize;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the generator's first call: the clock of every stamp.
#[inline]
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseKind {
    /// The server sent a close frame (its code is in [`CloseInfo::code`]).
    CloseFrame,
    /// TCP end of stream without a close frame.
    Eof,
    /// A socket error such as a reset.
    Error(io::ErrorKind),
    ConnectFailed(String),
    HandshakeFailed(String),
    /// The server broke the framing rules.
    Protocol(String),
}

/// How a connection ended, as reported to the scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    pub kind: CloseKind,
    pub code: Option<u16>,
    pub reason: String,
}

impl CloseInfo {
    fn new(kind: CloseKind) -> CloseInfo {
        CloseInfo {
            kind,
            code: None,
            reason: String::new(),
        }
    }

    /// Short description: `1008`, `eof`, `reset`, ...
    pub fn label(&self) -> String {
        match &self.kind {
            CloseKind::CloseFrame => self
                .code
                .map_or_else(|| "close".to_string(), |c| c.to_string()),
            CloseKind::Eof => "eof".into(),
            CloseKind::Error(k) if *k == io::ErrorKind::ConnectionReset => "reset".into(),
            CloseKind::Error(k) => format!("error:{k:?}"),
            CloseKind::ConnectFailed(e) => format!("connect failed: {e}"),
            CloseKind::HandshakeFailed(e) => format!("handshake failed: {e}"),
            CloseKind::Protocol(e) => format!("protocol: {e}"),
        }
    }
}

/// What the engine tells the scenario.
pub enum Ev<'a> {
    /// The WebSocket handshake completed: the connection can send.
    Open,
    /// A text message, with the time (ns) of the read that completed it.
    Text(Msg<'a>, u64),
    /// The connection is gone; it will not be reported again.
    Closed(&'a CloseInfo),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Handshake,
    Open,
    Closed,
}

struct Conn {
    sock: Option<TcpStream>,
    state: State,
    /// Expected `Sec-WebSocket-Accept` while handshaking.
    accept: String,
    /// Unconsumed input: a partial handshake answer or partial frame.
    pending: Vec<u8>,
    dec: ws::Decoder,
    rx_bytes: u64,
}

/// Per-connection output queue and read controls.
struct Out {
    buf: Vec<u8>,
    pos: usize,
    dirty: bool,
    closed: bool,
    paused: bool,
    /// Pause reading once this many bytes have been received.
    pause_at: u64,
}

/// Output side of the engine, handed to scenario handlers.
pub struct Tx {
    out: Vec<Out>,
    dirty: Vec<ConnId>,
    scratch: Vec<u8>,
    rng: u64,
}

impl Tx {
    fn mask(&mut self) -> [u8; 4] {
        // xorshift64: masks only need to vary, not to be secret, here.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_ne_bytes()
    }

    fn mark(&mut self, id: ConnId) {
        let o = &mut self.out[id];
        if !o.dirty {
            o.dirty = true;
            self.dirty.push(id);
        }
    }

    fn raw(&mut self, id: ConnId, bytes: &[u8]) {
        self.out[id].buf.extend_from_slice(bytes);
        self.mark(id);
    }

    /// Queues a frame with the given opcode. Ignored on a closed connection.
    pub fn frame(&mut self, id: ConnId, opcode: u8, payload: &[u8]) {
        if self.out[id].closed {
            return;
        }
        let mask = self.mask();
        ws::encode_client_frame(&mut self.out[id].buf, opcode, payload, mask);
        self.mark(id);
    }

    /// Queues a text message.
    pub fn text(&mut self, id: ConnId, payload: &[u8]) {
        self.frame(id, ws::OP_TEXT, payload);
    }

    /// Queues a text message built by `fill` in a reused scratch buffer,
    /// so the hot path allocates nothing.
    pub fn text_with(&mut self, id: ConnId, fill: impl FnOnce(&mut Vec<u8>)) {
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        fill(&mut s);
        self.text(id, &s);
        self.scratch = s;
    }

    /// Bytes queued on `id` and not yet handed to the kernel.
    pub fn pending(&self, id: ConnId) -> usize {
        let o = &self.out[id];
        o.buf.len() - o.pos
    }

    pub fn is_closed(&self, id: ConnId) -> bool {
        self.out[id].closed
    }
}

/// Options for one connection.
#[derive(Clone, Copy, Default)]
pub struct ConnOpts {
    /// `SO_RCVBUF` to set before connecting (fixes the kernel's receive
    /// buffer, turning off autotuning), for the slow-reader scenarios.
    pub rcvbuf: Option<usize>,
}

/// The engine.
pub struct Net {
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    pub tx: Tx,
    scratch: Box<[u8]>,
    /// Where connections go: round-robin over several nodes of a cluster
    /// (connection `i` to `servers[i % n]`), so each room's members spread
    /// over them.
    servers: Vec<SocketAddr>,
    sources: Vec<Ipv4Addr>,
    next_source: usize,
    resumed: Vec<ConnId>,
    closes: Vec<(ConnId, CloseInfo)>,
    /// Reused list of (token, readable, writable, closing) per poll.
    ready: Vec<(usize, bool, bool, bool)>,
    open: usize,
}

const READ_CHUNK: usize = 64 * 1024;

impl Net {
    /// An engine connecting to `server` from `sources` loopback addresses
    /// (127.0.0.1 .. 127.0.0.N).
    pub fn new(server: SocketAddr, sources: usize) -> io::Result<Net> {
        Net::spread(vec![server], sources)
    }

    /// As [`Net::new`], with connections spread round-robin over `servers`.
    pub fn spread(servers: Vec<SocketAddr>, sources: usize) -> io::Result<Net> {
        assert!(!servers.is_empty(), "at least one server");
        let sources = (0..sources.max(1))
            .map(|i| Ipv4Addr::new(127, 0, (((i + 1) >> 8) & 255) as u8, ((i + 1) & 255) as u8))
            .collect();
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Vec::new(),
            tx: Tx {
                out: Vec::new(),
                dirty: Vec::new(),
                scratch: Vec::new(),
                rng: 0x9E37_79B9_7F4A_7C15 ^ now_ns() ^ u64::from(std::process::id()),
            },
            // Room for one read plus the leftover of the previous one in front.
            scratch: vec![0u8; 2 * READ_CHUNK].into_boxed_slice(),
            servers,
            sources,
            next_source: 0,
            resumed: Vec::new(),
            closes: Vec::new(),
            ready: Vec::new(),
            open: 0,
        })
    }

    /// Number of connections ever made (ids are `0..len`).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Connections whose handshake completed and that are not closed.
    pub fn open_count(&self) -> usize {
        self.open
    }

    pub fn rx_bytes(&self, id: ConnId) -> u64 {
        self.conns[id].rx_bytes
    }

    /// Bytes of a partly received streamed message (e.g. a big document).
    pub fn partial_message(&self, id: ConnId) -> u64 {
        self.conns[id].dec.partial_len()
    }

    /// Starts a connection; completion is reported as [`Ev::Open`] (or
    /// [`Ev::Closed`] on failure).
    pub fn connect(&mut self, opts: ConnOpts) -> io::Result<ConnId> {
        let source = self.sources[self.next_source % self.sources.len()];
        self.next_source += 1;
        // Non-blocking from birth: saves the two fcntl calls per connection
        // that a join storm would otherwise pay.
        let sock = Socket::new(
            Domain::IPV4,
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        sock.set_tcp_nodelay(true)?;
        if let Some(r) = opts.rcvbuf {
            sock.set_recv_buffer_size(r)?;
        }
        if self.sources.len() > 1 {
            let one: libc::c_int = 1;
            // SAFETY: plain setsockopt on a socket we own, with a c_int value.
            // Failure only means ports are picked at bind time, so ignore it.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())?;
        }
        let server = self.servers[self.conns.len() % self.servers.len()];
        match sock.connect(&server.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(sock.into());
        let id = self.conns.len();
        self.poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns.push(Conn {
            sock: Some(stream),
            state: State::Connecting,
            accept: String::new(),
            pending: Vec::new(),
            dec: ws::Decoder::default(),
            rx_bytes: 0,
        });
        self.tx.out.push(Out {
            buf: Vec::new(),
            pos: 0,
            dirty: false,
            closed: false,
            paused: false,
            pause_at: u64::MAX,
        });
        Ok(id)
    }

    /// Stops reading `id` now.
    pub fn pause(&mut self, id: ConnId) {
        self.tx.out[id].paused = true;
    }

    /// Stops reading `id` once it has received `bytes` bytes in total.
    pub fn pause_at(&mut self, id: ConnId, bytes: u64) {
        self.tx.out[id].pause_at = bytes;
    }

    /// Reads `id` again; anything that piled up is processed in the next poll.
    pub fn resume(&mut self, id: ConnId) {
        let o = &mut self.tx.out[id];
        o.paused = false;
        o.pause_at = u64::MAX;
        self.resumed.push(id);
    }

    /// Waits up to `timeout` for socket events, handles them, calls `h` for
    /// every open, text message and close, and flushes all queued output.
    pub fn poll<H>(&mut self, timeout: Option<Duration>, h: &mut H) -> io::Result<()>
    where
        H: FnMut(&mut Tx, ConnId, Ev<'_>),
    {
        self.flush(h);
        let resumed = std::mem::take(&mut self.resumed);
        for id in resumed {
            self.read(id, true, h);
        }
        self.flush(h);
        let timeout = if self.tx.dirty.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| {
            (
                e.token().0,
                e.is_readable() || e.is_read_closed() || e.is_error(),
                e.is_writable() || e.is_error(),
                e.is_read_closed() || e.is_error(),
            )
        }));
        for &(id, readable, writable, closing) in &ready {
            if id >= self.conns.len() || self.conns[id].sock.is_none() {
                continue;
            }
            if self.conns[id].state == State::Connecting {
                self.finish_connect(id, writable, h);
                if self.conns[id].state == State::Connecting {
                    continue;
                }
            }
            if writable {
                self.flush_one(id);
            }
            if readable {
                self.read(id, closing, h);
            }
        }
        self.ready = ready;
        self.flush(h);
        Ok(())
    }

    fn finish_connect<H>(&mut self, id: ConnId, writable: bool, h: &mut H)
    where
        H: FnMut(&mut Tx, ConnId, Ev<'_>),
    {
        let Some(sock) = self.conns[id].sock.as_ref() else {
            return;
        };
        let err = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e.to_string()),
            // Writable with no pending error is how Linux reports a finished
            // connect; only other wake-ups need the peer_addr probe.
            Ok(None) if writable => None,
            Ok(None) => match sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e.to_string()),
            },
        };
        if let Some(e) = err {
            self.fail(id, CloseInfo::new(CloseKind::ConnectFailed(e)), h);
            return;
        }
        let mut key = [0u8; 16];
        for c in key.chunks_mut(4) {
            c.copy_from_slice(&self.tx.mask());
        }
        let key = ws::base64(&key);
        self.conns[id].accept = ws::expected_accept(&key);
        self.conns[id].state = State::Handshake;
        let host = self.servers[id % self.servers.len()].to_string();
        let req = ws::upgrade_request(&host, &key);
        self.tx.raw(id, &req);
        self.flush_one(id);
    }

    /// Reads `id` until the kernel has nothing more (or reading is paused).
    /// `drain` forces reading up to `WouldBlock`; otherwise a short read is
    /// taken to mean the socket is empty, which saves a syscall per turn
    /// (epoll's edge trigger fires again for any data arriving later).
    fn read<H>(&mut self, id: ConnId, drain: bool, h: &mut H)
    where
        H: FnMut(&mut Tx, ConnId, Ev<'_>),
    {
        loop {
            let conn = &mut self.conns[id];
            let out = &self.tx.out[id];
            if out.paused || conn.rx_bytes >= out.pause_at {
                self.tx.out[id].paused = true;
                return;
            }
            let Some(sock) = conn.sock.as_mut() else {
                return;
            };
            // Never read past a pause point by more than one chunk.
            let want = (out.pause_at - conn.rx_bytes).min(READ_CHUNK as u64) as usize;
            match sock.read(&mut self.scratch[READ_CHUNK..READ_CHUNK + want]) {
                Ok(0) => {
                    self.fail(id, CloseInfo::new(CloseKind::Eof), h);
                    return;
                }
                Ok(n) => {
                    conn.rx_bytes += n as u64;
                    if let Err(info) = self.input(id, n, h) {
                        self.fail(id, info, h);
                        return;
                    }
                    if self.conns[id].state == State::Closed {
                        return;
                    }
                    if n < want && !drain {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(id, CloseInfo::new(CloseKind::Error(e.kind())), h);
                    return;
                }
            }
        }
    }

    /// Processes `n` fresh bytes at `scratch[READ_CHUNK..]`.
    ///
    /// The bytes left over from the previous read (usually part of one small
    /// frame) are copied just in front of the fresh ones, so the decoder sees
    /// one contiguous slice without a per-read allocation or a copy of the
    /// whole read.
    fn input<H>(&mut self, id: ConnId, n: usize, h: &mut H) -> Result<(), CloseInfo>
    where
        H: FnMut(&mut Tx, ConnId, Ev<'_>),
    {
        let now = now_ns();
        let conn = &mut self.conns[id];
        let fresh = READ_CHUNK..READ_CHUNK + n;
        if conn.state == State::Handshake {
            conn.pending.extend_from_slice(&self.scratch[fresh]);
            let Some(end) = ws::find_head_end(&conn.pending) else {
                if conn.pending.len() > 16 * 1024 {
                    return Err(CloseInfo::new(CloseKind::HandshakeFailed(
                        "response head too long".into(),
                    )));
                }
                return Ok(());
            };
            if let Err(e) = ws::check_upgrade_response(&conn.pending[..end], &conn.accept) {
                return Err(CloseInfo::new(CloseKind::HandshakeFailed(e)));
            }
            conn.state = State::Open;
            conn.accept = String::new();
            self.open += 1;
            h(&mut self.tx, id, Ev::Open);
            // Frames that came with the handshake answer stay pending.
            conn.pending.drain(..end);
            return self.pending_frames(id, now, h);
        }
        let p = conn.pending.len();
        if p > READ_CHUNK {
            // A large partial frame: append and decode from the buffer.
            conn.pending.extend_from_slice(&self.scratch[fresh]);
            return self.pending_frames(id, now, h);
        }
        self.scratch[READ_CHUNK - p..READ_CHUNK].copy_from_slice(&conn.pending);
        conn.pending.clear();
        let buf = &self.scratch[READ_CHUNK - p..READ_CHUNK + n];
        let mut close = None;
        let used = decode(&mut conn.dec, buf, id, now, &mut self.tx, &mut close, h)?;
        if let Some(info) = close {
            return self.closed_by_server(id, info, h);
        }
        conn.pending.extend_from_slice(&buf[used..]);
        Ok(())
    }

    /// Decodes what the connection's pending buffer holds.
    fn pending_frames<H>(&mut self, id: ConnId, now: u64, h: &mut H) -> Result<(), CloseInfo>
    where
        H: FnMut(&mut Tx, ConnId, Ev<'_>),
    {
        let conn = &mut self.conns[id];
        if conn.pending.is_empty() {
            return Ok(());
        }
        let mut close = None;
        let used = decode(
            &mut conn.dec,
            &conn.pending,
            id,
            now,
            &mut self.tx,
            &mut close,
            h,
        )?;
        conn.pending.drain(..used);
        if conn.pending.capacity() > 4 * READ_CHUNK && conn.pending.len() < READ_CHUNK {
            conn.pending.shrink_to(READ_CHUNK);
        }
        if let Some(info) = close {
            return self.closed_by_server(id, info, h);
        }
        Ok(())
    }

    fn closed_by_server<H>(
        &mut self,
        id: ConnId,
        info: CloseInfo,
        h: &mut H,
    ) -> Result<(), CloseInfo>
    where
        H: FnMut(&mut Tx, ConnId, Ev<'_>),
    {
        // Answer the close handshake (echoing the code), then let go.
        let code = info.code.unwrap_or(1000).to_be_bytes();
        self.tx.frame(id, ws::OP_CLOSE, &code);
        self.flush_one(id);
        self.fail(id, info, h);
        Ok(())
    }

    /// Ends a connection and reports it.
    fn fail<H>(&mut self, id: ConnId, info: CloseInfo, h: &mut H)
    where
        H: FnMut(&mut Tx, ConnId, Ev<'_>),
    {
        if self.conns[id].state == State::Closed {
            return;
        }
        self.drop_conn(id, info);
        for (cid, info) in std::mem::take(&mut self.closes) {
            h(&mut self.tx, cid, Ev::Closed(&info));
        }
    }

    fn drop_conn(&mut self, id: ConnId, info: CloseInfo) {
        let conn = &mut self.conns[id];
        if conn.state == State::Closed {
            return;
        }
        if conn.state == State::Open {
            self.open -= 1;
        }
        conn.state = State::Closed;
        if let Some(mut s) = conn.sock.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        conn.pending = Vec::new();
        conn.dec = ws::Decoder::default();
        let out = &mut self.tx.out[id];
        out.closed = true;
        out.buf = Vec::new();
        out.pos = 0;
        self.closes.push((id, info));
    }

    /// Writes every connection that has queued output.
    fn flush<H>(&mut self, h: &mut H)
    where
        H: FnMut(&mut Tx, ConnId, Ev<'_>),
    {
        // Handlers called from `fail` may queue more, so loop until quiet.
        while !self.tx.dirty.is_empty() {
            let mut dirty = std::mem::take(&mut self.tx.dirty);
            for &id in &dirty {
                self.tx.out[id].dirty = false;
                if let Err(info) = self.try_write(id) {
                    self.fail(id, info, h);
                }
            }
            dirty.clear();
            if self.tx.dirty.is_empty() {
                self.tx.dirty = dirty; // keep the allocation
            }
        }
        self.report_closes(h);
    }

    fn flush_one(&mut self, id: ConnId) {
        if let Err(info) = self.try_write(id) {
            // Reported at the next read of this connection or flush.
            self.drop_conn(id, info);
        }
    }

    fn try_write(&mut self, id: ConnId) -> Result<(), CloseInfo> {
        let conn = &mut self.conns[id];
        if conn.state == State::Connecting {
            return Ok(()); // sent once connected
        }
        let Some(sock) = conn.sock.as_mut() else {
            return Ok(());
        };
        let out = &mut self.tx.out[id];
        while out.pos < out.buf.len() {
            match sock.write(&out.buf[out.pos..]) {
                Ok(0) => return Err(CloseInfo::new(CloseKind::Eof)),
                Ok(n) => out.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CloseInfo::new(CloseKind::Error(e.kind()))),
            }
        }
        if out.pos == out.buf.len() {
            out.buf.clear();
            out.pos = 0;
            if out.buf.capacity() > 1 << 20 {
                out.buf = Vec::new();
            }
        } else if out.pos > 1 << 20 && out.pos * 2 > out.buf.len() {
            out.buf.drain(..out.pos);
            out.pos = 0;
        }
        Ok(())
    }

    /// Reports closes recorded outside a handler (e.g. by `flush_one`).
    fn report_closes<H>(&mut self, h: &mut H)
    where
        H: FnMut(&mut Tx, ConnId, Ev<'_>),
    {
        for (cid, info) in std::mem::take(&mut self.closes) {
            h(&mut self.tx, cid, Ev::Closed(&info));
        }
    }
}

/// Decodes frames for connection `id`, answering pings and noting a close.
fn decode<H>(
    dec: &mut ws::Decoder,
    buf: &[u8],
    id: ConnId,
    now: u64,
    tx: &mut Tx,
    close: &mut Option<CloseInfo>,
    h: &mut H,
) -> Result<usize, CloseInfo>
where
    H: FnMut(&mut Tx, ConnId, Ev<'_>),
{
    dec.decode(buf, &mut |f| {
        if close.is_some() {
            return; // nothing counts after a close frame
        }
        match f {
            Frame::Text(m) => h(tx, id, Ev::Text(m, now)),
            Frame::Binary | Frame::Pong => {}
            Frame::Ping(p) => tx.frame(id, ws::OP_PONG, p),
            Frame::Close(code, reason) => {
                *close = Some(CloseInfo {
                    kind: CloseKind::CloseFrame,
                    code,
                    reason: String::from_utf8_lossy(reason).into_owned(),
                })
            }
        }
    })
    .map_err(|e| CloseInfo::new(CloseKind::Protocol(e.to_string())))
}
