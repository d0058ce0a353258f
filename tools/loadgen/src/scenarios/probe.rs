//! Probes that time the server from outside a load: a WebSocket alone in a
//! room of its own sending `{"action":"ping"}` on a fixed schedule, and
//! `GET /health` on a keep-alive connection, each on its own thread with its
//! own poll loop, so that the load's traffic (read and written by the
//! scenario's thread) does not delay them.
//!
//! Pings go out on schedule whether or not the previous one was answered
//! (open loop): a server turn that takes 200 ms delays every ping sent
//! during it, and shows as a 200 ms round trip rather than as one missed
//! sample. Every sample keeps its send time on the [`now_ns`] clock, so a
//! scenario can count only the samples of the phases it measures
//! ([`Samples::within`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{join_all, Member};
use crate::http::HealthPoller;
use crate::net::{now_ns, ConnOpts, Ev, Net};
use crate::scan::{self, Kind};
use crate::stats::{ms, Histogram};

/// Samples of one probe: (send time, latency), ns.
#[derive(Default)]
pub struct Samples {
    pub samples: Vec<(u64, u64)>,
    /// Probes that got no answer (pings unanswered at the end, failed
    /// health checks).
    pub failed: u64,
}

impl Samples {
    /// The latencies of the samples sent inside one of `windows` (ns,
    /// half-open), as a histogram.
    pub fn within(&self, windows: &[(u64, u64)]) -> Histogram {
        let mut h = Histogram::new();
        for &(at, l) in &self.samples {
            if windows.iter().any(|&(a, b)| at >= a && at < b) {
                h.record(l);
            }
        }
        h
    }
}

/// p50 / p99 / max of a histogram, in ms, for a table row.
pub fn summary(h: &Histogram) -> String {
    format!(
        "p50 {:.2} / p99 {:.2} / max {:.2} ms ({} samples)",
        ms(h.quantile(0.5)),
        ms(h.quantile(0.99)),
        ms(h.max()),
        h.count()
    )
}

/// Running probes; [`Probes::finish`] stops them and hands back what they saw.
pub struct Probes {
    stop: Arc<AtomicBool>,
    ping: Option<JoinHandle<Result<Samples, String>>>,
    health: HealthPoller,
}

impl Probes {
    /// Joins a ping probe to `room` (which must exist) and starts pinging and
    /// polling `/health` every `interval`. Returns once the probe has joined.
    pub fn start(server: SocketAddr, room: String, interval: Duration) -> Result<Probes, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let s = stop.clone();
        let ping = std::thread::spawn(move || ping_probe(server, room, interval, s, ready_tx));
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("ping probe: {e}")),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return Err("ping probe did not join in 30 s".into());
            }
        }
        let health = HealthPoller::start(server, interval, Duration::from_secs(5));
        Ok(Probes {
            stop,
            ping: Some(ping),
            health,
        })
    }

    /// Stops both probes (the ping probe waits up to `grace` for answers
    /// still due) and returns (pings, health checks).
    pub fn finish(mut self) -> Result<(Samples, Samples), String> {
        self.stop.store(true, Ordering::Relaxed);
        let pings = self
            .ping
            .take()
            .expect("finish runs once")
            .join()
            .map_err(|_| "ping probe panicked".to_string())??;
        let log = self.health.finish();
        let health = Samples {
            samples: log.sent_at.into_iter().zip(log.latencies).collect(),
            failed: log.failed,
        };
        Ok((pings, health))
    }
}

/// Answers still due after the stop are waited for this long.
const GRACE: Duration = Duration::from_secs(1);

fn ping_probe(
    server: SocketAddr,
    room: String,
    interval: Duration,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<(), String>>,
) -> Result<Samples, String> {
    let joined = (|| {
        let mut net = Net::new(server, 1).map_err(|e| format!("poll: {e}"))?;
        let m = Member {
            room,
            peer_id: "probe".into(),
            is_host: false,
            opts: ConnOpts::default(),
        };
        let j = join_all(&mut net, &[m], 1, Duration::from_secs(20), false)?;
        Ok::<_, String>((net, j.ids[0]))
    })();
    let (mut net, id) = match joined {
        Ok(x) => {
            let _ = ready.send(Ok(()));
            x
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let mut out = Samples::default();
    let mut outstanding: VecDeque<u64> = VecDeque::new();
    let mut closed: Option<String> = None;
    let mut next = Instant::now();
    let mut grace_end: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if grace_end.is_none() && stop.load(Ordering::Relaxed) {
            grace_end = Some(now + GRACE);
        }
        match grace_end {
            Some(g) if now >= g || outstanding.is_empty() => break,
            Some(_) => {}
            None if now >= next => {
                outstanding.push_back(now_ns());
                net.tx.text(id, br#"{"action":"ping"}"#);
                next += interval;
                if next < now {
                    next = now + interval; // never a burst of catch-up pings
                }
            }
            None => {}
        }
        let wait = if grace_end.is_some() {
            Duration::from_millis(10) // a pong wakes the poll anyway
        } else {
            next.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(10))
        };
        net.poll(Some(wait), &mut |_, cid, ev| {
            if cid != id {
                return;
            }
            match ev {
                Ev::Text(msg, t) => {
                    if scan::kind_of(&msg) == Kind::Pong {
                        if let Some(sent) = outstanding.pop_front() {
                            out.samples.push((sent, t.saturating_sub(sent)));
                        }
                    }
                }
                Ev::Closed(info) => closed = Some(info.label()),
                Ev::Open => {}
            }
        })
        .map_err(|e| format!("poll: {e}"))?;
        if let Some(c) = &closed {
            return Err(format!("ping probe closed: {c}"));
        }
    }
    out.failed = outstanding.len() as u64;
    Ok(out)
}
