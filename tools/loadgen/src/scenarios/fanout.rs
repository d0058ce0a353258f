//! `fanout`: R rooms × P peers, S senders per room, B-byte payloads.
//!
//! Every payload carries a stamp (sender, sequence number, send time), so each
//! receiver checks each sender's stream exactly: a number above the expected
//! one is a gap (loss), a number below it is a late or duplicate message
//! (reordering). Latency is receive time minus the stamped send time, on the
//! generator's own monotonic clock.
//!
//! Two ways to drive it:
//! * **Closed loop** (`--window W`, the default): each sender keeps W messages
//!   in flight. A message counts as acknowledged when the sender's *designated
//!   receiver* — the next peer in its room — receives it. One receiver rather
//!   than all keeps the bookkeeping O(1) per delivery; since the server
//!   delivers a room's messages to every peer from the same queue and the
//!   generator reads all sockets in the same loop, the other receivers trail
//!   it by at most one loop turn, and the exact loss check below covers them.
//! * **Open loop** (`--rate X`): X messages per second in total, spread round
//!   robin over the senders on a schedule that does not wait for anything. If
//!   the server stops reading a sender (TCP push-back) and more than
//!   `--max-pending` bytes pile up in the generator for it, further messages
//!   for that sender are not offered and are counted as `pushed_back`.
//!
//! After a warm-up, the measured window runs for `--duration` seconds; then
//! sending stops and the generator drains until every open receiver has every
//! message (or `--drain` seconds pass). Loss is then exact: for a receiver
//! still open, anything missing is silent loss; a receiver the server closed
//! (1008, slow consumer) must have received a gap-free, in-order prefix.

use std::time::{Duration, Instant};

use clap::Args;

use super::{check_fds, create_rooms, join_all, Ctx, Member};
use crate::net::{now_ns, CloseInfo, CloseKind, ConnId, ConnOpts, Ev, Tx};
use crate::procfs::Proc;
use crate::report::{thousands, Report};
use crate::scan::{self, Kind, Stamp, STAMP_LEN};
use crate::stats::{ms, Histogram, Stream};

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Peers per room (senders included).
    #[arg(long, default_value_t = 100)]
    pub peers: usize,
    /// Senders per room.
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Payload bytes per message (at least 32, the stamp).
    #[arg(long, default_value_t = 100)]
    pub bytes: usize,
    /// Closed loop: messages in flight per sender.
    #[arg(long, default_value_t = 64)]
    pub window: u32,
    /// Open loop: target messages per second, all senders together
    /// (deliveries per second are this times P-1). Overrides --window.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Longest wait for in-flight messages after sending stops, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Open loop: bytes queued in the generator for one sender beyond which
    /// its messages are not offered (the server is pushing back).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_pending: usize,
    /// Marks the run as the past-saturation test (changes the table row).
    #[arg(long)]
    pub overload: bool,
    /// SO_RCVBUF for every peer's socket. Loopback receive buffers autotune
    /// up to `tcp_rmem` max (often 32 MiB per socket), which can hide a
    /// backlog in the generator's kernel instead of the server's queues; a
    /// small fixed buffer makes slow reading push back on the server.
    #[arg(long)]
    pub rcvbuf: Option<usize>,
    /// Open loop: poll without sleeping. The generator then owns its core,
    /// and a delivery is read as soon as it lands instead of after the
    /// generator's thread has been woken and scheduled, which is time the
    /// server did not spend. Meant for latency runs with the generator pinned
    /// to a core of its own.
    #[arg(long)]
    pub busy_poll: bool,
}

const NONE: usize = usize::MAX;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Drain,
}

/// All per-run state, so the event handler is a method.
struct St {
    rooms: usize,
    peers: usize,
    senders: usize,
    bytes: usize,
    window: u32,
    closed_loop: bool,
    phase: Phase,
    /// member index of each connection id
    member_of: Vec<usize>,
    /// connection of each member
    conn: Vec<ConnId>,
    /// streams[member * senders + local sender]
    streams: Vec<Stream>,
    /// per member: how it was closed, if it was
    closed: Vec<Option<CloseInfo>>,
    /// per sender (room * senders + local): next sequence number
    sent: Vec<u32>,
    /// per sender: messages its designated receiver has
    acked: Vec<u32>,
    /// per sender: member index of its designated receiver
    designated: Vec<usize>,
    hist: Histogram,
    deliveries_total: u64,
    deliveries_window: u64,
    sent_window: u64,
    bad: u64,
    foreign: u64,
    pushed_back: u64,
}

impl St {
    fn sender_member(&self, g: usize) -> usize {
        (g / self.senders) * self.peers + g % self.senders
    }

    fn send(&mut self, tx: &mut Tx, g: usize) {
        let seq = self.sent[g];
        self.sent[g] += 1;
        if self.phase == Phase::Measure {
            self.sent_window += 1;
        }
        let stamp = Stamp {
            sender: g as u32,
            seq,
            ts_ns: now_ns(),
        };
        let bytes = self.bytes;
        let id = self.conn[self.sender_member(g)];
        tx.text_with(id, |b| scan::write_broadcast(b, stamp, bytes));
    }

    /// Closed loop: refill sender `g`'s window.
    fn top_up(&mut self, tx: &mut Tx, g: usize) {
        if !self.closed_loop || self.phase == Phase::Drain {
            return;
        }
        if self.closed[self.sender_member(g)].is_some() {
            return;
        }
        while self.sent[g] - self.acked[g] < self.window {
            self.send(tx, g);
        }
    }

    fn on_event(&mut self, tx: &mut Tx, id: ConnId, ev: Ev<'_>) {
        let Some(&m) = self.member_of.get(id) else {
            return;
        };
        if m == NONE {
            return;
        }
        match ev {
            Ev::Text(msg, now) => {
                if !msg.is_whole() || scan::kind(msg.head) != Kind::Data {
                    return;
                }
                let Some(st) = scan::data_stamp(msg.head) else {
                    self.bad += 1;
                    return;
                };
                let g = st.sender as usize;
                let room = m / self.peers;
                if g >= self.sent.len() || g / self.senders != room {
                    self.foreign += 1;
                    return;
                }
                self.streams[m * self.senders + g % self.senders].see(st.seq);
                self.deliveries_total += 1;
                if self.phase == Phase::Measure {
                    self.deliveries_window += 1;
                    self.hist.record(now.saturating_sub(st.ts_ns));
                }
                if self.designated[g] == m {
                    if st.seq >= self.acked[g] {
                        self.acked[g] = st.seq + 1;
                    }
                    self.top_up(tx, g);
                }
            }
            Ev::Closed(info) => {
                self.closed[m] = Some(info.clone());
                // A sender whose designated receiver is gone gets another.
                let room = m / self.peers;
                for s in 0..self.senders {
                    let g = room * self.senders + s;
                    if self.designated[g] != m {
                        continue;
                    }
                    let sm = self.sender_member(g);
                    let next = (0..self.peers)
                        .map(|k| room * self.peers + k)
                        .find(|&x| x != sm && self.closed[x].is_none());
                    if let Some(x) = next {
                        self.designated[g] = x;
                        self.acked[g] = self.streams[x * self.senders + s].next;
                        self.top_up(tx, g);
                    }
                }
            }
            Ev::Open => {}
        }
    }

    /// Deliveries still missing at open receivers from open senders.
    fn outstanding(&self) -> u64 {
        let mut n = 0;
        for g in 0..self.sent.len() {
            let sm = self.sender_member(g);
            if self.closed[sm].is_some() {
                continue;
            }
            let room = g / self.senders;
            for k in 0..self.peers {
                let m = room * self.peers + k;
                if m == sm || self.closed[m].is_some() {
                    continue;
                }
                let got = self.streams[m * self.senders + g % self.senders].next;
                n += u64::from(self.sent[g].saturating_sub(got));
            }
        }
        n
    }
}

struct Tally {
    gaps: u64,
    late: u64,
    tail_missing: u64,
    expected: u64,
    closed_1008: usize,
    closed_other: usize,
    closed_streams_broken: u64,
    senders_closed: usize,
    other_close_labels: Vec<String>,
}

fn tally(st: &St) -> Tally {
    let mut t = Tally {
        gaps: 0,
        late: 0,
        tail_missing: 0,
        expected: 0,
        closed_1008: 0,
        closed_other: 0,
        closed_streams_broken: 0,
        senders_closed: 0,
        other_close_labels: Vec::new(),
    };
    for c in st.closed.iter().flatten() {
        if c.kind == CloseKind::CloseFrame && c.code == Some(1008) {
            t.closed_1008 += 1;
        } else {
            t.closed_other += 1;
            if t.other_close_labels.len() < 5 {
                t.other_close_labels.push(c.label());
            }
        }
    }
    for g in 0..st.sent.len() {
        let room = g / st.senders;
        let s = g % st.senders;
        let sm = st.sender_member(g);
        let sender_open = st.closed[sm].is_none();
        if !sender_open {
            t.senders_closed += 1;
        }
        // What the server can have accepted from this sender: everything
        // queued if the sender is still open, else the most any receiver got.
        let expected = if sender_open {
            st.sent[g]
        } else {
            (0..st.peers)
                .map(|k| st.streams[(room * st.peers + k) * st.senders + s].next)
                .max()
                .unwrap_or(0)
        };
        for k in 0..st.peers {
            let m = room * st.peers + k;
            if m == sm {
                continue;
            }
            let stream = st.streams[m * st.senders + s];
            t.gaps += stream.gaps;
            t.late += stream.late;
            if st.closed[m].is_none() {
                t.expected += u64::from(expected);
                t.tail_missing += u64::from(expected.saturating_sub(stream.next));
            } else if stream.gaps > 0 || stream.late > 0 {
                t.closed_streams_broken += 1;
            }
        }
    }
    t
}

pub fn run(ctx: &Ctx, a: &FanoutArgs) -> Result<Report, String> {
    if a.bytes < STAMP_LEN {
        return Err(format!("--bytes must be at least {STAMP_LEN}"));
    }
    let peers = a.peers.max(2);
    let senders = a.senders.clamp(1, peers);
    let n = a.rooms * peers;
    check_fds(n)?;
    let codes = create_rooms(ctx, "f", a.rooms)?;
    let members: Vec<Member> = (0..n)
        .map(|m| Member {
            room: codes[m / peers].clone(),
            peer_id: format!("p{}", m % peers),
            is_host: false,
            opts: ConnOpts { rcvbuf: a.rcvbuf },
        })
        .collect();
    let mut net = ctx.net()?;
    let joined = join_all(&mut net, &members, 128, Duration::from_secs(120), false)?;

    let nsend = a.rooms * senders;
    let mut member_of = vec![NONE; net.len()];
    for (m, &id) in joined.ids.iter().enumerate() {
        member_of[id] = m;
    }
    let mut st = St {
        rooms: a.rooms,
        peers,
        senders,
        bytes: a.bytes,
        window: a.window.max(1),
        closed_loop: a.rate.is_none(),
        phase: Phase::Warmup,
        member_of,
        conn: joined.ids.clone(),
        streams: vec![Stream::default(); n * senders],
        closed: vec![None; n],
        sent: vec![0; nsend],
        acked: vec![0; nsend],
        designated: (0..nsend)
            .map(|g| (g / senders) * peers + (g % senders + 1) % peers)
            .collect(),
        hist: Histogram::new(),
        deliveries_total: 0,
        deliveries_window: 0,
        sent_window: 0,
        bad: 0,
        foreign: 0,
        pushed_back: 0,
    };

    let own = Proc::own();
    let start = Instant::now();
    let measure_at = start + Duration::from_secs_f64(a.warmup);
    let stop_at = measure_at + Duration::from_secs_f64(a.duration);
    let mut cpu0 = None;
    let mut own0 = None;
    let mut cpu_window = None;
    let mut own_window = None;
    let mut window_secs = a.duration;
    let mut offered: u64 = 0;
    let mut offered_window: u64 = 0;
    let mut rr = 0usize;
    let mut max_pending = 0usize;
    let mut drain_until = None;
    let mut drain_complete = false;
    let mut last_check = Instant::now();

    if st.closed_loop {
        for g in 0..nsend {
            st.top_up(&mut net.tx, g);
        }
    }
    loop {
        let now = Instant::now();
        match st.phase {
            Phase::Warmup if now >= measure_at => {
                st.phase = Phase::Measure;
                cpu0 = ctx.proc.cpu_secs();
                own0 = own.cpu_secs();
            }
            Phase::Measure if now >= stop_at => {
                st.phase = Phase::Drain;
                window_secs = (now - measure_at).as_secs_f64();
                cpu_window = cpu0.zip(ctx.proc.cpu_secs()).map(|(a, b)| b - a);
                own_window = own0.zip(own.cpu_secs()).map(|(a, b)| b - a);
                drain_until = Some(now + Duration::from_secs_f64(a.drain));
            }
            Phase::Drain => {
                if now.duration_since(last_check) >= Duration::from_millis(20) {
                    last_check = now;
                    if st.outstanding() == 0 {
                        drain_complete = true;
                        break;
                    }
                }
                if drain_until.is_some_and(|d| now >= d) {
                    break;
                }
            }
            _ => {}
        }
        if let (Some(rate), Phase::Warmup | Phase::Measure) = (a.rate, st.phase) {
            let due = (rate * (now - start).as_secs_f64()) as u64;
            while offered < due {
                offered += 1;
                if st.phase == Phase::Measure {
                    offered_window += 1;
                }
                let g = rr % nsend;
                rr += 1;
                let id = st.conn[st.sender_member(g)];
                max_pending = max_pending.max(net.tx.pending(id));
                if net.tx.is_closed(id) || net.tx.pending(id) > a.max_pending {
                    st.pushed_back += 1;
                    continue;
                }
                st.send(&mut net.tx, g);
            }
        }
        let timeout = if a.busy_poll && st.phase != Phase::Drain {
            Duration::ZERO
        } else if a.rate.is_some() {
            Duration::from_micros(500)
        } else {
            Duration::from_millis(5)
        };
        net.poll(Some(timeout), &mut |tx, id, ev| st.on_event(tx, id, ev))
            .map_err(|e| format!("poll: {e}"))?;
    }

    let t = tally(&st);
    let deliveries_per_sec = st.deliveries_window as f64 / window_secs;
    let cpu_per = cpu_window.map(|c| c / st.deliveries_window.max(1) as f64);
    let silent_loss = t.gaps + t.tail_missing;
    let (p50, p99, p999, pmax) = (
        st.hist.quantile(0.5),
        st.hist.quantile(0.99),
        st.hist.quantile(0.999),
        st.hist.max(),
    );
    let mode = match a.rate {
        None => format!("closed loop W={}", st.window),
        Some(r) => format!("open loop {} msg/s", thousands(r as u64)),
    };
    let label = ctx.label_or(format!(
        "fanout R={} P={peers} S={senders} B={}, {mode}",
        a.rooms, a.bytes
    ));
    let mut r = Report::new("fanout", label);
    r.set("mode", if st.closed_loop { "closed" } else { "open" })
        .set("rooms", st.rooms)
        .set("peers", peers)
        .set("senders", senders)
        .set("bytes", a.bytes)
        .set("window", st.closed_loop.then_some(st.window))
        .set("rcvbuf", a.rcvbuf)
        .set("busy_poll", a.busy_poll)
        .set("rate_msgs_per_sec", a.rate)
        .set(
            "offered_deliveries_per_sec",
            a.rate.map(|x| x * (peers - 1) as f64),
        )
        .set("secs", window_secs)
        .set("messages_sent", st.sent_window)
        .set("messages_offered", a.rate.map(|_| offered_window))
        .set("pushed_back", st.pushed_back)
        .set("max_sender_queue_bytes", a.rate.map(|_| max_pending))
        .set("deliveries", st.deliveries_window)
        .set("deliveries_per_sec", deliveries_per_sec)
        .set("server_cpu_secs", cpu_window)
        .set("server_cpu_us_per_delivery", cpu_per.map(|c| c * 1e6))
        .set("server_cpu_util", cpu_window.map(|c| c / window_secs))
        .set("loadgen_cpu_util", own_window.map(|c| c / window_secs))
        .set("latency_p50_ms", ms(p50))
        .set("latency_p99_ms", ms(p99))
        .set("latency_p999_ms", ms(p999))
        .set("latency_max_ms", ms(pmax))
        .set("lost", silent_loss)
        .set("gaps", t.gaps)
        .set("tail_missing", t.tail_missing)
        .set("reordered", t.late)
        .set("closed_1008", t.closed_1008)
        .set("closed_other", t.closed_other)
        .set("closed_other_kinds", t.other_close_labels.join(","))
        .set("closed_streams_broken", t.closed_streams_broken)
        .set("senders_closed", t.senders_closed)
        .set("expected_deliveries_open_receivers", t.expected)
        .set("deliveries_total", st.deliveries_total)
        .set("bad_messages", st.bad + st.foreign)
        .set("drain_complete", drain_complete)
        .set("join_secs", joined.elapsed.as_secs_f64());
    let cpu_text = cpu_per.map_or("no --server-pid".to_string(), |c| {
        format!(
            "server CPU {:.3} µs/delivery ({:.0}% of a core)",
            c * 1e6,
            cpu_window.unwrap_or(0.0) / window_secs * 100.0
        )
    });
    r.human = format!(
        "fanout {} rooms x {peers} peers, {senders} sender(s)/room, {} B, {mode}: {} deliveries/s, {cpu_text}; latency p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms max {:.3} ms; lost {silent_loss}, reordered {}, closed 1008: {}, other closes: {}, pushed back: {}{}",
        a.rooms,
        a.bytes,
        thousands(deliveries_per_sec as u64),
        ms(p50),
        ms(p99),
        ms(p999),
        ms(pmax),
        t.late,
        t.closed_1008,
        t.closed_other,
        st.pushed_back,
        if drain_complete { "" } else { " (drain incomplete)" },
    );
    let clean = silent_loss == 0 && t.late == 0 && t.closed_streams_broken == 0;
    if a.overload {
        let offered_rate = a.rate.unwrap_or(0.0) * (peers - 1) as f64;
        r.row(
            format!(
                "offered {} deliveries/s, delivered {}/s; {} closed with 1008, {} other closes; silent loss {silent_loss}, reordered {}; broken closed streams {}; {} messages pushed back",
                thousands(offered_rate as u64),
                thousands(deliveries_per_sec as u64),
                t.closed_1008,
                t.closed_other,
                t.late,
                t.closed_streams_broken,
                thousands(st.pushed_back),
            ),
            "zero silent loss: slow connections closed with 1008, every delivered stream complete and in order",
            Some(clean && t.closed_other == 0),
        );
    } else if st.closed_loop {
        r.row(
            format!(
                "{} deliveries/s, {}, lost {silent_loss}, reordered {}",
                thousands(deliveries_per_sec as u64),
                cpu_per.map_or("no server CPU figure".into(), |c| format!(
                    "{:.3} µs server CPU/delivery (≈ {} deliveries/s per core)",
                    c * 1e6,
                    thousands((1.0 / c.max(1e-12)) as u64)
                )),
                t.late
            ),
            "≤ 1 µs server CPU per delivery (≥ 1,000,000 deliveries/s worth), zero loss",
            cpu_per.map(|c| c <= 1e-6 && clean && t.closed_other + t.closed_1008 == 0),
        );
    } else {
        r.row(
            format!(
                "p99 {:.3} ms (p50 {:.3}, p99.9 {:.3}, max {:.3}) at {} deliveries/s, lost {silent_loss}",
                ms(p99),
                ms(p50),
                ms(p999),
                ms(pmax),
                thousands(deliveries_per_sec as u64)
            ),
            "p99 ≤ 5 ms",
            Some(p99 <= 5_000_000 && clean),
        );
    }
    Ok(r)
}
