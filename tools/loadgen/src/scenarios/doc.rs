//! `doc`: the host of a room syncs a document of S bytes to P joined peers.
//!
//! Measures the time until every peer holds the whole `document_sync`, the
//! server's RSS peak while it fans the document out (sampled every few ms
//! from `/proc`) and after it settles, and then the time a late joiner takes
//! to receive the stored document.
//!
//! "After it settles" is compared with the idle RSS *plus the document*: the
//! room keeps the document for later joiners, so S bytes staying resident is
//! the contract, not a leak.

use std::time::{Duration, Instant};

use clap::Args;

use super::{check_fds, create_rooms, join_all, join_message, Ctx, Member, RssSampler};
use crate::net::{now_ns, ConnOpts, Ev, Net};
use crate::report::{mib, thousands, Report};
use crate::scan::{self, Kind};
use crate::stats::ms;

#[derive(Args, Debug, Clone)]
pub struct DocArgs {
    /// Peers besides the host.
    #[arg(long, default_value_t = 50)]
    pub peers: usize,
    /// Document size in bytes.
    #[arg(long, default_value_t = 10 << 20)]
    pub size: usize,
    /// RSS sampling period, ms.
    #[arg(long, default_value_t = 2)]
    pub sample_ms: u64,
    /// Time to let the server settle after delivery before reading RSS, ms.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// Longest wait for the document to reach everyone, seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// The `sync_document` action with an `size`-byte document of letters and
/// digits (nothing the server must escape).
pub fn document_action(size: usize) -> Vec<u8> {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut v = Vec::with_capacity(size + 48);
    v.extend_from_slice(b"{\"action\":\"sync_document\",\"document\":\"");
    v.extend((0..size).map(|i| A[i % A.len()]));
    v.extend_from_slice(b"\"}");
    v
}

/// Connects one more client, joins `m`, and waits for its `document_sync`.
/// Returns (ms from connect start, ms from sending join, payload bytes).
pub fn late_join(
    net: &mut Net,
    m: &Member,
    timeout: Duration,
    sampler: &mut RssSampler,
) -> Result<(f64, f64, u64), String> {
    let t0 = now_ns();
    let id = net.connect(m.opts).map_err(|e| format!("connect: {e}"))?;
    let join = join_message(m);
    let mut t_join = 0u64;
    let mut got: Option<(u64, u64)> = None;
    let mut err: Option<String> = None;
    let end = Instant::now() + timeout;
    while got.is_none() && err.is_none() {
        if Instant::now() > end {
            return Err("late joiner did not receive the document in time".into());
        }
        net.poll(Some(Duration::from_millis(1)), &mut |tx, cid, ev| {
            if cid != id {
                return;
            }
            match ev {
                Ev::Open => {
                    t_join = now_ns();
                    tx.text(id, join.as_bytes());
                }
                Ev::Text(msg, now) => match scan::kind_of(&msg) {
                    Kind::DocumentSync => got = Some((now, msg.len)),
                    Kind::Error => err = Some(String::from_utf8_lossy(msg.head).into_owned()),
                    _ => {}
                },
                Ev::Closed(info) => err = Some(format!("late joiner closed: {}", info.label())),
            }
        })
        .map_err(|e| format!("poll: {e}"))?;
        sampler.tick();
    }
    if let Some(e) = err {
        return Err(e);
    }
    let (t, len) = got.expect("loop ends with a result");
    Ok(((t - t0) as f64 / 1e6, (t - t_join.min(t)) as f64 / 1e6, len))
}

pub fn run(ctx: &Ctx, a: &DocArgs) -> Result<Report, String> {
    check_fds(a.peers + 2)?;
    let room = create_rooms(ctx, "d", 1)?.remove(0);
    let members = super::host_and_guests(&room, a.peers, "p");
    let mut net = ctx.net()?;
    let joined = join_all(&mut net, &members, 256, Duration::from_secs(60), false)?;
    super::idle_for(&mut net, Duration::from_millis(500))?;
    let host = joined.ids[0];
    let peer_ids: Vec<usize> = joined.ids[1..].to_vec();
    let before = ctx.mem();

    let doc = document_action(a.size);
    let mut sampler = RssSampler::new(ctx.proc.clone(), Duration::from_millis(a.sample_ms.max(1)));
    sampler.tick();
    let t0 = now_ns();
    net.tx.text(host, &doc);
    drop(doc);
    let mut closed: Vec<String> = Vec::new();
    let seen = super::await_documents(
        &mut net,
        host,
        peer_ids.len(),
        a.size,
        Duration::from_secs(a.timeout),
        Duration::from_millis(1),
        &mut closed,
        || sampler.tick(),
    )?;
    let (received, short) = (seen.received, seen.short);
    let done_ns: Vec<u64> = seen.at_ns.iter().map(|&t| t.saturating_sub(t0)).collect();
    let all_ns = peer_ids.iter().map(|&i| done_ns[i]).max().unwrap_or(0);
    let first_ns = peer_ids
        .iter()
        .map(|&i| done_ns[i])
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(0);
    let peak_during = sampler.peak;
    // Settle: keep sampling so a late peak is still caught.
    let settle_end = Instant::now() + Duration::from_millis(a.settle_ms);
    while Instant::now() < settle_end {
        net.poll(Some(Duration::from_millis(2)), &mut |_, _, _| {})
            .map_err(|e| format!("poll: {e}"))?;
        sampler.tick();
    }
    let after = ctx.mem();

    let late = Member {
        room: room.clone(),
        peer_id: "late".into(),
        is_host: false,
        opts: ConnOpts::default(),
    };
    let late_res = late_join(
        &mut net,
        &late,
        Duration::from_secs(a.timeout),
        &mut sampler,
    );
    let after_late = ctx.mem();

    let label = ctx.label_or(format!("doc {} to P={}", mib(a.size as u64), a.peers));
    let mut r = Report::new("doc", label);
    let all_ok = received == peer_ids.len() && short == 0;
    let (late_ms, late_join_ms, late_len) = match &late_res {
        Ok((x, y, l)) => (Some(*x), Some(*y), Some(*l)),
        Err(_) => (None, None, None),
    };
    r.set("doc_bytes", a.size)
        .set("peers", a.peers)
        .set("received", received)
        .set("short_documents", short)
        .set("closed", closed.len())
        .set("first_received_ms", ms(first_ns))
        .set("all_received_ms", all_ok.then(|| ms(all_ns)))
        .set("rss_before_bytes", before.map(|m| m.rss))
        .set("rss_peak_bytes", ctx.proc.is_set().then_some(peak_during))
        .set(
            "rss_peak_settle_bytes",
            ctx.proc.is_set().then_some(sampler.peak),
        )
        .set("rss_after_bytes", after.map(|m| m.rss))
        .set("rss_after_late_joiner_bytes", after_late.map(|m| m.rss))
        .set("rss_samples", sampler.samples)
        .set("late_joiner_ms", late_ms)
        .set("late_joiner_from_join_ms", late_join_ms)
        .set("late_joiner_doc_bytes", late_len)
        .set("late_joiner_error", late_res.as_ref().err().cloned());
    let late_txt = match &late_res {
        Ok((x, y, _)) => {
            format!("late joiner got it {x:.1} ms after connecting ({y:.1} ms after join)")
        }
        Err(e) => format!("late joiner failed: {e}"),
    };
    let size = a.size as u64;
    match (before, after) {
        (Some(b), Some(af)) => {
            let peak_over = sampler.peak.saturating_sub(b.rss);
            let after_over = af.rss as i64 - b.rss as i64;
            let settled_target = (b.rss + size) as f64 * 1.1;
            r.set("rss_peak_over_idle_bytes", peak_over)
                .set("rss_peak_over_idle_docs", peak_over as f64 / size as f64)
                .set("rss_after_over_idle_bytes", after_over as f64);
            r.human = format!(
                "doc: {} to {} peers: all had it after {:.1} ms (first {:.1} ms); server RSS idle {}, peak {} (+{}, {:.2}x the document), after settling {} ({:+.1} MiB); {late_txt}",
                mib(size),
                a.peers,
                ms(all_ns),
                ms(first_ns),
                mib(b.rss),
                mib(sampler.peak),
                mib(peak_over),
                peak_over as f64 / size as f64,
                mib(af.rss),
                after_over as f64 / 1048576.0,
            );
            r.row(
                format!(
                    "all {} peers in {:.0} ms; RSS peak +{} above idle ({:.2}× doc); after settling {:+.1} MiB vs idle (doc stays stored); {late_txt}",
                    a.peers,
                    ms(all_ns),
                    mib(peak_over),
                    peak_over as f64 / size as f64,
                    after_over as f64 / 1048576.0,
                ),
                "RSS peak ≤ 3 × 10 MiB above idle; back to idle (+ the stored document) ±10% after",
                Some(
                    all_ok
                        && late_res.is_ok()
                        && peak_over <= 3 * size
                        && (af.rss as f64) <= settled_target,
                ),
            );
        }
        _ => {
            r.human = format!(
                "doc: {} to {} peers: all had it after {:.1} ms; {late_txt} (no --server-pid: no memory figures)",
                mib(size),
                a.peers,
                ms(all_ns)
            );
            r.row(
                format!("all {} in {:.0} ms; {late_txt}", a.peers, ms(all_ns)),
                "RSS peak ≤ 3 × 10 MiB above idle",
                None,
            );
        }
    }
    if !all_ok {
        r.human.push_str(&format!(
            " [only {received} of {} received the full document, {} closed: {}]",
            peer_ids.len(),
            closed.len(),
            closed.join(",")
        ));
    }
    let _ = thousands;
    Ok(r)
}
