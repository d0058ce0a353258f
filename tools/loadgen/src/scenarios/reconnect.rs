//! `reconnect`: a reconnect storm on busy rooms (§6). R rooms of P peers
//! join; one sender per room broadcasts while every other peer stops
//! reading part-way (a phone whose Wi-Fi dropped); then all of those peers
//! come back at once on new connections with `since {epoch, seq}` of the
//! last event they read, which replaces their old connection. The clock
//! runs from the first reconnect to the last peer that has its whole replay
//! (every missed `data` event, in order, without a gap or a repeat).

use std::time::{Duration, Instant};

use clap::Args;

use super::{check_fds, create_rooms, Ctx, RssSampler};
use crate::net::{ConnId, ConnOpts, Ev, Net};
use crate::report::{thousands, Report};
use crate::scan::{self, Kind};

#[derive(Args, Debug, Clone)]
pub struct ReconnectArgs {
    /// Rooms.
    #[arg(long, default_value_t = 50)]
    pub rooms: usize,
    /// Peers per room, the sender included.
    #[arg(long, default_value_t = 100)]
    pub peers: usize,
    /// Messages each sender broadcasts while its peers are away.
    #[arg(long, default_value_t = 50)]
    pub missed: usize,
    /// Reconnects in progress at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

/// One peer's view of its room's stream.
#[derive(Clone, Default)]
struct Peer {
    epoch: String,
    /// The number of the last event read.
    seq: u64,
    /// The sender's messages read so far (they carry their index).
    got: u64,
}

fn num(msg: &[u8], key: &[u8]) -> Option<u64> {
    let v = scan::field(msg, key)?;
    let end = v
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(v.len());
    std::str::from_utf8(&v[..end]).ok()?.parse().ok()
}

/// Reads what a peer's connection hears into its view; returns the kind.
fn observe(p: &mut Peer, msg: &[u8]) -> Result<Kind, String> {
    let kind = scan::kind(msg);
    match kind {
        Kind::RoomInfo => {
            p.epoch = scan::string_field(msg, b"\"epoch\"")
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .ok_or("room_info without epoch")?;
        }
        Kind::Data | Kind::PeerJoined | Kind::PeerLeft | Kind::DocumentSync => {
            if let Some(seq) = num(msg, b"\"seq\"") {
                if seq <= p.seq {
                    return Err(format!("seq {seq} after {}", p.seq));
                }
                p.seq = seq;
            }
            if kind == Kind::Data {
                let i: u64 = scan::string_field(msg, b"\"data\"")
                    .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok())
                    .ok_or("data without an index")?;
                if i != p.got {
                    return Err(format!("got message {i}, expected {}", p.got));
                }
                p.got += 1;
            }
        }
        _ => {}
    }
    Ok(kind)
}

pub fn run(ctx: &Ctx, a: &ReconnectArgs) -> Result<Report, String> {
    let peers = a.peers.max(2);
    let total = a.rooms * peers;
    // Old and new connections are open together for a moment.
    check_fds(2 * total)?;
    let codes = create_rooms(ctx, "rc", a.rooms)?;
    let mut net = ctx.net()?;
    let mut view: Vec<Peer> = vec![Peer::default(); total];
    let is_sender = |i: usize| i.is_multiple_of(peers);
    let join = |i: usize, since: Option<(&str, u64)>| -> String {
        let since = since.map_or(String::new(), |(e, s)| {
            format!(",\"since\":{{\"epoch\":\"{e}\",\"seq\":{s}}}")
        });
        format!(
            "{{\"action\":\"join\",\"room_code\":\"{}\",\"peer_id\":\"p{i}\"{since}}}",
            codes[i / peers]
        )
    };

    // Phase 1: everyone joins, in rooms numbered from the start.
    let mut owner: Vec<usize> = Vec::new();
    let mut conn_of = vec![usize::MAX; total];
    let mut joined = 0usize;
    let mut failure: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = 0usize;
    while joined < total {
        while next < total && next - joined < a.concurrency {
            let id = connect_for(&mut net, &mut owner, next)?;
            conn_of[next] = id;
            next += 1;
        }
        poll(
            &mut net,
            &owner,
            &mut view,
            &mut failure,
            |tx, id, i, _, kind| match kind {
                None => tx.text(id, join(i, None).as_bytes()),
                Some(Kind::Connected) => joined += 1,
                _ => {}
            },
        )?;
        if let Some(f) = failure.take() {
            return Err(f);
        }
        if Instant::now() > deadline {
            return Err(format!("join phase: {joined} of {total} in 120 s"));
        }
    }
    settle(&mut net, &owner, &mut view, &mut failure)?;

    // Phase 2: the listeners stop reading; each sender broadcasts. The
    // numbered index in each message lets a listener check what it gets.
    for (i, &id) in conn_of.iter().enumerate() {
        if !is_sender(i) {
            net.pause(id);
        }
    }
    for (i, &id) in conn_of.iter().enumerate() {
        if is_sender(i) {
            for k in 0..a.missed {
                net.tx.text(
                    id,
                    format!("{{\"action\":\"broadcast\",\"data\":\"{k}\"}}").as_bytes(),
                );
            }
        }
    }
    let sent = (a.missed * a.rooms) as u64;
    settle(&mut net, &owner, &mut view, &mut failure)?;

    // Phase 3: the storm. Each listener comes back on a new connection
    // with the position of the last event it read; its old connection is
    // replaced (and never read again).
    for (i, &id) in conn_of.iter().enumerate() {
        if !is_sender(i) {
            owner[id] = usize::MAX;
        }
    }
    let listeners: Vec<usize> = (0..total).filter(|&i| !is_sender(i)).collect();
    let mut rss = RssSampler::new(ctx.proc.clone(), Duration::from_millis(20));
    let mut recovered = 0usize;
    let mut not_recovered = 0usize;
    let mut complete = 0usize;
    let mut replayed = 0u64;
    let want = a.missed as u64;
    let cpu0 = ctx.proc.cpu_secs();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    let mut next = 0usize;
    let mut in_flight = 0usize;
    while complete < listeners.len() {
        while next < listeners.len() && in_flight < a.concurrency {
            let i = listeners[next];
            connect_for(&mut net, &mut owner, i)?;
            next += 1;
            in_flight += 1;
        }
        poll(
            &mut net,
            &owner,
            &mut view,
            &mut failure,
            |tx, id, i, p, kind| match kind {
                None => {
                    let msg = join(i, Some((&p.epoch, p.seq)));
                    tx.text(id, msg.as_bytes());
                }
                Some(Kind::Data) => {
                    replayed += 1;
                    if p.got == want {
                        complete += 1;
                        in_flight -= 1;
                    }
                }
                _ => {}
            },
        )?;
        if let Some(f) = failure.take() {
            return Err(f);
        }
        rss.tick();
        if Instant::now() > deadline {
            return Err(format!(
                "storm: {complete} of {} complete in 120 s",
                listeners.len()
            ));
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu0.zip(ctx.proc.cpu_secs()).map(|(a, b)| b - a);
    for i in &listeners {
        if view[*i].got == want {
            recovered += 1;
        } else {
            not_recovered += 1;
        }
    }
    let secs = elapsed.as_secs_f64();
    let rate = recovered as f64 / secs;
    let share = recovered as f64 / listeners.len().max(1) as f64;
    let label = ctx.label_or(format!(
        "reconnect storm {} peers of {} rooms",
        thousands(listeners.len() as u64),
        a.rooms
    ));
    let mut r = Report::new("reconnect", label);
    r.set("rooms", a.rooms)
        .set("peers", peers)
        .set("listeners", listeners.len())
        .set("missed_per_peer", a.missed)
        .set("sent", sent)
        .set("recovered", recovered)
        .set("not_recovered", not_recovered)
        .set("replayed_data", replayed)
        .set("secs", secs)
        .set("recoveries_per_sec", rate)
        .set("share_recovered", share)
        .set("rss_peak_bytes", rss.peak)
        .set("server_cpu_secs", cpu);
    r.human = format!(
        "reconnect: {} of {} peers recovered {} missed messages each in {:.3} s = {} recoveries/s ({:.1}%); server RSS peak {:.1} MiB{}",
        thousands(recovered as u64),
        thousands(listeners.len() as u64),
        a.missed,
        secs,
        thousands(rate as u64),
        share * 100.0,
        rss.peak as f64 / 1048576.0,
        cpu.map_or(String::new(), |c| format!(
            "; server CPU {:.1} µs per recovery",
            c * 1e6 / recovered.max(1) as f64
        )),
    );
    r.row(
        format!(
            "{} recoveries/s, {:.1}% recovered, RSS peak {:.1} MiB",
            thousands(rate as u64),
            share * 100.0,
            rss.peak as f64 / 1048576.0
        ),
        "every peer recovered, exactly once and in order",
        Some(not_recovered == 0),
    );
    Ok(r)
}

/// Opens a connection for peer `peer`, noting it in `owner` (connection
/// id to peer).
fn connect_for(net: &mut Net, owner: &mut Vec<usize>, peer: usize) -> Result<usize, String> {
    let id = net
        .connect(ConnOpts::default())
        .map_err(|e| format!("connect: {e}"))?;
    if owner.len() <= id {
        owner.resize(id + 1, usize::MAX);
    }
    owner[id] = peer;
    Ok(id)
}

/// One turn of the engine. `h` gets `None` when a connection of a peer
/// opens and the kind of each message it hears; every message first
/// updates the peer's view, and a broken stream is a failure.
fn poll(
    net: &mut Net,
    owner: &[usize],
    view: &mut [Peer],
    failure: &mut Option<String>,
    mut h: impl FnMut(&mut crate::net::Tx, ConnId, usize, &Peer, Option<Kind>),
) -> Result<(), String> {
    net.poll(Some(Duration::from_millis(5)), &mut |tx, id, ev| {
        let Some(&i) = owner.get(id) else { return };
        if i == usize::MAX {
            return;
        }
        match ev {
            Ev::Open => h(tx, id, i, &view[i], None),
            Ev::Text(msg, _) => {
                if !msg.is_whole() {
                    return;
                }
                match observe(&mut view[i], msg.head) {
                    Ok(Kind::Error) => {
                        failure
                            .get_or_insert(format!("p{i}: {}", String::from_utf8_lossy(msg.head)));
                    }
                    Ok(Kind::RoomInfo)
                        if scan::find(msg.head, b"\"recovered\":false").is_some() =>
                    {
                        failure.get_or_insert(format!("p{i}: not recovered"));
                    }
                    Ok(kind) => h(tx, id, i, &view[i], Some(kind)),
                    Err(e) => {
                        failure.get_or_insert(format!("p{i}: {e}"));
                    }
                }
            }
            Ev::Closed(info) => {
                failure.get_or_insert(format!("p{i}: closed ({})", info.label()));
            }
        }
    })
    .map_err(|e| format!("poll: {e}"))
}

/// Runs the engine until nothing has arrived for 200 ms.
fn settle(
    net: &mut Net,
    owner: &[usize],
    view: &mut [Peer],
    failure: &mut Option<String>,
) -> Result<(), String> {
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(200) {
        let mut heard = false;
        poll(net, owner, view, failure, |_, _, _, _, _| heard = true)?;
        if let Some(f) = failure.take() {
            return Err(f);
        }
        if heard {
            quiet_since = Instant::now();
        }
    }
    Ok(())
}
