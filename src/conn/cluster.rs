//! The loop's side of cluster mode: hands stream events to the broker,
//! feeds what comes back through the order core into the rooms, parks
//! joins until their room is followed, and watches the broker's health
//! (grace period, readiness, figures).
//!
//! Invariants:
//! * Every call into the rooms that can produce effects is followed by
//!   `apply_effects` before anything else touches the rooms.
//! * A publish that failed for a join or leave leaves this node's presence
//!   in Redis unknown: when the command connection is back, every local
//!   member is closed with 1013 and the node's presence is cleared as a
//!   whole (with `peer_left` for each) before anything else is published.

use super::*;
use crate::cluster::broker::{Broker, BrokerConfig, Cmd, Pub, Reply};
use crate::cluster::order::{Order, Out};
use crate::cluster::{self, ClusterConfig, Message};
use crate::ops::metrics::ClusterGauges;
use crate::rooms::{Delivery, Published};
use std::collections::{HashMap, HashSet};

/// Events held ahead of a gap per room before the room is given up.
const HELD_LIMIT: usize = 1024;

/// Joins waiting for one room's snapshot: asked at, and the waiters.
type SnapshotWait = (Instant, Vec<(ConnRef, u32)>);

/// What a publish in flight was for.
struct Flight {
    conn: Option<ConnRef>,
    kind: u8,
}

pub(super) struct ClusterState {
    pub cfg: ClusterConfig,
    broker: Option<Broker>,
    order: Order<Message>,
    pub commands_up: bool,
    pub subscriber_up: bool,
    subscribed_before: bool,
    /// Since when Redis has been (partly) unreachable.
    down_since: Option<Instant>,
    /// The grace period ran out and the members were closed.
    closed_for_outage: bool,
    inflight: HashMap<u64, Flight>,
    next_token: u64,
    /// Joins waiting for a room's snapshot: room code → (asked at, waiters).
    snapshots: HashMap<Box<str>, SnapshotWait>,
    presence_dirty: bool,
    /// A [`Cmd::ClearOwn`] is under way.
    clearing: bool,
    nodes_seen: HashSet<Box<str>>,
    /// The counters of `/metrics`; `redis_up` and `in_flight` are filled
    /// in when asked ([`ClusterState::gauges`]).
    pub figures: ClusterGauges,
}

impl ClusterState {
    pub fn start(
        cfg: ClusterConfig,
        history_size: usize,
        waker: Arc<Waker>,
    ) -> Result<ClusterState, String> {
        let broker = Broker::start(
            BrokerConfig {
                url: cfg.redis_url.clone(),
                node_id: cfg.node_id.clone(),
                node_ttl: cfg.node_ttl,
                // The stream is also what gaps are filled from: never
                // shorter than a burst a node may miss.
                maxlen: history_size.max(64),
            },
            waker,
        )?;
        info!(
            "cluster mode: node {} (NODE_TTL_SECONDS={})",
            cfg.node_id,
            cfg.node_ttl.as_secs()
        );
        let mut nodes_seen = HashSet::new();
        nodes_seen.insert(cfg.node_id.as_str().into());
        Ok(ClusterState {
            order: Order::new(HELD_LIMIT, cluster::FETCH_TIMEOUT),
            broker: Some(broker),
            cfg,
            commands_up: false,
            subscriber_up: false,
            subscribed_before: false,
            down_since: Some(Instant::now()),
            closed_for_outage: false,
            inflight: HashMap::new(),
            next_token: 0,
            snapshots: HashMap::new(),
            presence_dirty: false,
            clearing: false,
            nodes_seen,
            figures: ClusterGauges::default(),
        })
    }

    pub fn up(&self) -> bool {
        self.commands_up && self.subscriber_up && !self.presence_dirty
    }

    /// Whether a stream action may be taken now.
    pub fn accepts(&self) -> bool {
        self.up() && self.inflight.len() < cluster::MAX_IN_FLIGHT
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let grace = self
            .down_since
            .filter(|_| !self.closed_for_outage)
            .map(|t| t + self.cfg.grace);
        let snap = self
            .snapshots
            .values()
            .map(|(at, _)| *at + cluster::SNAPSHOT_TIMEOUT)
            .min();
        [self.order.next_deadline(), grace, snap]
            .into_iter()
            .flatten()
            .min()
    }

    fn submit(&mut self, cmd: Cmd) -> bool {
        self.broker.as_ref().is_some_and(|b| b.submit(cmd))
    }

    /// `/health`'s `cluster` object.
    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "node_id": self.cfg.node_id,
            "nodes_seen": self.nodes_seen.len(),
            "broker": if self.up() { "ok" } else { "unavailable" },
            "redis_commands": if self.commands_up { "ok" } else { "unavailable" },
            "redis_subscriber": if self.subscriber_up { "ok" } else { "unavailable" },
            "rooms_followed": self.order.len(),
            "publishes_in_flight": self.inflight.len(),
            "events_held_for_gaps": self.order.held(),
        })
    }

    pub fn gauges(&self) -> ClusterGauges {
        ClusterGauges {
            redis_up: self.up(),
            in_flight: self.inflight.len() as u64,
            ..self.figures
        }
    }

    pub fn shutdown(&mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown(Duration::from_secs(3));
        }
    }
}

impl Engine {
    /// Cluster mode: a stream event goes to Redis to be numbered.
    pub(super) fn cluster_publish(
        &mut self,
        room: RoomRef,
        except: Option<ConnRef>,
        what: Published,
        frame: Frame,
    ) {
        let Some(cl) = self.cluster.as_mut() else {
            return;
        };
        let Some(code) = self.rooms.get(room).map(|r| Box::<str>::from(r.code())) else {
            return;
        };
        let Some(body) = cluster::body_of(&frame) else {
            warn!("cluster: an event frame without its placeholder number");
            return;
        };
        let node = cl.cfg.node_id.as_str();
        let (kind, conn, ev) = match what {
            Published::Data => (
                b'd',
                except,
                Pub::Event {
                    kind: b'd',
                    head: cluster::head(node, except, b'd', ""),
                    body,
                },
            ),
            Published::Document => (
                b's',
                except,
                Pub::Event {
                    kind: b's',
                    head: cluster::head(node, except, b's', ""),
                    body,
                },
            ),
            Published::Joined {
                conn,
                shown,
                peer_json,
            } => {
                let c = cluster::conn_text(conn);
                let left_body = format!(
                    r#"{{"type":"peer_left","peer_id":{}"#,
                    crate::util::json_str(&shown)
                );
                (
                    b'j',
                    Some(conn),
                    Pub::Join {
                        presence: format!("{node}|{c}|{peer_json}"),
                        head: cluster::head(node, except, b'j', &shown),
                        shown,
                        body,
                        left_body,
                    },
                )
            }
            Published::Left { conn, shown } => (
                b'l',
                Some(conn),
                Pub::Leave {
                    conn: cluster::conn_text(conn),
                    head: cluster::head(node, except, b'l', &shown),
                    shown,
                    body,
                },
            ),
        };
        cl.next_token += 1;
        let token = cl.next_token;
        let ok = cl.inflight.len() < cluster::MAX_IN_FLIGHT
            && cl.submit(Cmd::Publish {
                token,
                code,
                ev: Box::new(ev),
            });
        if ok {
            cl.inflight.insert(token, Flight { conn, kind });
        } else {
            self.cluster_publish_failed(conn, kind);
        }
    }

    fn cluster_publish_failed(&mut self, conn: Option<ConnRef>, kind: u8) {
        let Some(cl) = self.cluster.as_mut() else {
            return;
        };
        cl.figures.publish_failed += 1;
        match kind {
            b'd' | b's' => {
                if let Some(c) = conn {
                    self.send(c, crate::protocol::out::error_frame(cluster::UNAVAILABLE));
                }
            }
            _ => {
                // This node's presence in Redis is no longer known.
                cl.presence_dirty = true;
                if let (b'j', Some(c)) = (kind, conn) {
                    self.send(c, crate::protocol::out::error_frame(cluster::UNAVAILABLE));
                    self.doom(
                        c,
                        Close::Ws(crate::ws::close::TRY_AGAIN_LATER, "Try again later"),
                    );
                }
            }
        }
    }

    /// Cluster mode: a join (or a REST request) for a room this node does
    /// not follow yet waits for the room's snapshot (shared by every
    /// request for it), or is answered `Service unavailable`.
    pub(super) fn cluster_wait_for_snapshot(
        &mut self,
        cref: ConnRef,
        code: &str,
        pending: Pending,
    ) {
        let Some(cl) = self.cluster.as_mut() else {
            return;
        };
        let now = self.now;
        self.next_job = self.next_job.wrapping_add(1);
        let seq = self.next_job;
        let asked = match cl.snapshots.get_mut(code) {
            Some((at, waiters))
                if now.saturating_duration_since(*at) < cluster::SNAPSHOT_TIMEOUT =>
            {
                waiters.push((cref, seq));
                true
            }
            _ => {
                let ok = cl.submit(Cmd::Snapshot { code: code.into() });
                if ok {
                    cl.snapshots.insert(code.into(), (now, vec![(cref, seq)]));
                }
                ok
            }
        };
        if !asked {
            self.give_up(cref, pending, cluster::UNAVAILABLE);
            return;
        }
        self.park(cref, seq, pending);
    }

    /// Everything the broker's threads sent back.
    pub(super) fn cluster_replies(&mut self) {
        if let Some(b) = self.cluster.as_ref().and_then(|c| c.broker.as_ref()) {
            b.rearm();
        }
        loop {
            let Some(reply) = self
                .cluster
                .as_ref()
                .and_then(|c| c.broker.as_ref())
                .and_then(|b| b.try_recv())
            else {
                return;
            };
            self.cluster_reply(reply);
            self.reap();
        }
    }

    fn cluster_reply(&mut self, reply: Reply) {
        let now = self.now;
        let Some(cl) = self.cluster.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        match reply {
            Reply::Commands(up) => {
                cl.commands_up = up;
                self.cluster_status_changed(now);
            }
            Reply::Subscriber(up) => {
                cl.subscriber_up = up;
                if up {
                    if cl.subscribed_before {
                        // Messages may have been missed meanwhile.
                        cl.order.catch_up(now, &mut out);
                    }
                    cl.subscribed_before = true;
                }
                self.cluster_status_changed(now);
            }
            Reply::Published { token, seq } => {
                if let Some(f) = cl.inflight.remove(&token) {
                    if seq.is_some() {
                        cl.figures.published += 1;
                    } else {
                        self.cluster_publish_failed(f.conn, f.kind);
                    }
                }
            }
            Reply::Cleared(ok) => {
                cl.clearing = false;
                if ok {
                    cl.presence_dirty = false;
                }
            }
            Reply::Reaped(n) => {
                cl.figures.reaped_peers += n;
                info!("cluster: removed {n} peers of nodes that stopped answering");
            }
            Reply::Snapshot { code, snap } => {
                let waiters = cl
                    .snapshots
                    .remove(&code)
                    .map(|(_, w)| w)
                    .unwrap_or_default();
                let started = match (snap, self.rooms.find(&code).map(|(r, _)| r)) {
                    (Some((epoch, seq, entries, recent)), Some(r)) => {
                        let mut peers = Vec::new();
                        for (shown, value) in entries {
                            // `<node>|<conn>|<peer json>`
                            let mut parts = value.splitn(3, |&b| b == b'|');
                            let node = parts.next().unwrap_or_default();
                            let _conn = parts.next();
                            let Some(json) = parts.next() else { continue };
                            let node = String::from_utf8_lossy(node);
                            cl.nodes_seen.insert(node.as_ref().into());
                            peers.push((
                                shown.into_boxed_str(),
                                String::from_utf8_lossy(json).into_owned().into_boxed_str(),
                            ));
                        }
                        self.rooms
                            .cluster_start(r, &epoch, seq, peers, now, &mut self.fx);
                        let (floor, doc_seq, history) = cluster::recent_history(seq, recent);
                        self.rooms.cluster_history(r, floor, doc_seq, history, now);
                        let cl = self.cluster.as_mut().expect("cluster");
                        cl.order.start(&code, &epoch, seq);
                        // Events published between the snapshot and now may
                        // have been passed over: read them.
                        cl.order.check(&code, now, &mut out);
                        self.apply_effects();
                        true
                    }
                    _ => false,
                };
                for (cref, seq) in waiters {
                    let Some(pending) = self.take_pending(cref, seq) else {
                        continue;
                    };
                    if started {
                        self.carry_on(cref, pending, cluster::UNAVAILABLE);
                    } else {
                        self.give_up(cref, pending, cluster::UNAVAILABLE);
                    }
                    self.resume(cref);
                }
            }
            Reply::Fetched { code, from: _, got } => {
                cl.figures.gap_reads += 1;
                match got {
                    Some((epoch, seq, msgs)) => {
                        let events: Vec<(u64, Message)> = msgs
                            .into_iter()
                            .filter_map(Message::parse)
                            .map(|m| (m.seq, m))
                            .collect();
                        let epoch = (!epoch.is_empty()).then_some(epoch.as_str());
                        cl.order.fetched(&code, epoch, seq, events, now, &mut out);
                    }
                    // Redis went away meanwhile: wait for it (or for the
                    // outage's grace period) rather than reset at once.
                    None if !(cl.commands_up && cl.subscriber_up) => cl.order.fetch_deferred(&code),
                    None => cl.order.fetch_failed(&code, &mut out),
                }
            }
            // An answer for an earlier incarnation of the room's stream
            // is not this one's.
            Reply::Body { code, epoch, .. }
                if cl.order.position(&code).map(|(e, _)| e) != Some(&*epoch) => {}
            Reply::Body { code, seq, got, .. } => match got {
                Some(Some(bytes)) => {
                    let fill = |m: &mut Message| m.body = bytes.into();
                    cl.order.body(&code, seq, fill, now, &mut out);
                }
                Some(None) => cl.order.body_failed(&code, seq, &mut out),
                None if !(cl.commands_up && cl.subscriber_up) => cl.order.body_deferred(&code, seq),
                None => cl.order.body_failed(&code, seq, &mut out),
            },
            Reply::Message { code, payload } => {
                if let Some(m) = Message::parse(payload) {
                    if cl.order.tracking(&code) {
                        let epoch = m.epoch.clone();
                        cl.order.event(&code, &epoch, m.seq, m, now, &mut out);
                    }
                } else {
                    warn!("cluster: a malformed message on a room channel");
                }
            }
        }
        self.cluster_outputs(out, now);
    }

    fn cluster_outputs(&mut self, out: Vec<Out<Message>>, now: Instant) {
        let mut queue: std::collections::VecDeque<Out<Message>> = out.into();
        while let Some(o) = queue.pop_front() {
            let Some(cl) = self.cluster.as_mut() else {
                return;
            };
            match o {
                Out::Deliver { room, seq, ev } => {
                    if ev.missing_body {
                        // A document Redis no longer holds: no skipping it.
                        let mut more = Vec::new();
                        cl.order.fetch_failed(&room, &mut more);
                        queue.extend(more);
                        continue;
                    }
                    cl.figures.delivered_events += 1;
                    if *ev.node != *cl.cfg.node_id && !cl.nodes_seen.contains(&ev.node) {
                        cl.nodes_seen.insert(ev.node.clone());
                    }
                    let d = Delivery {
                        kind: ev.kind,
                        mine: *ev.node == *cl.cfg.node_id,
                        except: ev.except,
                        from: &ev.from,
                        body: &ev.body,
                    };
                    self.rooms.deliver(&room, seq, d, now, &mut self.fx);
                    self.apply_effects();
                }
                Out::Fetch { room, from } => {
                    let up = cl.commands_up && cl.subscriber_up;
                    if !cl.submit(Cmd::Fetch {
                        code: room.clone(),
                        from,
                    }) {
                        if up {
                            let mut more = Vec::new();
                            cl.order.fetch_failed(&room, &mut more);
                            queue.extend(more);
                        } else {
                            cl.order.fetch_deferred(&room);
                        }
                    }
                }
                Out::Body { room, seq } => {
                    let epoch = cl.order.position(&room).map(|(e, _)| e.into());
                    let up = cl.commands_up && cl.subscriber_up;
                    let asked = epoch.is_some_and(|epoch| {
                        cl.submit(Cmd::Body {
                            code: room.clone(),
                            epoch,
                            seq,
                        })
                    });
                    if !asked {
                        let mut more = Vec::new();
                        if up {
                            cl.order.body_failed(&room, seq, &mut more);
                        } else {
                            cl.order.body_deferred(&room, seq);
                        }
                        queue.extend(more);
                    }
                }
                Out::Reset { room } => {
                    cl.figures.resets += 1;
                    warn!("cluster: a room's stream has a gap that cannot be filled; its members here re-join");
                    self.rooms.cluster_reset(&room, now, &mut self.fx);
                    self.apply_effects();
                }
            }
        }
    }

    fn cluster_status_changed(&mut self, now: Instant) {
        let Some(cl) = self.cluster.as_mut() else {
            return;
        };
        if cl.commands_up && cl.subscriber_up {
            if cl.down_since.take().is_some() {
                info!("cluster: Redis reachable");
            }
            cl.closed_for_outage = false;
        } else if cl.down_since.is_none() {
            warn!("cluster: Redis unreachable; stream actions are refused");
            cl.down_since = Some(now);
        }
    }

    /// Timers of cluster mode: slow gap reads, slow snapshots, the grace
    /// period of an outage.
    pub(super) fn cluster_tick(&mut self, now: Instant) {
        let Some(cl) = self.cluster.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        cl.order.tick(now, &mut out);
        let late: Vec<Box<str>> = cl
            .snapshots
            .iter()
            .filter(|(_, (at, _))| now.saturating_duration_since(*at) >= cluster::SNAPSHOT_TIMEOUT)
            .map(|(c, _)| c.clone())
            .collect();
        let waiters: Vec<(ConnRef, u32)> = late
            .iter()
            .filter_map(|code| cl.snapshots.remove(code))
            .flat_map(|(_, w)| w)
            .collect();
        for (cref, seq) in waiters {
            if let Some(p) = self.take_pending(cref, seq) {
                self.give_up(cref, p, cluster::UNAVAILABLE);
                self.resume(cref);
            }
        }
        let Some(cl) = self.cluster.as_mut() else {
            return;
        };
        if cl.presence_dirty && cl.commands_up && !cl.clearing {
            warn!("cluster: this node's presence in Redis is unknown; its members re-join");
            cl.order = Order::new(HELD_LIMIT, cluster::FETCH_TIMEOUT);
            if cl.submit(Cmd::ClearOwn) {
                cl.clearing = true;
            }
            self.rooms.cluster_reset_all(now, &mut self.fx);
            self.apply_effects();
        }
        let Some(cl) = self.cluster.as_mut() else {
            return;
        };
        let outage = cl
            .down_since
            .is_some_and(|t| now.saturating_duration_since(t) >= cl.cfg.grace);
        if outage && !cl.closed_for_outage {
            cl.closed_for_outage = true;
            // Their presence in Redis is cleared when it is back.
            cl.presence_dirty = true;
            cl.order = Order::new(HELD_LIMIT, cluster::FETCH_TIMEOUT);
            let members: usize = self.rooms.iter().map(|(_, r)| r.local_count()).sum();
            if members > 0 {
                warn!("cluster: Redis still unreachable; closing {members} members (1013)");
            }
            self.rooms.cluster_reset_all(now, &mut self.fx);
            self.apply_effects();
        }
        self.cluster_outputs(out, now);
    }

    /// A room left memory: stop following it.
    pub(super) fn cluster_forget(&mut self, code: &str) {
        if let Some(cl) = self.cluster.as_mut() {
            cl.order.forget(code);
        }
    }
}
