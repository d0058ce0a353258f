//! Connections parked on a worker: an accounts job, a room store lookup or
//! (in cluster mode) a room's snapshot. The connection's state moves into
//! [`State::Waiting`] with the job's number and comes back whole when the
//! answer (or its deadline) arrives; input meanwhile stays buffered or in
//! the kernel, which is the back-pressure.

use super::*;
use crate::accounts::{Job, Reply};
use crate::store::{self, Found};

impl Engine {
    /// Moves `cref` into [`State::Waiting`] for job `job`. Only a connection
    /// reading HTTP or an open WebSocket can park; `false` otherwise.
    pub(super) fn park(&mut self, cref: ConnRef, job: u32, pending: Pending) -> bool {
        let Some(c) = self.conn(cref) else {
            return false;
        };
        if !matches!(c.state, State::Http(_) | State::Ws(_)) {
            return false;
        }
        c.transition(|old| {
            let back = match old {
                State::Http(h) => Back::Http(h),
                State::Ws(ws) => Back::Ws(ws),
                other => return other,
            };
            State::Waiting(Box::new(Waiting { job, pending, back }))
        });
        true
    }

    /// Takes the parked request of a connection waiting for job `seq`; the
    /// connection is back in the state it parked from.
    pub(super) fn take_pending(&mut self, cref: ConnRef, seq: u32) -> Option<Pending> {
        let c = self.conn(cref)?;
        if !matches!(&c.state, State::Waiting(w) if w.job == seq) {
            return None;
        }
        let mut taken = None;
        c.transition(|old| match old {
            State::Waiting(w) => {
                let Waiting { pending, back, .. } = *w;
                taken = Some(pending);
                match back {
                    Back::Http(h) => State::Http(h),
                    Back::Ws(ws) => State::Ws(ws),
                }
            }
            other => other,
        });
        taken
    }

    /// Hands `job` to the accounts workers; the connection waits until the
    /// reply or [`crate::accounts::REPLY_TIMEOUT`].
    ///
    /// The tag names the slab slot and the job's number; the number doubles
    /// as the generation check, since no other connection in that slot can
    /// be waiting for the same job.
    pub(super) fn submit(&mut self, cref: ConnRef, job: Job, pending: Pending) {
        let Some(accounts) = &self.accounts else {
            return;
        };
        self.next_job = self.next_job.wrapping_add(1);
        let seq = self.next_job;
        let tag = ((seq as u64) << 32) | cref.key as u64;
        match accounts.submit(tag, job) {
            Ok(()) => {
                if self.park(cref, seq, pending) {
                    self.timers.arm(
                        self.now + crate::accounts::REPLY_TIMEOUT,
                        Timer::Job(cref, seq),
                    );
                }
            }
            Err(_) => self.give_up(cref, pending, MSG_ACCOUNTS_BUSY),
        }
    }

    /// Answers a request the workers cannot or did not answer: 503, or for
    /// a join an `error`.
    pub(super) fn give_up(&mut self, cref: ConnRef, pending: Pending, why: &str) {
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
            Pending::Join { .. } => self.send(cref, crate::protocol::out::error_frame(why)),
            Pending::Admin(p) => self.admin_gave_up(cref, *p, why),
        }
    }

    /// Parks a request for a room that is not in memory until the room
    /// store's lookup of `code` answers (shared with every other request
    /// for it), or [`store::LOOKUP_TIMEOUT`] passes.
    pub(super) fn wait_for_lookup(&mut self, cref: ConnRef, code: &str, pending: Pending) {
        let now = self.now;
        self.next_job = self.next_job.wrapping_add(1);
        let seq = self.next_job;
        // A creation's check that its code is free expects a miss.
        let create = matches!(&pending, Pending::Rest { req, .. } if req.path == "/api/rooms");
        if !self.store.lookup(code, cref, seq, !create, now) {
            self.store_did_not_answer(cref, pending);
            return;
        }
        // Checking a fresh code is a precaution, not worth a long wait.
        let wait = match &pending {
            Pending::Rest { req, .. } if req.room_code_hint.is_some() => store::FRESH_CODE_WAIT,
            _ => store::LOOKUP_TIMEOUT,
        };
        if self.park(cref, seq, pending) {
            self.timers.arm(now + wait, Timer::Lookup(cref, seq));
        }
    }

    /// A parked request the room store could not answer: 503 `Room store
    /// unavailable` (a join: an `error`), except the check of a fresh room
    /// code, which gives way: the room is created with a code no room in
    /// memory has, so rooms can still be made during an outage.
    pub(super) fn store_did_not_answer(&mut self, cref: ConnRef, pending: Pending) {
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

    /// A parked request carries on once its room is known (looked up in
    /// the store, or followed in cluster mode).
    pub(super) fn carry_on(&mut self, cref: ConnRef, pending: Pending, why: &str) {
        match pending {
            Pending::Rest { req, keep_alive } => {
                self.handle_request(cref, *req, keep_alive, true);
            }
            Pending::Join {
                message,
                authorized,
            } => self.ws_text(cref, &message, authorized.as_ref(), true),
            other => self.give_up(cref, other, why),
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
                Found::Room | Found::Absent => self.carry_on(cref, pending, store::UNAVAILABLE),
            }
            self.resume(cref);
        }
    }

    /// After a parked request was answered: input that arrived meanwhile
    /// is still buffered (or in the kernel), so carry on with it.
    pub(super) fn resume(&mut self, cref: ConnRef) {
        self.reap();
        if let Some(c) = self.conn(cref) {
            match c.state {
                State::Http(_) => self.process_http(cref),
                State::Ws(_) => self.process_ws(cref),
                _ => {}
            }
            self.again.push(cref);
        }
        self.reap();
    }

    /// The replies of the room store, the accounts workers and the broker.
    pub(super) fn parked_replies(&mut self) {
        let mut finished = Vec::new();
        self.store
            .drain(&mut self.rooms, self.now, &mut self.fx, |w, f| {
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
            self.accounts_reply(cref, pending, reply);
            self.resume(cref);
        }
    }

    fn accounts_reply(&mut self, cref: ConnRef, pending: Pending, reply: Reply) {
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
                let a = match (who, self.conn(cref).map(|c| c.peer)) {
                    (Some(who), Some(peer)) => {
                        let now = self.now;
                        let admit = self.memguard.allow_new_websocket(now);
                        let a = routes::create_room(
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
                    }
                    _ => Answer::error(401, "Authentication required"),
                };
                self.answer(cref, &a, origin.as_deref(), req.keep_alive(), false);
            }
            (Pending::Join { message, .. }, Reply::Authorized(who)) => {
                if let Some(who) = who {
                    self.ws_text(cref, &message, Some(&who), false);
                } else {
                    self.send(
                        cref,
                        crate::protocol::out::error_frame("Authentication required"),
                    );
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
    }
}
