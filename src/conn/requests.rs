//! The engine's HTTP side: requests parsed from a connection's buffer,
//! routed, parked on a worker or answered, and the upgrade to WebSocket.
//!
//! Every answer goes through [`Engine::answer`], so the contract's rules
//! hold for every route, parked or not: CORS on every answer (the 101
//! included), and after 400/408/413/431 the connection closes, since the
//! peer and the server may no longer agree where the next request starts.

use super::routes::{Routed, Stats};
use super::*;
use crate::accounts::{AuthRequest, Job};
use crate::http::Method;

/// Why a request still arriving is refused (503) when unfinished input
/// across all connections is over `MAX_REASSEMBLY_BYTES`.
const UNFINISHED_OVER: &str = "Server busy: too much unfinished request data; try again later";

impl Engine {
    /// Answers what `cref` has buffered, then counts what is left of an
    /// unfinished request into the total of unfinished input.
    pub(super) fn process_http(&mut self, cref: ConnRef) {
        self.answer_buffered(cref);
        self.count_unparsed(cref);
    }

    /// Recounts `cref`'s partial request into the total and enforces the
    /// bound on it. A request still within its head's size is never
    /// refused (every client needs that much); one whose body is arriving
    /// while the total is over gets 503, and the connection closes, since
    /// the rest of its body would be read as the next request.
    fn count_unparsed(&mut self, cref: ConnRef) {
        let max = self.cfg.max_reassembly_bytes;
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let held = c.inbuf.len();
        let State::Http(h) = &mut c.state else { return };
        self.reassembly = self.reassembly - h.unparsed + held;
        h.unparsed = held;
        if held <= crate::config::MAX_HEADER_BYTES || self.reassembly <= max {
            return;
        }
        debug!("[{}] unfinished request refused: over the total", cref.key);
        c.inbuf = Vec::new();
        self.reassembly -= std::mem::take(&mut h.unparsed);
        self.metrics.rejected(Reject::UnfinishedInput);
        let a = Answer::error(503, UNFINISHED_OVER);
        self.answer(cref, &a, None, false, false);
    }

    fn answer_buffered(&mut self, cref: ConnRef) {
        loop {
            let max_body = self.cfg.max_body_bytes;
            let total_over = self.http_backlog >= self.cfg.max_http_backlog_bytes;
            let Some(c) = live(&mut self.conns, cref) else {
                return;
            };
            let owes = !c.out.is_empty();
            let cost = c.out.cost();
            let State::Http(h) = &mut c.state else { return };
            if c.doomed || h.close_when_flushed {
                // Nothing after a `Connection: close` request is answered.
                return;
            }
            if cost >= HTTP_BACKLOG || (total_over && owes) {
                // A pipelining peer that does not read its answers: hold
                // its further requests until it does (resumed by the
                // flush). Past the total across connections, every peer
                // with an answer still unread waits; one reading its
                // answers resumes once it has read them all.
                h.held.get_or_insert(0);
                return;
            }
            let (req, used) = match http::parse_request(&c.inbuf, max_body) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    release_if_empty(&mut c.inbuf);
                    // The head is in and the client waits for our word
                    // before sending the body (RFC 9110 §10.1.1). Limits on
                    // the declared size were checked already.
                    if !h.head_seen {
                        if let Some(expects) = http::head_expects_continue(&c.inbuf) {
                            h.head_seen = true;
                            if expects {
                                c.out
                                    .push(Frame::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
                                self.mark_dirty(cref);
                            }
                        }
                    }
                    return;
                }
                Err(e) => {
                    debug!("[{}] bad request: {e:?}", cref.key);
                    c.inbuf = Vec::new();
                    h.route = Route::Invalid;
                    let answer = Answer::error(e.status(), e.message());
                    self.answer(cref, &answer, None, false, false);
                    return;
                }
            };
            c.inbuf.drain(..used);
            let keep_alive = req.keep_alive() && self.shutting_down.is_none();
            self.handle_request(cref, req, keep_alive, false);
        }
    }

    /// Routes one request. `looked_up`: the room store was asked about the
    /// room it names already (so a room not in memory does not exist).
    pub(super) fn handle_request(
        &mut self,
        cref: ConnRef,
        mut req: Request,
        keep_alive: bool,
        looked_up: bool,
    ) {
        if !looked_up {
            if let Some(code) = routes::room_code_of(&req) {
                if self.rooms.find(&code).is_none() && self.store.must_look_up(&code) {
                    let pending = Pending::Rest {
                        req: Box::new(req),
                        keep_alive,
                    };
                    self.wait_for_lookup(cref, &code, pending);
                    return;
                }
            } else if req.path == "/api/rooms"
                && req.method() == Method::Post
                && req.room_code_hint.is_none()
            {
                // A new room gets a random code. One that only the store
                // holds (its room not in memory) must not be drawn: saving
                // the new room would replace the stored one. Ask first.
                let code = self.rooms.draw_code(&mut crate::util::fill_random);
                if self.store.must_look_up(&code) {
                    req.room_code_hint = Some(code.clone());
                    let pending = Pending::Rest {
                        req: Box::new(req),
                        keep_alive,
                    };
                    self.wait_for_lookup(cref, &code, pending);
                    return;
                }
            }
        }
        // Cluster mode: a room's peers are those of every node, known once
        // this node follows the room's stream.
        if self.cluster.is_some() && req.path.starts_with("/api/rooms/") {
            if let Some(code) = routes::room_code_of(&req) {
                if self.rooms.find(&code).is_some_and(|(_, r)| !r.synced()) {
                    let pending = Pending::Rest {
                        req: Box::new(req),
                        keep_alive,
                    };
                    self.cluster_wait_for_snapshot(cref, &code, pending);
                    return;
                }
            }
        }
        let Some(c) = self.conn(cref) else { return };
        let peer = c.peer;
        let route = crate::ops::route_class(req.method(), &req.path);
        if let Some(h) = c.http_mut() {
            h.route = route;
        }
        if self.ops_request(cref, route, &req, keep_alive) {
            return;
        }
        let now = self.now;
        let connections = self.conns.len();
        let store = self
            .accounts
            .as_ref()
            .map_or("disabled", |a| a.store_status());
        // Only room creation asks the guard: a sample may read /proc, and
        // other routes allocate nothing that lasts.
        let admit_new_rooms = !(req.path == "/api/rooms" && req.method() == Method::Post)
            || self.memguard.allow_new_websocket(now);
        let stats = Stats {
            connections,
            started: self.started,
            store,
            admit_new_rooms,
            room_store: self.store.health(now),
            cluster: self.cluster.as_ref().map(|c| c.health()),
        };
        let routed = routes::route(
            &self.cfg,
            &mut self.rooms,
            &mut self.limiter,
            &mut self.misses,
            &stats,
            peer,
            &req,
            now,
            &mut self.fx,
        );
        self.apply_effects();
        debug!("[{}] {} {}", cref.key, req.method().as_str(), req.path);
        match routed {
            Routed::Answer(a) => {
                match (route, a.status) {
                    (Route::RoomsCreate, 429) => self.metrics.rejected(Reject::RoomCreateRate),
                    (Route::RoomsGet, 429) => self.metrics.rejected(Reject::RoomLookupRate),
                    (Route::RoomsCreate, 503) => self.metrics.rejected(Reject::MemoryGuard),
                    (Route::Auth, 503) => self.metrics.rejected(Reject::AccountsNotConfigured),
                    _ => {}
                }
                let head = req.method() == Method::Head;
                self.answer(cref, &a, req.origin.as_deref(), keep_alive, head);
            }
            Routed::Upgrade => self.upgrade(cref, &req),
            Routed::Accounts => {
                let client_ip = routes::client_ip(&self.cfg, peer, &req);
                let job = Job::Http(AuthRequest {
                    method: req.method().as_str().to_owned(),
                    path: req.path.clone(),
                    query: req.query.clone(),
                    authorization: req.authorization.clone(),
                    setup_token: req.setup_token.clone(),
                    body: req.body,
                    client_ip,
                });
                let pending = Pending::Accounts {
                    keep_alive,
                    origin: req.origin.clone(),
                };
                self.submit(cref, job, pending);
            }
            Routed::AuthorizeThenCreate(token) => {
                let origin = req.origin.clone();
                self.submit(
                    cref,
                    Job::Authorize { token },
                    Pending::CreateRoom {
                        req: Box::new(req),
                        origin,
                    },
                );
            }
        }
    }

    /// Queues one whole HTTP answer on `cref`: an exact-size buffer, so the
    /// queue's cost is the memory it holds, counted into the total of
    /// queued HTTP answers.
    pub(super) fn queue_answer(
        &mut self,
        cref: ConnRef,
        status: u16,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        self.metrics.http_answer(c.route(), status);
        let mut buf = Vec::with_capacity(256);
        write(&mut buf);
        buf.shrink_to_fit();
        c.out.push(Frame::from(buf));
        count_http(&mut self.http_backlog, c);
        self.mark_dirty(cref);
    }

    /// Answers one HTTP request and sets up what follows it: the next
    /// request on a kept-alive connection, or the close.
    pub(super) fn answer(
        &mut self,
        cref: ConnRef,
        a: &Answer,
        origin: Option<&str>,
        keep_alive: bool,
        head: bool,
    ) {
        let keep = keep_alive && self.shutting_down.is_none() && !http::closes_connection(a.status);
        let cors = routes::cors_origin(&self.cfg, origin);
        self.queue_answer(cref, a.status, |buf| {
            http::write_response(buf, a, cors, !keep, head)
        });
        self.after_response(cref, keep);
    }

    pub(super) fn after_response(&mut self, cref: ConnRef, keep_alive: bool) {
        let deadline = self.now + self.cfg.request_timeout;
        let Some(c) = self.conn(cref) else { return };
        if !keep_alive {
            // Nothing more is read or answered; the answer gets LINGER to
            // leave, and then the connection goes whatever the peer does.
            self.close(cref, Close::Linger);
            return;
        }
        if let State::Http(h) = &mut c.state {
            h.deadline = deadline;
            h.head_seen = false;
            h.between = true;
        }
        self.arm_request_timer(cref);
    }

    /// Arms the connection's request timer for its deadline unless one is
    /// pending already (it fires no later, then re-arms).
    pub(super) fn arm_request_timer(&mut self, cref: ConnRef) {
        let Some(State::Http(h)) = live(&mut self.conns, cref).map(|c| &mut c.state) else {
            return;
        };
        if !h.request_timer {
            h.request_timer = true;
            self.timers.arm(h.deadline, Timer::Request(cref));
        }
    }

    fn upgrade(&mut self, cref: ConnRef, req: &Request) {
        if !self.memguard.allow_new_websocket(self.now) {
            self.metrics.rejected(Reject::MemoryGuard);
            let a = Answer::error(503, routes::NEAR_MEMORY_LIMIT);
            self.answer(cref, &a, req.origin.as_deref(), false, false);
            return;
        }
        let key = req.ws_key.as_deref().unwrap_or_default();
        let cors = routes::cors_origin(&self.cfg, req.origin.as_deref());
        let upgrade_token = http::bearer(req.authorization.as_deref())
            .map(str::to_owned)
            .or_else(|| req.query_param("token"))
            .map(String::into_boxed_str);
        let now = self.now;
        let interval = self.cfg.ping_interval;
        let burst = self.cfg.message_burst;
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        let client_ip = routes::client_ip(&self.cfg, c.peer, req);
        let mut resp = Vec::with_capacity(256);
        http::write_switching(&mut resp, key, cors);
        c.out.push(Frame::from(resp));
        let old = std::mem::replace(
            &mut c.state,
            State::Ws(Box::new(WsConn {
                decoder: Decoder::default(),
                session: Session::default(),
                last_seen: now,
                upgrade_token,
                client_ip,
                rate: crate::ratelimit::TokenBucket::new(burst, now),
                reassembly: 0,
                spent: false,
                throttled: false,
                eof: false,
            })),
        );
        self.forget_counts(&old);
        self.timers.arm(now + interval, Timer::Ping(cref));
        self.mark_dirty(cref);
        self.metrics.websockets_accepted += 1;
        self.metrics.http_answer(Route::Ws, 101);
        debug!("[{}] websocket open", cref.key);
        // Frames pipelined behind the upgrade request are already buffered.
        self.process_ws(cref);
    }
}
