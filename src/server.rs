//! The mio shell: one thread, one `Poll`, every socket of the server.
//!
//! It owns the listener, the connections (a slab) and the timers, feeds
//! bytes to the sans-io cores and applies the effects they return. Nothing
//! here blocks: accounts work goes to the worker pool and room store writes
//! and lookups to the store's threads, and both come back through the waker.
//! A request for a room not in memory waits (parked like an accounts job,
//! at most [`crate::store::LOOKUP_TIMEOUT`]) for the store's lookup.
//!
//! Invariants:
//! * A connection is named outside the current event by [`ConnRef`] (slab key
//!   plus generation); a stale reference finds nothing and is ignored.
//! * Everything written to a socket goes through its one [`OutQueue`], in
//!   order. Connections that gained output this turn are flushed before the
//!   loop polls again.
//! * Every loop over one connection has a budget; a connection that used its
//!   budget is revisited next turn, so one peer cannot starve the rest.
//! * A connection is closed through [`Server::close`] only, which is
//!   idempotent and always takes the connection out of its room first.
//!   Closes requested while effects are being applied are deferred to
//!   [`Server::reap`] so a room is never changed under a fan-out.

use crate::accounts::{Accounts, AuthRequest, Job, Principal, Reply};
use crate::api::{self, Answer, Routed, Stats};
use crate::config::Config;
use crate::http::{self, Extra, Request};
use crate::ops::metrics::{self, Metrics, MsgIn, Reject, Route};
use crate::outq::{self, Flush, OutQueue};
use crate::protocol::{self, Action};
use crate::ratelimit::RateLimiter;
use crate::rooms::{self, ConnRef, Effect, RoomRef, Rooms, Session};
use crate::store::{self, Found, RoomStore};
use crate::timers::Timers;
use crate::ws::{self, Decoder, Event, Frame, WsError};
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

// `/livez`, `/readyz`, `/metrics` and the admin inspector: the loop's side.
#[path = "ops/shell.rs"]
mod ops_shell;

// Cluster mode (`REDIS_URL`): the loop's side.
#[path = "cluster/shell.rs"]
mod cluster_shell;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// Bytes read from one connection per turn before others get a go.
const READ_BUDGET: usize = 256 * 1024;
/// Bytes written to one connection per turn.
const WRITE_BUDGET: usize = 4 * 1024 * 1024;
/// Bytes all sockets together are handed in one turn. A big fan-out (a
/// 16 MiB document to 50 peers is 800 MiB) would otherwise hold the loop
/// for hundreds of milliseconds in one flush while pings and `/health` in
/// other rooms wait; past this the rest is written next turn, the ones left
/// waiting first, right after that turn's events.
const TURN_WRITE_BUDGET: usize = 4 * 1024 * 1024;
/// Connections accepted per turn.
const ACCEPT_BUDGET: usize = 512;
/// Shared read buffer; data lands here first so idle connections hold none.
const SCRATCH: usize = 64 * 1024;
/// A connection's input buffer is released when drained if it grew past this.
const KEEP_INBUF: usize = 8 * 1024;
/// How long a closing connection may take to read our last bytes and
/// acknowledge the close. A reader cut off for being slow may still be
/// draining its backlog; its queue is already trimmed to one frame, so
/// waiting costs little.
const LINGER: Duration = Duration::from_secs(10);
/// Answers queued on an HTTP connection beyond which its pipelined requests
/// wait unread (in the kernel, then in the peer) until the peer reads. It
/// counts what the queue costs in memory ([`OutQueue::cost`]), and answers
/// are queued in buffers of their exact size, so it is memory really used.
const HTTP_BACKLOG: usize = 256 * 1024;
/// Most bytes read at once from an HTTP connection whose answers are still
/// queued (the largest request head): bounds what a pipelining peer that
/// stops reading leaves in our buffer.
const HTTP_READ_OWING: usize = crate::config::MAX_HEADER_BYTES;
/// How long shutdown waits for queues to drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Free heap beyond which housekeeping hands pages back to the OS.
const TRIM_SLACK_BYTES: usize = 8 << 20;
/// How often stale timers and spare capacity are given back.
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// Longest poll sleep when no timer is due sooner.
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Request(ConnRef),
    Ping(ConnRef),
    Linger(ConnRef),
    /// An accounts job's answer is due (the job's number).
    Job(ConnRef, u32),
    /// A room store lookup's answer is due (the wait's number).
    Lookup(ConnRef, u32),
    Room(RoomRef),
    AcceptRetry,
    Shutdown,
    /// The drain after SIGTERM in cluster mode is over.
    Drained,
    Housekeeping,
    /// A connection over its message rate may be read again.
    Resume(ConnRef),
}

/// What a connection is doing.
enum Phase {
    /// Reading HTTP requests. `deadline` bounds the current request;
    /// `head_seen` is set once its complete head was checked for
    /// `Expect: 100-continue` (and the interim answer sent if asked).
    /// `between` marks a kept-alive connection that has not started its
    /// next request: `deadline` is then how long it may stay idle, and the
    /// first byte of the request starts that request's own clock.
    Http {
        deadline: Instant,
        head_seen: bool,
        between: bool,
    },
    /// Waiting for a worker's answer; input is held until it arrives.
    Waiting(Box<Pending>),
    /// An open WebSocket.
    Ws(Box<WsState>),
    /// Our goodbye is queued; discard input until the peer closes or the
    /// linger timer fires.
    Closing,
}

/// Work parked while a worker answers.
enum Pending {
    /// An `/api/auth/*` request; the answer goes back on this connection.
    Accounts {
        keep_alive: bool,
        origin: Option<String>,
    },
    /// `POST /api/rooms` under `REQUIRE_AUTH`.
    CreateRoom {
        req: Box<Request>,
        origin: Option<String>,
    },
    /// A WebSocket `join` waiting for its token check (under
    /// `REQUIRE_AUTH`) or for the room store's lookup of its room, with the
    /// message to replay and the account its token was approved for, if
    /// it was already.
    Join {
        ws: Box<WsState>,
        message: String,
        authorized: Option<Principal>,
    },
    /// A REST request for a room that is not in memory, waiting for the
    /// room store's lookup; it is routed again once the answer is in.
    Rest { req: Box<Request>, keep_alive: bool },
    /// An `/api/admin/…` request whose admin token is being checked.
    Admin(Box<ops_shell::AdminPending>),
}

struct WsState {
    decoder: Decoder,
    session: Session,
    last_seen: Instant,
    /// A token given on the upgrade (header or `?token=`).
    upgrade_token: Option<Box<str>>,
    /// The address rate limits charge (the upgrade's, via `TRUST_PROXY`).
    client_ip: IpAddr,
    /// Its message rate (`MESSAGE_RATE` / `MESSAGE_BURST`).
    rate: crate::ratelimit::TokenBucket,
}

struct Conn {
    sock: TcpStream,
    gen: u32,
    peer: IpAddr,
    out: OutQueue,
    inbuf: Vec<u8>,
    phase: Phase,
    /// Close once the queue drains (HTTP `Connection: close`, errors).
    close_when_flushed: bool,
    /// A close was requested and is waiting in `doomed`.
    doomed: bool,
    /// Already listed in `dirty` for this turn (keeps the list free of
    /// duplicates during fan-out).
    dirty: bool,
    /// The number of the accounts job this connection waits for (in
    /// `Phase::Waiting`); a reply carrying another number is stale.
    job: u32,
    /// Our write side is shut (`Phase::Closing`, queue drained). Shutting
    /// it again would raise another writable edge, and with it another
    /// flush: a busy loop for as long as the peer lingers.
    write_shut: bool,
    /// A `Timer::Request` for this connection is pending. Deadlines only
    /// move later, so one pending entry suffices: when it fires early it
    /// re-arms for the current deadline. Without this every pipelined
    /// request would leave an entry in the heap for the whole timeout.
    request_timer: bool,
    /// HTTP input is left unread because the answers already queued are
    /// over [`HTTP_BACKLOG`]; flushing below it resumes reading.
    held: bool,
    /// The peer has shut its side (EOF read).
    peer_eof: bool,
    /// While `held`: the bytes the kernel still had to send at the last
    /// request timer (0: not looked yet).
    unsent_seen: u32,
    /// Bytes of unfinished WebSocket messages this connection holds, as
    /// last counted into [`Server::reassembly`].
    reassembly: usize,
    /// What its queue of HTTP answers costs, as last counted into
    /// [`Server::http_backlog`].
    http_out: usize,
    /// The route class of the request being answered (for `/metrics`).
    route: Route,
    /// Used its message budget for this turn: its buffered messages are
    /// handled on the next pass (from `again`), and it is not read before.
    spent: bool,
    /// Over its message rate: not read (its TCP window pushes back) until
    /// `Timer::Resume`.
    throttled: bool,
}

/// How to end a connection.
#[derive(Clone, Copy, Debug)]
enum Close {
    /// Send a WebSocket close frame, then linger.
    Ws(u16, &'static str),
    /// Already said goodbye (HTTP error response queued): linger.
    Linger,
    /// Drop the socket now.
    Abort,
}

/// The `error` for an action refused while the memory guard is engaged.
const AT_MEMORY_LIMIT: &str =
    "Server is at its memory limit; nothing was changed or sent, try again later";

const MSG_ACCOUNTS_BUSY: &str = "Accounts service is busy; try again shortly";
const MSG_ACCOUNTS_SLOW: &str = "The accounts database did not answer in time; try again shortly";

/// The server: create with [`Server::bind`], then [`Server::run`].
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    conns: Slab<Conn>,
    rooms: Rooms,
    timers: Timers<Timer>,
    limiter: RateLimiter<IpAddr>,
    /// Per-client budget for lookups of unknown room codes (rule 12).
    misses: RateLimiter<IpAddr>,
    /// Bytes of unfinished WebSocket messages across all connections
    /// (bounded by `MAX_REASSEMBLY_BYTES`).
    reassembly: usize,
    /// What queued HTTP answers cost across all connections; past
    /// `MAX_HTTP_BACKLOG_BYTES` pipelining peers with unread answers wait.
    http_backlog: usize,
    cfg: Config,
    next_gen: u32,
    next_job: u32,
    scratch: Vec<u8>,
    fx: Vec<Effect>,
    dirty: Vec<ConnRef>,
    again: Vec<ConnRef>,
    doomed: Vec<(ConnRef, Close)>,
    accept_paused: bool,
    /// Most connections seen since the last housekeeping trim.
    peak_conns: usize,
    started: Instant,
    signals: signal_hook_mio::v1_0::Signals,
    waker: Arc<Waker>,
    accounts: Option<Accounts>,
    store: RoomStore,
    shutting_down: Option<Instant>,
    /// Cluster mode: a SIGTERM's drain ends then (readyz is 503 already).
    draining: Option<Instant>,
    memguard: crate::memguard::MemGuard,
    metrics: Metrics,
    ops: ops_shell::OpsState,
    cluster: Option<cluster_shell::ClusterState>,
}

impl Server {
    /// Binds the listener and prepares the loop; starts the accounts workers
    /// when configured.
    pub fn bind(mut cfg: Config) -> io::Result<Server> {
        let host = if cfg.host == "localhost" {
            "127.0.0.1"
        } else {
            cfg.host.as_str()
        };
        let ip: IpAddr = host.parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "HOST is not an IP address")
        })?;
        let mut listener = TcpListener::bind(SocketAddr::new(ip, cfg.port))?;
        // mio listens with std's backlog of 128; a burst of browsers
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
        if cfg.max_outbound_bytes < cfg.max_message_bytes {
            warn!(
                "MAX_OUTBOUND_BYTES ({}) is below MAX_MESSAGE_BYTES ({}): a receiver of one \
                 message that large is always closed with 1008",
                cfg.max_outbound_bytes, cfg.max_message_bytes
            );
        }
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
        let accounts = match &cfg.accounts {
            Some(a) => Some(
                Accounts::start(a.clone(), waker.clone())
                    .map_err(|e| io::Error::other(format!("accounts: {e}")))?,
            ),
            None => None,
        };
        let store = RoomStore::open(&cfg.room_store, cfg.room_idle_timeout, waker.clone())
            .map_err(io::Error::other)?;
        let cluster = match &cfg.cluster {
            Some(c) => Some(
                cluster_shell::ClusterState::start(c.clone(), cfg.history.per_room, waker.clone())
                    .map_err(io::Error::other)?,
            ),
            None => None,
        };
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            conns: Slab::with_capacity(1024),
            rooms: {
                let mut rooms = Rooms::new(cfg.room_idle_timeout);
                rooms.set_history_limits(cfg.history);
                rooms.set_cluster(cluster.is_some());
                rooms
            },
            timers: Timers::default(),
            limiter: RateLimiter::new(cfg.room_create_rate, cfg.room_create_burst, 100_000),
            misses: RateLimiter::new(cfg.room_miss_rate, cfg.room_miss_burst, 100_000),
            reassembly: 0,
            http_backlog: 0,
            next_gen: 0,
            next_job: 0,
            scratch: vec![0; SCRATCH],
            fx: Vec::new(),
            dirty: Vec::new(),
            again: Vec::new(),
            doomed: Vec::new(),
            accept_paused: false,
            peak_conns: 0,
            started: Instant::now(),
            signals,
            waker,
            accounts,
            store,
            shutting_down: None,
            draining: None,
            memguard: crate::memguard::MemGuard::from_system(),
            metrics: Metrics::default(),
            ops: ops_shell::OpsState::new(&cfg),
            cluster,
            cfg,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that interrupts `poll` from another thread.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Runs until SIGTERM/SIGINT and a drained (or timed-out) shutdown.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let watchdog = crate::notify::watchdog_interval();
        let mut next_watchdog = Instant::now();
        crate::notify::ready();
        self.timers
            .arm(Instant::now() + HOUSEKEEPING, Timer::Housekeeping);
        loop {
            let now = Instant::now();
            let mut timeout = self.timers.timeout(now, MAX_SLEEP);
            if !self.again.is_empty() || !self.dirty.is_empty() {
                // Work left over from the last turn (budgets, closes queued
                // while flushing): look for events without sleeping.
                timeout = Duration::ZERO;
            }
            if watchdog.is_some() {
                timeout = timeout.min(next_watchdog.saturating_duration_since(now));
            }
            if let Some(at) = self.store.next_deadline() {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
            if let Some(at) = self.cluster.as_ref().and_then(|c| c.next_deadline()) {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.metrics.loop_turns += 1;
            if let Some(w) = watchdog {
                if Instant::now() >= next_watchdog {
                    crate::notify::watchdog();
                    next_watchdog = Instant::now() + w;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.worker_replies(),
                    SIGNALS => self.signals(),
                    Token(key) => {
                        let Some(c) = self.conns.get(key) else {
                            continue;
                        };
                        let cref = ConnRef {
                            key: key as u32,
                            gen: c.gen,
                        };
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(cref, ev.is_read_closed() || ev.is_error());
                        }
                        if ev.is_writable() {
                            self.mark_dirty(cref);
                        }
                    }
                }
                self.reap();
            }
            // Connections that used their budget last turn.
            for cref in std::mem::take(&mut self.again) {
                if self.is_live(cref) {
                    // Requests buffered while answers were held back come
                    // first; they are already out of the kernel.
                    if self.conn(cref).is_some_and(|c| {
                        matches!(c.phase, Phase::Http { .. }) && !c.inbuf.is_empty()
                    }) {
                        self.process_http(cref);
                    }
                    // Messages left over when its budget ran out, likewise.
                    if let Some(c) = self.conn(cref) {
                        if std::mem::take(&mut c.spent) && matches!(c.phase, Phase::Ws(_)) {
                            self.process_ws(cref);
                        }
                    }
                    // The edge that brought this input may also have carried
                    // the peer's FIN: read on to the end.
                    self.read(cref, true);
                    self.reap();
                }
            }
            self.fire_timers(Instant::now());
            if self.cluster.is_some() {
                self.cluster_tick(Instant::now());
                self.reap();
            }
            self.store.tick(&self.rooms, Instant::now());
            self.flush_dirty();
            if let Some(deadline) = self.shutting_down {
                // Every unsaved room is written before exit (the writes
                // were made due at once when the signal came).
                let done = self.conns.is_empty() && self.store.is_idle();
                if done || Instant::now() >= deadline {
                    info!("shutdown complete ({} connections left)", self.conns.len());
                    if let Some(a) = self.accounts.take() {
                        a.shutdown();
                    }
                    let store = std::mem::replace(&mut self.store, RoomStore::memory());
                    store.shutdown();
                    if let Some(c) = self.cluster.as_mut() {
                        c.shutdown();
                    }
                    return Ok(());
                }
            }
        }
    }

    fn is_live(&self, c: ConnRef) -> bool {
        self.conns
            .get(c.key as usize)
            .is_some_and(|x| x.gen == c.gen)
    }

    fn conn(&mut self, c: ConnRef) -> Option<&mut Conn> {
        live(&mut self.conns, c)
    }

    // ---- accepting -------------------------------------------------------

    fn accept(&mut self) {
        if self.accept_paused || self.shutting_down.is_some() {
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
                    // wait for a close or a short timer.
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) {
                        warn!("accept paused: {e}");
                        self.accept_paused = true;
                        self.timers.arm(
                            Instant::now() + Duration::from_millis(100),
                            Timer::AcceptRetry,
                        );
                        return;
                    }
                    debug!("accept failed: {e}");
                }
            }
        }
        // Budget used: more may be waiting, and edge-triggered polling will
        // not say so again. Retry on the next turn via a zero-delay timer.
        self.timers.arm(Instant::now(), Timer::AcceptRetry);
    }

    fn admit(&mut self, mut sock: TcpStream, addr: SocketAddr) {
        if self.conns.len() >= self.cfg.max_connections {
            // Best effort: the socket is fresh, so a short write fits.
            let mut resp = Vec::new();
            http::write_response(
                &mut resp,
                503,
                &http::error_body("Server is at its connection limit"),
                &Extra {
                    cors_origin: Some("*"),
                    close: true,
                    ..Extra::default()
                },
            );
            if let Ok(n) = sock.write(&resp) {
                self.metrics.bytes_sent += n as u64;
            }
            self.metrics.rejected(Reject::ConnectionLimit);
            self.metrics.http_answer(Route::Other, 503);
            debug!("refused {addr}: at MAX_CONNECTIONS");
            return;
        }
        let _ = sock.set_nodelay(true);
        let now = Instant::now();
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register failed: {e}");
            return;
        }
        let deadline = now + self.cfg.request_timeout;
        entry.insert(Conn {
            sock,
            gen,
            peer: addr.ip(),
            out: OutQueue::default(),
            inbuf: Vec::new(),
            phase: Phase::Http {
                deadline,
                head_seen: false,
                between: false,
            },
            close_when_flushed: false,
            doomed: false,
            dirty: false,
            job: 0,
            write_shut: false,
            request_timer: false,
            held: false,
            peer_eof: false,
            unsent_seen: 0,
            reassembly: 0,
            http_out: 0,
            route: Route::Other,
            spent: false,
            throttled: false,
        });
        self.metrics.connections_accepted += 1;
        let cref = ConnRef {
            key: key as u32,
            gen,
        };
        self.arm_request_timer(cref, deadline);
        self.peak_conns = self.peak_conns.max(self.conns.len());
        debug!("[{key}] accepted {addr}");
    }

    // ---- reading ---------------------------------------------------------

    /// Reads until `WouldBlock`, EOF or the turn's budget. `to_end` says
    /// the event reported the peer's FIN (or an error): then a short read
    /// is not the end, since no further edge will come for what follows.
    fn read(&mut self, cref: ConnRef, to_end: bool) {
        let mut total = 0;
        loop {
            let Some(c) = live(&mut self.conns, cref) else {
                return;
            };
            if c.doomed || c.held || c.spent || c.throttled || matches!(c.phase, Phase::Waiting(_))
            {
                // Input stays in the kernel until the worker answers (that
                // is our back-pressure); reading resumes from `again`.
                return;
            }
            // While a large frame is arriving, read straight into the
            // connection's buffer; otherwise into the shared scratch.
            // A peer with answers still queued (or any peer, while queued
            // answers are over their total) reads in small steps: should it
            // stop reading them, what it pipelined stays in the kernel, not
            // in our buffer.
            let owing = !c.out.is_empty() || self.http_backlog >= self.cfg.max_http_backlog_bytes;
            let want = if matches!(c.phase, Phase::Http { .. }) && owing {
                HTTP_READ_OWING
            } else {
                SCRATCH
            };
            let n = match c.sock.read(&mut self.scratch[..want]) {
                Ok(0) => {
                    self.eof(cref);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("[{}] read error: {e}", cref.key);
                    self.close(cref, Close::Abort);
                    return;
                }
            };
            total += n;
            self.metrics.bytes_received += n as u64;
            match &mut c.phase {
                Phase::Closing => {}
                Phase::Http {
                    deadline, between, ..
                } => {
                    if std::mem::take(between) {
                        // The next request has begun: it gets the whole
                        // REQUEST_TIMEOUT_SECONDS from here (strictly later
                        // than the idle deadline it replaces).
                        let at = Instant::now() + self.cfg.request_timeout;
                        if at > *deadline {
                            *deadline = at;
                            if !c.request_timer {
                                c.request_timer = true;
                                self.timers.arm(at, Timer::Request(cref));
                            }
                        }
                    }
                    if c.close_when_flushed {
                        // Nothing after this is answered (Connection:
                        // close, shutdown): drop it rather than buffer it.
                    } else {
                        c.inbuf.extend_from_slice(&self.scratch[..n]);
                        self.process_http(cref);
                        if self.conn(cref).is_some_and(|c| c.held) {
                            // Answers are piling up unread: leave the rest
                            // in the kernel until they drain.
                            return;
                        }
                    }
                }
                Phase::Waiting(_) => {
                    c.inbuf.extend_from_slice(&self.scratch[..n]);
                    self.process_http(cref);
                }
                Phase::Ws(ws) => {
                    ws.last_seen = Instant::now();
                    let max_message = message_limit(&self.cfg, &ws.session);
                    if c.inbuf.is_empty() {
                        if let Some(need) = ws::frame_len(&self.scratch[..n]) {
                            // Reserve for the whole frame only when the
                            // total bound has room for it.
                            if need > n
                                && need <= max_message + 14
                                && self.reassembly + need <= self.cfg.max_reassembly_bytes
                            {
                                c.inbuf.reserve_exact(need);
                            }
                        }
                    }
                    c.inbuf.extend_from_slice(&self.scratch[..n]);
                    self.process_ws(cref);
                    if self.conn(cref).is_some_and(|c| c.spent || c.throttled) {
                        // Its messages wait in its buffer (and the rest in
                        // the kernel) until its turn or its rate comes back.
                        return;
                    }
                }
            }
            if n < want && !to_end {
                // A short read drained the socket; more data (or a FIN) will
                // raise a new edge. Skipping the read that would only say
                // WouldBlock saves a system call per message. A FIN that
                // came with the data raised its edge already (`to_end`).
                return;
            }
            if total >= READ_BUDGET {
                self.again.push(cref);
                return;
            }
        }
    }

    fn eof(&mut self, cref: ConnRef) {
        let Some(c) = self.conn(cref) else { return };
        c.peer_eof = true;
        match c.phase {
            // The peer finished sending; answer what is complete, then go.
            Phase::Http { .. } if c.out.is_empty() => self.close(cref, Close::Abort),
            Phase::Http { .. } | Phase::Waiting(_) => c.close_when_flushed = true,
            // Our last words (an error answer, a close frame) are still
            // queued: they leave first (`flush` then ends it, or LINGER).
            Phase::Closing if !c.out.is_empty() => {}
            // Replies to what came with the FIN (room_info, pong, ...) are
            // queued: leave the room now, send them, then go.
            Phase::Ws(_) if !c.out.is_empty() => self.close(cref, Close::Linger),
            _ => self.close(cref, Close::Abort),
        }
    }

    // ---- HTTP ------------------------------------------------------------

    fn process_http(&mut self, cref: ConnRef) {
        loop {
            let max_body = self.cfg.max_body_bytes;
            let total_over = self.http_backlog >= self.cfg.max_http_backlog_bytes;
            let Some(c) = self.conn(cref) else { return };
            if c.doomed || c.close_when_flushed {
                // Nothing after a `Connection: close` request is answered.
                return;
            }
            if !matches!(c.phase, Phase::Http { .. }) {
                return;
            }
            if c.out.cost() >= HTTP_BACKLOG || (total_over && !c.out.is_empty()) {
                // A pipelining peer that does not read its answers: hold
                // its further requests until it does (resumed by `flush`).
                // Past the total across connections, every peer with an
                // answer still unread waits; one reading its answers
                // resumes once it has read them all.
                c.held = true;
                return;
            }
            let parsed = http::parse_request(&c.inbuf, max_body);
            let (req, used) = match parsed {
                Ok(Some(x)) => x,
                Ok(None) => {
                    release_if_empty(&mut c.inbuf);
                    // The head is in and the client waits for our word
                    // before sending the body (RFC 9110 §10.1.1). Limits
                    // on the declared size were checked already.
                    if let Phase::Http { head_seen, .. } = &mut c.phase {
                        if !*head_seen {
                            if let Some(expects) = http::head_expects_continue(&c.inbuf) {
                                *head_seen = true;
                                if expects {
                                    c.out
                                        .push(Frame::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
                                    self.mark_dirty(cref);
                                }
                            }
                        }
                    }
                    return;
                }
                Err(e) => {
                    debug!("[{}] bad request: {e:?}", cref.key);
                    c.inbuf = Vec::new();
                    c.route = Route::Invalid;
                    let answer = Answer::error(e.status(), e.message());
                    self.respond(cref, &answer, None, true);
                    self.close(cref, Close::Linger);
                    return;
                }
            };
            c.inbuf.drain(..used);
            let keep_alive = req.keep_alive() && self.shutting_down.is_none();
            self.handle_request(cref, req, keep_alive, false);
        }
    }

    /// Routes one request. `looked_up`: the room store was asked about the
    /// room it names already (so a room not in memory does not exist).
    fn handle_request(
        &mut self,
        cref: ConnRef,
        mut req: Request,
        keep_alive: bool,
        looked_up: bool,
    ) {
        if !looked_up {
            if let Some(code) = api::room_code_of(&req) {
                if self.rooms.find(&code).is_none() && self.store.must_look_up(&code) {
                    let pending = Pending::Rest {
                        req: Box::new(req),
                        keep_alive,
                    };
                    self.wait_for_lookup(cref, &code, pending);
                    return;
                }
            } else if req.path == "/api/rooms"
                && req.method() == http::Method::Post
                && req.room_code_hint.is_none()
            {
                // A new room gets a random code. One that only the store
                // holds (its room not in memory) must not be drawn: saving
                // the new room would replace the stored one. Ask first.
                let code = self.rooms.draw_code(&mut crate::util::fill_random);
                if self.store.must_look_up(&code) {
                    req.room_code_hint = Some(code.clone());
                    let pending = Pending::Rest {
                        req: Box::new(req),
                        keep_alive,
                    };
                    self.wait_for_lookup(cref, &code, pending);
                    return;
                }
            }
        }
        // Cluster mode: a room's peers are those of every node, known once
        // this node follows the room's stream.
        if self.cluster.is_some() && req.path.starts_with("/api/rooms/") {
            if let Some(code) = api::room_code_of(&req) {
                if self.rooms.find(&code).is_some_and(|(_, r)| !r.synced()) {
                    let pending = Pending::Rest {
                        req: Box::new(req),
                        keep_alive,
                    };
                    self.cluster_wait_for_snapshot(cref, &code, pending);
                    return;
                }
            }
        }
        let Some(c) = self.conn(cref) else { return };
        let peer = c.peer;
        let route = crate::ops::route_class(req.method(), &req.path);
        c.route = route;
        if self.ops_request(cref, route, &req, keep_alive) {
            return;
        }
        let now = Instant::now();
        let connections = self.conns.len();
        let store = self
            .accounts
            .as_ref()
            .map_or("disabled", |a| a.store_status());
        // Only room creation asks the guard: a sample may read /proc, and
        // other routes allocate nothing that lasts.
        let admit_new_rooms = !(req.path == "/api/rooms" && req.method() == http::Method::Post)
            || self.memguard.allow_new_websocket(now);
        let stats = Stats {
            connections,
            started: self.started,
            store,
            admit_new_rooms,
            room_store: self.store.health(now),
            cluster: self.cluster.as_ref().map(|c| c.health()),
        };
        let routed = api::route(
            &self.cfg,
            &mut self.rooms,
            &mut self.limiter,
            &mut self.misses,
            &stats,
            peer,
            &req,
            now,
            &mut self.fx,
        );
        self.apply_effects();
        debug!("[{}] {} {}", cref.key, req.method().as_str(), req.path);
        match routed {
            Routed::Answer(a) => {
                match (route, a.status) {
                    (Route::RoomsCreate, 429) => self.metrics.rejected(Reject::RoomCreateRate),
                    (Route::RoomsGet, 429) => self.metrics.rejected(Reject::RoomLookupRate),
                    (Route::RoomsCreate, 503) => self.metrics.rejected(Reject::MemoryGuard),
                    (Route::Auth, 503) => self.metrics.rejected(Reject::AccountsNotConfigured),
                    _ => {}
                }
                let head = req.method() == http::Method::Head;
                self.answer(cref, &a, req.origin.as_deref(), keep_alive, head);
            }
            Routed::Upgrade => self.upgrade(cref, &req),
            Routed::Accounts => {
                let client_ip = api::client_ip(&self.cfg, peer, &req);
                let job = Job::Http(AuthRequest {
                    method: req.method().as_str().to_owned(),
                    path: req.path.clone(),
                    query: req.query.clone(),
                    authorization: req.authorization.clone(),
                    setup_token: req.setup_token.clone(),
                    body: req.body,
                    client_ip,
                });
                let pending = Pending::Accounts {
                    keep_alive,
                    origin: req.origin.clone(),
                };
                self.submit(cref, job, pending);
            }
            Routed::AuthorizeThenCreate(token) => {
                let origin = req.origin.clone();
                self.submit(
                    cref,
                    Job::Authorize { token },
                    Pending::CreateRoom {
                        req: Box::new(req),
                        origin,
                    },
                );
            }
        }
    }

    fn respond(&mut self, cref: ConnRef, a: &Answer, origin: Option<&str>, close: bool) {
        self.respond_full(cref, a, origin, close, false)
    }

    fn respond_full(
        &mut self,
        cref: ConnRef,
        a: &Answer,
        origin: Option<&str>,
        close: bool,
        head: bool,
    ) {
        let cors = api::cors_origin(&self.cfg, origin);
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        self.metrics.http_answer(c.route, a.status);
        let mut buf = Vec::with_capacity(256 + a.body.len());
        http::write_response(
            &mut buf,
            a.status,
            &a.body,
            &Extra {
                allow: a.allow,
                retry_after: a.retry_after,
                cors_origin: cors,
                preflight: a.preflight,
                close: close || http::closes_connection(a.status),
                head,
            },
        );
        // An exact-size buffer: the queue's cost is then the memory it holds
        // (a spare capacity would also cost `Bytes` a header of its own).
        buf.shrink_to_fit();
        c.out.push(Frame::from(buf));
        count_http(&mut self.http_backlog, c);
        self.mark_dirty(cref);
    }

    /// Answers one HTTP request and sets up what follows it: the next
    /// request on a kept-alive connection, or the close. Every route's
    /// answer, parked or not, goes through here, so the contract's rule
    /// holds everywhere: after 400/408/413/431 the connection is closed,
    /// since the peer and the server may no longer agree where the next
    /// request starts.
    fn answer(
        &mut self,
        cref: ConnRef,
        a: &Answer,
        origin: Option<&str>,
        keep_alive: bool,
        head: bool,
    ) {
        let keep = keep_alive && self.shutting_down.is_none() && !http::closes_connection(a.status);
        self.respond_full(cref, a, origin, !keep, head);
        self.after_response(cref, keep);
    }

    fn after_response(&mut self, cref: ConnRef, keep_alive: bool) {
        let timeout = self.cfg.request_timeout;
        let Some(c) = self.conn(cref) else { return };
        if !keep_alive {
            // Nothing more is read or answered; the answer gets LINGER to
            // leave, and then the connection goes whatever the peer does.
            self.close(cref, Close::Linger);
            return;
        }
        let deadline = Instant::now() + timeout;
        c.phase = Phase::Http {
            deadline,
            head_seen: false,
            between: true,
        };
        self.arm_request_timer(cref, deadline);
    }

    /// Arms the connection's request timer unless one is pending already
    /// (it fires no later than `deadline`, then re-arms).
    fn arm_request_timer(&mut self, cref: ConnRef, deadline: Instant) {
        let Some(c) = self.conn(cref) else { return };
        if !c.request_timer {
            c.request_timer = true;
            self.timers.arm(deadline, Timer::Request(cref));
        }
    }

    /// Hands `job` to the accounts workers; the connection waits in
    /// `Phase::Waiting` until the reply or [`crate::accounts::REPLY_TIMEOUT`].
    ///
    /// The tag names the slab slot and the job's number; the number doubles
    /// as the generation check, since no other connection in that slot can
    /// be waiting for the same job.
    fn submit(&mut self, cref: ConnRef, job: Job, pending: Pending) {
        let Some(accounts) = &self.accounts else {
            return;
        };
        self.next_job = self.next_job.wrapping_add(1);
        let seq = self.next_job;
        let tag = ((seq as u64) << 32) | cref.key as u64;
        match accounts.submit(tag, job) {
            Ok(()) => {
                if let Some(c) = self.conn(cref) {
                    c.phase = Phase::Waiting(Box::new(pending));
                    c.job = seq;
                }
                self.timers.arm(
                    Instant::now() + crate::accounts::REPLY_TIMEOUT,
                    Timer::Job(cref, seq),
                );
            }
            Err(_) => self.give_up(cref, pending, MSG_ACCOUNTS_BUSY),
        }
    }

    /// Answers a parked request with a 503 (or, for a join, an `error`)
    /// when the workers cannot or did not answer.
    fn give_up(&mut self, cref: ConnRef, pending: Pending, why: &str) {
        self.metrics.rejected(match why {
            MSG_ACCOUNTS_BUSY => Reject::AccountsBusy,
            store::UNAVAILABLE => Reject::StoreUnavailable,
            _ => Reject::AccountsTimeout,
        });
        let busy = Answer::error(503, why);
        match pending {
            Pending::Accounts { keep_alive, origin } => {
                self.answer(cref, &busy, origin.as_deref(), keep_alive, false);
            }
            Pending::CreateRoom { req, origin } => {
                self.answer(cref, &busy, origin.as_deref(), req.keep_alive(), false);
            }
            Pending::Rest { req, keep_alive } => {
                self.answer(cref, &busy, req.origin.as_deref(), keep_alive, false);
            }
            Pending::Join { ws, .. } => {
                if let Some(c) = self.conn(cref) {
                    c.phase = Phase::Ws(ws);
                }
                self.send(cref, rooms::error_frame(why));
            }
            Pending::Admin(p) => self.admin_gave_up(cref, *p, why),
        }
    }

    /// Parks a request for a room that is not in memory until the room
    /// store's lookup of `code` answers (shared with every other request
    /// for it), or [`store::LOOKUP_TIMEOUT`] passes.
    fn wait_for_lookup(&mut self, cref: ConnRef, code: &str, pending: Pending) {
        let now = Instant::now();
        self.next_job = self.next_job.wrapping_add(1);
        let seq = self.next_job;
        if !self.store.lookup(code, cref, seq, now) {
            self.store_did_not_answer(cref, pending);
            return;
        }
        // Checking a fresh code is a precaution, not worth a long wait.
        let wait = match &pending {
            Pending::Rest { req, .. } if req.room_code_hint.is_some() => store::FRESH_CODE_WAIT,
            _ => store::LOOKUP_TIMEOUT,
        };
        if let Some(c) = self.conn(cref) {
            c.phase = Phase::Waiting(Box::new(pending));
            c.job = seq;
        }
        self.timers.arm(now + wait, Timer::Lookup(cref, seq));
    }

    /// A parked request the room store could not answer: 503 `Room store
    /// unavailable` (a join: an `error`), except the check of a fresh room
    /// code, which gives way: the room is created with a code no room in
    /// memory has, so rooms can still be made during an outage.
    fn store_did_not_answer(&mut self, cref: ConnRef, pending: Pending) {
        match pending {
            Pending::Rest {
                mut req,
                keep_alive,
            } if req.room_code_hint.is_some() => {
                req.room_code_hint = None;
                self.handle_request(cref, *req, keep_alive, true);
            }
            other => self.give_up(cref, other, store::UNAVAILABLE),
        }
    }

    /// The requests that waited on one lookup carry on.
    fn lookup_done(&mut self, waiters: Vec<(ConnRef, u32)>, found: &Found) {
        for (cref, seq) in waiters {
            let Some(pending) = self.take_pending(cref, seq) else {
                continue; // answered by its timer, or gone
            };
            match found {
                Found::Unavailable => self.store_did_not_answer(cref, pending),
                // For a fresh code that was a stored room's: that room is in
                // memory now, so creating gives way to a code not in use.
                Found::Room | Found::Absent => match pending {
                    Pending::Rest { req, keep_alive } => {
                        self.handle_request(cref, *req, keep_alive, true);
                    }
                    Pending::Join {
                        ws,
                        message,
                        authorized,
                    } => {
                        if let Some(c) = self.conn(cref) {
                            c.phase = Phase::Ws(ws);
                        }
                        self.ws_text(cref, &message, authorized.as_ref(), true);
                    }
                    other => self.give_up(cref, other, store::UNAVAILABLE),
                },
            }
            self.resume(cref);
        }
    }

    /// Takes the parked request of a connection waiting for job `seq`.
    fn take_pending(&mut self, cref: ConnRef, seq: u32) -> Option<Pending> {
        let c = self.conn(cref)?;
        if c.job != seq || !matches!(c.phase, Phase::Waiting(_)) {
            return None;
        }
        let Phase::Waiting(pending) = std::mem::replace(
            &mut c.phase,
            Phase::Http {
                deadline: Instant::now(),
                head_seen: false,
                between: false,
            },
        ) else {
            unreachable!()
        };
        Some(*pending)
    }

    /// After a parked request was answered: input that arrived meanwhile
    /// is still buffered (or in the kernel), so carry on with it.
    fn resume(&mut self, cref: ConnRef) {
        self.reap();
        if let Some(c) = self.conn(cref) {
            match c.phase {
                Phase::Http { .. } => self.process_http(cref),
                Phase::Ws(_) => self.process_ws(cref),
                _ => {}
            }
            self.again.push(cref);
        }
        self.reap();
    }

    fn worker_replies(&mut self) {
        let mut finished = Vec::new();
        self.store
            .drain(&mut self.rooms, Instant::now(), &mut self.fx, |w, f| {
                finished.push((w, *f))
            });
        // Restored rooms' expiry timers.
        self.apply_effects();
        for (waiters, found) in finished {
            self.lookup_done(waiters, &found);
        }
        let mut replies = Vec::new();
        if let Some(a) = &self.accounts {
            a.drain(|tag, reply| replies.push((tag, reply)));
        }
        if self.cluster.is_some() {
            self.cluster_replies();
        }
        for (tag, reply) in replies {
            let (key, seq) = (tag as u32, (tag >> 32) as u32);
            let Some(gen) = self.conns.get(key as usize).map(|c| c.gen) else {
                continue;
            };
            let cref = ConnRef { key, gen };
            // A reply after the deadline, or for a connection gone meanwhile.
            let Some(pending) = self.take_pending(cref, seq) else {
                continue;
            };
            match (pending, reply) {
                (Pending::Accounts { keep_alive, origin }, Reply::Http(r)) => {
                    match r.status {
                        429 => self.metrics.rejected(Reject::LoginRate),
                        503 => self.metrics.rejected(Reject::AccountsUnavailable),
                        _ => {}
                    }
                    let a = Answer::from(r);
                    self.answer(cref, &a, origin.as_deref(), keep_alive, false);
                }
                (Pending::CreateRoom { req, origin }, Reply::Authorized(who)) => {
                    let a = if let Some(who) = who {
                        let peer = self.conn(cref).map(|c| c.peer).expect("live");
                        let now = Instant::now();
                        let admit = self.memguard.allow_new_websocket(now);
                        let a = api::create_room(
                            &self.cfg,
                            &mut self.rooms,
                            peer,
                            &req,
                            now,
                            admit,
                            Some(&who.user),
                            &mut self.fx,
                        );
                        self.apply_effects();
                        a
                    } else {
                        Answer::error(401, "Authentication required")
                    };
                    self.answer(cref, &a, origin.as_deref(), req.keep_alive(), false);
                }
                (Pending::Join { ws, message, .. }, Reply::Authorized(who)) => {
                    if let Some(c) = self.conn(cref) {
                        c.phase = Phase::Ws(ws);
                    }
                    if let Some(who) = who {
                        self.ws_text(cref, &message, Some(&who), false);
                    } else {
                        self.send(cref, rooms::error_frame("Authentication required"));
                    }
                }
                (Pending::Admin(p), Reply::Authorized(who)) => {
                    self.admin_authorized(cref, *p, who.is_some());
                }
                (_, _) => {
                    warn!(
                        "[{}] worker reply did not match the pending request",
                        cref.key
                    );
                    self.close(cref, Close::Abort);
                }
            }
            self.resume(cref);
        }
    }

    // ---- WebSocket -------------------------------------------------------

    fn upgrade(&mut self, cref: ConnRef, req: &Request) {
        if !self.memguard.allow_new_websocket(Instant::now()) {
            self.metrics.rejected(Reject::MemoryGuard);
            let a = Answer::error(503, api::NEAR_MEMORY_LIMIT);
            self.respond(cref, &a, req.origin.as_deref(), true);
            self.close(cref, Close::Linger);
            return;
        }
        let key = req.ws_key.as_deref().unwrap_or_default();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        // The contract puts CORS headers on every response; browsers do not
        // check them on an upgrade, other clients may.
        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
        )
        .into_bytes();
        http::write_cors(
            &mut resp,
            api::cors_origin(&self.cfg, req.origin.as_deref()),
            None,
        );
        resp.extend_from_slice(b"\r\n");
        let upgrade_token = api::bearer(req.authorization.as_deref())
            .map(str::to_owned)
            .or_else(|| req.query_param("token"))
            .map(String::into_boxed_str);
        let now = Instant::now();
        let interval = self.cfg.ping_interval;
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let client_ip = api::client_ip(&self.cfg, c.peer, req);
        c.out.push(Frame::from(resp));
        c.phase = Phase::Ws(Box::new(WsState {
            decoder: Decoder::default(),
            session: Session::default(),
            last_seen: now,
            upgrade_token,
            client_ip,
            rate: crate::ratelimit::TokenBucket::new(self.cfg.message_burst, now),
        }));
        self.timers.arm(now + interval, Timer::Ping(cref));
        self.mark_dirty(cref);
        self.metrics.websockets_accepted += 1;
        self.metrics.http_answer(Route::Ws, 101);
        debug!("[{}] websocket open", cref.key);
        // Frames pipelined behind the upgrade request are already buffered.
        self.process_ws(cref);
    }

    fn process_ws(&mut self, cref: ConnRef) {
        let Some(c) = self.conn(cref) else { return };
        let Phase::Ws(ws) = &mut c.phase else { return };
        let mut decoder = std::mem::take(&mut ws.decoder);
        let mut buf = std::mem::take(&mut c.inbuf);
        let mut pos = 0;
        let mut failure: Option<WsError> = None;
        let (budget, rate, burst) = (
            self.cfg.max_messages_per_turn,
            self.cfg.message_rate,
            self.cfg.message_burst,
        );
        let now = Instant::now();
        let mut handled = 0;
        loop {
            // Stop when the connection is closing or parked on a worker.
            // The size limit depends on whether it has joined (rule 12), which
            // the message before may have changed.
            let c = self
                .conns
                .get_mut(cref.key as usize)
                .filter(|c| c.gen == cref.gen);
            let (max_message, c) = match c {
                Some(c) if !c.doomed => match &mut c.phase {
                    Phase::Ws(ws) => {
                        // Fairness (rule 12): a budget per turn, a rate per
                        // second. What is left waits, unread past the buffer.
                        if let Err(wait) = ws.rate.check(rate, burst, now) {
                            c.throttled = true;
                            let at = now + wait.min(Duration::from_secs(1));
                            self.timers.arm(at, Timer::Resume(cref));
                            break;
                        }
                        if handled >= budget {
                            c.spent = true;
                            self.again.push(cref);
                            break;
                        }
                        (message_limit(&self.cfg, &ws.session), ws)
                    }
                    _ => break,
                },
                _ => break,
            };
            match decoder.next(&mut buf[pos..], max_message) {
                Ok(None) => break,
                Ok(Some((event, used))) => {
                    pos += used;
                    // Every event counts against the turn's budget; only
                    // messages (not pings) against the rate, so a flood of
                    // pings from a peer that never reads still ends in 1008.
                    if event.is_some() {
                        handled += 1;
                    }
                    if matches!(event, Some(Event::Text(_) | Event::Binary)) {
                        c.rate.take();
                    }
                    match event {
                        None => {}
                        Some(Event::Text(text)) => self.ws_text(cref, text, None, false),
                        Some(Event::Binary) => {
                            self.metrics.message_in(MsgIn::Binary);
                            self.send(
                                cref,
                                rooms::error_frame(
                                    "Invalid message format: binary frames are not supported",
                                ),
                            )
                        }
                        Some(Event::Ping(p)) => self.send(cref, ws::pong(p)),
                        Some(Event::Pong) => {}
                        Some(Event::Close(code)) => {
                            let reply = match code {
                                Some(c) if ws_code_ok(c) => c,
                                Some(_) => ws::close::PROTOCOL,
                                None => ws::close::NORMAL,
                            };
                            self.request_close(cref, Close::Ws(reply, ""));
                            break;
                        }
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        decoder.release();
        buf.drain(..pos);
        release_if_empty(&mut buf);
        if let Some(c) = self.conn(cref) {
            c.inbuf = buf;
            match &mut c.phase {
                Phase::Ws(ws) => ws.decoder = decoder,
                Phase::Waiting(p) => {
                    if let Pending::Join { ws, .. } = &mut **p {
                        ws.decoder = decoder;
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = failure {
            debug!("[{}] websocket error: {}", cref.key, e.reason());
            if let Some(c) = self.conn(cref) {
                c.inbuf = Vec::new();
            }
            self.request_close(cref, Close::Ws(e.close_code(), e.reason()));
        }
        self.check_reassembly(cref);
    }

    /// Recounts what `cref` holds of unfinished messages into the total and
    /// enforces the bounds on it (rule 12): past `MAX_REASSEMBLY_BYTES` in
    /// all, or past the small pre-join size while the memory guard is
    /// engaged, the connection whose message grew is closed with 1013 (try
    /// again later): the refusal is about the server's state, not the
    /// message, which `MAX_MESSAGE_BYTES` (1009) judges.
    fn check_reassembly(&mut self, cref: ConnRef) {
        let small = self.cfg.max_prejoin_message_bytes;
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let now_held = unfinished_bytes(c);
        self.reassembly = self.reassembly - c.reassembly + now_held;
        c.reassembly = now_held;
        if now_held <= small {
            return;
        }
        // A frame whose buffer was reserved whole will grow to that size.
        let to_come = c.inbuf.capacity().saturating_sub(c.inbuf.len());
        let reason = if self.reassembly > self.cfg.max_reassembly_bytes {
            "Server busy: too much unfinished message data; try again later"
        } else if !self.memguard.allow_growth(Instant::now(), to_come) {
            "Server is at its memory limit; try again later"
        } else {
            return;
        };
        debug!("[{}] unfinished message refused: {reason}", cref.key);
        self.request_close(cref, Close::Ws(ws::close::TRY_AGAIN_LATER, reason));
    }

    /// Whether the memory guard refuses an action that would grow memory:
    /// a `sync_document` larger than the stored one, or a broadcast larger
    /// than the small-message size (rule 12, issue 15 item 3).
    fn memory_refuses(&mut self, cref: ConnRef, action: &Action<'_>) -> bool {
        let Some(Phase::Ws(ws)) = self
            .conns
            .get(cref.key as usize)
            .filter(|c| c.gen == cref.gen)
            .map(|c| &c.phase)
        else {
            return false;
        };
        let session = &ws.session;
        // What the action would allocate (a new frame), if it grows memory.
        let growth = match action {
            Action::SyncDocument { document } => {
                let new = rooms::document_frame_len(document.get().len());
                let bigger = session.is_host
                    && session
                        .room
                        .and_then(|r| self.rooms.get(r))
                        .is_some_and(|room| new > room.document_frame_len());
                bigger.then_some(new)
            }
            Action::Broadcast { data } => {
                let n = data.get().len();
                (session.in_room() && n > self.cfg.max_prejoin_message_bytes).then_some(n)
            }
            _ => None,
        };
        growth.is_some_and(|n| !self.memguard.allow_growth(Instant::now(), n))
    }

    /// One client text message. `authorized` is the account of a join the
    /// workers already approved (it skips the `REQUIRE_AUTH` check).
    /// `looked_up`: the room store was asked about the room already.
    fn ws_text(
        &mut self,
        cref: ConnRef,
        text: &str,
        authorized: Option<&Principal>,
        looked_up: bool,
    ) {
        let action = match protocol::decode(text) {
            Ok(a) => a,
            Err(detail) => {
                self.metrics.message_in(MsgIn::Invalid);
                self.send(
                    cref,
                    rooms::error_frame(&format!("Invalid message format: {detail}")),
                );
                return;
            }
        };
        if self.memory_refuses(cref, &action) {
            // The room keeps its document; the sender may retry later.
            self.send(cref, rooms::error_frame(AT_MEMORY_LIMIT));
            return;
        }
        let now = Instant::now();
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let Phase::Ws(ws) = &mut c.phase else { return };
        self.metrics.message_in(match action {
            Action::Ping => MsgIn::Ping,
            Action::Join { .. } => MsgIn::Join,
            Action::Broadcast { .. } => MsgIn::Broadcast,
            Action::SyncDocument { .. } => MsgIn::SyncDocument,
            Action::RequestSync => MsgIn::RequestSync,
            Action::Leave => MsgIn::Leave,
        });
        if let Some(room) = ws.session.room {
            self.ops.touch(room, now);
        }
        // Cluster mode: what needs the room's stream waits for nothing when
        // Redis is not there (or too much is on its way to it).
        let streams = matches!(
            action,
            Action::Join { .. } | Action::Broadcast { .. } | Action::SyncDocument { .. }
        );
        if streams && self.cluster.as_ref().is_some_and(|c| !c.accepts()) {
            self.send(cref, rooms::error_frame(crate::cluster::UNAVAILABLE));
            return;
        }
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let Phase::Ws(ws) = &mut c.phase else { return };
        match action {
            Action::Ping => self.send(cref, rooms::pong_frame()),
            Action::Join {
                room_code,
                peer_id,
                is_host,
                metadata,
                token,
                since,
            } => {
                if self.cfg.require_auth() && authorized.is_none() {
                    let token = token
                        .map(|t| t.into_owned())
                        .or_else(|| ws.upgrade_token.as_deref().map(str::to_owned));
                    let Some(token) = token else {
                        self.send(cref, rooms::error_frame("Authentication required"));
                        return;
                    };
                    let Phase::Ws(ws) = std::mem::replace(&mut c.phase, Phase::Closing) else {
                        unreachable!()
                    };
                    let pending = Pending::Join {
                        ws,
                        message: text.to_owned(),
                        authorized: None,
                    };
                    self.submit(cref, Job::Authorize { token }, pending);
                    return;
                }
                // A client whose lookup budget is spent is refused before it
                // can make the store look anything up.
                if let Err(wait) = self.misses.peek(&ws.client_ip, now) {
                    debug!("[{}] join refused: lookup budget spent", cref.key);
                    let text = api::lookups_limited_text(wait);
                    self.send(cref, rooms::error_frame(&text));
                    return;
                }
                if !looked_up
                    && self.rooms.find(&room_code).is_none()
                    && self.store.must_look_up(&room_code)
                {
                    let Phase::Ws(ws) = std::mem::replace(&mut c.phase, Phase::Closing) else {
                        unreachable!()
                    };
                    let pending = Pending::Join {
                        ws,
                        message: text.to_owned(),
                        authorized: authorized.cloned(),
                    };
                    self.wait_for_lookup(cref, &room_code, pending);
                    return;
                }
                let found = self.rooms.find(&room_code).is_some();
                if let Err(wait) = self.misses.check_lookup(&ws.client_ip, found, now) {
                    debug!("[{}] join refused: lookup budget spent", cref.key);
                    let text = api::lookups_limited_text(wait);
                    self.send(cref, rooms::error_frame(&text));
                    return;
                }
                // Cluster mode: the room's stream is followed from a
                // snapshot before anyone joins it here.
                if self.cluster.is_some()
                    && self
                        .rooms
                        .find(&room_code)
                        .is_some_and(|(_, r)| !r.synced())
                {
                    let Phase::Ws(ws) = std::mem::replace(&mut c.phase, Phase::Closing) else {
                        unreachable!()
                    };
                    let pending = Pending::Join {
                        ws,
                        message: text.to_owned(),
                        authorized: authorized.cloned(),
                    };
                    self.cluster_wait_for_snapshot(cref, &room_code, pending);
                    return;
                }
                // REQUIRE_AUTH binds the host role to the creator's account
                // (or an admin's), on top of the secret host id.
                let owner = self.rooms.find(&room_code).and_then(|(_, r)| r.owner());
                if let (true, Some(owner), Some(who)) = (is_host, owner, authorized) {
                    if !who.admin && who.user != owner {
                        self.send(
                            cref,
                            rooms::error_frame(
                                "Only the account that created the room (or an admin) may join as its host",
                            ),
                        );
                        return;
                    }
                }
                // ... and a peer id to the account that joined with it: in
                // protected mode another account cannot replace a guest.
                let holder = self
                    .rooms
                    .find(&room_code)
                    .and_then(|(_, r)| r.account_of(&peer_id));
                if let (Some(holder), Some(who)) = (holder, authorized) {
                    if !who.admin && who.user != holder {
                        self.send(
                            cref,
                            rooms::error_frame(
                                "This peer_id is in use by another account in this room",
                            ),
                        );
                        return;
                    }
                }
                self.rooms.join(
                    cref,
                    &mut ws.session,
                    &room_code,
                    &peer_id,
                    is_host,
                    metadata,
                    since,
                    now,
                    std::time::SystemTime::now(),
                    &mut self.fx,
                );
                if let Some(room) = ws.session.room {
                    self.ops.touch(room, now);
                    if let Some(who) = authorized {
                        self.rooms.bind_account(room, cref, &who.user);
                    }
                }
                self.apply_effects();
            }
            Action::Broadcast { data } => {
                self.rooms
                    .broadcast(cref, &ws.session, data, now, &mut self.fx);
                self.apply_effects();
            }
            Action::SyncDocument { document } => {
                self.rooms
                    .sync_document(cref, &ws.session, document, &mut self.fx);
                self.apply_effects();
            }
            Action::RequestSync => {
                self.rooms.request_sync(cref, &ws.session, &mut self.fx);
                self.apply_effects();
            }
            Action::Leave => {
                self.rooms.leave(cref, &mut ws.session, now, &mut self.fx);
                self.apply_effects();
                self.request_close(cref, Close::Ws(ws::close::NORMAL, "Left the room"));
            }
        }
    }

    /// Queues a frame for one WebSocket connection, enforcing the outbound
    /// bound.
    fn send(&mut self, cref: ConnRef, frame: Frame) {
        let max = self.cfg.max_outbound_bytes;
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let kind = metrics::classify(&frame);
        if !push_bounded(c, frame, max, &mut self.metrics.bytes_sent) {
            self.doom(
                cref,
                Close::Ws(ws::close::POLICY, "Outbound queue limit exceeded"),
            );
            return;
        }
        if let Some(kind) = kind {
            self.metrics.delivered(kind, 1);
        }
        self.mark_dirty(cref);
    }

    fn apply_effects(&mut self) {
        let max = self.cfg.max_outbound_bytes;
        // Applying effects never produces new ones (closes are deferred to
        // `reap`), so the vector can be taken and given back for reuse.
        let mut fx = std::mem::take(&mut self.fx);
        for effect in fx.drain(..) {
            match effect {
                Effect::Send(to, frame) => self.send(to, frame),
                Effect::Fanout {
                    room,
                    except,
                    frame,
                } => {
                    let Some(r) = self.rooms.get(room) else {
                        continue;
                    };
                    let kind = metrics::classify(&frame);
                    let mut delivered = 0;
                    for to in r.member_conns() {
                        if Some(to) == except {
                            continue;
                        }
                        let Some(c) = live(&mut self.conns, to) else {
                            continue;
                        };
                        if push_bounded(c, frame.clone(), max, &mut self.metrics.bytes_sent) {
                            delivered += 1;
                            if !c.dirty {
                                c.dirty = true;
                                self.dirty.push(to);
                            }
                        } else if !c.doomed {
                            c.doomed = true;
                            self.doomed.push((
                                to,
                                Close::Ws(ws::close::POLICY, "Outbound queue limit exceeded"),
                            ));
                        }
                    }
                    if let Some(kind) = kind {
                        self.metrics.delivered(kind, delivered);
                    }
                }
                Effect::Close(to, code, reason) => {
                    // The room already removed this member.
                    if let Some(c) = live(&mut self.conns, to) {
                        if let Phase::Ws(ws) = &mut c.phase {
                            ws.session = Session::default();
                        }
                    }
                    self.doom(to, Close::Ws(code, reason));
                }
                Effect::ExpireAt(room, at) => self.timers.arm(at, Timer::Room(room)),
                Effect::Persist(room) => {
                    if let Some(r) = self.rooms.get(room) {
                        self.store.changed(r.code(), Instant::now());
                    }
                }
                Effect::Publish {
                    room,
                    except,
                    what,
                    frame,
                } => self.cluster_publish(room, except, what, frame),
            }
        }
        debug_assert!(self.fx.is_empty());
        self.fx = fx;
    }

    fn mark_dirty(&mut self, cref: ConnRef) {
        if let Some(c) = live(&mut self.conns, cref) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(cref);
            }
        }
    }

    // ---- writing ---------------------------------------------------------

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut left = TURN_WRITE_BUDGET;
        for cref in dirty.drain(..) {
            if left == 0 {
                // Still marked dirty: first in line next turn.
                self.dirty.push(cref);
                continue;
            }
            if let Some(c) = live(&mut self.conns, cref) {
                c.dirty = false;
            }
            left = left.saturating_sub(self.flush(cref, left.min(WRITE_BUDGET)));
        }
        self.reap();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Writes up to about `budget` bytes of the connection's queue; returns
    /// what the socket took.
    fn flush(&mut self, cref: ConnRef, budget: usize) -> usize {
        let Some(c) = live(&mut self.conns, cref) else {
            return 0;
        };
        let queued = c.out.len();
        let result = c.out.flush_to(&mut c.sock, budget);
        let written = queued.saturating_sub(c.out.len());
        self.metrics.bytes_sent += written as u64;
        count_http(&mut self.http_backlog, c);
        if c.held && c.out.len() < queued {
            // The peer is reading what it asked for: the wait is ours, so
            // its request clock does not run meanwhile.
            let at = Instant::now() + self.cfg.request_timeout;
            if let Phase::Http { deadline, .. } = &mut c.phase {
                *deadline = at;
            }
        }
        let total_ok = self.http_backlog < self.cfg.max_http_backlog_bytes || c.out.is_empty();
        if c.held && c.out.cost() < HTTP_BACKLOG && total_ok {
            // Room again: answer what is buffered, then read on. The wait
            // was ours, not the peer's: its request clock starts afresh.
            c.held = false;
            c.unsent_seen = 0;
            let at = Instant::now() + self.cfg.request_timeout;
            if let Phase::Http { deadline, .. } = &mut c.phase {
                *deadline = at;
            }
            self.again.push(cref);
            self.arm_request_timer(cref, at);
        }
        self.flush_result(cref, result);
        written
    }

    fn flush_result(&mut self, cref: ConnRef, result: io::Result<Flush>) {
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        match result {
            Ok(Flush::Drained) => {
                if c.close_when_flushed && !matches!(c.phase, Phase::Waiting(_) | Phase::Closing) {
                    self.close(cref, Close::Linger);
                } else if matches!(c.phase, Phase::Closing) && c.peer_eof {
                    // Both sides are done: no need to linger.
                    self.close(cref, Close::Abort);
                } else if matches!(c.phase, Phase::Closing) && !c.write_shut {
                    c.write_shut = true;
                    let _ = c.sock.shutdown(Shutdown::Write);
                }
            }
            Ok(Flush::Blocked) => {}
            Ok(Flush::Budget) => self.mark_dirty(cref),
            Err(e) => {
                debug!("[{}] write error: {e}", cref.key);
                self.close(cref, Close::Abort);
            }
        }
    }

    // ---- closing ---------------------------------------------------------

    /// Asks for a close from inside effect application: deferred to `reap`.
    fn doom(&mut self, cref: ConnRef, how: Close) {
        if let Some(c) = self.conn(cref) {
            if !c.doomed {
                c.doomed = true;
                self.doomed.push((cref, how));
            }
        }
    }

    fn request_close(&mut self, cref: ConnRef, how: Close) {
        self.doom(cref, how);
    }

    /// Carries out deferred closes (which may cause more).
    fn reap(&mut self) {
        while let Some((cref, how)) = self.doomed.pop() {
            if let Some(c) = self.conn(cref) {
                c.doomed = false;
            }
            self.close(cref, how);
        }
    }

    /// The one way a connection ends. Idempotent.
    fn close(&mut self, cref: ConnRef, how: Close) {
        let now = Instant::now();
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        // Leave the room first so the others hear `peer_left` in order.
        let session = match &mut c.phase {
            Phase::Ws(ws) => Some(&mut ws.session),
            Phase::Waiting(p) => match &mut **p {
                Pending::Join { ws, .. } => Some(&mut ws.session),
                _ => None,
            },
            _ => None,
        };
        if let Some(session) = session.filter(|s| s.in_room()) {
            if let Some(room) = session.room {
                self.ops.touch(room, now);
            }
            self.rooms.leave(cref, session, now, &mut self.fx);
            self.apply_effects();
        }
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let already_closing = matches!(c.phase, Phase::Closing);
        if !already_closing && is_websocket(&c.phase) {
            self.metrics.ws_closed(match how {
                Close::Ws(code, _) => code,
                _ => metrics::CLOSE_ABNORMAL,
            });
        }
        match how {
            Close::Abort => {
                self.remove(cref);
                return;
            }
            _ if already_closing => return,
            Close::Ws(code, reason) => {
                if is_websocket(&c.phase) {
                    if code == ws::close::POLICY {
                        // Whole frames only: keep the one being written.
                        c.out.truncate_to_front();
                    }
                    c.out.push(ws::close_frame(code, reason));
                }
            }
            Close::Linger => {}
        }
        c.phase = Phase::Closing;
        c.held = false;
        // Input is read (and dropped) until the peer closes: a peer still
        // writing must not be left blocked. Reading may have stopped short
        // (a close asked mid-read, a budget, a rate), and with edge-triggered
        // polling no new edge comes for what is already in the kernel: read
        // on from `again`.
        c.spent = false;
        c.throttled = false;
        self.again.push(cref);
        c.inbuf = Vec::new();
        self.reassembly -= std::mem::take(&mut c.reassembly);
        self.http_backlog -= std::mem::take(&mut c.http_out);
        if c.out.is_empty() {
            c.write_shut = true;
            let _ = c.sock.shutdown(Shutdown::Write);
        }
        self.timers.arm(now + LINGER, Timer::Linger(cref));
        self.mark_dirty(cref);
    }

    fn remove(&mut self, cref: ConnRef) {
        if !self.is_live(cref) {
            return;
        }
        let mut c = self.conns.remove(cref.key as usize);
        self.reassembly -= c.reassembly;
        self.http_backlog -= c.http_out;
        let _ = self.poll.registry().deregister(&mut c.sock);
        debug!("[{}] closed", cref.key);
        if self.accept_paused {
            self.accept_paused = false;
            self.timers.arm(Instant::now(), Timer::AcceptRetry);
        }
    }

    // ---- timers and signals ------------------------------------------------

    fn fire_timers(&mut self, now: Instant) {
        while let Some((_, t)) = self.timers.pop_due(now) {
            match t {
                Timer::Request(cref) => {
                    let timeout = self.cfg.request_timeout;
                    let Some(c) = self.conn(cref) else { continue };
                    c.request_timer = false;
                    let Phase::Http { deadline, .. } = c.phase else {
                        continue;
                    };
                    if deadline > now {
                        // The deadline moved on since this was armed.
                        self.arm_request_timer(cref, deadline);
                        continue;
                    }
                    if c.held {
                        // Our queue only shrinks when the kernel's has
                        // drained far enough to raise a writable edge, which
                        // a slow but steady reader may take longer than a
                        // timeout to do: ask the kernel whether the peer
                        // read anything since the last look.
                        let unsent = unsent_bytes(&c.sock);
                        let seen = std::mem::replace(&mut c.unsent_seen, unsent.unwrap_or(0));
                        if unsent.is_some_and(|n| seen == 0 || n < seen) {
                            let at = now + timeout;
                            if let Phase::Http { deadline, .. } = &mut c.phase {
                                *deadline = at;
                            }
                            self.arm_request_timer(cref, at);
                        } else {
                            // A whole timeout without the peer reading any
                            // of its answers: it gets LINGER, then it goes.
                            self.close(cref, Close::Linger);
                        }
                    } else if c.inbuf.is_empty() && !c.out.is_empty() {
                        // Nothing new asked, but the last answer is still
                        // on its way to a slow reader: it gets LINGER.
                        self.close(cref, Close::Linger);
                    } else if c.inbuf.is_empty() {
                        // An idle keep-alive connection: nothing to answer.
                        self.close(cref, Close::Abort);
                    } else {
                        c.inbuf = Vec::new();
                        c.route = Route::Invalid;
                        let a = Answer::error(408, "Request not completed in time");
                        self.respond(cref, &a, None, true);
                        self.close(cref, Close::Linger);
                    }
                }
                Timer::Ping(cref) => {
                    let interval = self.cfg.ping_interval;
                    let Some(c) = self.conn(cref) else { continue };
                    let last_seen = match &c.phase {
                        Phase::Ws(ws) => ws.last_seen,
                        Phase::Waiting(p) => match &**p {
                            Pending::Join { ws, .. } => ws.last_seen,
                            _ => continue,
                        },
                        _ => continue,
                    };
                    if now.saturating_duration_since(last_seen) >= interval * 2 {
                        debug!("[{}] keepalive timeout", cref.key);
                        self.close(cref, Close::Ws(ws::close::GOING_AWAY, "Keepalive timeout"));
                    } else {
                        self.send(cref, ws::ping());
                        self.timers.arm(now + interval, Timer::Ping(cref));
                    }
                }
                Timer::Linger(cref) => self.close(cref, Close::Abort),
                Timer::Job(cref, seq) => {
                    if let Some(pending) = self.take_pending(cref, seq) {
                        warn!("[{}] accounts worker did not answer in time", cref.key);
                        if let Some(a) = &self.accounts {
                            a.note_no_answer();
                        }
                        self.give_up(cref, pending, MSG_ACCOUNTS_SLOW);
                        self.resume(cref);
                    }
                }
                Timer::Lookup(cref, seq) => {
                    if let Some(pending) = self.take_pending(cref, seq) {
                        warn!("[{}] the room store did not answer in time", cref.key);
                        self.store_did_not_answer(cref, pending);
                        self.resume(cref);
                    }
                }
                Timer::Room(r) => {
                    let code: Option<Box<str>> = self.rooms.get(r).map(|x| x.code().into());
                    if self.rooms.expire(r, now, &mut self.fx) {
                        debug!("room removed after idle timeout");
                        if let Some(code) = code {
                            self.store.deleted(&code, now);
                            self.cluster_forget(&code);
                        }
                    }
                    // A room emptied again since: its timer, re-armed later.
                    self.apply_effects();
                }
                Timer::AcceptRetry => {
                    self.accept_paused = false;
                    self.accept();
                }
                Timer::Shutdown => {}
                Timer::Resume(cref) => {
                    let Some(c) = self.conn(cref) else { continue };
                    if std::mem::take(&mut c.throttled) {
                        self.process_ws(cref);
                        self.read(cref, true);
                    }
                }
                Timer::Drained => self.shut_down(),
                Timer::Housekeeping => {
                    self.housekeeping();
                    self.timers.arm(now + HOUSEKEEPING, Timer::Housekeeping);
                }
            }
            self.reap();
        }
    }

    /// Gives back memory a burst left behind: stale timer entries, slab
    /// slots past the last live connection, and free heap pages.
    fn housekeeping(&mut self) {
        let live = self.conns.len() + self.rooms.len();
        if self.timers.len() > 2 * live + 1024 {
            let conns = &self.conns;
            let rooms = &self.rooms;
            let alive = |c: &ConnRef| conns.get(c.key as usize).is_some_and(|x| x.gen == c.gen);
            self.timers.retain(|t| match t {
                Timer::Request(c) | Timer::Ping(c) | Timer::Linger(c) => alive(c),
                Timer::Room(r) => rooms.get(*r).is_some(),
                _ => true,
            });
        }
        self.peak_conns = self.peak_conns.max(self.conns.len());
        let mut trim = false;
        if self.peak_conns >= 1024 && self.conns.len() * 2 < self.peak_conns {
            self.conns.shrink_to_fit();
            self.dirty.shrink_to_fit();
            self.again.shrink_to_fit();
            self.peak_conns = self.conns.len();
            trim = true;
        }
        // Many small frames freed at once (a drained queue of a million
        // pongs, say) leave free memory that glibc keeps unless asked.
        if trim || crate::memguard::free_heap_bytes() > TRIM_SLACK_BYTES {
            crate::memguard::release_free_memory();
        }
    }

    fn signals(&mut self) {
        let mut stop = false;
        for s in self.signals.pending() {
            info!("received signal {s}; shutting down");
            stop = true;
        }
        if !stop || self.shutting_down.is_some() {
            return;
        }
        // Cluster mode: /readyz says 503 first and the node keeps serving
        // for a short drain, so the load balancer stops sending clients
        // here before the sockets are closed.
        if let Some(c) = self.cluster.as_ref() {
            if self.draining.is_none() {
                let at = Instant::now() + c.cfg.grace;
                info!("draining for {:?} before closing", c.cfg.grace);
                self.draining = Some(at);
                self.timers.arm(at, Timer::Drained);
                return;
            }
        }
        self.shut_down();
    }

    /// Stops accepting, says goodbye to every socket and writes every
    /// unsaved room; the loop exits when that is done or after the grace.
    fn shut_down(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        crate::notify::stopping();
        self.store.flush_all();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        self.shutting_down = Some(deadline);
        self.timers.arm(deadline, Timer::Shutdown);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let all: Vec<ConnRef> = self
            .conns
            .iter()
            .map(|(k, c)| ConnRef {
                key: k as u32,
                gen: c.gen,
            })
            .collect();
        let max_body = self.cfg.max_body_bytes;
        for cref in all {
            let Some(c) = self.conn(cref) else { continue };
            match c.phase {
                _ if is_websocket(&c.phase) => self.close(
                    cref,
                    Close::Ws(ws::close::GOING_AWAY, "Server shutting down"),
                ),
                // A complete request already read is answered (and the
                // answer closes); nothing owed, or half a request: go now.
                Phase::Http { .. } if c.out.is_empty() => {
                    if matches!(http::parse_request(&c.inbuf, max_body), Ok(Some(_))) {
                        self.again.push(cref);
                    } else {
                        self.close(cref, Close::Abort);
                    }
                }
                Phase::Closing => {}
                _ => {
                    c.close_when_flushed = true;
                    self.mark_dirty(cref);
                }
            }
        }
        self.reap();
    }
}

/// The connection `c` names, if it is still the same one (slab keys are
/// reused; the generation tells them apart).
fn live(conns: &mut Slab<Conn>, c: ConnRef) -> Option<&mut Conn> {
    conns.get_mut(c.key as usize).filter(|x| x.gen == c.gen)
}

/// Queues `frame` unless that would pass `max` bytes.
fn push_bounded(c: &mut Conn, frame: Frame, max: usize, sent: &mut u64) -> bool {
    if c.doomed || matches!(c.phase, Phase::Closing) {
        // Already on the way out; its stream ends here, cleanly.
        return true;
    }
    let cost = frame.len() + outq::CHUNK_COST;
    if c.out.cost() + cost > max {
        // Over the bound only counts when the peer really is behind: a burst
        // fanned out in one turn (one sender's whole read budget, say) may
        // overshoot a small bound although the socket would take it all.
        // So hand the kernel what it takes now, then judge.
        let queued = c.out.len();
        let flushed = c.out.flush_to(&mut c.sock, max);
        *sent += queued.saturating_sub(c.out.len()) as u64;
        match flushed {
            Ok(_) if c.out.cost() + cost <= max => {}
            // Still full, or the socket failed: either way this stream ends.
            _ => return false,
        }
    }
    c.out.push(frame);
    true
}

fn release_if_empty(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > KEEP_INBUF {
        *buf = Vec::new();
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

/// Recounts what `c`'s queued HTTP answers cost into `total`. Only a
/// connection reading HTTP requests counts: its pipelining is what the
/// backlog bounds hold back.
fn count_http(total: &mut usize, c: &mut Conn) {
    let now = if matches!(c.phase, Phase::Http { .. }) {
        c.out.cost()
    } else {
        0
    };
    *total = *total - c.http_out + now;
    c.http_out = now;
}

/// The largest message `session`'s connection may send now: small until it
/// has joined a room (a join is a few KiB), `MAX_MESSAGE_BYTES` after.
fn message_limit(cfg: &Config, session: &Session) -> usize {
    if session.in_room() {
        cfg.max_message_bytes
    } else {
        cfg.max_prejoin_message_bytes.min(cfg.max_message_bytes)
    }
}

/// Bytes a WebSocket connection holds for messages not complete yet: what
/// its input buffer holds after decoding (part of a frame; capacity kept
/// for reuse or reserved ahead is not touched memory, so not counted) and
/// the decoder's fragments.
fn unfinished_bytes(c: &Conn) -> usize {
    let decoder = match &c.phase {
        Phase::Ws(ws) => &ws.decoder,
        Phase::Waiting(p) => match &**p {
            Pending::Join { ws, .. } => &ws.decoder,
            _ => return 0,
        },
        _ => return 0,
    };
    c.inbuf.len() + decoder.buffered()
}

/// Whether the connection speaks WebSocket: open, or parked on a `join`
/// waiting for its token check (the 101 has been sent either way).
fn is_websocket(phase: &Phase) -> bool {
    match phase {
        Phase::Ws(_) => true,
        Phase::Waiting(p) => matches!(**p, Pending::Join { .. }),
        _ => false,
    }
}

/// Close codes a peer may legitimately send (RFC 6455 §7.4).
fn ws_code_ok(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}
