//! The scenarios, and what they share: the run context, room creation and
//! the connect-and-join phase.

pub mod doc;
pub mod fanout;
pub mod flood;
pub mod idle;
pub mod joinstorm;
pub mod linger;
pub mod probe;
pub mod reconnect;
pub mod scrape;
pub mod slow;
pub mod stall;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::http;
use crate::net::{ConnId, ConnOpts, Ev, Net};
use crate::procfs::{Mem, Proc};
use crate::scan::{self, Kind};

/// What every scenario gets from the command line.
pub struct Ctx {
    pub server: SocketAddr,
    /// Further nodes of a cluster serving the same rooms (`--also`):
    /// WebSocket connections spread round-robin over `server` and these.
    pub also: Vec<SocketAddr>,
    pub proc: Proc,
    pub sources: usize,
    /// Prefix of every room code, unique per run, so runs against the same
    /// server never meet each other's rooms.
    pub run: String,
    pub label: Option<String>,
}

impl Ctx {
    pub fn net(&self) -> Result<Net, String> {
        let mut servers = vec![self.server];
        servers.extend(&self.also);
        Net::spread(servers, self.sources).map_err(|e| format!("poll: {e}"))
    }

    pub fn room_code(&self, what: &str, i: usize) -> String {
        format!("{}{what}{i}", self.run)
    }

    pub fn label_or(&self, default: String) -> String {
        self.label.clone().unwrap_or(default)
    }

    /// Server memory now, in bytes (None without `--server-pid`).
    pub fn mem(&self) -> Option<Mem> {
        self.proc.mem()
    }
}

/// A run id of six characters from the clock and pid.
pub fn run_id() -> String {
    const A: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = t ^ (u64::from(std::process::id()) << 32);
    let mut s = String::from("lg");
    for _ in 0..6 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push(A[((x >> 33) % A.len() as u64) as usize] as char);
    }
    s.push('-');
    s
}

/// Creates `n` rooms `code(i)` with host id `h<i>`.
pub fn create_rooms(ctx: &Ctx, what: &str, n: usize) -> Result<Vec<String>, String> {
    let rooms: Vec<(String, String)> = (0..n)
        .map(|i| (ctx.room_code(what, i), format!("h{i}")))
        .collect();
    http::create_rooms(ctx.server, &rooms)?;
    Ok(rooms.into_iter().map(|(c, _)| c).collect())
}

/// One connection to open and join.
pub struct Member {
    pub room: String,
    pub peer_id: String,
    pub is_host: bool,
    pub opts: ConnOpts,
}

/// `conns` plain members (`p<i>`, not hosts) in fresh rooms of `peers`
/// each, the rooms named after `what`.
pub fn members_in_rooms(
    ctx: &Ctx,
    what: &str,
    conns: usize,
    peers: usize,
) -> Result<Vec<Member>, String> {
    let rooms = create_rooms(ctx, what, conns.div_ceil(peers))?;
    Ok((0..conns)
        .map(|i| Member {
            room: rooms[i / peers].clone(),
            peer_id: format!("p{i}"),
            is_host: false,
            opts: ConnOpts::default(),
        })
        .collect())
}

/// The host of `room` (`h0`) and `guests` members after it named
/// `<prefix><i>`.
pub fn host_and_guests(room: &str, guests: usize, prefix: &str) -> Vec<Member> {
    let member = |peer_id: String, is_host| Member {
        room: room.to_owned(),
        peer_id,
        is_host,
        opts: ConnOpts::default(),
    };
    let mut members = vec![member("h0".into(), true)];
    members.extend((0..guests).map(|i| member(format!("{prefix}{i}"), false)));
    members
}

/// Who got the document a host just sent.
pub struct DocsSeen {
    /// Per connection, when (`now_ns`) its `document_sync` arrived; 0: not.
    pub at_ns: Vec<u64>,
    pub received: usize,
    /// Documents that arrived shorter than sent.
    pub short: usize,
}

/// Polls until each of the `expect` peers (every connection but `host`)
/// has a `document_sync` or has closed (its label pushed to `closed`), or
/// `timeout` passes; `tick` runs after every poll.
#[allow(clippy::too_many_arguments)]
pub fn await_documents(
    net: &mut Net,
    host: ConnId,
    expect: usize,
    size: usize,
    timeout: Duration,
    poll: Duration,
    closed: &mut Vec<String>,
    mut tick: impl FnMut(),
) -> Result<DocsSeen, String> {
    let mut seen = DocsSeen {
        at_ns: vec![0; net.len()],
        received: 0,
        short: 0,
    };
    let end = Instant::now() + timeout;
    while seen.received + closed.len() < expect && Instant::now() < end {
        net.poll(Some(poll), &mut |_, id, ev| match ev {
            Ev::Text(msg, now) => {
                if id != host && seen.at_ns[id] == 0 && scan::kind_of(&msg) == Kind::DocumentSync {
                    seen.at_ns[id] = now;
                    seen.received += 1;
                    if msg.len < size as u64 {
                        seen.short += 1;
                    }
                }
            }
            Ev::Closed(info) => closed.push(info.label()),
            Ev::Open => {}
        })
        .map_err(|e| format!("poll: {e}"))?;
        tick();
    }
    Ok(seen)
}

/// The join message of a member.
pub fn join_message(m: &Member) -> String {
    format!(
        "{{\"action\":\"join\",\"room_code\":\"{}\",\"peer_id\":\"{}\",\"is_host\":{}}}",
        m.room, m.peer_id, m.is_host
    )
}

/// Outcome of a join phase.
pub struct Joined {
    /// Connection of each member, in order.
    pub ids: Vec<ConnId>,
    /// Per member: ns from starting the TCP connect to receiving `connected`.
    pub join_ns: Vec<u64>,
    /// Wall time from the first connect to the last `connected`.
    pub elapsed: Duration,
    pub failures: Vec<String>,
}

/// Opens and joins every member, at most `concurrency` in progress at once
/// (a connect storm beyond the server's listen backlog only measures SYN
/// retransmission timers). A join is complete when `connected` arrives.
/// Fails if anything fails, unless `tolerate` is set.
pub fn join_all(
    net: &mut Net,
    members: &[Member],
    concurrency: usize,
    timeout: Duration,
    tolerate: bool,
) -> Result<Joined, String> {
    const NONE: usize = usize::MAX;
    let mut member_of: Vec<usize> = Vec::new();
    let mut ids = vec![NONE; members.len()];
    let mut started_at = vec![0u64; members.len()];
    let mut join_ns = vec![0u64; members.len()];
    let mut done = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut next = 0usize;
    let start = Instant::now();
    let joins: Vec<String> = members.iter().map(join_message).collect();
    while done + failures.len() < members.len() {
        while next < members.len() && next - done - failures.len() < concurrency {
            let t = crate::net::now_ns();
            match net.connect(members[next].opts) {
                Ok(id) => {
                    if member_of.len() <= id {
                        member_of.resize(id + 1, NONE);
                    }
                    member_of[id] = next;
                    ids[next] = id;
                    started_at[next] = t;
                }
                Err(e) => failures.push(format!("connect: {e}")),
            }
            next += 1;
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "join phase timed out after {:?}: {done} of {} joined, {} failed",
                timeout,
                members.len(),
                failures.len()
            ));
        }
        net.poll(Some(Duration::from_millis(5)), &mut |tx, id, ev| {
            let Some(&m) = member_of.get(id) else { return };
            if m == NONE || join_ns[m] != 0 {
                return;
            }
            match ev {
                Ev::Open => tx.text(id, joins[m].as_bytes()),
                Ev::Text(msg, now) => match scan::kind_of(&msg) {
                    Kind::Connected => {
                        join_ns[m] = (now - started_at[m]).max(1);
                        done += 1;
                    }
                    Kind::Error => {
                        join_ns[m] = u64::MAX;
                        failures.push(format!(
                            "join {}: {}",
                            members[m].peer_id,
                            String::from_utf8_lossy(msg.head)
                        ));
                    }
                    _ => {}
                },
                Ev::Closed(info) => {
                    join_ns[m] = u64::MAX;
                    failures.push(format!("{}: closed ({})", members[m].peer_id, info.label()));
                }
            }
        })
        .map_err(|e| format!("poll: {e}"))?;
    }
    if !failures.is_empty() && !tolerate {
        return Err(format!(
            "{} of {} joins failed; first: {}",
            failures.len(),
            members.len(),
            failures[0]
        ));
    }
    Ok(Joined {
        ids,
        join_ns,
        elapsed: start.elapsed(),
        failures,
    })
}

/// Keeps the engine running (answering pings, draining input) for `d`.
pub fn idle_for(net: &mut Net, d: Duration) -> Result<(), String> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        net.poll(Some(left.min(Duration::from_millis(50))), &mut |_, _, _| {})
            .map_err(|e| format!("poll: {e}"))?;
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit; returns the new limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
        r.rlim_cur
    }
}

/// Fails early if `conns` connections will not fit under the fd limit.
pub fn check_fds(conns: usize) -> Result<(), String> {
    let limit = raise_nofile();
    if conns as u64 + 32 > limit {
        return Err(format!(
            "{conns} connections need about {} file descriptors but the limit is {limit} \
             (raise `ulimit -n` or use fewer connections)",
            conns + 32
        ));
    }
    Ok(())
}

/// Samples the server's RSS when at least `every` has passed since the last
/// sample, keeping the peak.
pub struct RssSampler {
    proc: Proc,
    every: Duration,
    last: Option<Instant>,
    pub peak: u64,
    pub last_rss: u64,
    pub samples: u64,
}

impl RssSampler {
    pub fn new(proc: Proc, every: Duration) -> RssSampler {
        RssSampler {
            proc,
            every,
            last: None,
            peak: 0,
            last_rss: 0,
            samples: 0,
        }
    }

    pub fn tick(&mut self) {
        if !self.proc.is_set() || self.last.is_some_and(|l| l.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        if let Some(m) = self.proc.mem() {
            self.peak = self.peak.max(m.rss);
            self.last_rss = m.rss;
            self.samples += 1;
        }
    }
}
