//! `scrape`: N connections joined in rooms of P held open, then `/metrics`
//! (and optionally `/api/admin/rooms`) fetched back to back from a second
//! thread while a few probe connections send `ping` and time the `pong`.
//! Figures: the scrape's latency, and the probes' round trip in a quiet
//! phase against a scraping phase (a scrape must not delay pings).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::{check_fds, idle_for, join_all, members_in_rooms, Ctx};
use crate::http;
use crate::net::{now_ns, Ev};
use crate::report::{thousands, Report};
use crate::scan::{self, Kind};
use crate::stats::{ms, Histogram};

#[derive(Args, Debug, Clone)]
pub struct ScrapeArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Peers per room.
    #[arg(long, default_value_t = 10)]
    pub peers: usize,
    /// Connections (of the above) that time ping → pong.
    #[arg(long, default_value_t = 50)]
    pub probes: usize,
    /// Each probe's pause between a pong and its next ping, ms.
    #[arg(long, default_value_t = 20)]
    pub ping_every_ms: u64,
    /// Length of the quiet phase and of the scraping phase, s.
    #[arg(long, default_value_t = 5)]
    pub phase_secs: u64,
    /// Idle time after the joins, before the quiet phase, s.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// Pause between scrapes, ms (0: back to back, the worst case).
    #[arg(long, default_value_t = 0)]
    pub scrape_every_ms: u64,
    /// Path to scrape.
    #[arg(long, default_value = "/metrics")]
    pub path: String,
    /// Bearer token for the scrape (for `/api/admin/rooms`).
    #[arg(long)]
    pub token: Option<String>,
}

/// What the scraping thread saw.
struct Scraped {
    latency: Histogram,
    bytes: usize,
    failures: u64,
}

fn scraper(
    addr: std::net::SocketAddr,
    path: String,
    token: Option<String>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Scraped {
    let mut c = http::Client::new(addr, Duration::from_secs(10));
    let mut out = Scraped {
        latency: Histogram::new(),
        bytes: 0,
        failures: 0,
    };
    let auth = token.map(|t| format!("Bearer {t}"));
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let r = match &auth {
            None => c.request("GET", &path, None),
            Some(a) => c.request_with_header("GET", &path, ("Authorization", a)),
        };
        match r {
            Ok(r) if r.status == 200 => {
                out.latency.record(t.elapsed().as_nanos() as u64);
                out.bytes = r.body.len();
            }
            _ => out.failures += 1,
        }
        if !every.is_zero() {
            std::thread::sleep(every);
        }
    }
    out
}

pub fn run(ctx: &Ctx, a: &ScrapeArgs) -> Result<Report, String> {
    check_fds(a.conns + 4)?;
    let peers = a.peers.max(1);
    let members = members_in_rooms(ctx, "s", a.conns, peers)?;
    let mut net = ctx.net()?;
    let joined = join_all(&mut net, &members, 128, Duration::from_secs(120), false)?;
    // Let the join storm's aftermath (allocator trims, housekeeping) pass
    // before the quiet phase is measured.
    idle_for(&mut net, Duration::from_secs(a.settle_secs))?;
    // Probes spread over the rooms.
    let step = (a.conns / a.probes.max(1)).max(1);
    let probes: Vec<usize> = (0..a.conns).step_by(step).take(a.probes).collect();
    let mut probe_of = vec![usize::MAX; net.len() + 1];
    for (k, &m) in probes.iter().enumerate() {
        probe_of[joined.ids[m]] = k;
    }
    // Per probe: when its ping went out (0: none in flight), when the next
    // one is due.
    let mut sent_at = vec![0u64; probes.len()];
    let mut due = vec![0u64; probes.len()];
    let every = a.ping_every_ms * 1_000_000;
    let mut quiet = Histogram::new();
    let mut busy = Histogram::new();
    let mut closed = 0usize;

    let phase = Duration::from_secs(a.phase_secs);
    let start = Instant::now();
    let mut scraping: Option<(Arc<AtomicBool>, std::thread::JoinHandle<Scraped>)> = None;
    while start.elapsed() < phase * 2 {
        if scraping.is_none() && start.elapsed() >= phase {
            let stop = Arc::new(AtomicBool::new(false));
            let (addr, path, token, s) =
                (ctx.server, a.path.clone(), a.token.clone(), stop.clone());
            let every = Duration::from_millis(a.scrape_every_ms);
            let h = std::thread::spawn(move || scraper(addr, path, token, every, s));
            scraping = Some((stop, h));
        }
        let now = now_ns();
        for (k, &m) in probes.iter().enumerate() {
            if sent_at[k] == 0 && now >= due[k] {
                sent_at[k] = now;
                net_send_ping(&mut net, joined.ids[m]);
            }
        }
        let in_scrape_phase = scraping.is_some();
        net.poll(Some(Duration::from_millis(1)), &mut |_, id, ev| match ev {
            Ev::Text(msg, t) => {
                let Some(&k) = probe_of.get(id) else { return };
                if k == usize::MAX || sent_at[k] == 0 {
                    return;
                }
                if scan::kind_of(&msg) == Kind::Pong {
                    let rtt = t.saturating_sub(sent_at[k]);
                    if in_scrape_phase {
                        busy.record(rtt);
                    } else {
                        quiet.record(rtt);
                    }
                    sent_at[k] = 0;
                    due[k] = t + every;
                }
            }
            Ev::Closed(_) => closed += 1,
            Ev::Open => {}
        })
        .map_err(|e| format!("poll: {e}"))?;
    }
    let scraped = match scraping {
        Some((stop, h)) => {
            stop.store(true, Ordering::Relaxed);
            h.join()
                .map_err(|_| "scraper thread panicked".to_string())?
        }
        None => return Err("no scraping phase ran".into()),
    };
    if closed > 0 {
        return Err(format!("{closed} connections closed during the run"));
    }
    let label = ctx.label_or(format!(
        "scrape {} with {} connections in rooms of {peers}",
        a.path,
        thousands(a.conns as u64)
    ));
    let mut r = Report::new("scrape", label);
    let l = &scraped.latency;
    r.set("conns", a.conns)
        .set("rooms", a.conns.div_ceil(peers))
        .set("scrapes", l.count())
        .set("scrape_failures", scraped.failures)
        .set("scrape_body_bytes", scraped.bytes)
        .set("scrape_p50_ms", ms(l.quantile(0.5)))
        .set("scrape_p99_ms", ms(l.quantile(0.99)))
        .set("scrape_max_ms", ms(l.max()))
        .set("ping_quiet_p50_ms", ms(quiet.quantile(0.5)))
        .set("ping_quiet_p99_ms", ms(quiet.quantile(0.99)))
        .set("ping_quiet_max_ms", ms(quiet.max()))
        .set("ping_scraping_p50_ms", ms(busy.quantile(0.5)))
        .set("ping_scraping_p99_ms", ms(busy.quantile(0.99)))
        .set("ping_scraping_max_ms", ms(busy.max()))
        .set("pings", quiet.count() + busy.count());
    r.human = format!(
        "scrape: {} scrapes of {} ({} bytes) with {} connections in {} rooms: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; ping RTT p99 {:.3} ms quiet vs {:.3} ms while scraping ({} pings)",
        l.count(),
        a.path,
        scraped.bytes,
        thousands(a.conns as u64),
        a.conns.div_ceil(peers),
        ms(l.quantile(0.5)),
        ms(l.quantile(0.99)),
        ms(l.max()),
        ms(quiet.quantile(0.99)),
        ms(busy.quantile(0.99)),
        quiet.count() + busy.count(),
    );
    r.row(
        format!(
            "{} scrapes{} ({} B): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; ping RTT p50/p99 {:.3}/{:.3} ms quiet, {:.3}/{:.3} ms while scraping",
            thousands(l.count()),
            if a.scrape_every_ms == 0 {
                " back to back".to_string()
            } else {
                format!(" every {} ms", a.scrape_every_ms)
            },
            thousands(scraped.bytes as u64),
            ms(l.quantile(0.5)),
            ms(l.quantile(0.99)),
            ms(l.max()),
            ms(quiet.quantile(0.5)),
            ms(quiet.quantile(0.99)),
            ms(busy.quantile(0.5)),
            ms(busy.quantile(0.99)),
        ),
        "every scrape answered; median ping RTT while scraping ≤ 1.5 × quiet + 0.2 ms",
        Some(
            scraped.failures == 0
                && l.count() > 0
                && ms(busy.quantile(0.5)) <= 1.5 * ms(quiet.quantile(0.5)) + 0.2,
        ),
    );
    Ok(r)
}

fn net_send_ping(net: &mut crate::net::Net, id: crate::net::ConnId) {
    net.tx.text(id, br#"{"action":"ping"}"#);
}
