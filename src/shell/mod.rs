//! The mio shell: one thread, one `Poll`, every socket of the server.
//!
//! It owns the listener, the sockets and the signals; everything else about
//! a connection is the engine's ([`crate::conn::Engine`]). Each turn it
//! polls (sleeping until the engine's next deadline), accepts, reads into
//! one shared scratch buffer and hands the bytes to the engine, revisits
//! connections that used their budget, fires the engine's timers, and lets
//! the engine flush into the sockets. The engine answers with [`Io`]
//! actions, applied right after each call, before any new connection can
//! take a freed slot.
//!
//! Invariants:
//! * A socket's slot is its connection's slab key; the slot also keeps the
//!   generation, so an action for a connection that is gone finds nothing.
//! * Edge-triggered: a socket is read until `WouldBlock`, EOF, the engine's
//!   allowance or [`READ_BUDGET`]; one left short is revisited next turn.
//! * Nothing here blocks: workers answer through the waker.

use crate::config::Config;
use crate::conn::{Admission, Engine, Io, Sockets, READ_BUDGET, SCRATCH};
use crate::rooms::ConnRef;
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// Connections accepted per turn.
const ACCEPT_BUDGET: usize = 512;
/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A connection's socket, in the slot of its slab key.
struct Sock {
    gen: u32,
    stream: TcpStream,
}

/// The sockets, indexed by slab key.
#[derive(Default)]
struct Table(Vec<Option<Sock>>);

impl Table {
    fn get(&mut self, cref: ConnRef) -> Option<&mut TcpStream> {
        match self.0.get_mut(cref.key as usize) {
            Some(Some(s)) if s.gen == cref.gen => Some(&mut s.stream),
            _ => None,
        }
    }

    fn put(&mut self, cref: ConnRef, stream: TcpStream) {
        let i = cref.key as usize;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(Sock {
            gen: cref.gen,
            stream,
        });
    }

    fn take(&mut self, cref: ConnRef) -> Option<TcpStream> {
        let slot = self.0.get_mut(cref.key as usize)?;
        if slot.as_ref().is_some_and(|s| s.gen == cref.gen) {
            slot.take().map(|s| s.stream)
        } else {
            None
        }
    }

    fn trim(&mut self) {
        while matches!(self.0.last(), Some(None)) {
            self.0.pop();
        }
        self.0.shrink_to_fit();
    }
}

impl Sockets for Table {
    type Stream = TcpStream;
    fn stream(&mut self, cref: ConnRef) -> Option<&mut TcpStream> {
        self.get(cref)
    }
}

/// The server: create with [`Server::bind`] (or [`Server::on`] for a
/// listener bound already), then [`Server::run`].
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    socks: Table,
    engine: Engine,
    scratch: Vec<u8>,
    /// Accepting waits for a close or this instant (out of descriptors).
    accept_paused: Option<Instant>,
    /// The accept budget ran out: more may be waiting.
    accept_more: bool,
    signals: signal_hook_mio::v1_0::Signals,
    waker: Arc<Waker>,
}

impl Server {
    /// Binds `HOST:PORT` and prepares the loop; starts the workers the
    /// configuration asks for.
    pub fn bind(cfg: Config) -> io::Result<Server> {
        let host = if cfg.host == "localhost" {
            "127.0.0.1"
        } else {
            cfg.host.as_str()
        };
        let ip: IpAddr = host.parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "HOST is not an IP address")
        })?;
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, cfg.port))?;
        Server::on(listener, cfg)
    }

    /// Serves on a listener bound already (tests bind `127.0.0.1:0`; a
    /// service manager may hand one over).
    pub fn on(listener: std::net::TcpListener, mut cfg: Config) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        // std listens with a backlog of 128; a burst of browsers
        // reconnecting after a restart overflows that and each dropped SYN
        // waits a second for its retransmission. Linux lets `listen` be
        // called again to raise it (the kernel caps it at somaxconn).
        {
            use std::os::fd::AsRawFd;
            let backlog = cfg.max_connections.clamp(128, 4096) as libc::c_int;
            // SAFETY: a valid listening socket owned by `listener`.
            unsafe { libc::listen(listener.as_raw_fd(), backlog) };
        }
        let local_addr = listener.local_addr()?;
        // `PORT=0` asks for any port; what the server says about itself
        // (a `websocket_url` without a Host header) names the real one.
        cfg.port = local_addr.port();
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        // SIGHUP (a closed terminal, an operator's reflex to "reload")
        // would otherwise kill the process without a goodbye: it is a
        // graceful shutdown like SIGTERM. There is nothing to reload.
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let engine = Engine::new(cfg, waker.clone(), Instant::now())?;
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            socks: Table::default(),
            engine,
            scratch: vec![0; SCRATCH],
            accept_paused: None,
            accept_more: false,
            signals,
            waker,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that interrupts `poll` from another thread.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Runs until a signal and a drained (or timed-out) shutdown.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let watchdog = crate::ops::notify::watchdog_interval();
        let mut next_watchdog = Instant::now();
        crate::ops::notify::ready();
        loop {
            let now = Instant::now();
            self.engine.set_now(now);
            let mut timeout = self.engine.timeout();
            if self.accept_more {
                timeout = Duration::ZERO;
            }
            if let Some(at) = self.accept_paused {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
            if watchdog.is_some() {
                timeout = timeout.min(next_watchdog.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.engine.set_now(Instant::now());
            self.engine.count_turn();
            if let Some(w) = watchdog {
                if Instant::now() >= next_watchdog {
                    crate::ops::notify::watchdog();
                    next_watchdog = Instant::now() + w;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.engine.worker_replies(),
                    SIGNALS => self.signals(),
                    Token(key) => {
                        let Some(Some(s)) = self.socks.0.get(key) else {
                            continue;
                        };
                        let cref = ConnRef {
                            key: key as u32,
                            gen: s.gen,
                        };
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(cref, ev.is_read_closed() || ev.is_error());
                        }
                        if ev.is_writable() {
                            self.engine.writable(cref);
                        }
                    }
                }
                self.apply_io();
            }
            // Connections that used their budget last turn, or whose input
            // waited: what they buffered first, then read on (the edge that
            // brought their input may also have carried the peer's FIN).
            for cref in self.engine.take_again() {
                self.engine.resume_buffered(cref);
                self.read(cref, true);
                self.apply_io();
            }
            if self.accept_more || self.accept_paused.is_some_and(|at| at <= Instant::now()) {
                self.accept_paused = None;
                self.accept();
            }
            self.engine.set_now(Instant::now());
            let socks = &mut self.socks;
            self.engine
                .fire_timers(&mut |cref| socks.get(cref).and_then(|s| unsent_bytes(s)));
            self.engine.tick();
            self.apply_io();
            self.engine.flush_dirty(&mut self.socks);
            self.apply_io();
            if self.engine.finished() {
                return Ok(());
            }
        }
    }

    fn apply_io(&mut self) {
        let mut freed = false;
        for io in self.engine.take_io() {
            match io {
                Io::Drop(cref) => {
                    if let Some(mut s) = self.socks.take(cref) {
                        let _ = self.poll.registry().deregister(&mut s);
                        freed = true;
                    }
                }
                Io::ShutdownWrite(cref) => {
                    if let Some(s) = self.socks.get(cref) {
                        let _ = s.shutdown(Shutdown::Write);
                    }
                }
                Io::StopListening => {
                    crate::ops::notify::stopping();
                    if let Some(mut l) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut l);
                    }
                }
                Io::Trim => self.socks.trim(),
            }
        }
        if freed && self.accept_paused.is_some() {
            // A descriptor came free: try the backlog again at once.
            self.accept_paused = Some(Instant::now());
        }
    }

    fn accept(&mut self) {
        self.accept_more = false;
        if self.accept_paused.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((sock, addr)) => self.admit(sock, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory: the pending connection
                    // stays in the backlog. Retrying at once would spin, so
                    // wait for a close or a short pause.
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) {
                        warn!("accept paused: {e}");
                        self.accept_paused = Some(Instant::now() + ACCEPT_PAUSE);
                        return;
                    }
                    debug!("accept failed: {e}");
                }
            }
        }
        // Budget used: more may be waiting, and edge-triggered polling will
        // not say so again.
        self.accept_more = true;
    }

    fn admit(&mut self, mut sock: TcpStream, addr: SocketAddr) {
        // Freed slots must be given back before one is handed out again.
        self.apply_io();
        let cref = match self.engine.admit(addr.ip()) {
            Admission::Admitted(cref) => cref,
            Admission::Refused(answer) => {
                // Best effort: the socket is fresh, so a short write fits.
                if let Ok(n) = sock.write(&answer) {
                    self.engine.count_sent(n);
                }
                return;
            }
        };
        let _ = sock.set_nodelay(true);
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(cref.key as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register failed: {e}");
            self.engine.abort(cref);
            self.apply_io();
            return;
        }
        self.socks.put(cref, sock);
    }

    /// Reads until `WouldBlock`, EOF, the engine's allowance or the turn's
    /// budget. `to_end` says the event reported the peer's FIN (or an
    /// error): then a short read is not the end, since no further edge will
    /// come for what follows.
    fn read(&mut self, cref: ConnRef, to_end: bool) {
        let mut total = 0;
        loop {
            let Some(want) = self.engine.read_allowance(cref) else {
                return;
            };
            let Some(sock) = self.socks.get(cref) else {
                return;
            };
            let n = match sock.read(&mut self.scratch[..want]) {
                Ok(0) => {
                    self.engine.eof(cref);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("[{}] read error: {e}", cref.key);
                    self.engine.abort(cref);
                    return;
                }
            };
            total += n;
            if !self.engine.input(cref, &self.scratch[..n]) {
                return;
            }
            if n < want && !to_end {
                // A short read drained the socket; more data (or a FIN)
                // will raise a new edge. Skipping the read that would only
                // say WouldBlock saves a system call per message.
                return;
            }
            if total >= READ_BUDGET {
                self.engine.again(cref);
                return;
            }
        }
    }

    fn signals(&mut self) {
        let mut stop = false;
        for s in self.signals.pending() {
            info!("received signal {s}; shutting down");
            stop = true;
        }
        if stop {
            self.engine.signal();
        }
    }
}

/// Bytes written to the socket that the kernel has not sent yet (SIOCOUTQ).
fn unsent_bytes(sock: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) on a TCP socket writes one int.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0 && n >= 0).then_some(n as u32)
}
