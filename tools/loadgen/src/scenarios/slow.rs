//! `slow`: one reader in a room stops reading while a sender keeps
//! broadcasting to it and to the other receivers.
//!
//! The contract (rule 8) says output queued for one connection is bounded by
//! `MAX_OUTBOUND_BYTES`; past it the connection is closed (1008) and the room
//! goes on. So we expect: the server's RSS grows by about that bound and no
//! more, the slow reader is cut off once roughly that much is queued for it,
//! and every other receiver gets every message in order.
//!
//! How it is observed:
//! * the slow reader's socket gets a small fixed `SO_RCVBUF` (autotuning off),
//!   so the kernel holds little and the backlog really sits in the server;
//! * the sender runs open loop at a modest `--rate`, so the moment of the cut
//!   is well defined;
//! * the cut is seen when a healthy receiver gets `peer_left` for the slow
//!   reader (a non-reading socket cannot be told about its own close). As a
//!   fallback, a background thread polls `GET /health` every 20 ms and a drop
//!   of its `connections` figure, or a reset on the slow socket, also counts;
//! * the server's RSS is sampled every 5 ms;
//! * afterwards the slow reader reads again and drains: it must hold a
//!   gap-free prefix of the stream followed by a close frame (or TCP close).
//!
//! The backlog at the cut is (messages the healthy receiver had when it saw
//! `peer_left` − messages the slow reader ever got) × frame size: a room is
//! one ordered stream, so that is exactly what was queued for the slow reader
//! (in the server and the kernel buffers) when it was dropped.

use std::time::{Duration, Instant};

use clap::Args;

use super::{check_fds, create_rooms, join_all, Ctx, Member, RssSampler};
use crate::http::{HealthPoller, UNKNOWN};
use crate::net::{now_ns, CloseInfo, CloseKind, ConnOpts, Ev};
use crate::report::{mib, thousands, Report};
use crate::scan::{self, Kind, Stamp, STAMP_LEN};
use crate::stats::Stream;
use crate::ws::server_frame_len;

#[derive(Args, Debug, Clone)]
pub struct SlowArgs {
    /// Peers in the room: one sender, one slow reader, the rest normal.
    #[arg(long, default_value_t = 5)]
    pub peers: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 4096)]
    pub bytes: usize,
    /// Messages per second from the sender.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Longest sending time, seconds.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Keep sending this long after the cut, ms (shows the room goes on).
    #[arg(long, default_value_t = 1000)]
    pub after_cut_ms: u64,
    /// SO_RCVBUF of the slow reader's socket.
    #[arg(long, default_value_t = 65536)]
    pub rcvbuf: usize,
    /// The server's MAX_OUTBOUND_BYTES (for the comparison only).
    #[arg(long, default_value_t = 33_554_432)]
    pub max_outbound_bytes: u64,
}

pub fn run(ctx: &Ctx, a: &SlowArgs) -> Result<Report, String> {
    if a.bytes < STAMP_LEN {
        return Err(format!("--bytes must be at least {STAMP_LEN}"));
    }
    let peers = a.peers.max(3);
    check_fds(peers + 4)?;
    let room = create_rooms(ctx, "s", 1)?.remove(0);
    let slow_m = peers - 1;
    let members: Vec<Member> = (0..peers)
        .map(|k| Member {
            room: room.clone(),
            peer_id: format!("p{k}"),
            is_host: false,
            opts: ConnOpts {
                rcvbuf: (k == slow_m).then_some(a.rcvbuf),
            },
        })
        .collect();
    let mut net = ctx.net()?;
    let joined = join_all(&mut net, &members, 64, Duration::from_secs(30), false)?;
    let ids = joined.ids.clone();
    let sender = ids[0];
    let slow = ids[slow_m];
    net.pause(slow);
    super::idle_for(&mut net, Duration::from_millis(300))?;
    let before = ctx.mem();
    let health = HealthPoller::start(
        ctx.server,
        Duration::from_millis(20),
        Duration::from_secs(5),
    );
    let wait = Instant::now();
    while health.connections() == UNKNOWN {
        if wait.elapsed() > Duration::from_secs(5) {
            return Err("GET /health did not answer".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Two samples, to be sure the figure is stable before we start.
    std::thread::sleep(Duration::from_millis(50));
    let c0 = health.connections();

    let mut member_of = vec![usize::MAX; net.len()];
    for (m, &id) in ids.iter().enumerate() {
        member_of[id] = m;
    }
    let mut o = Observed {
        streams: vec![Stream::default(); peers],
        closes: vec![None; peers],
        frame_len: 0,
        peer_left: None,
    };
    let slow_peer = members[slow_m].peer_id.clone();
    let mut sampler = RssSampler::new(ctx.proc.clone(), Duration::from_millis(5));
    sampler.tick();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let mut sent: u32 = 0;
    let mut cut_at: Option<(Instant, u32)> = None;
    let mut cut_by = "";
    let mut stop_at = end;

    let handler = |o: &mut Observed, id: usize, ev: Ev<'_>| {
        let Some(&m) = member_of.get(id) else { return };
        if m == usize::MAX {
            return;
        }
        match ev {
            Ev::Text(msg, _) if msg.is_whole() => match scan::kind(msg.head) {
                Kind::Data => {
                    if let Some(st) = scan::data_stamp(msg.head) {
                        o.streams[m].see(st.seq);
                        if o.frame_len == 0 {
                            o.frame_len = server_frame_len(msg.len);
                        }
                    }
                }
                // The room's own word that the slow reader is gone; since a
                // room is one ordered stream, what receiver 1 holds at this
                // point is exactly what was queued before the cut.
                Kind::PeerLeft
                    if m == 1
                        && o.peer_left.is_none()
                        && scan::string_field(msg.head, b"\"peer_id\"")
                            == Some(slow_peer.as_bytes()) =>
                {
                    o.peer_left = Some((Instant::now(), o.streams[1].next));
                }
                _ => {}
            },
            Ev::Closed(info) => o.closes[m] = Some(info.clone()),
            _ => {}
        }
    };

    while Instant::now() < stop_at {
        let now = Instant::now();
        let due = (a.rate * (now - start).as_secs_f64()) as u32;
        while sent < due && !net.tx.is_closed(sender) {
            let stamp = Stamp {
                sender: 0,
                seq: sent,
                ts_ns: now_ns(),
            };
            net.tx
                .text_with(sender, |b| scan::write_broadcast(b, stamp, a.bytes));
            sent += 1;
        }
        net.poll(Some(Duration::from_millis(1)), &mut |_, id, ev| {
            handler(&mut o, id, ev)
        })
        .map_err(|e| format!("poll: {e}"))?;
        sampler.tick();
        if cut_at.is_none() {
            let c = health.connections();
            let by_health = c != UNKNOWN && c < c0;
            if let Some(p) = o.peer_left {
                cut_at = Some(p);
                cut_by = "peer_left";
            } else if by_health || o.closes[slow_m].is_some() {
                cut_at = Some((Instant::now(), o.streams[1].next));
                cut_by = if by_health {
                    "health connections dropped"
                } else {
                    "socket error"
                };
            }
            if cut_at.is_some() {
                stop_at = Instant::now() + Duration::from_millis(a.after_cut_ms);
            }
        }
    }
    let health_log = health.finish();
    let peak = sampler.peak;
    // Drain: the slow reader reads again; everyone catches up.
    net.resume(slow);
    let drain_end = Instant::now() + Duration::from_secs(20);
    loop {
        let (streams, closes) = (&o.streams, &o.closes);
        let others_done = (1..slow_m).all(|m| closes[m].is_some() || streams[m].next >= sent);
        let slow_done = closes[slow_m].is_some() || streams[slow_m].next >= sent;
        if (others_done && slow_done) || Instant::now() > drain_end {
            break;
        }
        net.poll(Some(Duration::from_millis(5)), &mut |_, id, ev| {
            handler(&mut o, id, ev)
        })
        .map_err(|e| format!("poll: {e}"))?;
    }
    let after = ctx.mem();
    let Observed {
        streams,
        closes,
        frame_len,
        ..
    } = o;

    let others_complete = (1..slow_m).all(|m| {
        closes[m].is_none()
            && streams[m].next == sent
            && streams[m].gaps == 0
            && streams[m].late == 0
    });
    let slow_s = streams[slow_m];
    let slow_close = closes[slow_m].clone();
    let slow_in_order = slow_s.gaps == 0 && slow_s.late == 0;
    let cut = cut_at.is_some() || slow_close.is_some();
    let close_label = slow_close.as_ref().map(|c| c.label());
    let closed_1008 = slow_close
        .as_ref()
        .is_some_and(|c| c.kind == CloseKind::CloseFrame && c.code == Some(1008));
    let backlog =
        cut_at.map(|(_, delivered)| u64::from(delivered.saturating_sub(slow_s.next)) * frame_len);
    let cut_secs = cut_at.map(|(t, _)| (t - start).as_secs_f64());
    let peak_over = before.map(|b| peak.saturating_sub(b.rss));
    let max_out = a.max_outbound_bytes;

    let label = ctx.label_or(format!("slow reader, P={peers}, {} B messages", a.bytes));
    let mut r = Report::new("slow", label);
    r.set("peers", peers)
        .set("bytes", a.bytes)
        .set("rate_msgs_per_sec", a.rate)
        .set("messages_sent", sent)
        .set("frame_bytes", frame_len)
        .set("cut_off", cut)
        .set("cut_detected_by", (!cut_by.is_empty()).then_some(cut_by))
        .set("cut_after_secs", cut_secs)
        .set("slow_close", close_label.clone())
        .set("slow_closed_1008", closed_1008)
        .set("slow_messages_received", slow_s.next)
        .set("slow_bytes_received", net.rx_bytes(slow))
        .set("slow_stream_in_order", slow_in_order)
        .set("backlog_at_cut_bytes", backlog)
        .set("max_outbound_bytes", max_out)
        .set("others_complete", others_complete)
        .set("rss_before_bytes", before.map(|m| m.rss))
        .set("rss_peak_bytes", ctx.proc.is_set().then_some(peak))
        .set("rss_peak_over_idle_bytes", peak_over)
        .set("rss_after_bytes", after.map(|m| m.rss))
        .set(
            "health_checks",
            health_log.latencies.len() as u64 + health_log.failed,
        )
        .set("connections_before", c0);
    let backlog_ok = backlog.is_some_and(|b| b >= max_out / 2 && b <= max_out + max_out / 2);
    let rss_ok = peak_over.is_none_or(|p| p <= 2 * max_out);
    r.human = format!(
        "slow: {} messages of {} B sent at {}/s; slow reader {} ({}), backlog at cut ≈ {} (MAX_OUTBOUND_BYTES {}), it got {} messages in order: {}; server RSS peak +{} over idle; other receivers complete and in order: {}",
        thousands(u64::from(sent)),
        a.bytes,
        a.rate,
        if cut { format!("cut off after {:.2} s", cut_secs.unwrap_or(0.0)) } else { "NOT cut off".into() },
        close_label.clone().unwrap_or_else(|| "no close seen".into()),
        backlog.map_or("?".into(), mib),
        mib(max_out),
        thousands(u64::from(slow_s.next)),
        slow_in_order,
        peak_over.map_or("?".into(), mib),
        others_complete
    );
    r.row(
        format!(
            "cut off: {} ({}) with ≈ {} queued; server RSS peak +{} over idle; others complete: {}",
            if cut { "yes" } else { "no" },
            close_label.unwrap_or_else(|| "-".into()),
            backlog.map_or("?".into(), mib),
            peak_over.map_or("?".into(), mib),
            if others_complete { "yes" } else { "no" },
        ),
        "slow reader closed (1008) near MAX_OUTBOUND_BYTES (32 MiB); RSS bounded; the room goes on",
        Some(cut && backlog_ok && rss_ok && others_complete && slow_in_order),
    );
    Ok(r)
}

/// What the receivers saw.
struct Observed {
    streams: Vec<Stream>,
    closes: Vec<Option<CloseInfo>>,
    /// Wire size of one data frame as the server sends it.
    frame_len: u64,
    /// When receiver 1 saw `peer_left` for the slow reader, and how many
    /// messages it had by then.
    peer_left: Option<(Instant, u32)>,
}
