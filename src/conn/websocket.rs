//! The engine's WebSocket side: frames decoded from a connection's buffer
//! under its budget, rate and size limits, client messages turned into room
//! actions, and the room effects applied to the connections they name.
//!
//! Fan-out is pure: an effect carries its recipients and a shared frame;
//! queuing costs a reference count and marks the recipient for the
//! end-of-turn flush, which judges the outbound bound
//! (`MAX_OUTBOUND_BYTES`) after handing the socket what it takes.

use super::*;
use crate::accounts::Job;
use crate::ops::metrics::MsgIn;
use crate::protocol::{self, Action};
use crate::ws::{Event, WsError};

impl Engine {
    pub(super) fn process_ws(&mut self, cref: ConnRef) {
        let Some(c) = self.conn(cref) else { return };
        let State::Ws(ws) = &mut c.state else { return };
        let mut decoder = std::mem::take(&mut ws.decoder);
        let mut buf = std::mem::take(&mut c.inbuf);
        let mut pos = 0;
        let mut failure: Option<WsError> = None;
        let (budget, rate, burst) = (
            self.cfg.max_messages_per_turn,
            self.cfg.message_rate,
            self.cfg.message_burst,
        );
        let now = self.now;
        let mut handled = 0;
        // Stop when the connection is closing or parked on a worker. The
        // size limit depends on whether it has joined, which the message
        // before may have changed.
        while let Some(c) = live(&mut self.conns, cref).filter(|c| !c.doomed) {
            let State::Ws(ws) = &mut c.state else { break };
            // Fairness: a budget per turn, a rate per second. What is left
            // waits, unread past the buffer.
            if let Err(wait) = ws.rate.check(rate, burst, now) {
                ws.throttled = true;
                let at = now + wait.min(Duration::from_secs(1));
                self.timers.arm(at, Timer::Resume(cref));
                break;
            }
            if handled >= budget {
                ws.spent = true;
                self.again.push(cref);
                break;
            }
            let max_message = message_limit(&self.cfg, &ws.session);
            match decoder.next(&mut buf[pos..], max_message) {
                Ok(None) => break,
                Ok(Some((event, used))) => {
                    pos += used;
                    // Every event counts against the turn's budget; only
                    // messages (not pings) against the rate, so a flood of
                    // pings from a peer that never reads still ends in 1008.
                    if event.is_some() {
                        handled += 1;
                    }
                    if matches!(event, Some(Event::Text(_) | Event::Binary)) {
                        ws.rate.take();
                    }
                    match event {
                        None => {}
                        Some(Event::Text(text)) => self.ws_text(cref, text, None, false),
                        Some(Event::Binary) => {
                            self.metrics.message_in(MsgIn::Binary);
                            self.send(
                                cref,
                                protocol::out::error_frame(
                                    "Invalid message format: binary frames are not supported",
                                ),
                            )
                        }
                        Some(Event::Ping(p)) => self.send(cref, ws::pong(p)),
                        Some(Event::Pong) => {}
                        Some(Event::Close(code)) => {
                            let reply = match code {
                                Some(c) if ws_code_ok(c) => c,
                                Some(_) => ws::close::PROTOCOL,
                                None => ws::close::NORMAL,
                            };
                            self.doom(cref, Close::Ws(reply, ""));
                            break;
                        }
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        decoder.release();
        buf.drain(..pos);
        release_if_empty(&mut buf);
        if let Some(c) = self.conn(cref) {
            c.inbuf = buf;
            if let Some(ws) = c.ws_mut() {
                ws.decoder = decoder;
            }
        }
        if let Some(e) = failure {
            debug!("[{}] websocket error: {}", cref.key, e.reason());
            if let Some(c) = self.conn(cref) {
                c.inbuf = Vec::new();
            }
            self.doom(cref, Close::Ws(e.close_code(), e.reason()));
        }
        self.check_reassembly(cref);
    }

    /// Recounts what `cref` holds of unfinished messages into the total and
    /// enforces the bounds on it: past `MAX_REASSEMBLY_BYTES` in all, or
    /// past the small pre-join size while the memory guard is engaged, the
    /// connection whose message grew is closed with 1013 (try again later):
    /// the refusal is about the server's state, not the message, which
    /// `MAX_MESSAGE_BYTES` (1009) judges.
    fn check_reassembly(&mut self, cref: ConnRef) {
        let small = self.cfg.max_prejoin_message_bytes;
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let held = c.inbuf.len();
        // A frame whose buffer was reserved whole will grow to that size.
        let to_come = c.inbuf.capacity().saturating_sub(held);
        let Some(ws) = c.ws_mut() else { return };
        // What its input buffer holds after decoding (part of a frame;
        // capacity kept for reuse or reserved ahead is not touched memory,
        // so not counted) and the decoder's fragments.
        let now_held = held + ws.decoder.buffered();
        self.reassembly = self.reassembly - ws.reassembly + now_held;
        ws.reassembly = now_held;
        if now_held <= small {
            return;
        }
        let reason = if self.reassembly > self.cfg.max_reassembly_bytes {
            "Server busy: too much unfinished message data; try again later"
        } else if !self.memguard.allow_growth(self.now, to_come) {
            "Server is at its memory limit; try again later"
        } else {
            return;
        };
        debug!("[{}] unfinished message refused: {reason}", cref.key);
        self.doom(cref, Close::Ws(ws::close::TRY_AGAIN_LATER, reason));
    }

    /// Whether the memory guard refuses an action that would grow memory:
    /// a `sync_document` larger than the stored one, or a broadcast larger
    /// than the small-message size.
    fn memory_refuses(&mut self, cref: ConnRef, action: &Action<'_>) -> bool {
        let Some(State::Ws(ws)) = self.conn_ref(cref).map(|c| &c.state) else {
            return false;
        };
        let session = &ws.session;
        // What the action would allocate (a new frame), if it grows memory.
        let growth = match action {
            Action::SyncDocument { document } => {
                let new = crate::protocol::out::document_frame_len(document.get().len());
                let bigger = session.is_host
                    && session
                        .room
                        .and_then(|r| self.rooms.get(r))
                        .is_some_and(|room| new > room.document_frame_len());
                bigger.then_some(new)
            }
            Action::Broadcast { data } => {
                let n = data.get().len();
                (session.in_room() && n > self.cfg.max_prejoin_message_bytes).then_some(n)
            }
            _ => None,
        };
        growth.is_some_and(|n| !self.memguard.allow_growth(self.now, n))
    }

    /// One client text message. `authorized` is the account of a join the
    /// workers already approved (it skips the `REQUIRE_AUTH` check).
    /// `looked_up`: the room store was asked about the room already.
    pub(super) fn ws_text(
        &mut self,
        cref: ConnRef,
        text: &str,
        authorized: Option<&Principal>,
        looked_up: bool,
    ) {
        let action = match protocol::decode(text) {
            Ok(a) => a,
            Err(detail) => {
                self.metrics.message_in(MsgIn::Invalid);
                self.send(
                    cref,
                    protocol::out::error_frame(&format!("Invalid message format: {detail}")),
                );
                return;
            }
        };
        if self.memory_refuses(cref, &action) {
            // The room keeps its document; the sender may retry later.
            self.send(cref, protocol::out::error_frame(AT_MEMORY_LIMIT));
            return;
        }
        let now = self.now;
        self.metrics.message_in(match action {
            Action::Ping => MsgIn::Ping,
            Action::Join { .. } => MsgIn::Join,
            Action::Broadcast { .. } => MsgIn::Broadcast,
            Action::SyncDocument { .. } => MsgIn::SyncDocument,
            Action::RequestSync => MsgIn::RequestSync,
            Action::Leave => MsgIn::Leave,
        });
        let Some(State::Ws(ws)) = live(&mut self.conns, cref).map(|c| &mut c.state) else {
            return;
        };
        if let Some(room) = ws.session.room {
            self.ops.touch(room, now);
        }
        // Cluster mode: what needs the room's stream waits for nothing when
        // Redis is not there (or too much is on its way to it).
        let streams = matches!(
            action,
            Action::Join { .. } | Action::Broadcast { .. } | Action::SyncDocument { .. }
        );
        if streams && self.cluster.as_ref().is_some_and(|c| !c.accepts()) {
            self.send(
                cref,
                protocol::out::error_frame(crate::cluster::UNAVAILABLE),
            );
            return;
        }
        match action {
            Action::Ping => self.send(cref, protocol::out::pong_frame()),
            Action::Join {
                room_code,
                peer_id,
                is_host,
                metadata,
                token,
                since,
            } => {
                if self.cfg.require_auth() && authorized.is_none() {
                    let token = token
                        .map(|t| t.into_owned())
                        .or_else(|| ws.upgrade_token.as_deref().map(str::to_owned));
                    let Some(token) = token else {
                        self.send(cref, protocol::out::error_frame("Authentication required"));
                        return;
                    };
                    let pending = Pending::Join {
                        message: text.to_owned(),
                        authorized: None,
                    };
                    self.submit(cref, Job::Authorize { token }, pending);
                    return;
                }
                // A client whose lookup budget is spent is refused before it
                // can make the store look anything up.
                let client_ip = ws.client_ip;
                if let Err(wait) = self.misses.peek(&client_ip, now) {
                    debug!("[{}] join refused: lookup budget spent", cref.key);
                    let text = routes::lookups_limited_text(wait);
                    self.send(cref, protocol::out::error_frame(&text));
                    return;
                }
                if !looked_up
                    && self.rooms.find(&room_code).is_none()
                    && self.store.must_look_up(&room_code)
                {
                    let pending = Pending::Join {
                        message: text.to_owned(),
                        authorized: authorized.cloned(),
                    };
                    self.wait_for_lookup(cref, &room_code, pending);
                    return;
                }
                let found = self.rooms.find(&room_code).is_some();
                if let Err(wait) = self.misses.check_lookup(&client_ip, found, now) {
                    debug!("[{}] join refused: lookup budget spent", cref.key);
                    let text = routes::lookups_limited_text(wait);
                    self.send(cref, protocol::out::error_frame(&text));
                    return;
                }
                // Cluster mode: the room's stream is followed from a
                // snapshot before anyone joins it here.
                if self.cluster.is_some()
                    && self
                        .rooms
                        .find(&room_code)
                        .is_some_and(|(_, r)| !r.synced())
                {
                    let pending = Pending::Join {
                        message: text.to_owned(),
                        authorized: authorized.cloned(),
                    };
                    self.cluster_wait_for_snapshot(cref, &room_code, pending);
                    return;
                }
                // REQUIRE_AUTH binds the host role to the creator's account
                // (or an admin's), on top of the secret host id.
                let owner = self.rooms.find(&room_code).and_then(|(_, r)| r.owner());
                if let (true, Some(owner), Some(who)) = (is_host, owner, authorized) {
                    if !who.admin && who.user != owner {
                        self.send(
                            cref,
                            protocol::out::error_frame(
                                "Only the account that created the room (or an admin) may join as its host",
                            ),
                        );
                        return;
                    }
                }
                // ... and a peer id to the account that joined with it: in
                // protected mode another account cannot replace a guest.
                let holder = self
                    .rooms
                    .find(&room_code)
                    .and_then(|(_, r)| r.account_of(&peer_id));
                if let (Some(holder), Some(who)) = (holder, authorized) {
                    if !who.admin && who.user != holder {
                        self.send(
                            cref,
                            protocol::out::error_frame(
                                "This peer_id is in use by another account in this room",
                            ),
                        );
                        return;
                    }
                }
                let Some(State::Ws(ws)) = live(&mut self.conns, cref).map(|c| &mut c.state) else {
                    return;
                };
                self.rooms.join(
                    cref,
                    &mut ws.session,
                    &room_code,
                    &peer_id,
                    is_host,
                    metadata,
                    since,
                    now,
                    std::time::SystemTime::now(),
                    &mut self.fx,
                );
                if let Some(room) = ws.session.room {
                    self.ops.touch(room, now);
                    if let Some(who) = authorized {
                        self.rooms.bind_account(room, cref, &who.user);
                    }
                }
                self.apply_effects();
            }
            Action::Broadcast { data } => {
                self.rooms
                    .broadcast(cref, &ws.session, data, now, &mut self.fx);
                self.apply_effects();
            }
            Action::SyncDocument { document } => {
                self.rooms
                    .sync_document(cref, &ws.session, document, &mut self.fx);
                self.apply_effects();
            }
            Action::RequestSync => {
                self.rooms.request_sync(cref, &ws.session, &mut self.fx);
                self.apply_effects();
            }
            Action::Leave => {
                self.rooms.leave(cref, &mut ws.session, now, &mut self.fx);
                self.apply_effects();
                self.doom(cref, Close::Ws(ws::close::NORMAL, "Left the room"));
            }
        }
    }

    /// Queues a frame for one WebSocket connection.
    pub(super) fn send(&mut self, cref: ConnRef, frame: Frame) {
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let kind = metrics::classify(&frame);
        if push(c, frame) {
            if let Some(kind) = kind {
                self.metrics.delivered(kind, 1);
            }
            self.mark_dirty(cref);
        }
    }

    pub(super) fn apply_effects(&mut self) {
        // Applying effects never produces new ones (closes are deferred to
        // `reap`), so the vector can be taken and given back for reuse.
        let mut fx = std::mem::take(&mut self.fx);
        for effect in fx.drain(..) {
            match effect {
                Effect::Send(to, frame) => self.send(to, frame),
                Effect::Fanout { to, frame } => {
                    let kind = metrics::classify(&frame);
                    let mut delivered = 0;
                    for to in to {
                        let Some(c) = live(&mut self.conns, to) else {
                            continue;
                        };
                        if push(c, frame.clone()) {
                            delivered += 1;
                            if !c.dirty {
                                c.dirty = true;
                                self.dirty.push(to);
                            }
                        }
                    }
                    if let Some(kind) = kind {
                        self.metrics.delivered(kind, delivered);
                    }
                }
                Effect::Close(to, code, reason) => {
                    // The room already removed this member.
                    if let Some(ws) = live(&mut self.conns, to).and_then(|c| c.ws_mut()) {
                        ws.session = Session::default();
                    }
                    self.doom(to, Close::Ws(code, reason));
                }
                Effect::ExpireAt(room, at) => self.timers.arm(at, Timer::Room(room)),
                Effect::Persist(room) => {
                    if let Some(r) = self.rooms.get(room) {
                        self.store.changed(r.code(), self.now);
                    }
                }
                Effect::Publish {
                    room,
                    except,
                    what,
                    frame,
                } => self.cluster_publish(room, except, what, frame),
            }
        }
        debug_assert!(self.fx.is_empty());
        self.fx = fx;
    }
}

/// Queues `frame` on a WebSocket connection that is not on its way out
/// (one that is ends its stream cleanly where it is). Whether the queue is
/// over `MAX_OUTBOUND_BYTES` is judged at the flush, once the socket took
/// what it would: a burst fanned out in one turn may overshoot the bound
/// although the peer keeps up.
fn push(c: &mut Conn, frame: Frame) -> bool {
    if c.doomed || matches!(c.state, State::Closing(_)) {
        return false;
    }
    c.out.push(frame);
    true
}
