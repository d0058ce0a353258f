//! `idle`: N connections joined in rooms of P, then left idle. The figure is
//! the server's RSS growth divided by N: what one idle joined WebSocket
//! costs the server.

use std::time::Duration;

use clap::Args;

use super::{check_fds, idle_for, join_all, members_in_rooms, Ctx};
use crate::report::{mib, thousands, Report};

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Peers per room.
    #[arg(long, default_value_t = 10)]
    pub peers: usize,
    /// Connects in progress at once (see `joinstorm --concurrency`).
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// How long to hold the connections idle before measuring, ms.
    #[arg(long, default_value_t = 2000)]
    pub hold_ms: u64,
}

/// Target of the issue: at most 4 KiB of server RSS per idle connection.
const TARGET_PER_CONN: f64 = 4096.0;
/// Target of the issue: 20,000 idle connections under 100 MB total RSS.
const TARGET_20K_TOTAL: f64 = 100e6;

pub fn run(ctx: &Ctx, a: &IdleArgs) -> Result<Report, String> {
    check_fds(a.conns)?;
    let peers = a.peers.max(1);
    let before = ctx.mem();
    let members = members_in_rooms(ctx, "i", a.conns, peers)?;
    let mut net = ctx.net()?;
    let joined = join_all(
        &mut net,
        &members,
        a.concurrency,
        Duration::from_secs(120),
        false,
    )?;
    idle_for(&mut net, Duration::from_millis(a.hold_ms))?;
    let after = ctx.mem();
    let open = net.open_count();

    let label = ctx.label_or(format!(
        "idle {} conns P={peers}",
        thousands(a.conns as u64)
    ));
    let mut r = Report::new("idle", label);
    r.set("conns", a.conns)
        .set("peers", peers)
        .set("open_at_end", open)
        .set("join_secs", joined.elapsed.as_secs_f64())
        .set("rss_before_bytes", before.map(|m| m.rss))
        .set("rss_after_bytes", after.map(|m| m.rss))
        .set("hwm_after_bytes", after.map(|m| m.hwm));
    match (before, after) {
        (Some(b), Some(af)) => {
            let per = (af.rss as f64 - b.rss as f64) / a.conns as f64;
            // Total at 20,000: measured when N is 20,000, else projected.
            let total_20k = af.rss as f64 + per * (20_000.0 - a.conns as f64);
            r.set("bytes_per_conn", per)
                .set("projected_rss_20k_bytes", total_20k);
            r.human = format!(
                "idle: {} connections in rooms of {peers}: server RSS {} -> {} ({:.0} bytes per connection), {open} open at end",
                thousands(a.conns as u64),
                mib(b.rss),
                mib(af.rss),
                per
            );
            let total_note = if a.conns == 20_000 {
                format!("total RSS {:.1} MB", af.rss as f64 / 1e6)
            } else {
                format!(
                    "total RSS {:.1} MB (at 20,000: {:.1} MB projected)",
                    af.rss as f64 / 1e6,
                    total_20k / 1e6
                )
            };
            r.row(
                format!("{:.0} B/conn ({:.2} KiB); {total_note}", per, per / 1024.0),
                "≤ 4 KiB/conn; 20,000 idle connections under 100 MB total RSS",
                Some(per <= TARGET_PER_CONN && total_20k < TARGET_20K_TOTAL && open == a.conns),
            );
        }
        _ => {
            r.human = format!(
                "idle: {} connections in rooms of {peers} held open ({open} open at end); no --server-pid, so no memory figures",
                thousands(a.conns as u64)
            );
            r.row(
                format!("{open} open (no --server-pid)"),
                "≤ 4 KiB/conn",
                None,
            );
        }
    }
    Ok(r)
}
