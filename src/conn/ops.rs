//! The loop's side of the operator's view: answers `/livez`, `/readyz`,
//! `/metrics` and the admin paths from the loop's own state, and parks an
//! admin request on the accounts workers while its token is checked.
//!
//! A child module of the engine, so it reads the engine's private state
//! without widening it. Everything here runs on the loop and does no I/O beyond the
//! connection's queue (RSS comes from `/proc`, as the memory guard reads it).

use super::*;
use crate::accounts::Job;
use crate::ops::admin::{self, Access, RoomActivity, Target};
use crate::ops::{self, Readiness};
use std::time::SystemTime;

/// Operator state the loop keeps beside its rooms and connections.
pub(super) struct OpsState {
    pub(super) access: Access,
    pub(super) activity: RoomActivity,
    /// Failed admin authentications per client address.
    failures: RateLimiter<IpAddr>,
    started_wall: SystemTime,
}

impl OpsState {
    pub(super) fn new(cfg: &Config) -> OpsState {
        OpsState {
            access: Access::of(cfg.accounts.is_some(), &cfg.ops),
            activity: RoomActivity::default(),
            failures: RateLimiter::new(admin::FAIL_RATE_PER_SEC, admin::FAIL_BURST, 10_000),
            started_wall: SystemTime::now(),
        }
    }

    #[inline]
    pub(super) fn touch(&mut self, room: crate::rooms::RoomRef, now: Instant) {
        self.activity.touch(room, now);
    }
}

/// An admin request waiting for the workers to check its token.
pub(super) struct AdminPending {
    target: Target,
    ip: IpAddr,
    keep_alive: bool,
    head: bool,
}

impl Engine {
    /// Answers the ops routes; `false` for any other route (the caller
    /// routes it as before).
    pub(super) fn ops_request(
        &mut self,
        cref: ConnRef,
        route: Route,
        req: &Request,
        keep_alive: bool,
    ) -> bool {
        if !matches!(
            route,
            Route::Livez | Route::Readyz | Route::Metrics | Route::Admin
        ) {
            return false;
        }
        let head = req.method() == http::Method::Head;
        if route == Route::Admin && self.ops.access == Access::Off {
            // Exactly what an unknown path answers.
            let a = Answer::error(404, "Not found");
            self.answer(cref, &a, req.origin.as_deref(), keep_alive, head);
            return true;
        }
        let origin = routes::cors_origin(&self.cfg, req.origin.as_deref());
        if !matches!(req.method(), http::Method::Get | http::Method::Head) {
            let mut a = ops::method_not_allowed();
            a.cors = route != Route::Admin;
            self.ops_answer(cref, &a, keep_alive, head, origin);
            return true;
        }
        let now = self.now;
        let mut a = match route {
            Route::Livez => ops::livez(
                self.metrics.loop_turns,
                now.saturating_duration_since(self.started).as_secs(),
            ),
            Route::Readyz => {
                // Sampling here lets the guard lift (or engage) on its own
                // figures even when no upgrade asks.
                self.memguard.allow_new_websocket(now);
                ops::readyz(Readiness {
                    draining: self.shutting_down.is_some() || self.draining.is_some(),
                    memory_guard_engaged: self.memguard.engaged(),
                    accounts_up: self.accounts.as_ref().map(|a| a.store_status() == "ok"),
                    store_up: self
                        .store
                        .enabled()
                        .then(|| self.store.health(now).status == "ok"),
                    redis_up: self.cluster.as_ref().map(|c| c.up()),
                })
            }
            Route::Metrics => {
                let text = metrics::render(&self.metrics, &self.gauges(now));
                ops::answer(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.into_bytes(),
                )
            }
            _ => return self.admin_request(cref, req, keep_alive, head),
        };
        a.cors = true;
        self.ops_answer(cref, &a, keep_alive, head, origin);
        true
    }

    fn gauges(&self, now: Instant) -> metrics::Gauges {
        let uptime = now.saturating_duration_since(self.started);
        let start = self
            .ops
            .started_wall
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::Gauges {
            connections_open: self.conns.len() as u64,
            rooms_in_memory: self.rooms.len() as u64,
            uptime_seconds: uptime.as_secs_f64(),
            start_time_seconds: start.as_secs_f64(),
            memory_guard_engaged: self.memguard.engaged(),
            memory_limit_bytes: self.memguard.limit().unwrap_or(0),
            resident_memory_bytes: crate::ops::memguard::own_rss_bytes(),
            draining: self.shutting_down.is_some() || self.draining.is_some(),
            accounts: self.accounts.as_ref().map(|a| a.figures()),
            store: self.store.save_latency().map(|saves| {
                let h = self.store.health(now);
                metrics::StoreFigures {
                    up: h.status == "ok",
                    unsaved_rooms: h.unsaved_rooms as u64,
                    oldest_unsaved_seconds: h.oldest_unsaved_seconds,
                    saves,
                }
            }),
            history_bytes: self.rooms.history_usage().0 as u64,
            history_events: self.rooms.history_usage().1 as u64,
            cluster: self.cluster.as_ref().map(|c| c.gauges()),
        }
    }

    fn node_json(&self, now: Instant) -> serde_json::Value {
        let accounts = self
            .accounts
            .as_ref()
            .map_or("disabled", |a| a.store_status());
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": now.saturating_duration_since(self.started).as_secs(),
            "connections": self.conns.len(),
            "websockets": self.metrics.websockets_accepted.saturating_sub(self.metrics.websockets_closed),
            "rooms": self.rooms.len(),
            "rss_bytes": crate::ops::memguard::own_rss_bytes(),
            "memory_limit_bytes": self.memguard.limit(),
            "memory_guard": if self.memguard.engaged() { "engaged" } else { "ok" },
            "accounts": accounts,
            "store": self.store.health(now),
            "draining": self.shutting_down.is_some(),
        })
    }

    /// Queues an ops answer and sets up what follows, like `answer`.
    fn ops_answer(
        &mut self,
        cref: ConnRef,
        a: &Answer,
        keep_alive: bool,
        head: bool,
        cors_origin: Option<&str>,
    ) {
        let keep = keep_alive && self.shutting_down.is_none();
        self.queue_answer(cref, a.status, |buf| {
            http::write_response(buf, a, cors_origin, !keep, head)
        });
        self.after_response(cref, keep);
    }

    fn admin_request(
        &mut self,
        cref: ConnRef,
        req: &Request,
        keep_alive: bool,
        head: bool,
    ) -> bool {
        let target = Target::of(&req.path);
        if !target.needs_auth() {
            match admin::asset(&target, self.ops.access) {
                Some(a) => self.ops_answer(cref, &a, keep_alive, head, None),
                None => {
                    let a = Answer::error(404, "Not found");
                    self.answer(cref, &a, req.origin.as_deref(), keep_alive, head);
                }
            }
            return true;
        }
        let now = self.now;
        let Some(peer) = self.conn(cref).map(|c| c.peer) else {
            return true;
        };
        let ip = routes::client_ip(&self.cfg, peer, req);
        if let Err(wait) = self.ops.failures.peek(&ip, now) {
            self.metrics.rejected(Reject::AdminAuthRate);
            let mut a = ops::error(429, "Too many failed admin sign-ins; try again later");
            a.retry_after = Some(crate::ratelimit::retry_after_secs(wait));
            self.ops_answer(cref, &a, keep_alive, head, None);
            return true;
        }
        let Some(token) = http::bearer(req.authorization.as_deref()) else {
            let a = ops::error(401, "Authentication required");
            self.ops_answer(cref, &a, keep_alive, head, None);
            return true;
        };
        match self.ops.access {
            Access::Token => {
                let ok = self
                    .cfg
                    .ops
                    .admin_token
                    .as_deref()
                    .is_some_and(|expected| admin::token_matches(token, expected));
                let pending = AdminPending {
                    target,
                    ip,
                    keep_alive,
                    head,
                };
                self.admin_authorized(cref, pending, ok);
            }
            Access::Accounts => {
                let job = Job::AuthorizeAdmin {
                    token: token.to_owned(),
                };
                let pending = AdminPending {
                    target,
                    ip,
                    keep_alive,
                    head,
                };
                self.submit(cref, job, Pending::Admin(Box::new(pending)));
            }
            Access::Off => unreachable!("answered 404 above"),
        }
        true
    }

    /// Answers an admin request once its credential has been judged.
    pub(super) fn admin_authorized(&mut self, cref: ConnRef, p: AdminPending, ok: bool) {
        let now = self.now;
        let a = if !ok {
            let _ = self.ops.failures.check(&p.ip, now);
            ops::error(401, "Invalid or expired admin credential")
        } else {
            let wall = SystemTime::now();
            match &p.target {
                Target::Rooms => {
                    let node = self.node_json(now);
                    admin::rooms_answer(&self.rooms, &self.ops.activity, node, now, wall)
                }
                Target::Room(code) => {
                    admin::room_answer(&self.rooms, &self.ops.activity, code, now, wall)
                }
                _ => ops::error(404, "Not found"),
            }
        };
        self.ops_answer(cref, &a, p.keep_alive, p.head, None);
    }

    /// The workers could not answer: 503, like any parked request.
    pub(super) fn admin_gave_up(&mut self, cref: ConnRef, p: AdminPending, why: &str) {
        let a = ops::error(503, why);
        self.ops_answer(cref, &a, p.keep_alive, p.head, None);
    }
}
