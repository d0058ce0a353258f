//! Accounts: the `/api/auth/*` routes of protocol §3 and the token check
//! behind `REQUIRE_AUTH`.
//!
//! This module owns everything that may block: MongoDB calls (the driver's
//! `sync` API) and argon2id hashing. None of it ever runs on the server's mio
//! loop. The loop hands a [`Job`] to [`Accounts::submit`], which only does a
//! `try_send` on a bounded queue; a small pool of worker threads runs the job
//! and pushes the [`Reply`] onto an unbounded channel, then wakes the loop
//! through its `mio::Waker`; the loop collects replies with
//! [`Accounts::drain`]. Each job carries an opaque `tag` chosen by the loop
//! (connection key plus generation) and the reply carries it back, so the loop
//! can drop replies for connections that have gone away.
//!
//! Invariants:
//! - `submit`, `drain` and `store_status` never block and never touch the
//!   database; `start` does no I/O (the client is built on a background
//!   thread, because a `mongodb+srv://` URI needs DNS).
//! - Every job gets exactly one reply while the pool runs.
//! - At most [`password::MAX_CONCURRENT_HASHES`] argon2 hashes run at once,
//!   whatever `ACCOUNT_WORKERS` says, so hashing stays inside the memory cap.
//! - Secrets (passwords, hashes, tokens, setup tokens) are never logged.

#[cfg(feature = "accounts")]
mod config;
#[cfg(not(feature = "accounts"))]
mod disabled;
#[cfg(feature = "accounts")]
mod handlers;
#[cfg(feature = "accounts")]
mod model;
#[cfg(feature = "accounts")]
mod password;
#[cfg(feature = "accounts")]
mod pool;
#[cfg(feature = "accounts")]
mod ratelimit;
#[cfg(feature = "accounts")]
mod revoked;
#[cfg(feature = "accounts")]
mod store;
#[cfg(feature = "accounts")]
mod token;

#[cfg(feature = "accounts")]
pub use config::{AccountsConfig, InitialAdmin, LoginLimits, SetupLimits};
#[cfg(not(feature = "accounts"))]
pub use disabled::{Accounts, AccountsConfig};

use std::net::IpAddr;
#[cfg(feature = "accounts")]
use std::sync::Arc;
use std::time::Duration;

/// Longest the loop waits for a job's reply before answering 503 itself.
/// The contract wants a 503 within 5 s when the database is unreachable;
/// the driver notices a database that accepted a query and then went silent
/// only at its next heartbeat (about 10 s), so the loop stops waiting first.
/// A job still queued when this has passed is not run at all: nobody waits
/// for its answer, and running it would carry out a request that was
/// already answered 503.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(4500);

/// One `/api/auth/*` request, already parsed by the core's HTTP layer.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// "GET", "POST", "PUT", "DELETE", ...
    pub method: String,
    /// Full path without the query, e.g. "/api/auth/users/abc".
    pub path: String,
    /// Raw query string without '?', e.g. "token=xyz".
    pub query: Option<String>,
    /// Raw `Authorization` header value.
    pub authorization: Option<String>,
    /// Raw `X-Setup-Token` header value.
    pub setup_token: Option<String>,
    pub body: Vec<u8>,
    /// Client address used for login rate limits (already resolved through
    /// `TRUST_PROXY` by the core).
    pub client_ip: IpAddr,
}

/// A complete HTTP answer for an `/api/auth/*` request. `body` is JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
    /// Seconds, for the `Retry-After` header of a 429.
    pub retry_after: Option<u64>,
    /// Value of the `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl From<crate::http::Answer> for HttpReply {
    fn from(a: crate::http::Answer) -> HttpReply {
        HttpReply {
            status: a.status,
            body: a.body,
            retry_after: a.retry_after,
            allow: a.allow,
        }
    }
}

impl From<HttpReply> for crate::http::Answer {
    fn from(r: HttpReply) -> crate::http::Answer {
        crate::http::Answer {
            allow: r.allow,
            retry_after: r.retry_after,
            ..crate::http::Answer::bytes(r.status, crate::http::JSON, r.body)
        }
    }
}

/// Work for the pool.
#[derive(Debug, Clone)]
pub enum Job {
    /// Answer an `/api/auth/*` request.
    Http(AuthRequest),
    /// Is this bearer token valid, unexpired and not revoked? (`REQUIRE_AUTH`)
    Authorize { token: String },
    /// Is this bearer token an active admin's? (the `/api/admin/…` routes)
    AuthorizeAdmin { token: String },
}

/// Who a valid bearer token speaks for (`REQUIRE_AUTH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's id (hex ObjectId, the token's `sub`).
    pub user: String,
    pub admin: bool,
}

/// The answer to a [`Job`], returned with the job's tag by [`Accounts::drain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Http(HttpReply),
    /// The token's user, or `None` when the token does not admit.
    Authorized(Option<Principal>),
}

#[cfg(feature = "accounts")]
/// Handle to the accounts worker pool. Owned by the server loop.
pub struct Accounts {
    pool: pool::Pool,
    require_auth: bool,
}

#[cfg(feature = "accounts")]
impl Accounts {
    /// Spawns the worker threads (`ACCOUNT_WORKERS`) and a maintenance thread
    /// that connects, creates the indexes and the `INITIAL_ADMIN_*` user,
    /// retrying until the database answers, then keeps the store status
    /// fresh. Never blocks on the database itself. `waker` is woken after
    /// each reply is queued.
    pub fn start(cfg: AccountsConfig, waker: Arc<mio::Waker>) -> Result<Accounts, String> {
        let require_auth = cfg.require_auth();
        let pool = pool::Pool::start(cfg, waker)?;
        Ok(Accounts { pool, require_auth })
    }

    /// Non-blocking. `Err(job)` at once when the bounded queue is full (or
    /// the pool has stopped); the core then answers 503.
    // The job comes back by value so the caller can still answer it; boxing
    // it would cost an allocation per request to please a lint.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, tag: u64, job: Job) -> Result<(), Job> {
        self.pool.submit(tag, job)
    }

    /// Non-blocking: hands every reply that is ready to `f`.
    pub fn drain(&self, f: impl FnMut(u64, Reply)) {
        self.pool.drain(f)
    }

    /// `"ok"` or `"unavailable"`: the last known state of the database, for
    /// the `store` field of `/health`.
    pub fn store_status(&self) -> &'static str {
        self.pool.store_status()
    }

    /// Queue depth, database state and job latency for `/metrics`.
    pub fn figures(&self) -> crate::ops::metrics::AccountsFigures {
        self.pool.figures()
    }

    /// The loop stopped waiting for a job (see the server's reply
    /// timeout): `/health` says `unavailable` until a call succeeds.
    pub fn note_no_answer(&self) {
        self.pool.note_no_answer()
    }

    /// Whether `REQUIRE_AUTH` is on.
    pub fn require_auth(&self) -> bool {
        self.require_auth
    }

    /// Stops the workers: closes the queue, lets running jobs finish and
    /// joins the threads, waiting at most a few seconds in all.
    pub fn shutdown(self) {
        self.pool.shutdown()
    }
}
