//! `loadgen`: the load generator of the Khun Phaen Sync Server.
//!
//! It speaks the server's wire protocol (`POST /api/rooms`, then WebSocket
//! `/ws` with `join`, `broadcast`, `sync_document`, `ping`) from one thread
//! driving thousands of non-blocking connections with `mio`, and reads the
//! server's memory and CPU time from `/proc/<pid>` (`--server-pid`). Every
//! scenario prints one human-readable line and one JSON line, and can append
//! rows to a Markdown table (`--md`) for `tools/bench.sh`.
//!
//! ```text
//! loadgen --port 3001 --server-pid 1234 idle --conns 10000 --peers 10
//! loadgen --port 3001 --server-pid 1234 fanout --rooms 10 --peers 100 --window 64
//! loadgen --port 3001 --server-pid 1234 fanout --rate 1010
//! loadgen --port 3001 --server-pid 1234 doc --size 10485760 --peers 50
//! loadgen --port 3001 --server-pid 1234 joinstorm --conns 10000
//! loadgen --port 3001 --server-pid 1234 reconnect --rooms 50 --peers 100
//! loadgen --port 3001 --server-pid 1234 scrape --conns 10000 --peers 10
//! loadgen --port 3001 --server-pid 1234 slow
//! loadgen --port 3001 --server-pid 1234 stall
//! loadgen --port 3001 --server-pid 1234 flood --receivers 8
//! loadgen --port 3001 --server-pid 1234 flooddoc --peers 50
//! loadgen --port 3001 --server-pid 1234 linger
//! ```
//!
//! Traffic goes only to loopback addresses: anything else is refused.

mod http;
mod net;
mod procfs;
mod report;
mod scan;
mod scenarios;
mod stats;
mod ws;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::procfs::Proc;
use crate::report::Report;
use crate::scenarios::Ctx;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for the Khun Phaen Sync Server (loopback only)"
)]
struct Cli {
    /// Server address (must be a loopback address).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Server port.
    #[arg(long, global = true, default_value_t = 3001)]
    port: u16,
    /// Server process id, for RSS and CPU figures from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Another node of a cluster serving the same rooms (repeatable, a
    /// loopback address): WebSocket connections spread round-robin over
    /// the server and these. Rooms are created on the first.
    #[arg(long, global = true)]
    also: Vec<SocketAddr>,
    /// Process id of another node (repeatable): CPU and RSS figures are
    /// summed over the server and these.
    #[arg(long, global = true)]
    also_pid: Vec<u32>,
    /// Loopback source addresses to spread connections over
    /// (127.0.0.1, 127.0.0.2, ...), each with its own ephemeral ports.
    #[arg(long, global = true, default_value_t = 4)]
    sources: usize,
    /// Append the result as Markdown table rows to this file.
    #[arg(long, global = true)]
    md: Option<PathBuf>,
    /// Scenario label in the table (default: a description of the run).
    #[arg(long, global = true)]
    label: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N connections joined in rooms of P, held idle: server bytes per connection.
    Idle(scenarios::idle::IdleArgs),
    /// R rooms × P peers broadcasting: deliveries/s, CPU per delivery, latency, loss.
    Fanout(scenarios::fanout::FanoutArgs),
    /// A host syncs a big document to P peers: time, RSS peak, late joiner.
    Doc(scenarios::doc::DocArgs),
    /// N clients connect and join as fast as possible: joins/s.
    Joinstorm(scenarios::joinstorm::JoinstormArgs),
    /// Peers of busy rooms drop and come back with `since`: recoveries/s.
    Reconnect(scenarios::reconnect::ReconnectArgs),
    /// N idle connections; /metrics scraped back to back: scrape latency, ping delay.
    Scrape(scenarios::scrape::ScrapeArgs),
    /// One reader stops reading: it must be cut off, RSS must stay bounded.
    Slow(scenarios::slow::SlowArgs),
    /// A joiner stalls mid-document: pings and /health must stay on time.
    Stall(scenarios::stall::StallArgs),
    /// One client broadcasts as fast as it can: pings elsewhere and /health must stay on time.
    Flood(scenarios::flood::FloodArgs),
    /// A 16 MiB document to 50 peers: pings elsewhere and /health must stay on time.
    Flooddoc(scenarios::flood::FloodDocArgs),
    /// Peers hold half-closed HTTP connections: the server must stay idle.
    Linger(scenarios::linger::LingerArgs),
    /// Print a free loopback TCP port (for scripts).
    FreePort,
    /// Wait until GET /health answers 200 (for scripts).
    WaitReady {
        /// Seconds to wait.
        #[arg(long, default_value_t = 15)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loopback = match cli.host {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback(),
    };
    if !loopback {
        eprintln!(
            "loadgen: refusing {}: only loopback servers may be loaded",
            cli.host
        );
        return ExitCode::from(2);
    }
    if cli.sources > 1 && cli.host.is_ipv6() {
        eprintln!("loadgen: --sources > 1 needs an IPv4 loopback server");
        return ExitCode::from(2);
    }
    let server = SocketAddr::new(cli.host, cli.port);
    if let Some(a) = cli.also.iter().find(|a| !a.ip().is_loopback()) {
        eprintln!("loadgen: refusing {a}: only loopback servers may be loaded");
        return ExitCode::from(2);
    }
    match &cli.cmd {
        Cmd::FreePort => {
            return match TcpListener::bind((cli.host, 0)).and_then(|l| l.local_addr()) {
                Ok(a) => {
                    println!("{}", a.port());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::WaitReady { timeout } => {
            return match http::wait_ready(server, Duration::from_secs(*timeout)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen: server not ready: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let ctx = Ctx {
        server,
        also: cli.also.clone(),
        proc: Proc::all(
            cli.server_pid
                .into_iter()
                .chain(cli.also_pid.iter().copied())
                .collect(),
        ),
        sources: cli.sources,
        run: scenarios::run_id(),
        label: cli.label.clone(),
    };
    let (name, result) = match &cli.cmd {
        Cmd::Idle(a) => ("idle", scenarios::idle::run(&ctx, a)),
        Cmd::Fanout(a) => ("fanout", scenarios::fanout::run(&ctx, a)),
        Cmd::Doc(a) => ("doc", scenarios::doc::run(&ctx, a)),
        Cmd::Joinstorm(a) => ("joinstorm", scenarios::joinstorm::run(&ctx, a)),
        Cmd::Reconnect(a) => ("reconnect", scenarios::reconnect::run(&ctx, a)),
        Cmd::Scrape(a) => ("scrape", scenarios::scrape::run(&ctx, a)),
        Cmd::Slow(a) => ("slow", scenarios::slow::run(&ctx, a)),
        Cmd::Stall(a) => ("stall", scenarios::stall::run(&ctx, a)),
        Cmd::Flood(a) => ("flood", scenarios::flood::run(&ctx, a)),
        Cmd::Flooddoc(a) => ("flooddoc", scenarios::flood::run_doc(&ctx, a)),
        Cmd::Linger(a) => ("linger", scenarios::linger::run(&ctx, a)),
        Cmd::FreePort | Cmd::WaitReady { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(r) => {
            if let Err(e) = r.emit(cli.md.as_deref()) {
                eprintln!("loadgen: writing results: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Still one human line and one JSON line, and a table row saying
            // what went wrong, so a benchmark run shows the failure in place.
            let mut r = Report::new(name, cli.label.clone().unwrap_or_else(|| name.to_string()));
            r.set("error", e.as_str());
            r.human = format!("{name}: FAILED: {e}");
            r.row(format!("failed: {e}"), "-", Some(false));
            let _ = r.emit(cli.md.as_deref());
            ExitCode::FAILURE
        }
    }
}
