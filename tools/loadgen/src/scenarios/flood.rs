//! `flood` and `flooddoc`: one client's load must not slow anybody else
//! (issue 15, fairness).
//!
//! `flood`: one client streams tiny broadcasts into its room as fast as its
//! socket takes them (the generator keeps `--queue-bytes` queued for it at
//! all times), and several receivers there read everything. Meanwhile a
//! probe alone in another room pings every `--interval-ms` and
//! `GET /health` is polled as often (see [`super::probe`]). Figures: both
//! probes' p50/p99/max over the measured window, the rate the server
//! accepted from the flooder (what its receivers got per second) against
//! what the flooder's kernel took, and whether every receiver got the
//! flooder's messages without a gap and in order (a flooder slowed by its
//! message rate loses nothing: its own TCP window holds it back).
//!
//! `flooddoc`: the host of a room syncs a document as large as one message
//! may be (16 MiB by default, minus the action's JSON) to `--peers` peers,
//! `--rounds` times, while the same probes run; only samples sent while a
//! document was on its way count. Figure: the probes' max (and p99).
//!
//! The probes run on their own threads with their own poll loops: the
//! flood's traffic is read and written by this thread, so a busy generator
//! loop does not show up as server latency (the generator's core is still
//! shared between them; see the README of loadgen).

use std::time::Duration;

use clap::Args;

use super::probe::{summary, Probes, Samples};
use super::{check_fds, create_rooms, join_all, Ctx};
use crate::net::{now_ns, Ev};
use crate::report::{mib, thousands, Report};
use crate::scan::{self, Kind, Stamp};
use crate::stats::{ms, Histogram, Stream};

#[derive(Args, Debug, Clone)]
pub struct FloodArgs {
    /// Receivers in the flooder's room.
    #[arg(long, default_value_t = 8)]
    pub receivers: usize,
    /// Payload bytes of each broadcast (at least 32: the stamp).
    #[arg(long, default_value_t = 32)]
    pub bytes: usize,
    /// Seconds measured under the flood.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Flooding before the measured window starts, ms.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Period of the ping and of the /health check, ms.
    #[arg(long, default_value_t = 10)]
    pub interval_ms: u64,
    /// Bytes the generator keeps queued for the flooder beyond what its
    /// socket took (refilled when a quarter is left).
    #[arg(long, default_value_t = 256 * 1024)]
    pub queue_bytes: usize,
    /// Target for the probes' p99, ms.
    #[arg(long, default_value_t = 10.0)]
    pub p99_ms: f64,
    /// Target for the probes' max, ms.
    #[arg(long, default_value_t = 50.0)]
    pub max_ms: f64,
}

/// What the flood's receivers saw.
struct Seen {
    streams: Vec<Stream>,
    in_window: Vec<u64>,
    closed: Vec<String>,
    errors: Vec<String>,
}

pub fn run(ctx: &Ctx, a: &FloodArgs) -> Result<Report, String> {
    check_fds(a.receivers + 8)?;
    if a.bytes < scan::STAMP_LEN {
        return Err(format!("--bytes must be at least {}", scan::STAMP_LEN));
    }
    let codes = create_rooms(ctx, "f", 2)?;
    let members = super::host_and_guests(&codes[0], a.receivers, "r");
    let mut net = ctx.net()?;
    let joined = join_all(&mut net, &members, 16, Duration::from_secs(30), false)?;
    super::idle_for(&mut net, Duration::from_millis(200))?;
    let flooder = joined.ids[0];
    let mut receiver_of = vec![usize::MAX; net.len()];
    for (k, &id) in joined.ids[1..].iter().enumerate() {
        receiver_of[id] = k;
    }
    let probes = Probes::start(
        ctx.server,
        codes[1].clone(),
        Duration::from_millis(a.interval_ms),
    )?;

    let mut seen = Seen {
        streams: vec![Stream::default(); a.receivers],
        in_window: vec![0; a.receivers],
        closed: Vec::new(),
        errors: Vec::new(),
    };
    let t0 = now_ns();
    let window = (
        t0 + a.settle_ms * 1_000_000,
        t0 + a.settle_ms * 1_000_000 + (a.duration * 1e9) as u64,
    );
    let mut seq: u32 = 0;
    let mut frame_len = 0usize;
    // Messages the flooder's kernel had taken at the window's start and end.
    let mut written_at: [Option<u64>; 2] = [None, None];
    let mut cpu_at: [Option<f64>; 2] = [None, None];
    let written = |seq: u32, pending: usize, frame_len: usize| {
        u64::from(seq) - (pending / frame_len.max(1)) as u64
    };
    loop {
        let now = now_ns();
        if written_at[0].is_none() && now >= window.0 {
            written_at[0] = Some(written(seq, net.tx.pending(flooder), frame_len));
            cpu_at[0] = ctx.proc.cpu_secs();
        }
        if now >= window.1 {
            written_at[1] = Some(written(seq, net.tx.pending(flooder), frame_len));
            cpu_at[1] = ctx.proc.cpu_secs();
            break;
        }
        if !net.tx.is_closed(flooder) && net.tx.pending(flooder) < a.queue_bytes / 4 {
            while net.tx.pending(flooder) < a.queue_bytes {
                let before = net.tx.pending(flooder);
                net.tx.text_with(flooder, |b| {
                    let stamp = Stamp {
                        sender: 0,
                        seq,
                        ts_ns: now,
                    };
                    scan::write_broadcast(b, stamp, a.bytes)
                });
                frame_len = net.tx.pending(flooder) - before;
                seq += 1;
            }
        }
        net.poll(Some(Duration::from_millis(1)), &mut |_, id, ev| {
            let k = receiver_of.get(id).copied().unwrap_or(usize::MAX);
            match ev {
                Ev::Text(msg, t) => match scan::kind_of(&msg) {
                    Kind::Data if k != usize::MAX => {
                        if let Some(s) = scan::data_stamp(msg.head) {
                            seen.streams[k].see(s.seq);
                            if t >= window.0 && t < window.1 {
                                seen.in_window[k] += 1;
                            }
                        }
                    }
                    Kind::Error => seen
                        .errors
                        .push(String::from_utf8_lossy(msg.head).into_owned()),
                    _ => {}
                },
                Ev::Closed(info) => seen.closed.push(format!(
                    "{}: {}",
                    if id == flooder { "flooder" } else { "receiver" },
                    info.label()
                )),
                Ev::Open => {}
            }
        })
        .map_err(|e| format!("poll: {e}"))?;
    }
    let (pings, health) = probes.finish()?;
    let secs = a.duration;
    let win = [window];
    let ph = pings.within(&win);
    let hh = health.within(&win);
    let accepted = seen.in_window.iter().copied().min().unwrap_or(0);
    let accepted_rate = accepted as f64 / secs;
    let offered = written_at[1]
        .zip(written_at[0])
        .map_or(0, |(b, a)| b.saturating_sub(a));
    let offered_rate = offered as f64 / secs;
    let cpu = cpu_at[1].zip(cpu_at[0]).map(|(b, a)| b - a);
    let gaps: u64 = seen.streams.iter().map(|s| s.gaps).sum();
    let late: u64 = seen.streams.iter().map(|s| s.late).sum();
    let intact = gaps == 0 && late == 0 && seen.closed.is_empty() && seen.errors.is_empty();
    let on_target = |h: &Histogram| {
        h.count() > 0 && ms(h.quantile(0.99)) <= a.p99_ms && ms(h.max()) <= a.max_ms
    };
    let met = on_target(&ph)
        && on_target(&hh)
        && pings.failed == 0
        && health.failed == 0
        && intact
        && accepted > 0;

    let label = ctx.label_or(format!(
        "flood: one client broadcasts {} B as fast as it can to {} receivers",
        a.bytes, a.receivers
    ));
    let mut r = Report::new("flood", label);
    r.set("receivers", a.receivers)
        .set("bytes", a.bytes)
        .set("secs", secs)
        .set("interval_ms", a.interval_ms)
        .set("flooder_queued", u64::from(seq))
        .set("flooder_written_in_window", offered)
        .set("flooder_written_per_sec", offered_rate)
        .set("accepted_in_window", accepted)
        .set("accepted_per_sec", accepted_rate)
        .set("server_cpu_util", cpu.map(|c| c / secs))
        .set("gaps", gaps)
        .set("reordered", late)
        .set("closed", seen.closed.first().cloned())
        .set("errors", seen.errors.first().cloned())
        .set("met", met);
    probe_fields(&mut r, &ph, &pings, &hh, &health);
    r.human = format!(
        "flood: {:.1} s: accepted {}/s from the flooder (its kernel took {}/s), server CPU {}; ping in another room {}; /health {}; {} unanswered pings, {} failed checks; receivers: {} gaps, {} reordered, closes: {}; met: {met}",
        secs,
        thousands(accepted_rate as u64),
        thousands(offered_rate as u64),
        cpu.map_or("?".into(), |c| format!("{:.0}%", 100.0 * c / secs)),
        summary(&ph),
        summary(&hh),
        pings.failed,
        health.failed,
        gaps,
        late,
        if seen.closed.is_empty() { "none".to_string() } else { seen.closed.join(", ") },
    );
    r.row(
        format!(
            "ping in another room {}; /health {}; flooder accepted at {} msg/s, in order, no gaps: {}",
            summary(&ph),
            summary(&hh),
            thousands(accepted_rate as u64),
            if intact { "yes" } else { "no" }
        ),
        &format!(
            "ping and /health p99 ≤ {} ms, max ≤ {} ms; the flooder loses nothing",
            a.p99_ms, a.max_ms
        ),
        Some(met),
    );
    Ok(r)
}

#[derive(Args, Debug, Clone)]
pub struct FloodDocArgs {
    /// Peers besides the host.
    #[arg(long, default_value_t = 50)]
    pub peers: usize,
    /// Document size in bytes (default: the largest whose `sync_document`
    /// action fits the default MAX_MESSAGE_BYTES of 16 MiB).
    #[arg(long, default_value_t = (16 << 20) - 64)]
    pub size: usize,
    /// How many times the host sends the document.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Period of the ping and of the /health check, ms.
    #[arg(long, default_value_t = 5)]
    pub interval_ms: u64,
    /// Target for the probes' max, ms.
    #[arg(long, default_value_t = 50.0)]
    pub max_ms: f64,
    /// Longest wait for one round to reach every peer, seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub fn run_doc(ctx: &Ctx, a: &FloodDocArgs) -> Result<Report, String> {
    check_fds(a.peers + 8)?;
    let codes = create_rooms(ctx, "g", 2)?;
    let members = super::host_and_guests(&codes[0], a.peers, "p");
    let mut net = ctx.net()?;
    let joined = join_all(&mut net, &members, 64, Duration::from_secs(60), false)?;
    super::idle_for(&mut net, Duration::from_millis(300))?;
    let host = joined.ids[0];
    let probes = Probes::start(
        ctx.server,
        codes[1].clone(),
        Duration::from_millis(a.interval_ms),
    )?;
    // Let the probes take a few samples first (they do not count).
    super::idle_for(&mut net, Duration::from_millis(200))?;

    let doc = super::doc::document_action(a.size);
    // Server CPU time while documents were on their way.
    let mut cpu_busy = Some(0.0f64);
    let mut windows: Vec<(u64, u64)> = Vec::new();
    let mut round_ms: Vec<f64> = Vec::new();
    let mut closed: Vec<String> = Vec::new();
    let mut short = 0usize;
    let mut failure: Option<String> = None;
    for round in 0..a.rounds {
        let cpu0 = ctx.proc.cpu_secs();
        let start = now_ns();
        net.tx.text(host, &doc);
        let seen = super::await_documents(
            &mut net,
            host,
            a.peers,
            a.size,
            Duration::from_secs(a.timeout),
            Duration::from_millis(5),
            &mut closed,
            || {},
        )?;
        let received = seen.received;
        short += seen.short;
        let stop = now_ns();
        cpu_busy = cpu_busy
            .zip(ctx.proc.cpu_secs().zip(cpu0))
            .map(|(sum, (b, a))| sum + (b - a));
        windows.push((start, stop));
        round_ms.push(ms(stop - start));
        if received < a.peers {
            failure = Some(format!(
                "round {}: {received} of {} peers got the document ({} closed)",
                round + 1,
                a.peers,
                closed.len()
            ));
            break;
        }
    }
    // Answers to pings sent in the last window are still counted: the
    // probes keep running until they are finished.
    super::idle_for(&mut net, Duration::from_millis(100))?;
    let (pings, health) = probes.finish()?;
    let ph = pings.within(&windows);
    let hh = health.within(&windows);
    let ok = failure.is_none() && short == 0 && closed.is_empty();
    let busy_secs: f64 = windows.iter().map(|(a, b)| (b - a) as f64 / 1e9).sum();
    let cpu_util = cpu_busy.map(|c| c / busy_secs.max(1e-9));
    let met = ok
        && ph.count() > 0
        && hh.count() > 0
        && pings.failed == 0
        && health.failed == 0
        && ms(ph.max()) <= a.max_ms
        && ms(hh.max()) <= a.max_ms;
    let label = ctx.label_or(format!(
        "flooddoc: {} document to {} peers, {} times",
        mib(a.size as u64),
        a.peers,
        a.rounds
    ));
    let mut r = Report::new("flooddoc", label);
    let rounds_txt = round_ms
        .iter()
        .map(|m| format!("{m:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    r.set("doc_bytes", a.size)
        .set("peers", a.peers)
        .set("rounds", a.rounds)
        .set("round_ms", rounds_txt.clone())
        .set("short_documents", short)
        .set("closed", closed.first().cloned())
        .set("failure", failure.clone())
        .set("interval_ms", a.interval_ms)
        .set("server_cpu_util", cpu_util)
        .set("met", met);
    probe_fields(&mut r, &ph, &pings, &hh, &health);
    r.human = format!(
        "flooddoc: {} to {} peers, rounds of {rounds_txt} ms{}, server CPU {}; ping in another room {}; /health {}; {} unanswered pings, {} failed checks; met: {met}",
        mib(a.size as u64),
        a.peers,
        failure.as_deref().map_or(String::new(), |f| format!(" [{f}]")),
        cpu_util.map_or("?".into(), |c| format!("{:.0}%", 100.0 * c)),
        summary(&ph),
        summary(&hh),
        pings.failed,
        health.failed,
    );
    r.row(
        format!(
            "rounds of {rounds_txt} ms, every peer got it: {}; ping in another room {}; /health {}",
            if ok { "yes" } else { "no" },
            summary(&ph),
            summary(&hh)
        ),
        &format!(
            "ping and /health max ≤ {} ms while the document is sent",
            a.max_ms
        ),
        Some(met),
    );
    Ok(r)
}

/// The probes' figures in a report: the ping in another room and
/// `/health`, counted and timed within the measured windows.
fn probe_fields(r: &mut Report, ph: &Histogram, pings: &Samples, hh: &Histogram, health: &Samples) {
    r.set("pings", ph.count())
        .set("pings_unanswered", pings.failed)
        .set("ping_p50_ms", ms(ph.quantile(0.5)))
        .set("ping_p99_ms", ms(ph.quantile(0.99)))
        .set("ping_max_ms", ms(ph.max()))
        .set("health_checks", hh.count())
        .set("health_failed", health.failed)
        .set("health_p50_ms", ms(hh.quantile(0.5)))
        .set("health_p99_ms", ms(hh.quantile(0.99)))
        .set("health_max_ms", ms(hh.max()));
}
