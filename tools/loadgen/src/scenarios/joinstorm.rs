//! `joinstorm`: N clients connect, upgrade and join as fast as they can.
//! Rooms are created beforehand (not timed); the clock runs from the first
//! TCP connect to the last `connected` message, and a join counts only when
//! its `connected` arrives.

use std::time::Duration;

use clap::Args;

use super::{check_fds, join_all, members_in_rooms, Ctx};
use crate::report::{thousands, Report};
use crate::stats::{ms, Histogram};

#[derive(Args, Debug, Clone)]
pub struct JoinstormArgs {
    /// Clients to connect and join.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Peers per room.
    #[arg(long, default_value_t = 10)]
    pub peers: usize,
    /// Joins in progress at once. More than the server's listen backlog
    /// overflows the accept queue, and each dropped SYN costs a 1 s
    /// retransmission: that measures the kernel's timer, not the server.
    /// 128 fits every backlog (mio's default is 128; sync-server raises its
    /// own to min(MAX_CONNECTIONS, 4096)) and already keeps both sides busy.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

const TARGET: f64 = 20_000.0;

pub fn run(ctx: &Ctx, a: &JoinstormArgs) -> Result<Report, String> {
    check_fds(a.conns)?;
    let peers = a.peers.max(1);
    let members = members_in_rooms(ctx, "j", a.conns, peers)?;
    let mut net = ctx.net()?;
    let cpu0 = ctx.proc.cpu_secs();
    let own = crate::procfs::Proc::own();
    let own0 = own.cpu_secs();
    let j = join_all(
        &mut net,
        &members,
        a.concurrency,
        Duration::from_secs(120),
        true,
    )?;
    let cpu1 = ctx.proc.cpu_secs();
    let own_cpu = own0.zip(own.cpu_secs()).map(|(a, b)| b - a);
    let ok = members.len() - j.failures.len();
    let secs = j.elapsed.as_secs_f64();
    let rate = ok as f64 / secs;
    let mut h = Histogram::new();
    for &t in &j.join_ns {
        if t != 0 && t != u64::MAX {
            h.record(t);
        }
    }
    let cpu = cpu0.zip(cpu1).map(|(a, b)| b - a);
    let label = ctx.label_or(format!("joinstorm {}", thousands(a.conns as u64)));
    let mut r = Report::new("joinstorm", label);
    r.set("conns", a.conns)
        .set("peers", peers)
        .set("concurrency", a.concurrency)
        .set("joined", ok)
        .set("failed", j.failures.len())
        .set("first_failure", j.failures.first().cloned())
        .set("secs", secs)
        .set("joins_per_sec", rate)
        .set("join_p50_ms", ms(h.quantile(0.5)))
        .set("join_p99_ms", ms(h.quantile(0.99)))
        .set("join_max_ms", ms(h.max()))
        .set("server_cpu_secs", cpu)
        .set("loadgen_cpu_secs", own_cpu)
        .set(
            "server_cpu_us_per_join",
            cpu.map(|c| c * 1e6 / ok.max(1) as f64),
        );
    r.human = format!(
        "joinstorm: {} of {} joined in {:.3} s = {} joins/s (join latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} failed){}",
        thousands(ok as u64),
        thousands(a.conns as u64),
        secs,
        thousands(rate as u64),
        ms(h.quantile(0.5)),
        ms(h.quantile(0.99)),
        ms(h.max()),
        j.failures.len(),
        cpu.map_or(String::new(), |c| format!(
            "; server CPU {:.1} µs per join",
            c * 1e6 / ok.max(1) as f64
        )),
    );
    r.row(
        format!(
            "{} joins/s ({} failed)",
            thousands(rate as u64),
            j.failures.len()
        ),
        "≥ 20,000 joins/s",
        Some(rate >= TARGET && j.failures.is_empty()),
    );
    Ok(r)
}
