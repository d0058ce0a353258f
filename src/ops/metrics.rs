//! Operator metrics: counters the loop bumps as it works, rendered in the
//! Prometheus text exposition format (0.0.4) for `GET /metrics`.
//!
//! Invariants:
//! * Counters are plain `u64`s in [`Metrics`], owned and bumped by the loop
//!   thread only: no locks, no atomics, no allocation to count. Only the
//!   accounts job histogram ([`AtomicHistogram`]) is shared, because worker
//!   threads time the jobs.
//! * Every label value comes from a fixed list (route classes, message
//!   types, status codes, close codes, reasons), so a series never names a
//!   room, a peer or a token, and the number of series is bounded.
//! * Rendering allocates one string per scrape and nothing else.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A label enum: its variants, their label values and a dense index.
macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($var),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),*];
            pub const COUNT: usize = $name::ALL.len();
            pub fn label(self) -> &'static str {
                match self { $($name::$var => $s),* }
            }
        }
    };
}

label_enum!(
    /// What a client's WebSocket message was (§2 actions).
    MsgIn {
        Join => "join",
        Broadcast => "broadcast",
        SyncDocument => "sync_document",
        RequestSync => "request_sync",
        Leave => "leave",
        Ping => "ping",
        Invalid => "invalid",
        Binary => "binary",
    }
);

label_enum!(
    /// A server message's `type`, read from the front of its frame.
    MsgOut {
        RoomInfo => "room_info",
        Connected => "connected",
        PeerJoined => "peer_joined",
        PeerLeft => "peer_left",
        DocumentSync => "document_sync",
        Data => "data",
        Error => "error",
        Pong => "pong",
        Other => "other",
    }
);

label_enum!(
    /// A request's route class (never its path: paths carry room codes).
    Route {
        Root => "root",
        Health => "health",
        Livez => "livez",
        Readyz => "readyz",
        Metrics => "metrics",
        RoomsCreate => "rooms_create",
        RoomsGet => "rooms_get",
        Ws => "ws",
        Auth => "auth",
        Admin => "admin",
        Preflight => "preflight",
        Invalid => "invalid",
        Other => "other",
    }
);

label_enum!(
    /// Why a request or connection was turned away with 429 or 503.
    Reject {
        RoomCreateRate => "room_create_rate",
        RoomLookupRate => "room_lookup_rate",
        LoginRate => "login_rate",
        AdminAuthRate => "admin_auth_rate",
        MemoryGuard => "memory_guard",
        ConnectionLimit => "connection_limit",
        AccountsBusy => "accounts_busy",
        AccountsTimeout => "accounts_timeout",
        AccountsUnavailable => "accounts_unavailable",
        AccountsNotConfigured => "accounts_not_configured",
        StoreUnavailable => "store_unavailable",
        UnfinishedInput => "unfinished_input",
    }
);

impl Reject {
    fn status(self) -> u16 {
        match self {
            Reject::RoomCreateRate
            | Reject::RoomLookupRate
            | Reject::LoginRate
            | Reject::AdminAuthRate => 429,
            _ => 503,
        }
    }
}

/// HTTP statuses the server answers with; anything else counts as "other".
const STATUSES: &[u16] = &[
    101, 200, 204, 400, 401, 403, 404, 405, 408, 409, 413, 429, 431, 500, 501, 503,
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// WebSocket close codes; 1006 stands for a connection dropped without a
/// close frame (RFC 6455 §7.1.5), "other" for codes a peer chose.
const CLOSE_CODES: &[u16] = &[1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011];
const CLOSE_SLOTS: usize = CLOSE_CODES.len() + 1;

/// The code a close without a close frame is counted under.
pub const CLOSE_ABNORMAL: u16 = 1006;

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len())
}

fn close_slot(code: u16) -> usize {
    CLOSE_CODES
        .iter()
        .position(|&c| c == code)
        .unwrap_or(CLOSE_CODES.len())
}

/// The loop's counters. Bumped in place; read by [`render`].
#[derive(Debug, Clone)]
pub struct Metrics {
    pub loop_turns: u64,
    pub connections_accepted: u64,
    pub websockets_accepted: u64,
    /// WebSockets that have closed (or begun closing); open = accepted - this.
    pub websockets_closed: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    messages_in: [u64; MsgIn::COUNT],
    deliveries: [u64; MsgOut::COUNT],
    closes: [u64; CLOSE_SLOTS],
    http: [[u64; STATUS_SLOTS]; Route::COUNT],
    rejections: [u64; Reject::COUNT],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            loop_turns: 0,
            connections_accepted: 0,
            websockets_accepted: 0,
            websockets_closed: 0,
            bytes_received: 0,
            bytes_sent: 0,
            messages_in: [0; MsgIn::COUNT],
            deliveries: [0; MsgOut::COUNT],
            closes: [0; CLOSE_SLOTS],
            http: [[0; STATUS_SLOTS]; Route::COUNT],
            rejections: [0; Reject::COUNT],
        }
    }
}

impl Metrics {
    #[inline]
    pub fn message_in(&mut self, t: MsgIn) {
        self.messages_in[t as usize] += 1;
    }

    /// `n` deliveries of one frame (a fan-out counts each recipient).
    #[inline]
    pub fn delivered(&mut self, t: MsgOut, n: u64) {
        self.deliveries[t as usize] += n;
    }

    #[inline]
    pub fn ws_closed(&mut self, code: u16) {
        self.websockets_closed += 1;
        self.closes[close_slot(code)] += 1;
    }

    #[inline]
    pub fn http_answer(&mut self, route: Route, status: u16) {
        self.http[route as usize][status_slot(status)] += 1;
    }

    #[inline]
    pub fn rejected(&mut self, why: Reject) {
        self.rejections[why as usize] += 1;
    }

    pub fn messages_in(&self, t: MsgIn) -> u64 {
        self.messages_in[t as usize]
    }

    pub fn deliveries(&self, t: MsgOut) -> u64 {
        self.deliveries[t as usize]
    }

    pub fn http_answers(&self, route: Route, status: u16) -> u64 {
        self.http[route as usize][status_slot(status)]
    }

    pub fn rejections(&self, why: Reject) -> u64 {
        self.rejections[why as usize]
    }
}

/// The `type` of a server text frame, from the bytes after its header
/// (`{"type":"<name>"`); control frames are `None`. Costs a few byte
/// compares, once per frame however many peers receive it.
pub fn classify(frame: &[u8]) -> Option<MsgOut> {
    if frame.len() < 2 || frame[0] != 0x81 {
        return None;
    }
    let start = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let rest = frame.get(start..)?.strip_prefix(br#"{"type":""#)?;
    let end = rest.iter().take(16).position(|&b| b == b'"')?;
    Some(match &rest[..end] {
        b"room_info" => MsgOut::RoomInfo,
        b"connected" => MsgOut::Connected,
        b"peer_joined" => MsgOut::PeerJoined,
        b"peer_left" => MsgOut::PeerLeft,
        b"document_sync" => MsgOut::DocumentSync,
        b"data" => MsgOut::Data,
        b"error" => MsgOut::Error,
        b"pong" => MsgOut::Pong,
        _ => MsgOut::Other,
    })
}

/// Upper bounds (seconds) of the latency buckets (accounts jobs, store
/// writes).
pub const JOB_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram filled by several threads (the accounts workers)
/// and read by the loop at scrape time.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; 12],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A copy of an [`AtomicHistogram`] at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket of [`JOB_BUCKETS`], then +Inf.
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl AtomicHistogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let slot = JOB_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(JOB_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative: Vec<u64> = self
            .buckets
            .iter()
            .take(JOB_BUCKETS.len() + 1)
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot {
            // The +Inf bucket is the count, so the two always agree.
            count: acc,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            cumulative,
        }
    }
}

/// Accounts figures for a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountsFigures {
    pub queued: u64,
    pub database_up: bool,
    pub jobs: HistogramSnapshot,
}

/// Room store figures for a scrape (only with a durable store).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreFigures {
    pub up: bool,
    pub unsaved_rooms: u64,
    pub oldest_unsaved_seconds: u64,
    pub saves: HistogramSnapshot,
}

/// Figures read at scrape time rather than counted.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub connections_open: u64,
    pub rooms_in_memory: u64,
    pub uptime_seconds: f64,
    pub start_time_seconds: f64,
    pub memory_guard_engaged: bool,
    /// 0 when no limit is known.
    pub memory_limit_bytes: u64,
    pub resident_memory_bytes: Option<u64>,
    pub draining: bool,
    pub accounts: Option<AccountsFigures>,
    pub store: Option<StoreFigures>,
    /// What the replay history of the numbered stream holds (§6).
    pub history_bytes: u64,
    pub history_events: u64,
    pub cluster: Option<ClusterGauges>,
}

/// Cluster mode's figures (`REDIS_URL`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterGauges {
    pub redis_up: bool,
    pub published: u64,
    pub publish_failed: u64,
    pub delivered_events: u64,
    pub gap_reads: u64,
    pub resets: u64,
    pub reaped_peers: u64,
    pub in_flight: u64,
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP sync_server_{name} {help}");
        let _ = writeln!(self.0, "# TYPE sync_server_{name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str("sync_server_");
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Values come from fixed lists of plain words: no escaping
                // is ever needed.
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The whole `/metrics` body.
pub fn render(m: &Metrics, g: &Gauges) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));
    o.family("build_info", "gauge", "Always 1; the version is a label.");
    o.sample("build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    o.single(
        "start_time_seconds",
        "gauge",
        "Start of the process, seconds since the Unix epoch.",
        g.start_time_seconds,
    );
    o.single(
        "uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        g.uptime_seconds,
    );
    o.single(
        "loop_turns_total",
        "counter",
        "Turns of the event loop.",
        m.loop_turns,
    );
    o.single(
        "draining",
        "gauge",
        "1 while the server shuts down.",
        g.draining as u8,
    );
    o.single(
        "connections_open",
        "gauge",
        "TCP connections open (HTTP and WebSocket).",
        g.connections_open,
    );
    o.single(
        "connections_accepted_total",
        "counter",
        "TCP connections admitted (those refused at MAX_CONNECTIONS count as rejections).",
        m.connections_accepted,
    );
    o.single(
        "websockets_open",
        "gauge",
        "WebSocket connections open.",
        m.websockets_accepted.saturating_sub(m.websockets_closed),
    );
    o.single(
        "websockets_accepted_total",
        "counter",
        "WebSocket upgrades accepted.",
        m.websockets_accepted,
    );
    o.single(
        "rooms_in_memory",
        "gauge",
        "Rooms held in memory.",
        g.rooms_in_memory,
    );
    o.family(
        "messages_received_total",
        "counter",
        "WebSocket messages received, by action.",
    );
    for t in MsgIn::ALL {
        o.sample(
            "messages_received_total",
            &[("type", t.label())],
            m.messages_in(*t),
        );
    }
    o.family(
        "deliveries_total",
        "counter",
        "Messages queued to WebSocket peers, by type (a fan-out counts each recipient).",
    );
    for t in MsgOut::ALL {
        o.sample("deliveries_total", &[("type", t.label())], m.deliveries(*t));
    }
    o.single(
        "received_bytes_total",
        "counter",
        "Bytes read from client sockets.",
        m.bytes_received,
    );
    o.single(
        "sent_bytes_total",
        "counter",
        "Bytes written to client sockets.",
        m.bytes_sent,
    );
    o.family(
        "websocket_closes_total",
        "counter",
        "WebSocket connections closed, by the close code sent (1006: dropped without a close frame).",
    );
    for (i, code) in CLOSE_CODES.iter().enumerate() {
        o.sample(
            "websocket_closes_total",
            &[("code", &code.to_string())],
            m.closes[i],
        );
    }
    o.sample(
        "websocket_closes_total",
        &[("code", "other")],
        m.closes[CLOSE_CODES.len()],
    );
    o.family(
        "http_responses_total",
        "counter",
        "HTTP answers, by route class and status.",
    );
    for r in Route::ALL {
        for (i, n) in m.http[*r as usize].iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let status = STATUSES
                .get(i)
                .map_or("other".to_owned(), |s| s.to_string());
            o.sample(
                "http_responses_total",
                &[("route", r.label()), ("status", &status)],
                n,
            );
        }
    }
    o.family(
        "rejections_total",
        "counter",
        "Requests and connections turned away with 429 or 503, by reason.",
    );
    for r in Reject::ALL {
        o.sample(
            "rejections_total",
            &[("reason", r.label()), ("status", &r.status().to_string())],
            m.rejections(*r),
        );
    }
    o.single(
        "memory_guard_engaged",
        "gauge",
        "1 while new WebSockets and rooms are refused for memory.",
        g.memory_guard_engaged as u8,
    );
    o.single(
        "memory_limit_bytes",
        "gauge",
        "Memory limit the guard works against (0: none known).",
        g.memory_limit_bytes,
    );
    if let Some(rss) = g.resident_memory_bytes {
        o.single(
            "resident_memory_bytes",
            "gauge",
            "Resident set size of the process.",
            rss,
        );
    }
    o.single(
        "history_bytes",
        "gauge",
        "Bytes charged for stream events held for catch-up (HISTORY_MEMORY_BYTES bounds it).",
        g.history_bytes,
    );
    o.single(
        "history_events",
        "gauge",
        "Stream events held for catch-up, across rooms.",
        g.history_events,
    );
    if let Some(st) = &g.store {
        o.single(
            "room_store_up",
            "gauge",
            "1 when the room store's last read or write succeeded.",
            st.up as u8,
        );
        o.single(
            "room_store_unsaved_rooms",
            "gauge",
            "Rooms changed in memory and not yet written to the room store.",
            st.unsaved_rooms,
        );
        o.single(
            "room_store_oldest_unsaved_seconds",
            "gauge",
            "Age of the oldest change not yet written to the room store.",
            st.oldest_unsaved_seconds,
        );
        histogram(
            &mut o,
            "room_store_save_duration_seconds",
            "Time of one room store write transaction (a batch of rooms).",
            &st.saves,
        );
    }
    if let Some(a) = &g.accounts {
        o.single(
            "accounts_database_up",
            "gauge",
            "1 when the accounts database answered its last check.",
            a.database_up as u8,
        );
        o.single(
            "accounts_jobs_queued",
            "gauge",
            "Accounts jobs waiting for a worker.",
            a.queued,
        );
        histogram(
            &mut o,
            "accounts_job_duration_seconds",
            "Time from queueing an accounts job to its reply.",
            &a.jobs,
        );
    }
    if let Some(c) = &g.cluster {
        let rows: [(&str, &str, &str, u64); 8] = [
            (
                "cluster_redis_up",
                "gauge",
                "1 when both Redis connections are up and this node's presence there is known.",
                c.redis_up as u64,
            ),
            (
                "cluster_published_total",
                "counter",
                "Room events this node published through Redis.",
                c.published,
            ),
            (
                "cluster_publish_failures_total",
                "counter",
                "Room events that could not be published (answered Service unavailable).",
                c.publish_failed,
            ),
            (
                "cluster_delivered_events_total",
                "counter",
                "Numbered room events this node delivered from Redis, in order.",
                c.delivered_events,
            ),
            (
                "cluster_gap_reads_total",
                "counter",
                "Reads of a room's stream to fill a gap or catch up.",
                c.gap_reads,
            ),
            (
                "cluster_room_resets_total",
                "counter",
                "Rooms whose local members were closed (1013) because a gap could not be filled.",
                c.resets,
            ),
            (
                "cluster_reaped_peers_total",
                "counter",
                "Peers of dead nodes this node removed.",
                c.reaped_peers,
            ),
            (
                "cluster_publishes_in_flight",
                "gauge",
                "Publishes handed to Redis and not yet answered.",
                c.in_flight,
            ),
        ];
        for (name, kind, help, v) in rows {
            o.single(name, kind, help, v);
        }
    }
    o.0
}

fn histogram(o: &mut Out, name: &str, help: &str, h: &HistogramSnapshot) {
    o.family(name, "histogram", help);
    for (i, n) in h.cumulative.iter().enumerate() {
        let le = JOB_BUCKETS
            .get(i)
            .map_or("+Inf".to_owned(), |b| b.to_string());
        o.sample(&format!("{name}_bucket"), &[("le", &le)], n);
    }
    o.sample(&format!("{name}_sum"), &[], h.sum_seconds);
    o.sample(&format!("{name}_count"), &[], h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_classified_by_type() {
        let f = crate::ws::text(br#"{"type":"data","from":"a","data":"x"}"#);
        assert_eq!(classify(&f), Some(MsgOut::Data));
        let big = format!(
            r#"{{"type":"document_sync","document":"{}"}}"#,
            "x".repeat(70_000)
        );
        assert_eq!(
            classify(&crate::ws::text(big.as_bytes())),
            Some(MsgOut::DocumentSync)
        );
        let mid = format!(r#"{{"type":"peer_left","peer_id":"{}"}}"#, "x".repeat(300));
        assert_eq!(
            classify(&crate::ws::text(mid.as_bytes())),
            Some(MsgOut::PeerLeft)
        );
        assert_eq!(
            classify(&crate::protocol::out::pong_frame()),
            Some(MsgOut::Pong)
        );
        assert_eq!(classify(&crate::ws::ping()), None);
        assert_eq!(classify(&crate::ws::close_frame(1000, "")), None);
        assert_eq!(
            classify(&crate::ws::text(br#"{"type":"seq"}"#)),
            Some(MsgOut::Other)
        );
    }

    #[test]
    fn unknown_statuses_and_codes_share_one_slot() {
        let mut m = Metrics::default();
        m.http_answer(Route::Other, 299);
        m.http_answer(Route::Other, 298);
        m.ws_closed(4321);
        assert_eq!(m.http[Route::Other as usize][STATUSES.len()], 2);
        assert_eq!(m.closes[CLOSE_CODES.len()], 1);
        let text = render(&m, &Gauges::default());
        assert!(
            text.contains("sync_server_http_responses_total{route=\"other\",status=\"other\"} 2")
        );
        assert!(text.contains("sync_server_websocket_closes_total{code=\"other\"} 1"));
    }

    #[test]
    fn histogram_is_cumulative_and_ends_in_the_count() {
        let h = AtomicHistogram::default();
        h.observe(std::time::Duration::from_millis(3));
        h.observe(std::time::Duration::from_millis(40));
        h.observe(std::time::Duration::from_secs(30));
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), JOB_BUCKETS.len() + 1);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[3], 2);
        assert_eq!(*s.cumulative.last().unwrap(), 3);
        assert_eq!(s.count, 3);
        assert!((s.sum_seconds - 30.043).abs() < 1e-6);
    }
}
