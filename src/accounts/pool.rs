//! The worker pool between the mio loop and the blocking accounts work.
//!
//! Owns the threads and the two channels. Jobs go through a bounded
//! `sync_channel` (`ACCOUNT_QUEUE`) that every worker takes from; `submit`
//! uses `try_send`, so a full queue is refused at once and the loop never
//! waits. Replies go through an unbounded channel (its length is bounded by
//! the queue size plus the number of workers, since each job gives one
//! reply), and the loop's `mio::Waker` is woken after each one. A separate
//! maintenance thread connects to the database, creates the indexes and the
//! bootstrap admin, and keeps the store status fresh; it never takes jobs, so
//! an outage at start-up does not tie up a worker.
//!
//! Shutdown drops the job sender (workers finish what they hold and exit when
//! the queue is empty and closed), tells the maintenance thread to stop, and
//! joins everything with a bounded total wait; a thread still stuck in a
//! database call after that is left to die with the process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::handlers::Service;
use super::{AccountsConfig, Job, Reply};
use crate::ops::metrics::{AccountsFigures, AtomicHistogram};

/// How much longer than the loop's reply timeout a queued job may wait
/// before a worker drops it unrun.
const STALE_MARGIN: Duration = Duration::from_millis(500);

/// How long `shutdown` waits for threads in all.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

pub struct Pool {
    jobs: Option<SyncSender<(u64, Instant, Job)>>,
    replies: Receiver<(u64, Reply)>,
    stop_maintenance: Option<mpsc::Sender<()>>,
    /// Each thread sends its name here as it exits, so shutdown can wait with
    /// a deadline (std has no join with timeout).
    exited: Receiver<&'static str>,
    threads: Vec<JoinHandle<()>>,
    service: Arc<Service>,
    stats: Arc<JobStats>,
}

/// Queue depth and job latency, kept by the workers for `/metrics`.
#[derive(Default)]
struct JobStats {
    /// Jobs submitted and not yet taken by a worker.
    queued: AtomicU64,
    /// From `submit` to the reply.
    latency: AtomicHistogram,
}

impl Pool {
    pub fn start(cfg: AccountsConfig, waker: Arc<mio::Waker>) -> Result<Pool, String> {
        let workers = cfg.workers.max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Instant, Job)>(cfg.queue.max(1));
        let (reply_tx, reply_rx) = mpsc::channel::<(u64, Reply)>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (exit_tx, exit_rx) = mpsc::channel::<&'static str>();
        let service = Arc::new(Service::new(cfg));
        let job_rx = Arc::new(Mutex::new(job_rx));
        let stats = Arc::new(JobStats::default());

        let mut threads = Vec::with_capacity(workers + 1);
        for i in 0..workers {
            let job_rx = Arc::clone(&job_rx);
            let reply_tx = reply_tx.clone();
            let waker = Arc::clone(&waker);
            let service = Arc::clone(&service);
            let exit_tx = exit_tx.clone();
            let stats = Arc::clone(&stats);
            let t = std::thread::Builder::new()
                .name(format!("accounts-{i}"))
                .spawn(move || {
                    worker(&job_rx, &reply_tx, &waker, &service, &stats);
                    let _ = exit_tx.send("worker");
                })
                .map_err(|e| format!("cannot start an accounts worker thread: {e}"))?;
            threads.push(t);
        }
        {
            let service = Arc::clone(&service);
            let t = std::thread::Builder::new()
                .name("accounts-maint".into())
                .spawn(move || {
                    service.maintain(&stop_rx);
                    let _ = exit_tx.send("maintenance");
                })
                .map_err(|e| format!("cannot start the accounts maintenance thread: {e}"))?;
            threads.push(t);
        }

        Ok(Pool {
            jobs: Some(job_tx),
            replies: reply_rx,
            stop_maintenance: Some(stop_tx),
            exited: exit_rx,
            threads,
            service,
            stats,
        })
    }

    #[allow(clippy::result_large_err)]
    pub fn submit(&self, tag: u64, job: Job) -> Result<(), Job> {
        match &self.jobs {
            None => Err(job),
            Some(tx) => {
                // Counted before the send so a worker's decrement never
                // comes first.
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                tx.try_send((tag, Instant::now(), job)).map_err(|e| {
                    self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                    match e {
                        TrySendError::Full((_, _, job))
                        | TrySendError::Disconnected((_, _, job)) => job,
                    }
                })
            }
        }
    }

    pub fn drain(&self, mut f: impl FnMut(u64, Reply)) {
        while let Ok((tag, reply)) = self.replies.try_recv() {
            f(tag, reply);
        }
    }

    pub fn store_status(&self) -> &'static str {
        self.service.store_status()
    }

    pub fn figures(&self) -> AccountsFigures {
        AccountsFigures {
            queued: self.stats.queued.load(Ordering::Relaxed),
            database_up: self.service.store_status() == "ok",
            jobs: self.stats.latency.snapshot(),
        }
    }

    pub fn note_no_answer(&self) {
        self.service.note_no_answer()
    }

    pub fn shutdown(mut self) {
        self.jobs = None;
        self.stop_maintenance = None;
        let left = crate::util::join_within(&mut self.threads, &self.exited, SHUTDOWN_WAIT);
        if left > 0 {
            log::warn!("accounts: {left} thread(s) still busy at shutdown; not waiting for them");
        }
    }
}

fn worker(
    jobs: &Mutex<Receiver<(u64, Instant, Job)>>,
    replies: &mpsc::Sender<(u64, Reply)>,
    waker: &mio::Waker,
    service: &Service,
    stats: &JobStats,
) {
    loop {
        // Holding the lock while waiting is fine: whoever holds it is the one
        // idle worker waiting for the next job; the others are busy or queue
        // up behind it.
        let next = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        let Ok((tag, queued_at, job)) = next else {
            return;
        };
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        let authorize = matches!(job, Job::Authorize { .. } | Job::AuthorizeAdmin { .. });
        // The margin lets the loop's own timer (armed just after `submit`)
        // answer first, with its own words; this only makes sure nobody's
        // request is carried out after that answer.
        let reply = if queued_at.elapsed() >= super::REPLY_TIMEOUT + STALE_MARGIN {
            // The loop has answered 503 already; doing the work now would
            // carry out a request its client was told failed.
            log::debug!("accounts: dropped a job that waited past the reply timeout");
            if authorize {
                Reply::Authorized(None)
            } else {
                Reply::Http(super::handlers::unavailable_reply())
            }
        } else {
            // A bug in one handler must not cost the loop its reply (a
            // connection would wait forever) nor the pool a worker. With
            // `panic = "abort"` this never runs; in debug builds and tests
            // it does.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| service.handle(job)))
                .unwrap_or_else(|_| {
                    log::error!("accounts: a request handler panicked");
                    if authorize {
                        Reply::Authorized(None)
                    } else {
                        Reply::Http(super::handlers::internal_error())
                    }
                })
        };
        stats.latency.observe(queued_at.elapsed());
        if replies.send((tag, reply)).is_err() {
            return;
        }
        if let Err(e) = waker.wake() {
            log::error!("accounts: cannot wake the server loop: {e}");
        }
    }
}
