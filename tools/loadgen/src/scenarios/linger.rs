//! `linger`: peers that keep their side open after the server closed its
//! own must cost the server no CPU.
//!
//! Each connection sends one request the server answers and then closes
//! its side for (`Connection: close`, HTTP/1.0 without keep-alive, a
//! malformed request line), reads the answer and then holds the socket
//! without reading or closing. The server's CPU time is then read over a
//! quiet `--secs`: an idle server sleeps in epoll, while one that spins on a
//! half-closed socket burns the whole core.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use clap::Args;

use super::{check_fds, Ctx};
use crate::report::Report;
use crate::ws::find_head_end;

#[derive(Args, Debug, Clone)]
pub struct LingerArgs {
    /// Lingering connections (spread over the three kinds of request).
    #[arg(long, default_value_t = 30)]
    pub conns: usize,
    /// Seconds the server's CPU time is watched.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// Highest server CPU share (of one core) that counts as idle.
    #[arg(long, default_value_t = 0.05)]
    pub max_util: f64,
}

const REQUESTS: [&[u8]; 3] = [
    b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"BROKEN\r\n\r\n",
];

pub fn run(ctx: &Ctx, a: &LingerArgs) -> Result<Report, String> {
    check_fds(a.conns + 8)?;
    if !ctx.proc.is_set() {
        return Err("linger needs --server-pid (it measures the server's CPU time)".into());
    }
    let mut held = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
        let mut c = TcpStream::connect(ctx.server).map_err(|e| format!("connect: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| format!("socket: {e}"))?;
        c.write_all(REQUESTS[i % REQUESTS.len()])
            .map_err(|e| format!("write: {e}"))?;
        // Read the answer's head, then never read again.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while find_head_end(&got).is_none() {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("connection {i}: no answer: {e}")),
            }
        }
        if !got.starts_with(b"HTTP/1.") {
            return Err(format!(
                "connection {i}: answered {:?}",
                String::from_utf8_lossy(&got[..got.len().min(40)])
            ));
        }
        held.push(c);
    }
    // Let the closes settle before watching.
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let cpu0 = ctx.proc.cpu_secs();
    std::thread::sleep(Duration::from_secs_f64(a.secs));
    let cpu1 = ctx.proc.cpu_secs();
    let secs = t.elapsed().as_secs_f64();
    drop(held);
    let used = cpu1
        .zip(cpu0)
        .map(|(b, a)| b - a)
        .ok_or("could not read the server's CPU time")?;
    let util = used / secs;
    let met = util <= a.max_util;
    let label = ctx.label_or(format!(
        "linger: {} peers hold their side open after the server's close",
        a.conns
    ));
    let mut r = Report::new("linger", label);
    r.set("conns", a.conns)
        .set("secs", secs)
        .set("server_cpu_secs", used)
        .set("server_cpu_util", util)
        .set("met", met);
    r.human = format!(
        "linger: {} peers holding half-closed connections: server used {:.3} s of CPU in {:.1} s ({:.1} % of a core); met: {met}",
        a.conns,
        used,
        secs,
        100.0 * util
    );
    r.row(
        format!(
            "server CPU {:.1} % of a core over {:.1} s ({:.3} s used)",
            100.0 * util,
            secs,
            used
        ),
        &format!(
            "idle: ≤ {:.0} % of a core (a spin on a half-closed socket takes 100 %)",
            100.0 * a.max_util
        ),
        Some(met),
    );
    Ok(r)
}
