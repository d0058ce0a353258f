//! The engine's timers: request and keepalive deadlines, lingering closes,
//! workers that did not answer, idle rooms, throttled readers, the drain
//! and shutdown, and housekeeping. All of them live in one heap; the
//! shell's poll sleeps until the next one is due ([`Engine::timeout`]).

use super::*;

impl Engine {
    /// Fires every timer due at the engine's `now`. `unsent` tells how many
    /// bytes the kernel still has to send on a connection (SIOCOUTQ), the
    /// one fact about a socket a timer needs: whether a peer holding back
    /// our answers reads at all.
    pub fn fire_timers(&mut self, unsent: &mut dyn FnMut(ConnRef) -> Option<u32>) {
        let now = self.now;
        while let Some((_, t)) = self.timers.pop_due(now) {
            match t {
                Timer::Request(cref) => self.request_timer(cref, unsent),
                Timer::Ping(cref) => {
                    let interval = self.cfg.ping_interval;
                    let Some(ws) = self.conn(cref).and_then(|c| c.ws()) else {
                        continue;
                    };
                    if now.saturating_duration_since(ws.last_seen) >= interval * 2 {
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
                Timer::Shutdown => {}
                Timer::Resume(cref) => {
                    let Some(State::Ws(ws)) = self.conn(cref).map(|c| &mut c.state) else {
                        continue;
                    };
                    if std::mem::take(&mut ws.throttled) {
                        self.process_ws(cref);
                        // The shell reads on from `again`.
                        self.again.push(cref);
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

    fn request_timer(&mut self, cref: ConnRef, unsent: &mut dyn FnMut(ConnRef) -> Option<u32>) {
        let now = self.now;
        let timeout = self.cfg.request_timeout;
        let Some(c) = self.conn(cref) else { return };
        let (idle, owes) = (c.inbuf.is_empty(), !c.out.is_empty());
        let State::Http(h) = &mut c.state else { return };
        h.request_timer = false;
        if h.deadline > now {
            // The deadline moved on since this was armed.
            self.arm_request_timer(cref);
            return;
        }
        if let Some(seen) = h.held {
            // Our queue only shrinks when the kernel's has drained far
            // enough to raise a writable edge, which a slow but steady
            // reader may take longer than a timeout to do: ask the kernel
            // whether the peer read anything since the last look.
            let left = unsent(cref);
            h.held = Some(left.unwrap_or(0));
            if left.is_some_and(|n| seen == 0 || n < seen) {
                h.deadline = now + timeout;
                self.arm_request_timer(cref);
            } else {
                // A whole timeout without the peer reading any of its
                // answers: it gets LINGER, then it goes.
                self.close(cref, Close::Linger);
            }
        } else if idle && owes {
            // Nothing new asked, but the last answer is still on its way
            // to a slow reader: it gets LINGER.
            self.close(cref, Close::Linger);
        } else if idle {
            // An idle keep-alive connection: nothing to answer.
            self.close(cref, Close::Abort);
        } else {
            c.inbuf = Vec::new();
            h.route = Route::Invalid;
            let a = Answer::error(408, "Request not completed in time");
            self.answer(cref, &a, None, false, false);
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
            self.io.push(Io::Trim);
            trim = true;
        }
        // Many small frames freed at once (a drained queue of a million
        // pongs, say) leave free memory that glibc keeps unless asked.
        if trim || crate::ops::memguard::free_heap_bytes() > TRIM_SLACK_BYTES {
            crate::ops::memguard::release_free_memory();
        }
    }
}
