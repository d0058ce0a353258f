//! `stall`: a late joiner stops reading halfway through a large document
//! while the rest of the server must stay responsive.
//!
//! A host stores a document (10 MiB by default) in room A. A probe joins
//! room B. Then a late joiner with a small fixed `SO_RCVBUF` joins room A and
//! reads only the first half of its `document_sync`; the rest must wait in
//! the server. Meanwhile the probe sends `{"action":"ping"}` every 100 ms and
//! a background thread calls `GET /health` every 100 ms. Every ping and every
//! health check must be answered within `--deadline-ms` (a server that writes
//! the document with a blocking write, as the old one did, freezes here).
//! At the end the joiner reads again and must receive the whole document.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clap::Args;

use super::{check_fds, create_rooms, join_all, join_message, Ctx, Member, RssSampler};
use crate::http::{self, HealthPoller};
use crate::net::{now_ns, ConnOpts, Ev};
use crate::report::{mib, Report};
use crate::scan::{self, Kind};
use crate::stats::{ms, Histogram};

#[derive(Args, Debug, Clone)]
pub struct StallArgs {
    /// Document size in bytes.
    #[arg(long, default_value_t = 10 << 20)]
    pub size: usize,
    /// Seconds to keep the joiner stalled while probing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Ping and health check period, ms.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// A ping or health check answered later than this is not on time, ms.
    #[arg(long, default_value_t = 100)]
    pub deadline_ms: u64,
    /// SO_RCVBUF of the stalling joiner's socket.
    #[arg(long, default_value_t = 65536)]
    pub rcvbuf: usize,
}

pub fn run(ctx: &Ctx, a: &StallArgs) -> Result<Report, String> {
    check_fds(8)?;
    let codes = create_rooms(ctx, "t", 2)?;
    let members = vec![
        Member {
            room: codes[0].clone(),
            peer_id: "h0".into(),
            is_host: true,
            opts: ConnOpts::default(),
        },
        Member {
            room: codes[1].clone(),
            peer_id: "probe".into(),
            is_host: false,
            opts: ConnOpts::default(),
        },
    ];
    let mut net = ctx.net()?;
    let joined = join_all(&mut net, &members, 4, Duration::from_secs(30), false)?;
    let (host, probe) = (joined.ids[0], joined.ids[1]);

    // Store the document and wait until the server says it has it.
    net.tx.text(host, &super::doc::document_action(a.size));
    let mut client = http::Client::new(ctx.server, Duration::from_secs(5));
    let t = Instant::now();
    loop {
        net.poll(Some(Duration::from_millis(10)), &mut |_, _, _| {})
            .map_err(|e| format!("poll: {e}"))?;
        if net.tx.pending(host) == 0 && http::room_has_document(&mut client, &codes[0])? {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            return Err("the room never reported has_document".into());
        }
    }
    drop(client);
    let before = ctx.mem();

    // The late joiner: reads half the document, then stops.
    let late = Member {
        room: codes[0].clone(),
        peer_id: "late".into(),
        is_host: false,
        opts: ConnOpts {
            rcvbuf: Some(a.rcvbuf),
        },
    };
    let lid = net
        .connect(late.opts)
        .map_err(|e| format!("connect: {e}"))?;
    let half = (a.size / 2) as u64;
    net.pause_at(lid, half);
    let join = join_message(&late);

    let health = HealthPoller::start(
        ctx.server,
        Duration::from_millis(a.interval_ms),
        Duration::from_secs(5),
    );
    let mut sampler = RssSampler::new(ctx.proc.clone(), Duration::from_millis(5));
    let interval = Duration::from_millis(a.interval_ms);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let mut next_ping = start;
    let mut pings_sent = 0u64;
    let mut st = Probe::default();
    let ping = br#"{"action":"ping"}"#;
    let on_event = |st: &mut Probe, tx: &mut crate::net::Tx, id: usize, ev: Ev<'_>| match ev {
        Ev::Open if id == lid => tx.text(lid, join.as_bytes()),
        Ev::Text(msg, now) => match scan::kind_of(&msg) {
            Kind::Pong if id == probe => {
                if let Some(t) = st.outstanding.pop_front() {
                    st.pings.push(now - t);
                }
            }
            Kind::DocumentSync if id == lid => st.late_doc = Some((now, msg.len)),
            Kind::Error => st
                .errors
                .push(String::from_utf8_lossy(msg.head).into_owned()),
            _ => {}
        },
        Ev::Closed(info) if id == lid => st.late_closed = Some(info.label()),
        Ev::Closed(info) => st
            .errors
            .push(format!("connection closed: {}", info.label())),
        _ => {}
    };
    while Instant::now() < end {
        if Instant::now() >= next_ping {
            st.outstanding.push_back(now_ns());
            net.tx.text(probe, ping);
            pings_sent += 1;
            next_ping += interval;
        }
        net.poll(Some(Duration::from_millis(1)), &mut |tx, id, ev| {
            on_event(&mut st, tx, id, ev)
        })
        .map_err(|e| format!("poll: {e}"))?;
        sampler.tick();
    }
    // Give the last pings their deadline, then count what is unanswered.
    let grace = Instant::now() + Duration::from_millis(a.deadline_ms);
    while !st.outstanding.is_empty() && Instant::now() < grace {
        net.poll(Some(Duration::from_millis(1)), &mut |tx, id, ev| {
            on_event(&mut st, tx, id, ev)
        })
        .map_err(|e| format!("poll: {e}"))?;
    }
    let unanswered = st.outstanding.len() as u64;
    let health_log = health.finish();
    let stalled_at = net.rx_bytes(lid);
    let stalled_partial = net.partial_message(lid);
    let was_stalled = st.late_doc.is_none() && stalled_at >= half.min(a.size as u64 / 4);

    // Let the joiner read again: it must get the whole document.
    let resume_t = now_ns();
    net.resume(lid);
    let t = Instant::now();
    while st.late_doc.is_none() && st.late_closed.is_none() && t.elapsed() < Duration::from_secs(30)
    {
        net.poll(Some(Duration::from_millis(5)), &mut |tx, id, ev| {
            on_event(&mut st, tx, id, ev)
        })
        .map_err(|e| format!("poll: {e}"))?;
        sampler.tick();
    }
    let after = ctx.mem();
    let completed = st.late_doc.is_some_and(|(_, len)| len >= a.size as u64);
    let (late_doc, late_closed, errors) = (st.late_doc, st.late_closed, st.errors);

    let mut hh = Histogram::new();
    for &l in &health_log.latencies {
        hh.record(l);
    }
    let mut pings = Histogram::new();
    for &l in &st.pings {
        pings.record(l);
    }
    let deadline = a.deadline_ms * 1_000_000;
    let late_pings = st.pings.iter().filter(|&&l| l > deadline).count() as u64;
    let late_health = health_log
        .latencies
        .iter()
        .filter(|&&l| l > deadline)
        .count() as u64;
    let on_time = unanswered == 0
        && late_pings == 0
        && health_log.failed == 0
        && late_health == 0
        && !health_log.latencies.is_empty();

    let label = ctx.label_or(format!("stall ({} document)", mib(a.size as u64)));
    let mut r = Report::new("stall", label);
    r.set("doc_bytes", a.size)
        .set("secs", a.duration)
        .set("stalled", was_stalled)
        .set("stalled_after_bytes", stalled_at)
        .set("stalled_partial_message_bytes", stalled_partial)
        .set("pings_sent", pings_sent)
        .set("pings_answered", pings.count())
        .set("pings_unanswered", unanswered)
        .set("pings_late", late_pings)
        .set("ping_p50_ms", ms(pings.quantile(0.5)))
        .set("ping_p99_ms", ms(pings.quantile(0.99)))
        .set("ping_max_ms", ms(pings.max()))
        .set(
            "health_checks",
            health_log.latencies.len() as u64 + health_log.failed,
        )
        .set("health_failed", health_log.failed)
        .set("health_late", late_health)
        .set("health_p50_ms", ms(hh.quantile(0.5)))
        .set("health_max_ms", ms(hh.max()))
        .set("deadline_ms", a.deadline_ms)
        .set("all_on_time", on_time)
        .set("joiner_completed", completed)
        .set(
            "joiner_rest_ms",
            late_doc.map(|(t, _)| t.saturating_sub(resume_t) as f64 / 1e6),
        )
        .set("joiner_closed", late_closed.clone())
        .set("errors", errors.first().cloned())
        .set("rss_before_bytes", before.map(|m| m.rss))
        .set("rss_peak_bytes", ctx.proc.is_set().then_some(sampler.peak))
        .set("rss_after_bytes", after.map(|m| m.rss));
    r.human = format!(
        "stall: joiner stopped after {} of a {} document{}; {} pings: {} answered, max {:.2} ms (p99 {:.2}); {} /health: {} failed, max {:.2} ms; all on time (≤ {} ms): {}; joiner then got the whole document: {}",
        mib(stalled_at),
        mib(a.size as u64),
        if was_stalled { "" } else { " (it was NOT stalled)" },
        pings_sent,
        pings.count(),
        ms(pings.max()),
        ms(pings.quantile(0.99)),
        health_log.latencies.len() as u64 + health_log.failed,
        health_log.failed,
        ms(hh.max()),
        a.deadline_ms,
        on_time,
        completed
    );
    r.row(
        format!(
            "max ping {:.2} ms ({} of {} answered), max /health {:.2} ms ({} failed); joiner completed after resuming: {}",
            ms(pings.max()),
            pings.count(),
            pings_sent,
            ms(hh.max()),
            health_log.failed,
            if completed { "yes" } else { "no" }
        ),
        "every ping and health check answered on time (≤ 100 ms)",
        Some(on_time && was_stalled && completed),
    );
    Ok(r)
}

/// What the probe and the late joiner saw.
#[derive(Default)]
struct Probe {
    /// Send times of pings not yet answered, oldest first.
    outstanding: VecDeque<u64>,
    /// Ping round trips, ns.
    pings: Vec<u64>,
    late_doc: Option<(u64, u64)>,
    late_closed: Option<String>,
    errors: Vec<String>,
}
