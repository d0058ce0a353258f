//! The Redis broker's threads: one command connection, one subscriber
//! connection, each on its own thread with the `redis` crate's blocking
//! API (the server has no async runtime; a blocking client on a thread of
//! its own is what the accounts pool and the room store do too).
//!
//! Work goes to the command thread through a bounded queue (`try_send`; a
//! full queue is refused at once and the loop answers `Service
//! unavailable`); answers, status changes and the subscriber's messages
//! come back through one bounded channel and the loop's `mio::Waker`. A
//! loop that falls behind makes the subscriber wait on that channel, so
//! Redis cuts it off (its pub/sub output limit) rather than this process
//! growing: the reconnect then reads what was missed from the streams.
//!
//! Both threads reconnect on their own with a capped exponential backoff.
//! The command thread also sends the node's heartbeat every third of
//! `NODE_TTL_SECONDS` (which reaps dead nodes' peers), and at shutdown
//! removes this node's own peers.

use super::scripts;
use log::{info, warn};
use redis::{Script, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Commands waiting for the command thread, at most.
pub const COMMAND_QUEUE: usize = 8192;
/// Replies and messages waiting for the loop, at most.
const REPLY_QUEUE: usize = 65536;
/// Publishes sent to Redis in one pipeline, at most.
const PIPELINE: usize = 128;
/// Stream entries one gap read takes at most.
pub const FETCH_COUNT: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the subscriber looks up from a quiet connection (to stop).
const SUB_POLL: Duration = Duration::from_millis(250);

/// What the loop asks of Redis.
#[derive(Debug)]
pub enum Cmd {
    /// A `data`, document or `peer_joined`/`peer_left` event.
    Publish {
        token: u64,
        code: Box<str>,
        ev: Box<Pub>,
    },
    /// Where to start following a room.
    Snapshot { code: Box<str> },
    /// Read a room's stream from `from` on.
    Fetch { code: Box<str>, from: u64 },
    /// Read the bytes of the document event `seq` of the room's stream
    /// incarnation `epoch` (published as a notice without them).
    Body {
        code: Box<str>,
        epoch: Box<str>,
        seq: u64,
    },
    /// Remove every presence entry of this node (each with `peer_left`):
    /// its presence was no longer known after failed publishes.
    ClearOwn,
}

/// One event to number and publish.
#[derive(Debug)]
pub enum Pub {
    Event {
        kind: u8,
        head: String,
        body: bytes::Bytes,
    },
    Join {
        shown: Box<str>,
        presence: String,
        head: String,
        body: bytes::Bytes,
        left_body: String,
    },
    Leave {
        conn: String,
        shown: Box<str>,
        head: String,
        body: bytes::Bytes,
    },
}

/// A snapshot: `(epoch, seq, presence fields and values, the stream's
/// last messages, oldest first)`.
pub type Snapshot = (String, u64, Vec<(String, Vec<u8>)>, Vec<Vec<u8>>);

/// What comes back to the loop.
#[derive(Debug)]
pub enum Reply {
    /// The command connection is up (true) or down.
    Commands(bool),
    /// The subscriber is subscribed (true) or down. A `true` after a
    /// `false` means messages may have been missed.
    Subscriber(bool),
    /// A publish's `seq` (0: a leave that had nothing to publish), or
    /// `None` when it failed.
    Published { token: u64, seq: Option<u64> },
    /// `(epoch, seq, presence fields and values)`, or `None`.
    Snapshot {
        code: Box<str>,
        snap: Option<Snapshot>,
    },
    /// `(epoch or "", seq, messages)`, or `None` when the read failed.
    Fetched {
        code: Box<str>,
        from: u64,
        got: Option<(String, u64, Vec<Vec<u8>>)>,
    },
    /// The answer to [`Cmd::Body`]: `Some(None)` when Redis no longer
    /// holds those bytes, `None` when the read failed.
    Body {
        code: Box<str>,
        epoch: Box<str>,
        seq: u64,
        got: Option<Option<Vec<u8>>>,
    },
    /// A message published on a room's channel.
    Message { code: Box<str>, payload: Vec<u8> },
    /// Peers of dead nodes removed by this node's heartbeat.
    Reaped(u64),
    /// The answer to [`Cmd::ClearOwn`].
    Cleared(bool),
}

/// The settings the threads need.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub url: String,
    pub node_id: String,
    pub node_ttl: Duration,
    pub maxlen: usize,
}

pub struct Broker {
    cmds: Option<SyncSender<Cmd>>,
    replies: Receiver<Reply>,
    pending: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn epoch_candidate() -> String {
    crate::util::random_string(
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        12,
        &mut crate::util::fill_random,
    )
}

struct Scripts {
    publish: Script,
    join: Script,
    leave: Script,
    snapshot: Script,
    fetch: Script,
    heartbeat: Script,
}

impl Scripts {
    /// Loads the scripts that run pipelined (EVALSHA without the fallback
    /// to EVAL that a single invocation has).
    fn load(&self, c: &mut redis::Connection) -> redis::RedisResult<()> {
        for s in [&self.publish, &self.join, &self.leave] {
            s.load(c)?;
        }
        Ok(())
    }

    fn new() -> Scripts {
        Scripts {
            publish: Script::new(&scripts::full(scripts::PUBLISH)),
            join: Script::new(&scripts::full(scripts::JOIN)),
            leave: Script::new(&scripts::full(scripts::LEAVE)),
            snapshot: Script::new(&scripts::full(scripts::SNAPSHOT)),
            fetch: Script::new(&scripts::full(scripts::FETCH)),
            heartbeat: Script::new(&scripts::full(scripts::HEARTBEAT)),
        }
    }
}

impl Broker {
    /// Starts both threads. The URL is checked here; the connections are
    /// made by the threads (an unreachable Redis is an outage, not a
    /// start-up failure).
    pub fn start(cfg: BrokerConfig, waker: Arc<mio::Waker>) -> Result<Broker, String> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| format!("REDIS_URL is not a usable Redis URL: {e}"))?;
        let (cmd_tx, cmd_rx) = mpsc::sync_channel::<Cmd>(COMMAND_QUEUE);
        let (reply_tx, reply_rx) = mpsc::sync_channel::<Reply>(REPLY_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicBool::new(false));
        let bell = Bell {
            waker,
            pending: pending.clone(),
        };
        let mut threads = Vec::new();
        {
            let client = client.clone();
            let cfg = cfg.clone();
            let tx = reply_tx.clone();
            let bell = bell.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("redis-commands".into())
                    .spawn(move || commands(client, cfg, cmd_rx, tx, bell))
                    .map_err(|e| e.to_string())?,
            );
        }
        {
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("redis-subscriber".into())
                    .spawn(move || subscriber(client, reply_tx, bell, stop))
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(Broker {
            cmds: Some(cmd_tx),
            replies: reply_rx,
            pending,
            stop,
            threads,
        })
    }

    /// Hands a command to the command thread; `false` when its queue is
    /// full or it is gone (answer `Service unavailable`).
    pub fn submit(&self, cmd: Cmd) -> bool {
        match self.cmds.as_ref().map(|tx| tx.try_send(cmd)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_))) | Some(Err(TrySendError::Disconnected(_))) | None => {
                false
            }
        }
    }

    /// Call before draining with [`Broker::try_recv`]: replies sent from
    /// now on ring the waker again.
    pub fn rearm(&self) {
        self.pending.store(false, Ordering::SeqCst);
    }

    pub fn try_recv(&self) -> Option<Reply> {
        self.replies.try_recv().ok()
    }

    /// Stops the threads: the command thread finishes what is queued,
    /// removes this node's peers and exits; waits at most `wait`.
    pub fn shutdown(mut self, wait: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.cmds = None;
        let deadline = Instant::now() + wait;
        for t in self.threads.drain(..) {
            while !t.is_finished() && Instant::now() < deadline {
                // Replies nobody reads must not block the threads.
                while self.replies.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The loop's waker, rung once per batch: `pending` is set by the first
/// reply after the loop last looked and cleared by the loop before it
/// drains, so a burst of replies costs one wake-up, not one each.
#[derive(Clone)]
struct Bell {
    waker: Arc<mio::Waker>,
    pending: Arc<AtomicBool>,
}

fn send(tx: &SyncSender<Reply>, bell: &Bell, r: Reply) -> bool {
    if tx.send(r).is_err() {
        return false;
    }
    if !bell.pending.swap(true, Ordering::SeqCst) {
        let _ = bell.waker.wake();
    }
    true
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// How long, in milliseconds, a node's alive key outlives its last
/// heartbeat: two thirds of `NODE_TTL_SECONDS`. Heartbeats come every
/// third, so one late beat is tolerated; and a node that dies leaves its
/// key at most two thirds of the TTL, after which the survivors' next
/// heartbeat (at most a third later) removes its peers: `peer_left`
/// reaches everyone within the TTL.
fn alive_ms(node_ttl: Duration) -> u64 {
    (node_ttl.as_millis() as u64 * 2 / 3).max(1)
}

/// Runs the heartbeat script: this node is alive and dead nodes' peers
/// leave; with `own`, this node's own peers leave instead. Returns how
/// many peers were removed.
fn heartbeat(
    scripts: &Scripts,
    c: &mut redis::Connection,
    cfg: &BrokerConfig,
    own: bool,
) -> redis::RedisResult<u64> {
    scripts
        .heartbeat
        .arg(&cfg.node_id)
        .arg(alive_ms(cfg.node_ttl))
        .arg(epoch_candidate())
        .arg(cfg.maxlen)
        .arg(if own { "1" } else { "0" })
        .invoke(c)
}

/// The command connection failed: drop it, reconnect at once, and tell the
/// loop (once) that commands are down.
fn lost(
    con: &mut Option<redis::Connection>,
    retry_at: &mut Instant,
    up: &mut bool,
    tx: &SyncSender<Reply>,
    bell: &Bell,
) {
    *con = None;
    *retry_at = Instant::now();
    if std::mem::take(up) {
        send(tx, bell, Reply::Commands(false));
    }
}

fn commands(
    client: redis::Client,
    cfg: BrokerConfig,
    rx: Receiver<Cmd>,
    tx: SyncSender<Reply>,
    bell: Bell,
) {
    let scripts = Scripts::new();
    let beat_every = (cfg.node_ttl / 3).max(Duration::from_millis(200));
    let mut con: Option<redis::Connection> = None;
    let mut up = false;
    let mut backoff = BACKOFF_MIN;
    let mut retry_at = Instant::now();
    let mut next_beat = Instant::now();
    let mut cleared_own = false;
    // A command taken from the queue behind a batch of publishes.
    let mut carried: Option<Cmd> = None;
    let maxlen = cfg.maxlen.to_string();
    loop {
        let now = Instant::now();
        // Connect when due (at once for the first time, then backing off).
        if con.is_none() && now >= retry_at {
            match connect(&client).and_then(|mut c| scripts.load(&mut c).map(|_| c)) {
                Ok(c) => {
                    con = Some(c);
                    backoff = BACKOFF_MIN;
                    next_beat = now;
                }
                Err(e) => {
                    if up || !cleared_own {
                        warn!("redis: command connection failed: {e}");
                    }
                    retry_at = now + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    if up {
                        up = false;
                        send(&tx, &bell, Reply::Commands(false));
                    }
                }
            }
        }
        if let Some(c) = con.as_mut().filter(|_| Instant::now() >= next_beat) {
            // A previous incarnation under the same NODE_ID may have left
            // peers: they are removed (with `peer_left`) before this one
            // registers any.
            let mut ok = true;
            if !cleared_own {
                let r: redis::RedisResult<u64> = heartbeat(&scripts, c, &cfg, true);
                ok = r.is_ok();
                cleared_own = ok;
            }
            let r: redis::RedisResult<u64> = if ok {
                heartbeat(&scripts, c, &cfg, false)
            } else {
                Err(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "own cleanup failed",
                )))
            };
            match r {
                Ok(n) => {
                    next_beat = Instant::now() + beat_every;
                    if !up {
                        up = true;
                        info!("redis: command connection up (node {})", cfg.node_id);
                        send(&tx, &bell, Reply::Commands(true));
                    }
                    if n > 0 {
                        send(&tx, &bell, Reply::Reaped(n));
                    }
                }
                Err(e) => {
                    warn!("redis: heartbeat failed: {e}");
                    con = None;
                    retry_at = Instant::now() + backoff;
                    if up {
                        up = false;
                        send(&tx, &bell, Reply::Commands(false));
                    }
                    continue;
                }
            }
        }
        let wake_at = if con.is_some() { next_beat } else { retry_at };
        let wait = wake_at.saturating_duration_since(Instant::now());
        let cmd = match carried
            .take()
            .map(Ok)
            .unwrap_or_else(|| rx.recv_timeout(wait))
        {
            Ok(cmd) => cmd,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Cmd::Publish { .. } = cmd {
            // Publishes waiting behind this one go in the same pipeline:
            // one write and one read for the lot, in queue order.
            let mut batch = vec![cmd];
            while batch.len() < PIPELINE {
                match rx.try_recv() {
                    Ok(next @ Cmd::Publish { .. }) => batch.push(next),
                    Ok(other) => {
                        carried = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let (replies, failed) = match con.as_mut() {
                Some(c) => publish_batch(c, &scripts, &cfg, &maxlen, batch),
                None => (batch.into_iter().map(failed_reply).collect(), false),
            };
            if failed {
                lost(&mut con, &mut retry_at, &mut up, &tx, &bell);
            }
            if !replies.into_iter().all(|r| send(&tx, &bell, r)) {
                break;
            }
            continue;
        }
        let reply = match con.as_mut() {
            Some(c) => {
                let (reply, failed) = run(c, &scripts, &cfg, &maxlen, cmd);
                if failed {
                    lost(&mut con, &mut retry_at, &mut up, &tx, &bell);
                }
                reply
            }
            None => failed_reply(cmd),
        };
        if !send(&tx, &bell, reply) {
            break;
        }
    }
    // Graceful stop: this node's peers go at once, not a TTL later.
    if let Some(mut c) = con.or_else(|| connect(&client).ok()) {
        let r: redis::RedisResult<u64> = heartbeat(&scripts, &mut c, &cfg, true);
        if let Err(e) = r {
            warn!("redis: could not remove this node's peers at shutdown: {e}");
        }
    }
}

/// Runs publishes as one pipeline of EVALSHA calls. The flag says the
/// connection must be dropped (an I/O error, or scripts Redis lost).
fn publish_batch(
    c: &mut redis::Connection,
    s: &Scripts,
    cfg: &BrokerConfig,
    maxlen: &str,
    batch: Vec<Cmd>,
) -> (Vec<Reply>, bool) {
    let mut pipe = redis::pipe();
    let mut tokens = Vec::with_capacity(batch.len());
    for cmd in batch {
        let Cmd::Publish { token, code, ev } = cmd else {
            continue;
        };
        tokens.push(token);
        let call = pipe.cmd("EVALSHA");
        match *ev {
            Pub::Event { kind, head, body } => {
                call.arg(s.publish.get_hash())
                    .arg(0)
                    .arg(&*code)
                    .arg(epoch_candidate())
                    .arg(maxlen)
                    .arg(&[kind][..])
                    .arg(head)
                    .arg(&body[..]);
            }
            Pub::Join {
                shown,
                presence,
                head,
                body,
                left_body,
            } => {
                call.arg(s.join.get_hash())
                    .arg(0)
                    .arg(&*code)
                    .arg(epoch_candidate())
                    .arg(maxlen)
                    .arg(&cfg.node_id)
                    .arg(&*shown)
                    .arg(presence)
                    .arg(head)
                    .arg(&body[..])
                    .arg(left_body);
            }
            Pub::Leave {
                conn,
                shown,
                head,
                body,
            } => {
                call.arg(s.leave.get_hash())
                    .arg(0)
                    .arg(&*code)
                    .arg(epoch_candidate())
                    .arg(maxlen)
                    .arg(&cfg.node_id)
                    .arg(conn)
                    .arg(&*shown)
                    .arg(head)
                    .arg(&body[..]);
            }
        }
    }
    let n = tokens.len();
    match redis::ConnectionLike::req_packed_commands(c, &pipe.get_packed_pipeline(), 0, n) {
        Ok(values) if values.len() == n => {
            let mut lost_scripts = false;
            let replies = tokens
                .into_iter()
                .zip(values)
                .map(|(token, v)| {
                    let seq = match &v {
                        Value::ServerError(e) => {
                            warn!("redis: publish failed: {:?}", e.details());
                            lost_scripts |= e.code() == "NOSCRIPT";
                            None
                        }
                        other => int_of(other),
                    };
                    Reply::Published { token, seq }
                })
                .collect();
            (replies, lost_scripts)
        }
        Ok(_) | Err(_) => {
            warn!("redis: a pipeline of {n} publishes failed");
            let replies = tokens
                .into_iter()
                .map(|token| Reply::Published { token, seq: None })
                .collect();
            (replies, true)
        }
    }
}

fn failed_reply(cmd: Cmd) -> Reply {
    match cmd {
        Cmd::ClearOwn => Reply::Cleared(false),
        Cmd::Publish { token, .. } => Reply::Published { token, seq: None },
        Cmd::Snapshot { code } => Reply::Snapshot { code, snap: None },
        Cmd::Fetch { code, from } => Reply::Fetched {
            code,
            from,
            got: None,
        },
        Cmd::Body { code, epoch, seq } => Reply::Body {
            code,
            epoch,
            seq,
            got: None,
        },
    }
}

/// Runs one command; the flag says the connection must be dropped.
fn run(
    c: &mut redis::Connection,
    s: &Scripts,
    cfg: &BrokerConfig,
    maxlen: &str,
    cmd: Cmd,
) -> (Reply, bool) {
    match cmd {
        Cmd::ClearOwn => {
            let r: redis::RedisResult<u64> = heartbeat(s, c, cfg, true);
            let r = r.and_then(|n| heartbeat(s, c, cfg, false).map(|m| n + m));
            match r {
                Ok(n) => {
                    info!("redis: cleared this node's presence ({n} peers)");
                    (Reply::Cleared(true), false)
                }
                Err(e) => {
                    warn!("redis: clearing this node's presence failed: {e}");
                    (Reply::Cleared(false), dropped(&e))
                }
            }
        }
        cmd @ Cmd::Publish { .. } => {
            let (mut replies, failed) = publish_batch(c, s, cfg, maxlen, vec![cmd]);
            let reply = replies.pop().unwrap_or(Reply::Commands(false));
            (reply, failed)
        }
        Cmd::Snapshot { code } => {
            let r: redis::RedisResult<Value> = s
                .snapshot
                .arg(&*code)
                .arg(epoch_candidate())
                .arg(maxlen)
                .invoke(c);
            match r {
                Ok(v) => (
                    Reply::Snapshot {
                        snap: parse_snapshot(v),
                        code,
                    },
                    false,
                ),
                Err(e) => {
                    warn!("redis: snapshot failed: {e}");
                    (Reply::Snapshot { code, snap: None }, dropped(&e))
                }
            }
        }
        Cmd::Body { code, epoch, seq } => {
            let key = scripts::doc_key(&code, &epoch, seq);
            match redis::cmd("GET").arg(key).query::<Option<Vec<u8>>>(c) {
                Ok(got) => (
                    Reply::Body {
                        code,
                        epoch,
                        seq,
                        got: Some(got),
                    },
                    false,
                ),
                Err(e) => {
                    warn!("redis: reading a document failed: {e}");
                    (
                        Reply::Body {
                            code,
                            epoch,
                            seq,
                            got: None,
                        },
                        dropped(&e),
                    )
                }
            }
        }
        Cmd::Fetch { code, from } => {
            let r: redis::RedisResult<Value> =
                s.fetch.arg(&*code).arg(from).arg(FETCH_COUNT).invoke(c);
            match r {
                Ok(v) => (
                    Reply::Fetched {
                        got: parse_fetch(v),
                        code,
                        from,
                    },
                    false,
                ),
                Err(e) => {
                    warn!("redis: stream read failed: {e}");
                    (
                        Reply::Fetched {
                            code,
                            from,
                            got: None,
                        },
                        dropped(&e),
                    )
                }
            }
        }
    }
}

/// Whether an error leaves the connection unusable (anything but an
/// answer Redis gave).
fn dropped(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

fn int_of(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => std::str::from_utf8(&bytes_of(other)?).ok()?.parse().ok(),
    }
}

fn parse_snapshot(v: Value) -> Option<Snapshot> {
    let Value::Array(items) = v else { return None };
    let epoch = String::from_utf8(bytes_of(items.first()?)?).ok()?;
    let seq = int_of(items.get(1)?)?;
    let n = usize::try_from(int_of(items.get(2)?)?).ok()?;
    let presence = items.get(3..3usize.checked_add(n)?)?;
    let mut peers = Vec::new();
    for pair in presence.chunks(2) {
        if let [k, v] = pair {
            peers.push((String::from_utf8(bytes_of(k)?).ok()?, bytes_of(v)?));
        }
    }
    let recent = items[3 + n..].iter().filter_map(bytes_of).collect();
    Some((epoch, seq, peers, recent))
}

fn parse_fetch(v: Value) -> Option<(String, u64, Vec<Vec<u8>>)> {
    let Value::Array(items) = v else { return None };
    let epoch = String::from_utf8(bytes_of(items.first()?)?).ok()?;
    let seq = int_of(items.get(1)?)?;
    let msgs = items[2..].iter().filter_map(bytes_of).collect();
    Some((epoch, seq, msgs))
}

fn subscriber(client: redis::Client, tx: SyncSender<Reply>, bell: Bell, stop: Arc<AtomicBool>) {
    let pattern = format!("{}e:*", super::PREFIX);
    let skip = pattern.len() - 1;
    let mut backoff = BACKOFF_MIN;
    let mut was_up = false;
    while !stop.load(Ordering::Relaxed) {
        let mut con = match client.get_connection_with_timeout(CONNECT_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                if was_up {
                    warn!("redis: subscriber connection failed: {e}");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut ps = con.as_pubsub();
        if let Err(e) = ps
            .psubscribe(&pattern)
            .and_then(|_| ps.set_read_timeout(Some(SUB_POLL)))
        {
            warn!("redis: subscribe failed: {e}");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = BACKOFF_MIN;
        was_up = true;
        info!("redis: subscribed");
        if !send(&tx, &bell, Reply::Subscriber(true)) {
            return;
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match ps.get_message() {
                Ok(msg) => {
                    let channel = msg.get_channel_name();
                    let Some(code) = channel.get(skip..) else {
                        continue;
                    };
                    let r = Reply::Message {
                        code: code.into(),
                        payload: msg.get_payload_bytes().to_vec(),
                    };
                    if !send(&tx, &bell, r) {
                        return;
                    }
                }
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    warn!("redis: subscriber lost: {e}");
                    if !send(&tx, &bell, Reply::Subscriber(false)) {
                        return;
                    }
                    break;
                }
            }
        }
    }
}
