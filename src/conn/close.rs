//! How connections end, one at a time and all together.
//!
//! [`Engine::close`] is the one way out: it takes the connection out of its
//! room first (so the others hear `peer_left` in order), queues the goodbye
//! the state calls for, and either drops the connection or lets it linger
//! until its last bytes are read. It is idempotent. Closes asked for while
//! effects are applied are queued by [`Engine::doom`] and carried out by
//! [`Engine::reap`]. Shutdown says goodbye to every socket and writes every
//! unsaved room before [`Engine::finished`] lets the loop end.

use super::*;

impl Engine {
    /// Asks for a close from inside effect application: deferred to `reap`.
    pub(super) fn doom(&mut self, cref: ConnRef, how: Close) {
        if let Some(c) = self.conn(cref) {
            if !c.doomed {
                c.doomed = true;
                self.doomed.push((cref, how));
            }
        }
    }

    /// Carries out deferred closes (which may cause more).
    pub(super) fn reap(&mut self) {
        while let Some((cref, how)) = self.doomed.pop() {
            if let Some(c) = self.conn(cref) {
                c.doomed = false;
            }
            self.close(cref, how);
        }
    }

    /// The one way a connection ends. Idempotent.
    pub(super) fn close(&mut self, cref: ConnRef, how: Close) {
        let now = self.now;
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        // Leave the room first so the others hear `peer_left` in order.
        if let Some(session) = c.ws_mut().map(|ws| &mut ws.session) {
            if let Some(room) = session.room {
                self.ops.touch(room, now);
                self.rooms.leave(cref, session, now, &mut self.fx);
                self.apply_effects();
            }
        }
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let already_closing = matches!(c.state, State::Closing(_));
        let websocket = c.is_websocket();
        if websocket {
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
                if websocket {
                    if code == ws::close::POLICY {
                        // Whole frames only: keep the one being written.
                        c.out.truncate_to_front();
                    }
                    c.out.push(ws::close_frame(code, reason));
                }
            }
            Close::Linger => {}
        }
        // A peer that already finished sending needs no lingering once our
        // last bytes are out.
        let peer_eof = match &c.state {
            State::Http(h) => h.peer_eof,
            _ => c.ws().is_some_and(|ws| ws.eof),
        };
        let old = std::mem::replace(
            &mut c.state,
            State::Closing(Closing {
                write_shut: false,
                peer_eof,
            }),
        );
        self.forget_counts(&old);
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        // Input is read (and dropped) until the peer closes: a peer still
        // writing must not be left blocked. Reading may have stopped short
        // (a close asked mid-read, a budget, a rate), and with edge-triggered
        // polling no new edge comes for what is already in the kernel: read
        // on from `again`.
        self.again.push(cref);
        c.inbuf = Vec::new();
        if c.out.is_empty() {
            if let State::Closing(cl) = &mut c.state {
                cl.write_shut = true;
            }
            self.io.push(Io::ShutdownWrite(cref));
        }
        self.timers.arm(now + LINGER, Timer::Linger(cref));
        self.mark_dirty(cref);
    }

    /// Takes what a state that ends counted out of the totals.
    pub(super) fn forget_counts(&mut self, old: &State) {
        let (http, ws) = match old {
            State::Http(h) => (Some(&**h), None),
            State::Ws(ws) => (None, Some(&**ws)),
            State::Waiting(w) => match &w.back {
                Back::Http(h) => (Some(&**h), None),
                Back::Ws(ws) => (None, Some(&**ws)),
            },
            State::Closing(_) => (None, None),
        };
        if let Some(h) = http {
            self.http_backlog -= h.queued;
            self.reassembly -= h.unparsed;
        }
        if let Some(ws) = ws {
            self.reassembly -= ws.reassembly;
        }
    }

    fn remove(&mut self, cref: ConnRef) {
        if !self.is_live(cref) {
            return;
        }
        let c = self.conns.remove(cref.key as usize);
        self.forget_counts(&c.state);
        self.io.push(Io::Drop(cref));
        debug!("[{}] closed", cref.key);
    }

    // ---- shutting down ---------------------------------------------------

    /// SIGTERM, SIGINT or SIGHUP arrived.
    pub fn signal(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        // Cluster mode: /readyz says 503 first and the node keeps serving
        // for a short drain, so the load balancer stops sending clients
        // here before the sockets are closed.
        if let Some(c) = self.cluster.as_ref() {
            if self.draining.is_none() {
                let at = self.now + c.cfg.grace;
                info!("draining for {:?} before closing", c.cfg.grace);
                self.draining = Some(at);
                self.timers.arm(at, Timer::Drained);
                return;
            }
        }
        self.shut_down();
    }

    /// Stops accepting, says goodbye to every socket and writes every
    /// unsaved room; [`Engine::finished`] says when that is done.
    pub(super) fn shut_down(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        self.io.push(Io::StopListening);
        self.store.flush_all();
        let deadline = self.now + SHUTDOWN_GRACE;
        self.shutting_down = Some(deadline);
        self.timers.arm(deadline, Timer::Shutdown);
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
            if c.is_websocket() {
                self.close(
                    cref,
                    Close::Ws(ws::close::GOING_AWAY, "Server shutting down"),
                );
                continue;
            }
            let owes = !c.out.is_empty();
            match &mut c.state {
                // A complete request already read is answered (and the
                // answer closes); nothing owed, or half a request: go now.
                State::Http(_) if !owes => {
                    if matches!(http::parse_request(&c.inbuf, max_body), Ok(Some(_))) {
                        self.again.push(cref);
                    } else {
                        self.close(cref, Close::Abort);
                    }
                }
                State::Closing(_) => {}
                _ => {
                    if let Some(h) = c.http_mut() {
                        h.close_when_flushed = true;
                    }
                    self.mark_dirty(cref);
                }
            }
        }
        self.reap();
    }

    /// After shutdown began: whether the loop may end (every connection
    /// gone and every room written, or the grace is over). Stops the
    /// workers when it says yes.
    pub fn finished(&mut self) -> bool {
        let Some(deadline) = self.shutting_down else {
            return false;
        };
        let done = self.conns.is_empty() && self.store.is_idle();
        if !done && self.now < deadline {
            return false;
        }
        info!("shutdown complete ({} connections left)", self.conns.len());
        if let Some(a) = self.accounts.take() {
            a.shutdown();
        }
        let store = std::mem::replace(&mut self.store, RoomStore::memory());
        store.shutdown();
        if let Some(c) = self.cluster.as_mut() {
            c.shutdown();
        }
        true
    }
}
