//! The connection engine: every connection's life, from its first byte to
//! its close, as plain functions of input and `now`.
//!
//! The engine owns the connections (a slab of [`Conn`], no sockets), the
//! rooms, the timers, the rate limits and the handles of the worker threads
//! (accounts, room store, Redis). The mio shell ([`crate::shell`]) owns the
//! sockets: it feeds the engine what it read ([`Engine::input`],
//! [`Engine::eof`]), fired events (worker replies, signals, timers) and hands
//! it writers for the end-of-turn flush ([`Engine::flush_dirty`]); the engine
//! answers with [`Io`] actions (drop a socket, shut its write side, stop
//! listening). Nothing here touches a socket, so the fuzz targets and the
//! property tests drive this same code with in-memory streams and a fake
//! clock.
//!
//! Invariants:
//! * A connection is one [`State`] whose variants own their data; what all
//!   states share (its queue, its input buffer, its place in the turn's
//!   lists) sits beside it in [`Conn`].
//! * A connection is named outside the current call by [`ConnRef`] (slab key
//!   plus generation); a stale reference finds nothing and is ignored.
//! * Everything sent on a connection goes through its one [`OutQueue`], in
//!   order; bytes leave only in [`Engine::flush_dirty`], under the turn's
//!   write budget.
//! * Every loop over one connection has a budget; a connection that used
//!   its budget is revisited next turn ([`Engine::take_again`]).
//! * A connection ends through [`Engine::close`] only, which is idempotent
//!   and takes the connection out of its room first. Closes asked for while
//!   effects are applied wait in `doomed` for [`Engine::reap`], so a room is
//!   never changed under a fan-out.

mod close;
mod cluster;
mod flush;
mod ops;
pub mod outq;
mod parked;
mod requests;
pub mod routes;
#[cfg(test)]
mod tests;
mod timers;
mod websocket;

pub use flush::Sockets;

use crate::accounts::{Accounts, Principal};
use crate::config::Config;
use crate::conn::outq::OutQueue;
use crate::http::Answer;
use crate::http::{self, Request};
use crate::ops::metrics::{self, Metrics, Reject, Route};
use crate::ratelimit::RateLimiter;
use crate::rooms::{ConnRef, Effect, RoomRef, Rooms, Session};
use crate::store::RoomStore;
use crate::timers::Timers;
use crate::ws::{self, Decoder, Frame};
use log::{debug, info, warn};
use mio::Waker;
use slab::Slab;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read from one connection per turn before others get a go.
pub const READ_BUDGET: usize = 256 * 1024;
/// Bytes written to one connection per turn.
const WRITE_BUDGET: usize = 4 * 1024 * 1024;
/// Bytes all sockets together are handed in one turn. A big fan-out (a
/// 16 MiB document to 50 peers is 800 MiB) would otherwise hold the loop
/// for hundreds of milliseconds in one flush while pings and `/health` in
/// other rooms wait; past this the rest is written next turn, the ones left
/// waiting first, right after that turn's events.
const TURN_WRITE_BUDGET: usize = 4 * 1024 * 1024;
/// A write queue at most this long (a pong, an HTTP answer, small
/// broadcasts) is flushed ahead of the long ones, with at most half of
/// `TURN_WRITE_BUDGET`.
const SHORT_QUEUE: usize = 64 * 1024;
/// Most bytes the shell reads at once (its shared scratch buffer); data
/// lands there first so idle connections hold none.
pub const SCRATCH: usize = 64 * 1024;
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

/// The `error` for an action refused while the memory guard is engaged.
const AT_MEMORY_LIMIT: &str =
    "Server is at its memory limit; nothing was changed or sent, try again later";
const MSG_ACCOUNTS_BUSY: &str = "Accounts service is busy; try again shortly";
const MSG_ACCOUNTS_SLOW: &str = "The accounts database did not answer in time; try again shortly";

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
    Shutdown,
    /// The drain after SIGTERM in cluster mode is over.
    Drained,
    Housekeeping,
    /// A connection over its message rate may be read again.
    Resume(ConnRef),
}

/// What the shell must do with a socket (or the listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// The connection is gone: deregister and drop its socket.
    Drop(ConnRef),
    /// Our last bytes are out: shut the socket's write side.
    ShutdownWrite(ConnRef),
    /// Shutdown began: stop accepting and tell the service manager.
    StopListening,
    /// Many connections went since the peak: give back table capacity.
    Trim,
}

/// What a connection is doing. Each variant owns what only it uses.
enum State {
    /// Reading and answering HTTP requests.
    Http(Box<HttpConn>),
    /// A request or a `join` parked on a worker; input is held meanwhile.
    Waiting(Box<Waiting>),
    /// An open WebSocket.
    Ws(Box<WsConn>),
    /// Our goodbye is queued; input is discarded until the peer closes or
    /// the linger timer fires.
    Closing(Closing),
}

struct HttpConn {
    /// Bounds the current request; between requests, how long the
    /// connection may stay idle.
    deadline: Instant,
    /// The current request's complete head was checked for
    /// `Expect: 100-continue` (and the interim answer sent if asked).
    head_seen: bool,
    /// Kept alive and the next request has not begun: its first byte
    /// starts that request's own clock.
    between: bool,
    /// A `Timer::Request` is pending. Deadlines only move later, so one
    /// pending entry suffices: when it fires early it re-arms for the
    /// current deadline. Without this every pipelined request would leave
    /// an entry in the heap for the whole timeout.
    request_timer: bool,
    /// Further requests are left unread because the answers queued are over
    /// [`HTTP_BACKLOG`] (resumed by the flush). It holds the bytes the
    /// kernel still had to send at the last request timer (0: not looked
    /// yet), to tell a slow reader from one that stopped.
    held: Option<u32>,
    /// Close once the queue drains (`Connection: close`, the peer's EOF).
    close_when_flushed: bool,
    /// The peer has shut its side.
    peer_eof: bool,
    /// What its queued answers cost, as last counted into
    /// [`Engine::http_backlog`].
    queued: usize,
    /// Bytes of a request not complete yet, as last counted into
    /// [`Engine::reassembly`].
    unparsed: usize,
    /// The route class of the request being answered (for `/metrics`).
    route: Route,
}

impl HttpConn {
    fn new(deadline: Instant) -> Box<HttpConn> {
        Box::new(HttpConn {
            deadline,
            head_seen: false,
            between: false,
            request_timer: false,
            held: None,
            close_when_flushed: false,
            peer_eof: false,
            queued: 0,
            unparsed: 0,
            route: Route::Other,
        })
    }
}

/// A connection parked on a worker: the job's number, what waits, and the
/// state it returns to.
struct Waiting {
    job: u32,
    pending: Pending,
    back: Back,
}

enum Back {
    Http(Box<HttpConn>),
    Ws(Box<WsConn>),
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
    /// message to replay and the account its token was approved for, if it
    /// was already.
    Join {
        message: String,
        authorized: Option<Principal>,
    },
    /// A REST request for a room that is not in memory, waiting for the
    /// room store's lookup; it is routed again once the answer is in.
    Rest { req: Box<Request>, keep_alive: bool },
    /// An `/api/admin/…` request whose admin token is being checked.
    Admin(Box<ops::AdminPending>),
}

struct WsConn {
    decoder: Decoder,
    session: Session,
    last_seen: Instant,
    /// A token given on the upgrade (header or `?token=`).
    upgrade_token: Option<Box<str>>,
    /// The address rate limits charge (the upgrade's, via `TRUST_PROXY`).
    client_ip: IpAddr,
    /// Its message rate (`MESSAGE_RATE` / `MESSAGE_BURST`).
    rate: crate::ratelimit::TokenBucket,
    /// Bytes of unfinished messages it holds, as last counted into
    /// [`Engine::reassembly`].
    reassembly: usize,
    /// Used its message budget this turn: its buffered messages are handled
    /// on the next pass, and it is not read before.
    spent: bool,
    /// Over its message rate: not read (its TCP window pushes back) until
    /// `Timer::Resume`.
    throttled: bool,
    /// The peer finished sending while a `join` was parked: close once
    /// the answers are out.
    eof: bool,
}

struct Closing {
    /// Our write side is shut. Shutting it again would raise another
    /// writable edge, and with it another flush: a busy loop for as long as
    /// the peer lingers.
    write_shut: bool,
    /// The peer has shut its side.
    peer_eof: bool,
}

struct Conn {
    gen: u32,
    peer: IpAddr,
    /// Listed in `dirty` for this turn (keeps the list free of duplicates
    /// during fan-out).
    dirty: bool,
    /// A close was asked for and waits in `doomed`.
    doomed: bool,
    out: OutQueue,
    inbuf: Vec<u8>,
    state: State,
}

impl Conn {
    /// Replaces the state by what `f` makes of it, in one step: the
    /// stand-in that holds its place meanwhile is never seen outside.
    fn transition(&mut self, f: impl FnOnce(State) -> State) {
        let stand_in = State::Closing(Closing {
            write_shut: false,
            peer_eof: false,
        });
        let old = std::mem::replace(&mut self.state, stand_in);
        self.state = f(old);
    }

    /// The WebSocket state, open or parked on a `join`.
    fn ws(&self) -> Option<&WsConn> {
        match &self.state {
            State::Ws(ws) => Some(ws),
            State::Waiting(w) => match &w.back {
                Back::Ws(ws) => Some(ws),
                Back::Http(_) => None,
            },
            _ => None,
        }
    }

    fn ws_mut(&mut self) -> Option<&mut WsConn> {
        match &mut self.state {
            State::Ws(ws) => Some(ws),
            State::Waiting(w) => match &mut w.back {
                Back::Ws(ws) => Some(ws),
                Back::Http(_) => None,
            },
            _ => None,
        }
    }

    /// The HTTP state, reading or parked on a worker.
    fn http_mut(&mut self) -> Option<&mut HttpConn> {
        match &mut self.state {
            State::Http(h) => Some(h),
            State::Waiting(w) => match &mut w.back {
                Back::Http(h) => Some(h),
                Back::Ws(_) => None,
            },
            _ => None,
        }
    }

    fn route(&self) -> Route {
        match &self.state {
            State::Http(h) => h.route,
            State::Waiting(w) => match &w.back {
                Back::Http(h) => h.route,
                Back::Ws(_) => Route::Ws,
            },
            State::Ws(_) => Route::Ws,
            State::Closing(_) => Route::Other,
        }
    }

    fn is_websocket(&self) -> bool {
        self.ws().is_some()
    }
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

/// What a connection is doing, as [`Engine::phase`] tells tests and fuzz
/// oracles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading and answering HTTP requests.
    Http,
    /// Parked on a worker.
    Waiting,
    /// An open WebSocket.
    WebSocket,
    /// Its goodbye is queued or sent; it is on its way out.
    Closing,
}

/// What [`Engine::admit`] decided about a new connection.
pub enum Admission {
    Admitted(ConnRef),
    /// At `MAX_CONNECTIONS`: write this answer (best effort) and drop it.
    Refused(Vec<u8>),
}

/// The engine: create with [`Engine::new`]; the shell drives it.
pub struct Engine {
    conns: Slab<Conn>,
    rooms: Rooms,
    timers: Timers<Timer>,
    limiter: RateLimiter<IpAddr>,
    /// Per-client budget for lookups of unknown room codes.
    misses: RateLimiter<IpAddr>,
    /// Bytes of unfinished input across all connections: WebSocket messages
    /// still arriving and HTTP requests not complete yet (bounded by
    /// `MAX_REASSEMBLY_BYTES`).
    reassembly: usize,
    /// What queued HTTP answers cost across all connections; past
    /// `MAX_HTTP_BACKLOG_BYTES` pipelining peers with unread answers wait.
    http_backlog: usize,
    cfg: Config,
    next_gen: u32,
    next_job: u32,
    fx: Vec<Effect>,
    dirty: Vec<ConnRef>,
    /// Scratch for [`Engine::flush_dirty`]: a turn's long queues, and the
    /// short ones its first half did not reach.
    dirty_scratch: [Vec<ConnRef>; 2],
    again: Vec<ConnRef>,
    doomed: Vec<(ConnRef, Close)>,
    io: Vec<Io>,
    /// Most connections seen since the last housekeeping trim.
    peak_conns: usize,
    started: Instant,
    /// The current instant, as the shell last said ([`Engine::set_now`]).
    now: Instant,
    accounts: Option<Accounts>,
    store: RoomStore,
    shutting_down: Option<Instant>,
    /// Cluster mode: a SIGTERM's drain ends then (readyz is 503 already).
    draining: Option<Instant>,
    memguard: crate::ops::memguard::MemGuard,
    metrics: Metrics,
    ops: ops::OpsState,
    cluster: Option<cluster::ClusterState>,
}

impl Engine {
    /// Prepares the engine and starts the worker threads `cfg` asks for
    /// (accounts, room store, Redis); their replies ring `waker`.
    pub fn new(cfg: Config, waker: Arc<Waker>, now: Instant) -> io::Result<Engine> {
        if cfg.max_outbound_bytes < cfg.max_message_bytes {
            warn!(
                "MAX_OUTBOUND_BYTES ({}) is below MAX_MESSAGE_BYTES ({}): a receiver of one \
                 message that large is always closed with 1008",
                cfg.max_outbound_bytes, cfg.max_message_bytes
            );
        }
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
                cluster::ClusterState::start(c.clone(), cfg.history.per_room, waker)
                    .map_err(io::Error::other)?,
            ),
            None => None,
        };
        let mut rooms = Rooms::new(cfg.room_idle_timeout);
        rooms.set_history_limits(cfg.history);
        rooms.set_cluster(cluster.is_some());
        let mut timers = Timers::default();
        timers.arm(now + HOUSEKEEPING, Timer::Housekeeping);
        Ok(Engine {
            conns: Slab::with_capacity(1024),
            rooms,
            timers,
            limiter: RateLimiter::new(cfg.room_create_rate, cfg.room_create_burst, 100_000),
            misses: RateLimiter::new(cfg.room_miss_rate, cfg.room_miss_burst, 100_000),
            reassembly: 0,
            http_backlog: 0,
            next_gen: 0,
            next_job: 0,
            fx: Vec::new(),
            dirty: Vec::new(),
            dirty_scratch: [Vec::new(), Vec::new()],
            again: Vec::new(),
            doomed: Vec::new(),
            io: Vec::new(),
            peak_conns: 0,
            started: now,
            now,
            accounts,
            store,
            shutting_down: None,
            draining: None,
            memguard: crate::ops::memguard::MemGuard::from_system(),
            metrics: Metrics::default(),
            ops: ops::OpsState::new(&cfg),
            cluster,
            cfg,
        })
    }

    /// Moves the engine's clock (never backwards).
    pub fn set_now(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The rooms, for tests and fuzz oracles.
    pub fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// The session of a WebSocket connection, for tests and fuzz oracles.
    pub fn session(&self, cref: ConnRef) -> Option<&Session> {
        self.conn_ref(cref)?.ws().map(|ws| &ws.session)
    }

    /// Bytes queued for `cref` and not written yet.
    pub fn queued(&self, cref: ConnRef) -> Option<usize> {
        self.conn_ref(cref).map(|c| c.out.len())
    }

    // ---- read-only views for tests and fuzz oracles ------------------------
    // (tests/properties.rs, tools/fuzz/src and `conn::tests` judge what the
    // engine did by these; nothing in the server calls them.)

    /// What `cref` is doing, if it is still a connection.
    pub fn phase(&self, cref: ConnRef) -> Option<Phase> {
        Some(match &self.conn_ref(cref)?.state {
            State::Http(_) => Phase::Http,
            State::Waiting(_) => Phase::Waiting,
            State::Ws(_) => Phase::WebSocket,
            State::Closing(_) => Phase::Closing,
        })
    }

    /// Bytes read from `cref` and not used yet (part of a request or frame).
    pub fn buffered_input(&self, cref: ConnRef) -> Option<usize> {
        self.conn_ref(cref).map(|c| c.inbuf.len())
    }

    /// What `cref`'s queue costs as `MAX_OUTBOUND_BYTES` counts it.
    pub fn queued_cost(&self, cref: ConnRef) -> Option<usize> {
        self.conn_ref(cref).map(|c| c.out.cost())
    }

    /// The frames queued for `cref` and not written yet, in order.
    pub fn queued_frames(&self, cref: ConnRef) -> Option<impl Iterator<Item = &[u8]> + '_> {
        self.conn_ref(cref).map(|c| c.out.frames())
    }

    /// Pending idle-expiry timers, counted per room (at most one each).
    pub fn room_timers(&self) -> usize {
        let mut n = 0;
        for (_, t) in self.timers.iter() {
            n += usize::from(matches!(t, Timer::Room(_)));
        }
        n
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Counts a loop turn (for `/livez` and `/metrics`).
    pub fn count_turn(&mut self) {
        self.metrics.loop_turns += 1;
    }

    /// How long the shell may sleep in `poll`.
    pub fn timeout(&self) -> Duration {
        if !self.again.is_empty() || !self.dirty.is_empty() {
            // Work left over from the last turn (budgets, closes queued
            // while flushing): look for events without sleeping.
            return Duration::ZERO;
        }
        let now = self.now;
        let mut timeout = self.timers.timeout(now, MAX_SLEEP);
        if let Some(at) = self.store.next_deadline() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(at) = self.cluster.as_ref().and_then(|c| c.next_deadline()) {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        timeout
    }

    /// What the shell must do with sockets, in order. Drained after every
    /// call into the engine, before any new connection is admitted.
    pub fn take_io(&mut self) -> std::vec::Drain<'_, Io> {
        self.io.drain(..)
    }

    fn conn(&mut self, c: ConnRef) -> Option<&mut Conn> {
        live(&mut self.conns, c)
    }

    fn conn_ref(&self, c: ConnRef) -> Option<&Conn> {
        self.conns.get(c.key as usize).filter(|x| x.gen == c.gen)
    }

    fn is_live(&self, c: ConnRef) -> bool {
        self.conn_ref(c).is_some()
    }

    // ---- arriving --------------------------------------------------------

    /// A new connection from `peer`.
    pub fn admit(&mut self, peer: IpAddr) -> Admission {
        if self.conns.len() >= self.cfg.max_connections {
            let mut resp = Vec::new();
            let a = Answer::error(503, "Server is at its connection limit");
            http::write_response(&mut resp, &a, Some("*"), true, false);
            self.metrics.rejected(Reject::ConnectionLimit);
            self.metrics.http_answer(Route::Other, 503);
            debug!("refused {peer}: at MAX_CONNECTIONS");
            return Admission::Refused(resp);
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let deadline = self.now + self.cfg.request_timeout;
        let key = self.conns.insert(Conn {
            gen,
            peer,
            dirty: false,
            doomed: false,
            out: OutQueue::default(),
            inbuf: Vec::new(),
            state: State::Http(HttpConn::new(deadline)),
        });
        self.metrics.connections_accepted += 1;
        let cref = ConnRef {
            key: key as u32,
            gen,
        };
        self.arm_request_timer(cref);
        self.peak_conns = self.peak_conns.max(self.conns.len());
        debug!("[{key}] accepted {peer}");
        Admission::Admitted(cref)
    }

    /// Counts bytes a refused connection was handed.
    pub fn count_sent(&mut self, n: usize) {
        self.metrics.bytes_sent += n as u64;
    }

    /// How many bytes the shell may read for `cref` now; `None`: leave its
    /// input in the kernel (parked on a worker, over its budget or rate,
    /// answers piling up unread, or closing soon).
    pub fn read_allowance(&self, cref: ConnRef) -> Option<usize> {
        let c = self.conn_ref(cref)?;
        if c.doomed {
            return None;
        }
        match &c.state {
            State::Waiting(_) => None,
            State::Ws(ws) if ws.spent || ws.throttled => None,
            State::Http(h) if h.held.is_some() => None,
            // A peer with answers still queued (or any peer, while queued
            // answers are over their total) reads in small steps: should it
            // stop reading them, what it pipelined stays in the kernel, not
            // in our buffer.
            State::Http(_)
                if !c.out.is_empty() || self.http_backlog >= self.cfg.max_http_backlog_bytes =>
            {
                Some(HTTP_READ_OWING)
            }
            _ => Some(SCRATCH),
        }
    }

    /// Bytes read from `cref`. Returns whether the shell may read on this
    /// turn.
    pub fn input(&mut self, cref: ConnRef, data: &[u8]) -> bool {
        let now = self.now;
        let timeout = self.cfg.request_timeout;
        let Some(c) = live(&mut self.conns, cref) else {
            return false;
        };
        self.metrics.bytes_received += data.len() as u64;
        match &mut c.state {
            State::Closing(_) => true,
            State::Http(h) => {
                if std::mem::take(&mut h.between) {
                    // The next request has begun: it gets the whole
                    // REQUEST_TIMEOUT_SECONDS from here (strictly later
                    // than the idle deadline it replaces).
                    h.deadline = h.deadline.max(now + timeout);
                }
                if h.close_when_flushed {
                    // Nothing after this is answered (`Connection: close`,
                    // shutdown): drop it rather than buffer it.
                    return true;
                }
                c.inbuf.extend_from_slice(data);
                self.arm_request_timer(cref);
                self.process_http(cref);
                // Answers piling up unread: leave the rest in the kernel.
                self.read_allowance(cref).is_some()
            }
            State::Waiting(_) => {
                c.inbuf.extend_from_slice(data);
                false
            }
            State::Ws(ws) => {
                ws.last_seen = now;
                let max_message = message_limit(&self.cfg, &ws.session);
                if c.inbuf.is_empty() {
                    if let Some(need) = ws::frame_len(data) {
                        // Reserve for the whole frame only when the total
                        // bound has room for it.
                        if need > data.len()
                            && need <= max_message + 14
                            && self.reassembly + need <= self.cfg.max_reassembly_bytes
                        {
                            c.inbuf.reserve_exact(need);
                        }
                    }
                }
                c.inbuf.extend_from_slice(data);
                self.process_ws(cref);
                // Its messages wait in its buffer (and the rest in the
                // kernel) until its turn or its rate comes back.
                self.read_allowance(cref).is_some()
            }
        }
    }

    /// The peer shut its side (a read returned 0).
    pub fn eof(&mut self, cref: ConnRef) {
        let Some(c) = self.conn(cref) else { return };
        let queued = !c.out.is_empty();
        match &mut c.state {
            // The peer finished sending; answer what is complete, then go.
            State::Http(_) if !queued => self.close(cref, Close::Abort),
            State::Http(h) => {
                h.peer_eof = true;
                h.close_when_flushed = true;
            }
            State::Waiting(w) => match &mut w.back {
                Back::Http(h) => {
                    h.peer_eof = true;
                    h.close_when_flushed = true;
                }
                Back::Ws(ws) => ws.eof = true,
            },
            // Our last words (an error answer, a close frame) are still
            // queued: they leave first (the flush then ends it, or LINGER).
            State::Closing(cl) if queued => cl.peer_eof = true,
            // Replies to what came with the FIN (room_info, pong, ...) are
            // queued: leave the room now, send them, then go.
            State::Ws(ws) if queued => {
                ws.eof = true;
                self.close(cref, Close::Linger);
            }
            _ => self.close(cref, Close::Abort),
        }
    }

    /// Reading or writing the socket failed: it is gone.
    pub fn abort(&mut self, cref: ConnRef) {
        self.close(cref, Close::Abort);
        self.reap();
    }

    /// The socket can take more: flush it this turn.
    pub fn writable(&mut self, cref: ConnRef) {
        self.mark_dirty(cref);
    }

    /// The shell stopped reading `cref` at its budget: revisit it next turn.
    pub fn again(&mut self, cref: ConnRef) {
        self.again.push(cref);
    }

    /// Connections to revisit this turn (budgets used, input held back).
    /// For each the shell calls [`Engine::resume_buffered`], then reads on.
    pub fn take_again(&mut self) -> Vec<ConnRef> {
        std::mem::take(&mut self.again)
    }

    /// Handles what `cref` has buffered from an earlier turn: requests
    /// held while answers piled up, messages left when its budget ran out.
    pub fn resume_buffered(&mut self, cref: ConnRef) {
        let Some(c) = self.conn(cref) else { return };
        match &mut c.state {
            State::Http(_) if !c.inbuf.is_empty() => self.process_http(cref),
            State::Ws(ws) if ws.spent => {
                ws.spent = false;
                self.process_ws(cref);
            }
            _ => {}
        }
        self.reap();
    }

    /// Everything the workers sent back (the waker rang).
    pub fn worker_replies(&mut self) {
        self.parked_replies();
        self.reap();
    }

    /// Periodic work of the stores and cluster mode, once a turn.
    pub fn tick(&mut self) {
        let now = self.now;
        if self.cluster.is_some() {
            self.cluster_tick(now);
            self.reap();
        }
        self.store.tick(&self.rooms, now);
    }

    fn mark_dirty(&mut self, cref: ConnRef) {
        if let Some(c) = live(&mut self.conns, cref) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(cref);
            }
        }
    }
}

/// The connection `c` names, if it is still the same one (slab keys are
/// reused; the generation tells them apart).
fn live(conns: &mut Slab<Conn>, c: ConnRef) -> Option<&mut Conn> {
    conns.get_mut(c.key as usize).filter(|x| x.gen == c.gen)
}

fn release_if_empty(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > KEEP_INBUF {
        *buf = Vec::new();
    }
}

/// Recounts what `c`'s queued HTTP answers cost into `total`. Only a
/// connection in HTTP counts: its pipelining is what the backlog bounds
/// hold back.
fn count_http(total: &mut usize, c: &mut Conn) {
    let cost = c.out.cost();
    if let Some(h) = c.http_mut() {
        *total = *total - h.queued + cost;
        h.queued = cost;
    }
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

/// Close codes a peer may legitimately send (RFC 6455 §7.4).
fn ws_code_ok(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}
