//! The `/api/auth/*` routes and the `REQUIRE_AUTH` token check.
//!
//! [`Service`] owns the shared state of the accounts layer (store, keys,
//! limiters, configuration) and turns one [`Job`] into one [`Reply`]; it runs
//! only on worker threads and the maintenance thread. Rules kept here:
//! - Authentication runs before validation: 401/403 come before 400.
//! - Every authenticated call re-reads the user: a deleted or deactivated
//!   user, or a token whose `ver` is not the user's current `token_version`
//!   (logout, password change, deactivation, role change), gets 401. The role
//!   that counts is the stored one, not the token's.
//! - Unknown email, invited-but-unset account and wrong password all cost one
//!   argon2 verification and all answer 401 "Invalid email or password".
//! - There is always at least one active admin once one exists: deleting,
//!   demoting or deactivating the last one is refused (409). The check and the
//!   write happen under one lock, so two admins cannot remove each other at
//!   the same moment (within this process).
//! - With no users, `invite` needs `X-Setup-Token` equal to
//!   `INITIAL_SETUP_TOKEN` (constant-time compare), and the first user is an
//!   admin whatever role was asked for; with the variable unset, nobody can
//!   initialise the system over HTTP.
//!
//! Layout: this module holds the shared state ([`Service`]); `bootstrap`
//! the maintenance thread (connect, indexes, the initial admin); `routing`
//! the path and method table; `auth` who a request or token speaks for;
//! `setup`, `session` and `users` the handlers per resource; `bodies` the
//! request bodies; `answers` the error answers; `crypto` random tokens and
//! ids.

mod answers;
mod auth;
mod bodies;
mod bootstrap;
mod crypto;
mod routing;
mod session;
mod setup;
mod users;

pub use answers::{internal_error, unavailable_reply};

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mongodb::bson::oid::ObjectId;

use super::config::AccountsConfig;
use super::model::User;
use super::ratelimit::Limiter;
use super::revoked::Revocations;
use super::store::{Health, Store};
use super::token::{Keys, TOKEN_LIFETIME_SECS};
use super::{Job, Reply};
use answers::*;

/// Buckets kept per limiter before pruning.
const MAX_LIMITER_KEYS: usize = 100_000;
/// Users whose revocations are remembered for outages (about 50 bytes each).
const MAX_REVOCATIONS: usize = 100_000;

/// The accounts layer's shared state; one per server, used by every
/// worker and the maintenance thread.
pub struct Service {
    cfg: AccountsConfig,
    keys: Keys,
    health: Arc<Health>,
    store: OnceLock<Store>,
    /// Indexes exist and the bootstrap admin has been handled.
    ready: AtomicBool,
    ip_limiter: Mutex<Limiter<IpAddr>>,
    /// Failed logins per client address and email together: a guesser is
    /// slowed on the account it tries, its owner elsewhere is not.
    email_limiter: Mutex<Limiter<(IpAddr, String)>>,
    /// Wrong setup tokens per client address, and for the whole server.
    setup_limiters: Mutex<(Limiter<IpAddr>, Limiter<()>)>,
    /// Serialises "is this the last admin?" checks with the write that
    /// follows them.
    admin_lock: Mutex<()>,
    /// Revocations seen here, for token checks during an outage.
    revoked: Mutex<Revocations<ObjectId>>,
}

impl Service {
    pub fn new(cfg: AccountsConfig) -> Service {
        let l = cfg.login_limits;
        Service {
            keys: Keys::new(&cfg.jwt_secret),
            health: Arc::default(),
            store: OnceLock::new(),
            ready: AtomicBool::new(false),
            ip_limiter: Mutex::new(Limiter::new(
                l.per_ip_burst,
                l.per_ip_refill,
                MAX_LIMITER_KEYS,
            )),
            email_limiter: Mutex::new(Limiter::new(
                l.per_email_burst,
                l.per_email_refill,
                MAX_LIMITER_KEYS,
            )),
            setup_limiters: Mutex::new((
                Limiter::new(
                    cfg.setup_limits.per_ip_burst,
                    cfg.setup_limits.per_ip_refill,
                    MAX_LIMITER_KEYS,
                ),
                Limiter::new(
                    cfg.setup_limits.total_burst,
                    cfg.setup_limits.total_refill,
                    16,
                ),
            )),
            admin_lock: Mutex::new(()),
            revoked: Mutex::new(Revocations::new(
                MAX_REVOCATIONS,
                Duration::from_secs(TOKEN_LIFETIME_SECS),
            )),
            cfg,
        }
    }

    pub fn store_status(&self) -> &'static str {
        self.health.as_str()
    }

    /// A job got no answer in time: the database took a query and went
    /// silent, which the driver notices only at its next heartbeat. The
    /// next call that gets an answer marks it reachable again.
    pub fn note_no_answer(&self) {
        self.health.set_down("no answer in time");
    }

    pub fn handle(&self, job: Job) -> Reply {
        match job {
            Job::Http(req) => Reply::Http(self.http(&req)),
            Job::Authorize { token } => Reply::Authorized(self.authorize(&token)),
            Job::AuthorizeAdmin { token } => Reply::Authorized(self.authorize_admin(&token)),
        }
    }

    fn store(&self) -> Result<&Store, Fail> {
        match self.store.get() {
            Some(s) if self.ready.load(Ordering::Acquire) => Ok(s),
            _ => Err(fail(503, MSG_UNAVAILABLE)),
        }
    }

    fn revocations(&self) -> std::sync::MutexGuard<'_, Revocations<ObjectId>> {
        self.revoked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that tokens of `u` older than its current version are void.
    fn seen(&self, u: &User) {
        self.revoke_below(u.id, u.token_version);
    }

    fn revoke_below(&self, id: ObjectId, version: i64) {
        self.revocations().note(&id, version, Instant::now());
    }
}
