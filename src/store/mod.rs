//! Durable rooms: what is kept of a room, the write-behind policy that
//! decides when ([`policy`]), the backends that keep it ([`file`], and
//! `mongo` in builds with MongoDB), and the worker threads between them and
//! the loop.
//!
//! [`RoomStore`] is what the mio shell holds. It never blocks: writes and
//! reads are handed to two worker threads through bounded queues
//! (`try_send`; the loop never has more writes out than the write queue
//! holds, and a full read queue is answered 503), and the results come back
//! through a channel and the loop's `mio::Waker`. One writer thread owns every write, so writes reach the
//! backend in the order they were handed out; each carries a version and the
//! backend keeps the higher one. A queued document is the room's own
//! reference-counted bytes, not a copy.
//!
//! Invariants:
//! * Only the writer thread writes; the loop asks for at most one write per
//!   room at a time (the policy's rule), always of the latest version.
//! * A lookup of one code is asked of the reader at most once at a time;
//!   every request for that code waits on it ([`RoomStore::lookup`]).
//! * A room whose delete is pending is dead: a lookup of it is not asked,
//!   it is simply not found.
//! * With `recheck_misses` (cluster mode), a lookup asked with a re-check
//!   that finds nothing is asked again after each of [`RECHECKS`] before
//!   its waiters hear `Absent`: another node answers a room's creation as
//!   soon as the room is in its memory and writes it to the shared store
//!   at once, so a join that follows on this node may get here first.

pub mod file;
#[cfg(feature = "accounts")]
pub mod mongo;
pub mod policy;

use crate::rooms::{ConnRef, Room};
use crate::ws::Frame;
use bytes::Bytes;
use policy::{Op, Policy, Status};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The text of every answer about a room the store could not be asked about.
pub const UNAVAILABLE: &str = "Room store unavailable";

/// How long a request waits for a lookup before it is answered 503.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new room waits for the check that its random code is not a
/// stored room's before it is created anyway (with a code no room in memory
/// has): room creation keeps working while the store is down.
pub const FRESH_CODE_WAIT: Duration = Duration::from_secs(1);

/// In cluster mode, how long after a miss a lookup is asked again (each
/// counted from the previous answer), before the code is reported absent.
/// Together well above the time another node takes to write a room it
/// has just created, and well inside [`LOOKUP_TIMEOUT`].
pub const RECHECKS: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(80),
    Duration::from_millis(300),
];

/// Writes waiting for the writer thread, at most.
const WRITE_QUEUE: usize = 4096;
/// Lookups and sweeps waiting for the reader thread, at most.
const READ_QUEUE: usize = 1024;
/// Operations one write transaction takes at most, and document bytes.
const BATCH_OPS: usize = 256;
const BATCH_BYTES: usize = 64 << 20;
/// How often the store is swept for rooms whose idle time ran out while
/// they were not in memory (and the first sweep after start-up).
const SWEEP_EVERY: Duration = Duration::from_secs(300);
const FIRST_SWEEP: Duration = Duration::from_secs(10);
/// How long shutdown waits for the threads after the last write.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Which store, from `ROOM_STORE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    File(PathBuf),
    /// Collection `rooms` of database `db`.
    Mongo {
        uri: String,
        db: String,
    },
}

impl StoreKind {
    pub fn name(&self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::File(_) => "file",
            StoreKind::Mongo { .. } => "mongodb",
        }
    }
}

/// The store's settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub save_delay: Duration,
    pub save_max_delay: Duration,
    /// Cluster mode: a miss is looked up again ([`RECHECKS`]).
    pub recheck_misses: bool,
}

/// What is kept of one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRecord {
    pub code: Box<str>,
    pub room_id: Box<str>,
    pub host_id: Box<str>,
    /// The name everyone but the host sees for the host (rule 11).
    pub host_public_id: Box<str>,
    /// The creator's account under `REQUIRE_AUTH` (it alone may be the host).
    pub owner: Option<Box<str>>,
    pub created_at: Box<str>,
    pub version: u64,
    /// Wall clock (ms since the epoch) since when the room counts as empty:
    /// when it emptied, or the time of the save if it had members then (so
    /// a crash counts as the room emptying at its last save).
    pub idle_since_ms: u64,
    /// The document's raw JSON text; shares the room's frame when saving.
    pub document: Option<Bytes>,
}

/// A record's fields besides the code and the document, as stored.
#[derive(Serialize, Deserialize, Debug)]
pub struct Meta {
    pub room_id: String,
    pub host_id: String,
    /// Absent in records written before rooms had a public host id.
    #[serde(default)]
    pub host_public_id: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    pub created_at: String,
    pub version: u64,
    pub idle_since_ms: u64,
    pub has_document: bool,
}

impl RoomRecord {
    pub fn meta(&self) -> Meta {
        Meta {
            room_id: self.room_id.to_string(),
            host_id: self.host_id.to_string(),
            host_public_id: Some(self.host_public_id.to_string()),
            owner: self.owner.as_deref().map(str::to_owned),
            created_at: self.created_at.to_string(),
            version: self.version,
            idle_since_ms: self.idle_since_ms,
            has_document: self.document.is_some(),
        }
    }

    pub fn from_meta(code: &str, m: Meta, document: Option<Bytes>) -> RoomRecord {
        RoomRecord {
            code: code.into(),
            room_id: m.room_id.into(),
            host_id: m.host_id.into(),
            host_public_id: m.host_public_id.unwrap_or_default().into(),
            owner: m.owner.map(Into::into),
            created_at: m.created_at.into(),
            version: m.version,
            idle_since_ms: m.idle_since_ms,
            document,
        }
    }

    /// The record of `room` as it is at `now` (`wall` is the same instant
    /// on the wall clock).
    pub fn of_room(room: &Room, version: u64, now: Instant, wall: SystemTime) -> RoomRecord {
        let wall_ms = millis(wall);
        let idle_since_ms = match room.idle_for(now) {
            Some(d) => wall_ms.saturating_sub(d.as_millis() as u64),
            None => wall_ms,
        };
        RoomRecord {
            code: room.code().into(),
            room_id: room.room_id().into(),
            host_id: room.host_id().into(),
            host_public_id: room.host_public_id().into(),
            owner: room.owner().map(Into::into),
            created_at: room.created_at().into(),
            version,
            idle_since_ms,
            document: room.document_raw(),
        }
    }
}

/// Milliseconds since the epoch.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// One write for the writer thread.
#[derive(Debug)]
pub enum WriteOp {
    Save(RoomRecord),
    Delete(Box<str>, u64),
}

impl WriteOp {
    fn key(&self) -> (Box<str>, u64) {
        match self {
            WriteOp::Save(r) => (r.code.clone(), r.version),
            WriteOp::Delete(c, v) => (c.clone(), *v),
        }
    }
    fn bytes(&self) -> usize {
        match self {
            WriteOp::Save(r) => r.document.as_ref().map_or(0, |d| d.len()),
            WriteOp::Delete(..) => 0,
        }
    }
}

/// A place rooms are kept. Called from the worker threads only; every call
/// may block.
pub trait Backend: Send + Sync {
    /// Carries out the writes in one transaction: all or nothing. A save
    /// whose version is not higher than the stored one, or a delete of a
    /// record newer than its version, is skipped (and counts as done).
    fn write(&self, ops: &[WriteOp]) -> Result<(), String>;
    /// The record of `code`, if one is stored. Its document is what `doc`
    /// makes of the stored text (the reader builds the ready frame straight
    /// from the store's buffer: one copy of a large document, not two).
    fn load(&self, code: &str, doc: &dyn Fn(&[u8]) -> Bytes) -> Result<Option<RoomRecord>, String>;
    /// Codes and versions of records idle for at least `idle_ms` at `now_ms`.
    fn expired(&self, now_ms: u64, idle_ms: u64) -> Result<Vec<(Box<str>, u64)>, String>;
}

enum ReadJob {
    Load(Box<str>),
    Sweep { now_ms: u64, idle_ms: u64 },
}

/// A looked-up room, its document already built into a `document_sync`
/// frame on the reader thread.
pub struct Loaded {
    pub record: RoomRecord,
    pub frame: Option<Frame>,
}

enum Reply {
    Written(Vec<(Box<str>, u64)>, Result<(), String>),
    Loaded(Box<str>, Result<Option<Loaded>, String>),
    Swept(Result<Vec<(Box<str>, u64)>, String>),
}

/// What a lookup found, for the requests that waited on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The room is in memory now (restored, or it was there already).
    Room,
    /// The store has no such room (or only one whose idle time ran out).
    Absent,
    /// The store could not be asked.
    Unavailable,
}

struct Workers {
    /// Time of each write transaction (batch), for `/metrics`.
    save_latency: Arc<crate::ops::metrics::AtomicHistogram>,
    writes: Option<SyncSender<WriteOp>>,
    reads: Option<SyncSender<ReadJob>>,
    replies: Receiver<Reply>,
    exited: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    fn start(backend: Arc<dyn Backend>, waker: Arc<mio::Waker>) -> Result<Workers, String> {
        let (wtx, wrx) = mpsc::sync_channel::<WriteOp>(WRITE_QUEUE);
        let (rtx, rrx) = mpsc::sync_channel::<ReadJob>(READ_QUEUE);
        let (reply_tx, reply_rx) = mpsc::channel::<Reply>();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        let send = {
            let waker = Arc::clone(&waker);
            move |tx: &mpsc::Sender<Reply>, r: Reply| {
                if tx.send(r).is_ok() {
                    if let Err(e) = waker.wake() {
                        log::error!("room store: cannot wake the server loop: {e}");
                    }
                }
            }
        };
        let save_latency = Arc::new(crate::ops::metrics::AtomicHistogram::default());
        let mut threads = Vec::new();
        {
            let backend = Arc::clone(&backend);
            let latency = Arc::clone(&save_latency);
            let reply_tx = reply_tx.clone();
            let exit_tx = exit_tx.clone();
            let send = send.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("store-writer".into())
                    .spawn(move || {
                        writer(&*backend, &wrx, &latency, |r| send(&reply_tx, r));
                        let _ = exit_tx.send(());
                    })
                    .map_err(|e| format!("cannot start the room store writer: {e}"))?,
            );
        }
        threads.push(
            std::thread::Builder::new()
                .name("store-reader".into())
                .spawn(move || {
                    reader(&*backend, &rrx, |r| send(&reply_tx, r));
                    let _ = exit_tx.send(());
                })
                .map_err(|e| format!("cannot start the room store reader: {e}"))?,
        );
        Ok(Workers {
            save_latency,
            writes: Some(wtx),
            reads: Some(rtx),
            replies: reply_rx,
            exited: exit_rx,
            threads,
        })
    }

    fn shutdown(mut self) {
        self.writes = None;
        self.reads = None;
        let left = crate::util::join_within(&mut self.threads, &self.exited, SHUTDOWN_WAIT);
        if left > 0 {
            log::warn!("room store: {left} thread(s) still busy at shutdown; not waiting");
        }
    }
}

fn writer(
    backend: &dyn Backend,
    jobs: &Receiver<WriteOp>,
    latency: &crate::ops::metrics::AtomicHistogram,
    reply: impl Fn(Reply),
) {
    let mut batch = Vec::new();
    while let Ok(first) = jobs.recv() {
        let mut bytes = first.bytes();
        batch.push(first);
        // Whatever queued up meanwhile goes into the same transaction: one
        // commit (one fsync) for many rooms.
        while batch.len() < BATCH_OPS && bytes < BATCH_BYTES {
            match jobs.try_recv() {
                Ok(op) => {
                    bytes += op.bytes();
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.write(&batch)))
                .unwrap_or_else(|_| Err("the store panicked".into()));
        log::debug!(
            "room store: wrote {} room(s), {bytes} document bytes in {} ms",
            batch.len(),
            started.elapsed().as_millis()
        );
        latency.observe(started.elapsed());
        if let Err(e) = &result {
            log::warn!("room store: write of {} room(s) failed: {e}", batch.len());
        }
        let keys = batch.iter().map(WriteOp::key).collect();
        batch.clear();
        reply(Reply::Written(keys, result));
    }
}

fn reader(backend: &dyn Backend, jobs: &Receiver<ReadJob>, reply: impl Fn(Reply)) {
    while let Ok(job) = jobs.recv() {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
            ReadJob::Load(code) => {
                let r = backend
                    .load(&code, &crate::protocol::out::document_frame_bytes)
                    .map(|found| {
                        found.map(|mut record| {
                            let frame = record.document.take();
                            Loaded { record, frame }
                        })
                    });
                if let Err(e) = &r {
                    log::warn!("room store: lookup failed: {e}");
                }
                Reply::Loaded(code, r)
            }
            ReadJob::Sweep { now_ms, idle_ms } => Reply::Swept(backend.expired(now_ms, idle_ms)),
        }));
        match r {
            Ok(r) => reply(r),
            Err(_) => log::error!("room store: a read panicked"),
        }
    }
}

/// A lookup in flight and the requests waiting on it.
struct Lookup {
    started: Instant,
    waiters: Vec<(ConnRef, u32)>,
    /// Misses may be looked up again ([`RECHECKS`]): how many times so far.
    rechecks: Option<usize>,
    /// A re-check is due then.
    again_at: Option<Instant>,
}

/// The `room_store` object of `/health`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub kind: &'static str,
    pub status: &'static str,
    pub unsaved_rooms: usize,
    pub oldest_unsaved_seconds: u64,
}

/// The loop's handle on the store.
pub struct RoomStore {
    kind: &'static str,
    policy: Policy,
    workers: Option<Workers>,
    idle_timeout: Option<Duration>,
    lookups: HashMap<Box<str>, Lookup>,
    next_sweep: Option<Instant>,
    /// When rooms with members are next re-saved (every half idle timeout):
    /// their stored idle clock then never runs out while they are in use,
    /// so neither the sweep nor MongoDB's TTL index removes them, and after
    /// a crash they count as emptied at most that long before it.
    next_touch: Option<Instant>,
    /// Writes handed to the writer and not answered yet; at most
    /// [`WRITE_QUEUE`], so the queue is never found full.
    writes_out: usize,
    ops: Vec<Op>,
    recheck_misses: bool,
}

impl RoomStore {
    /// Opens the configured store and starts its threads (none for
    /// `memory`). An error names the setting and the path.
    pub fn open(
        cfg: &StoreConfig,
        idle_timeout: Option<Duration>,
        waker: Arc<mio::Waker>,
    ) -> Result<RoomStore, String> {
        let backend: Option<Arc<dyn Backend>> = match &cfg.kind {
            StoreKind::Memory => None,
            StoreKind::File(dir) => Some(Arc::new(file::FileStore::open(dir)?)),
            #[cfg(feature = "accounts")]
            StoreKind::Mongo { uri, db } => {
                Some(Arc::new(mongo::MongoStore::new(uri, db, idle_timeout)))
            }
            #[cfg(not(feature = "accounts"))]
            StoreKind::Mongo { .. } => {
                return Err("ROOM_STORE=mongodb: this build has no MongoDB support \
                            (built without the accounts feature)"
                    .into())
            }
        };
        let workers = match backend {
            Some(b) => Some(Workers::start(b, waker)?),
            None => None,
        };
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        Ok(RoomStore {
            kind: cfg.kind.name(),
            policy: Policy::new(cfg.save_delay, cfg.save_max_delay, seed),
            next_sweep: (workers.is_some() && idle_timeout.is_some())
                .then(|| Instant::now() + FIRST_SWEEP),
            next_touch: idle_timeout
                .filter(|_| workers.is_some())
                .and_then(|t| Instant::now().checked_add(t / 2)),
            writes_out: 0,
            workers,
            idle_timeout,
            lookups: HashMap::new(),
            ops: Vec::new(),
            recheck_misses: cfg.recheck_misses,
        })
    }

    /// A store that keeps nothing (tests, `ROOM_STORE=memory`).
    pub fn memory() -> RoomStore {
        RoomStore {
            kind: "memory",
            policy: Policy::new(Duration::ZERO, Duration::ZERO, 0),
            workers: None,
            idle_timeout: None,
            lookups: HashMap::new(),
            next_sweep: None,
            next_touch: None,
            writes_out: 0,
            ops: Vec::new(),
            recheck_misses: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.workers.is_some()
    }

    /// The room `code` changed (created, document, emptied or occupied).
    pub fn changed(&mut self, code: &str, now: Instant) {
        if self.enabled() {
            self.policy.changed(code, now);
        }
    }

    /// The room `code` was removed from memory for good (idle timeout).
    pub fn deleted(&mut self, code: &str, now: Instant) {
        if self.enabled() {
            let v = self.policy.next_version();
            self.policy.deleted(code, v, now);
        }
    }

    /// Whether a request for `code`, not in memory, must wait for a lookup.
    pub fn must_look_up(&self, code: &str) -> bool {
        self.enabled() && crate::rooms::valid_room_code(code) && !self.policy.is_deleting(code)
    }

    /// Makes `who` (waiting as job `seq`) wait for the lookup of `code`,
    /// asking the reader unless a lookup of it is under way. `false` when
    /// the reader's queue is full: answer 503 now. `recheck`: a miss is
    /// asked again in cluster mode (not worth it for a fresh random code).
    pub fn lookup(
        &mut self,
        code: &str,
        who: ConnRef,
        seq: u32,
        recheck: bool,
        now: Instant,
    ) -> bool {
        let recheck = (recheck && self.recheck_misses).then_some(0);
        if let Some(l) = self.lookups.get_mut(code) {
            if now.saturating_duration_since(l.started) < LOOKUP_TIMEOUT {
                l.waiters.push((who, seq));
                l.rechecks = l.rechecks.or(recheck);
                return true;
            }
            // That one never answered; its waiters were answered 503 by
            // their timers. Ask again.
            self.lookups.remove(code);
        }
        let Some(tx) = self.workers.as_ref().and_then(|w| w.reads.as_ref()) else {
            return false;
        };
        match tx.try_send(ReadJob::Load(code.into())) {
            Ok(()) => {
                self.lookups.insert(
                    code.into(),
                    Lookup {
                        started: now,
                        waiters: vec![(who, seq)],
                        rechecks: recheck,
                        again_at: None,
                    },
                );
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.policy.note_read(false);
                false
            }
        }
    }

    /// The next instant [`RoomStore::tick`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        // With the writer's queue full, its next answer (which wakes the
        // loop) is what frees room: no deadline to spin on meanwhile.
        let writes = self
            .policy
            .next_deadline()
            .filter(|_| self.writes_out < WRITE_QUEUE);
        let again = self.lookups.values().filter_map(|l| l.again_at).min();
        [writes, self.next_sweep, self.next_touch, again]
            .into_iter()
            .flatten()
            .min()
    }

    /// Hands due writes (built from `rooms`) and a due sweep to the workers.
    pub fn tick(&mut self, rooms: &crate::rooms::Rooms, now: Instant) {
        let Some(w) = &self.workers else { return };
        for (code, l) in self.lookups.iter_mut() {
            if l.again_at.is_some_and(|at| at <= now) {
                l.again_at = None;
                let sent = w
                    .reads
                    .as_ref()
                    .is_some_and(|tx| tx.try_send(ReadJob::Load(code.clone())).is_ok());
                if !sent {
                    // The waiters' timers answer them (503) if no read
                    // gets through.
                    l.again_at = Some(now + RECHECKS[0]);
                }
            }
        }
        if self.next_sweep.is_some_and(|at| at <= now) {
            self.next_sweep = Some(now + SWEEP_EVERY);
            if let (Some(idle), Some(tx)) = (self.idle_timeout, &w.reads) {
                let _ = tx.try_send(ReadJob::Sweep {
                    now_ms: millis(SystemTime::now()),
                    idle_ms: idle.as_millis() as u64,
                });
            }
        }
        if let (Some(at), Some(idle)) = (self.next_touch, self.idle_timeout) {
            if at <= now {
                self.next_touch = now.checked_add(idle / 2);
                for (_, room) in rooms.iter() {
                    if room.peer_count() > 0 {
                        self.policy.changed(room.code(), now);
                    }
                }
            }
        }
        if self.policy.next_deadline().map_or(true, |at| at > now) {
            return;
        }
        let mut ops = std::mem::take(&mut self.ops);
        self.policy
            .poll(now, WRITE_QUEUE.saturating_sub(self.writes_out), &mut ops);
        let wall = SystemTime::now();
        for op in ops.drain(..) {
            let (code, version, job) = match op {
                Op::Save(code, v) => match rooms.find(&code) {
                    Some((_, room)) => {
                        let rec = RoomRecord::of_room(room, v, now, wall);
                        (code, v, WriteOp::Save(rec))
                    }
                    None => {
                        // Gone without a delete (cannot happen): nothing
                        // left to save.
                        self.policy.finished(&code, v, true, now);
                        continue;
                    }
                },
                Op::Delete(code, v) => (code.clone(), v, WriteOp::Delete(code, v)),
            };
            let sent = w.writes.as_ref().is_some_and(|tx| tx.try_send(job).is_ok());
            if sent {
                self.writes_out += 1;
            } else {
                // Full queue: the writer is behind; retried with backoff.
                self.policy.finished(&code, version, false, now);
            }
        }
        self.ops = ops;
    }

    /// Takes the workers' results. Restored rooms go into `rooms`; `done`
    /// gets each finished lookup's waiters and outcome.
    pub fn drain(
        &mut self,
        rooms: &mut crate::rooms::Rooms,
        now: Instant,
        fx: &mut Vec<crate::rooms::Effect>,
        mut done: impl FnMut(Vec<(ConnRef, u32)>, &Found),
    ) {
        let Some(w) = &self.workers else { return };
        let replies: Vec<Reply> = w.replies.try_iter().collect();
        for r in replies {
            match r {
                Reply::Written(keys, result) => {
                    let ok = result.is_ok();
                    self.writes_out = self.writes_out.saturating_sub(keys.len());
                    for (code, v) in keys {
                        self.policy.finished(&code, v, ok, now);
                    }
                }
                Reply::Loaded(code, result) => {
                    // Cluster mode: nothing stored yet may mean another
                    // node's write of a room it just created is on its way.
                    if let (Ok(None), Some(l)) = (&result, self.lookups.get_mut(&code)) {
                        if let Some(wait) = l.rechecks.and_then(|n| RECHECKS.get(n)) {
                            l.rechecks = l.rechecks.map(|n| n + 1);
                            l.again_at = Some(now + *wait);
                            continue;
                        }
                    }
                    let found = match result {
                        Err(_) => {
                            self.policy.note_read(false);
                            Found::Unavailable
                        }
                        Ok(found) => {
                            self.policy.note_read(true);
                            self.restore(rooms, found, now, fx)
                        }
                    };
                    let waiters = self.lookups.remove(&code).map(|l| l.waiters);
                    done(waiters.unwrap_or_default(), &found);
                }
                Reply::Swept(Ok(list)) => {
                    for (code, v) in list {
                        if rooms.find(&code).is_none()
                            && !self.lookups.contains_key(&code)
                            && !self.policy.is_unsaved(&code)
                        {
                            self.policy.deleted(&code, v, now);
                        }
                    }
                }
                Reply::Swept(Err(e)) => log::warn!("room store: sweep failed: {e}"),
            }
        }
    }

    fn restore(
        &mut self,
        rooms: &mut crate::rooms::Rooms,
        found: Option<Loaded>,
        now: Instant,
        fx: &mut Vec<crate::rooms::Effect>,
    ) -> Found {
        let Some(Loaded { record, frame }) = found else {
            return Found::Absent;
        };
        self.policy.observe_version(record.version);
        if rooms.find(&record.code).is_some() {
            return Found::Room;
        }
        if self.policy.is_deleting(&record.code) {
            return Found::Absent;
        }
        let wall_ms = millis(SystemTime::now());
        let idle_for = Duration::from_millis(wall_ms.saturating_sub(record.idle_since_ms));
        if self.idle_timeout.is_some_and(|t| idle_for >= t) {
            // Its time ran out while it was not in memory: gone for good.
            self.policy.deleted(&record.code, record.version, now);
            return Found::Absent;
        }
        rooms.restore(
            &record.code,
            &record.room_id,
            &record.host_id,
            Some(&*record.host_public_id).filter(|p| !p.is_empty()),
            record.owner.as_deref(),
            &record.created_at,
            frame,
            idle_for,
            now,
            fx,
        );
        Found::Room
    }

    /// Shutdown: every unsaved room is due now.
    pub fn flush_all(&mut self) {
        self.policy.flush_all();
    }

    /// Nothing left to write.
    pub fn is_idle(&self) -> bool {
        self.policy.is_idle()
    }

    pub fn health(&self, now: Instant) -> Health {
        Health {
            kind: self.kind,
            status: match self.policy.status() {
                Status::Ok => "ok",
                Status::Unavailable => "unavailable",
            },
            unsaved_rooms: self.policy.unsaved(),
            oldest_unsaved_seconds: self.policy.oldest_unsaved(now).as_secs(),
        }
    }

    /// Durations of the write transactions so far (`None` without a
    /// durable store), for `/metrics`.
    pub fn save_latency(&self) -> Option<crate::ops::metrics::HistogramSnapshot> {
        self.workers.as_ref().map(|w| w.save_latency.snapshot())
    }

    /// Stops the threads (after the loop has waited for the last writes).
    pub fn shutdown(mut self) {
        if !self.policy.is_idle() {
            log::error!(
                "room store: {} room(s) could not be saved before exit",
                self.policy.unsaved()
            );
        }
        if let Some(w) = self.workers.take() {
            w.shutdown();
        }
    }
}
