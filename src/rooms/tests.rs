//! Unit tests of the room state machine.

use super::*;

fn c(key: u32) -> ConnRef {
    ConnRef { key, gen: 1 }
}

fn rand(b: &mut [u8]) {
    crate::util::fill_random(b)
}

/// A room plus helpers that render effects as readable strings.
struct World {
    rooms: Rooms,
    sessions: HashMap<ConnRef, Session>,
    now: Instant,
}

fn payload(f: &Frame) -> String {
    let n = match f[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    String::from_utf8(f[n..].to_vec()).unwrap()
}

impl World {
    fn new() -> World {
        World {
            rooms: Rooms::new(Some(Duration::from_secs(2))),
            sessions: HashMap::new(),
            now: Instant::now(),
        }
    }
    fn create(&mut self, code: &str, host: &str) {
        let mut fx = Vec::new();
        self.rooms
            .create(
                Some(code),
                Some(host),
                self.now,
                SystemTime::now(),
                &mut rand,
                &mut fx,
            )
            .unwrap();
    }
    /// Renders effects as `to:payload` lines, expanding fan-outs.
    fn render(&mut self, fx: Vec<Effect>) -> Vec<String> {
        let mut out = Vec::new();
        for e in fx {
            match e {
                Effect::Send(to, f) => out.push(format!("{}:{}", to.key, payload(&f))),
                Effect::Fanout { to, frame } => {
                    for m in to {
                        out.push(format!("{}:{}", m.key, payload(&frame)));
                    }
                }
                Effect::Close(to, code, _) => {
                    self.sessions.remove(&to);
                    out.push(format!("{}:close {code}", to.key))
                }
                Effect::ExpireAt(..) => out.push("-:expire".into()),
                Effect::Persist(..) => {}
                Effect::Publish { frame, .. } => out.push(format!("publish:{}", payload(&frame))),
            }
        }
        out
    }
    fn join(&mut self, conn: ConnRef, code: &str, peer: &str, host: bool) -> Vec<String> {
        let mut fx = Vec::new();
        let mut s = self.sessions.remove(&conn).unwrap_or_default();
        self.rooms.join(
            conn,
            &mut s,
            code,
            peer,
            host,
            None,
            None,
            self.now,
            SystemTime::now(),
            &mut fx,
        );
        self.sessions.insert(conn, s);
        self.render(fx)
    }
    fn say(&mut self, conn: ConnRef, data: &str) -> Vec<String> {
        let mut fx = Vec::new();
        let raw = RawValue::from_string(json_str(data)).unwrap();
        let s = self.sessions.remove(&conn).unwrap_or_default();
        self.rooms.broadcast(conn, &s, &raw, self.now, &mut fx);
        self.sessions.insert(conn, s);
        self.render(fx)
    }
    fn leave(&mut self, conn: ConnRef) -> Vec<String> {
        let mut fx = Vec::new();
        let mut s = self.sessions.remove(&conn).unwrap_or_default();
        self.rooms.leave(conn, &mut s, self.now, &mut fx);
        self.render(fx)
    }
}

fn kinds(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let (to, body) = l.split_once(':').unwrap();
            let t = body
                .split("\"type\":\"")
                .nth(1)
                .map(|r| r.split('"').next().unwrap().to_string())
                .unwrap_or_else(|| body.to_string());
            format!("{to}:{t}")
        })
        .collect()
}

/// Cluster mode: events are published, not fanned out; what comes back
/// numbered is delivered to the local members, and peers of other nodes
/// are part of the room.
#[test]
fn cluster_mode_publishes_and_delivers_what_comes_back() {
    let mut w = World::new();
    w.rooms.set_cluster(true);
    w.create("R1", "h");
    let out = w.join(c(1), "R1", "p1", false);
    assert_eq!(
        kinds(&out),
        ["publish:peer_joined", "1:room_info", "1:connected"]
    );
    assert!(out[0].ends_with(r#","seq":0}"#), "{}", out[0]);
    let (r, _) = w.rooms.find("R1").unwrap();
    let mut fx = Vec::new();
    w.rooms.cluster_start(
        r,
        "ep",
        7,
        vec![(
            "far".into(),
            r#"{"id":"far","joined_at":"x","is_host":false,"metadata":null}"#.into(),
        )],
        w.now,
        &mut fx,
    );
    assert!(w.rooms.get(r).unwrap().synced());
    assert_eq!(w.rooms.get(r).unwrap().peer_count(), 2);
    // A broadcast is published only; the sender's own copy comes back
    // from Redis and is not delivered to it.
    assert_eq!(kinds(&w.say(c(1), "hi")), ["publish:data"]);
    let deliver = |w: &mut World, seq, d: Delivery<'_>| {
        let mut fx = Vec::new();
        w.rooms.deliver("R1", seq, d, w.now, &mut fx);
        w.render(fx)
    };
    let body = br#"{"type":"data","from":"p1","data":"hi""#;
    let mine = Delivery {
        kind: b'd',
        mine: true,
        except: Some(c(1)),
        from: "p1",
        body,
    };
    assert!(deliver(&mut w, 8, mine).is_empty());
    // Another node's peer speaks: delivered with its number.
    let body = br#"{"type":"data","from":"far","data":"yo""#;
    let theirs = Delivery {
        kind: b'd',
        mine: false,
        except: Some(c(1)),
        from: "far",
        body,
    };
    assert_eq!(
        deliver(&mut w, 9, theirs),
        [r#"1:{"type":"data","from":"far","data":"yo","seq":9}"#]
    );
    // It leaves: gone from the room's peers.
    let body = br#"{"type":"peer_left","peer_id":"far""#;
    let left = Delivery {
        kind: b'l',
        mine: false,
        except: None,
        from: "far",
        body,
    };
    assert_eq!(kinds(&deliver(&mut w, 10, left)), ["1:peer_left"]);
    assert_eq!(w.rooms.get(r).unwrap().peer_count(), 1);
    assert_eq!(w.rooms.get(r).unwrap().seq(), 10);
    // The same peer id joined on another node: the local one is closed.
    let body = br#"{"type":"peer_left","peer_id":"p1""#;
    let replaced = Delivery {
        kind: b'r',
        mine: true,
        except: Some(c(1)),
        from: "p1",
        body,
    };
    assert_eq!(
        kinds(&deliver(&mut w, 11, replaced)),
        ["1:error", "1:close 1000"]
    );
    assert_eq!(w.rooms.get(r).unwrap().peer_count(), 0);
    // A gap that cannot be filled: members re-join (1013).
    w.join(c(2), "R1", "p2", false);
    let mut fx = Vec::new();
    w.rooms.cluster_reset("R1", w.now, &mut fx);
    let out = w.render(fx);
    assert_eq!(kinds(&out), ["2:close 1013", "publish:peer_left"]);
    assert!(!w.rooms.get(r).unwrap().synced());
}

#[test]
fn join_order_and_replies() {
    let mut w = World::new();
    w.create("R1", "h");
    assert_eq!(
        kinds(&w.join(c(1), "R1", "h", true)),
        ["1:room_info", "1:connected"]
    );
    let out = w.join(c(2), "R1", "p2", false);
    assert_eq!(kinds(&out), ["1:peer_joined", "2:room_info", "2:connected"]);
    // The host is listed under its public id (rule 11).
    let public = w.rooms.find("R1").unwrap().1.host_public_id().to_string();
    assert!(out[1].contains(&format!(r#""peers":[{{"id":"{public}""#)));
    assert!(out[1].contains(r#"{"id":"p2""#));
    assert!(out[2].contains(r#""peer_id":"p2","room_code":"R1""#));
}

#[test]
fn unknown_room_and_false_host() {
    let mut w = World::new();
    w.create("R1", "h");
    assert_eq!(
        w.join(c(1), "nope", "p", false),
        [r#"1:{"type":"error","message":"Room not found"}"#]
    );
    assert_eq!(kinds(&w.join(c(1), "R1", "p", true)), ["1:error"]);
    assert!(!w.sessions[&c(1)].in_room());
}

#[test]
fn the_host_is_shown_by_its_public_id_only() {
    let mut w = World::new();
    w.create("R1", "secret-h");
    let public = w.rooms.find("R1").unwrap().1.host_public_id().to_string();
    w.join(c(2), "R1", "p2", false);
    let out = w.join(c(1), "R1", "secret-h", true);
    // Its own `room_info` and `connected` name the secret (the host may
    // see its own id); nothing anyone else gets does.
    assert_eq!(kinds(&out), ["2:peer_joined", "1:room_info", "1:connected"]);
    assert!(
        out[0].contains(&format!(r#""id":"{public}""#)),
        "{}",
        out[0]
    );
    let info: serde_json::Value = serde_json::from_str(&out[1][2..]).unwrap();
    assert_eq!(info["host_id"], "secret-h");
    let ids: Vec<_> = info["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["p2", "secret-h"]);
    assert_eq!(info["peers"][1]["is_host"], true);
    assert!(out[2].contains(r#""peer_id":"secret-h""#));
    let out = w.say(c(1), "x");
    assert_eq!(
        out,
        [format!(
            r#"2:{{"type":"data","from":"{public}","data":"x","seq":3}}"#
        )]
    );
    let out = w.join(c(3), "R1", "p3", false);
    assert!(out.iter().all(|l| !l.contains("secret-h")), "{out:?}");
    assert_eq!(
        w.rooms
            .find("R1")
            .unwrap()
            .1
            .peers_json()
            .matches(&*public)
            .count(),
        1
    );
    // Joining under the public id would impersonate the host.
    let out = w.join(c(4), "R1", &public, false);
    assert_eq!(kinds(&out), ["4:error"]);
    assert!(out[0].contains("reserved"));
    let out = w.leave(c(1));
    assert_eq!(
        out[0],
        format!(r#"2:{{"type":"peer_left","peer_id":"{public}","seq":5}}"#)
    );
    assert!(out.iter().all(|l| !l.contains("secret-h")), "{out:?}");
}

#[test]
fn broadcast_reaches_others_in_join_order() {
    let mut w = World::new();
    w.create("R1", "h");
    for i in 1..=4 {
        w.join(c(i), "R1", &format!("p{i}"), false);
    }
    let out = w.say(c(2), "hi");
    assert_eq!(
        out,
        [
            // Four joins were events 1-4.
            r#"1:{"type":"data","from":"p2","data":"hi","seq":5}"#,
            r#"3:{"type":"data","from":"p2","data":"hi","seq":5}"#,
            r#"4:{"type":"data","from":"p2","data":"hi","seq":5}"#,
        ]
    );
}

#[test]
fn not_in_room_errors() {
    let mut w = World::new();
    assert_eq!(kinds(&w.say(c(9), "x")), ["9:error"]);
    let mut fx = Vec::new();
    w.rooms.request_sync(c(9), &Session::default(), &mut fx);
    assert!(payload(match &fx[0] {
        Effect::Send(_, f) => f,
        _ => panic!(),
    })
    .contains("Not in a room"));
}

#[test]
fn document_is_host_only_and_replayed_to_joiners() {
    let mut w = World::new();
    w.create("R1", "h");
    w.join(c(1), "R1", "h", true);
    w.join(c(2), "R1", "p", false);
    let doc = RawValue::from_string("\"DOC\"".into()).unwrap();
    let mut fx = Vec::new();
    w.rooms
        .sync_document(c(2), &w.sessions[&c(2)], &doc, &mut fx);
    assert_eq!(kinds(&w.render(fx)), ["2:error"]);
    let mut fx = Vec::new();
    w.rooms
        .sync_document(c(1), &w.sessions[&c(1)], &doc, &mut fx);
    assert_eq!(
        w.render(fx),
        [r#"2:{"type":"document_sync","document":"DOC","seq":3}"#]
    );
    let (_, room) = w.rooms.find("R1").unwrap();
    assert_eq!(room.document_frame_len(), document_frame_len(5));
    for n in [0, 88, 89, 90, 200, 65_498, 65_499, 70_000] {
        let raw = format!("\"{}\"", "x".repeat(n));
        assert_eq!(
            document_frame(&raw, None).len(),
            document_frame_len(raw.len())
        );
    }
    let out = w.join(c(3), "R1", "q", false);
    assert_eq!(
        kinds(&out),
        [
            "1:peer_joined",
            "2:peer_joined",
            "3:room_info",
            "3:connected",
            "3:document_sync"
        ]
    );
}

#[test]
fn moving_rooms_and_replacement() {
    let mut w = World::new();
    w.create("A", "ha");
    w.create("B", "hb");
    w.join(c(1), "A", "x", false);
    w.join(c(2), "A", "y", false);
    w.join(c(3), "B", "z", false);
    let out = w.join(c(2), "B", "y", false);
    assert_eq!(
        kinds(&out),
        ["1:peer_left", "3:peer_joined", "2:room_info", "2:connected"]
    );
    // Same peer id from a new connection replaces the old one.
    let out = w.join(c(4), "B", "y", false);
    assert_eq!(
        kinds(&out),
        [
            "2:error",
            "2:close 1000",
            "3:peer_left",
            "3:peer_joined",
            "4:room_info",
            "4:connected"
        ]
    );
    assert!(out[0].contains("Replaced by a newer connection"));
    assert_eq!(w.rooms.find("B").unwrap().1.peer_count(), 2);
}

#[test]
fn empty_room_expires_after_timeout_only() {
    let mut w = World::new(); // idle timeout 2 s
    let t0 = w.now;
    let secs = |n: u64| t0 + Duration::from_secs(n);
    let mut fx = Vec::new();
    w.create("R1", "h"); // empty from t0: its one timer is due at t0 + 2
    let (r, _) = w.rooms.find("R1").unwrap();
    w.join(c(1), "R1", "h", true);
    // Emptied at t0 + 1 while the first timer is pending: no second one.
    w.now = secs(1);
    assert!(!kinds(&w.leave(c(1))).contains(&"-:expire".to_string()));
    // The first timer fires at t0 + 2, too early now: it re-arms for
    // t0 + 3, strictly later.
    assert!(!w.rooms.expire(r, secs(2), &mut fx));
    assert!(matches!(fx.as_slice(), [Effect::ExpireAt(x, at)] if *x == r && *at == secs(3)));
    fx.clear();
    // A join in between keeps it: the timer then ends without a new one.
    w.join(c(2), "R1", "p", false);
    assert!(!w.rooms.expire(r, secs(3), &mut fx));
    assert!(fx.is_empty());
    // Emptied again at t0 + 4: a fresh timer, due at t0 + 6.
    w.now = secs(4);
    assert_eq!(kinds(&w.leave(c(2))), ["-:expire"]);
    assert!(!w.rooms.expire(r, secs(5), &mut fx));
    fx.clear();
    assert!(w.rooms.expire(r, secs(6), &mut fx));
    assert!(w.rooms.find("R1").is_none());
    assert_eq!(w.rooms.len(), 0);
}

#[test]
fn a_lone_member_rejoining_in_a_loop_arms_one_timer() {
    let mut w = World::new();
    w.create("R1", "h");
    w.join(c(1), "R1", "p", false);
    let mut expiries = 0;
    for _ in 0..1000 {
        let out = w.join(c(1), "R1", "p", false);
        expiries += out.iter().filter(|l| *l == "-:expire").count();
    }
    assert_eq!(expiries, 0, "the creation's timer is still pending");
}

#[test]
fn the_stored_document_shares_the_rooms_frame() {
    let mut w = World::new();
    w.create("R1", "h");
    w.join(c(1), "R1", "h", true);
    let big = format!("\"{}\"", "x".repeat(70_000)); // a 64-bit length header
    for doc in ["\"DOC\"", big.as_str()] {
        let raw = RawValue::from_string(doc.into()).unwrap();
        let mut fx = Vec::new();
        w.rooms
            .sync_document(c(1), &w.sessions[&c(1)], &raw, &mut fx);
        assert!(fx.iter().any(|e| matches!(e, Effect::Persist(_))));
        let room = w.rooms.find("R1").unwrap().1;
        let got = room.document_raw().unwrap();
        assert_eq!(&got[..], doc.as_bytes());
        let frame = match room.document.as_ref().unwrap() {
            Doc::Event { frame, .. } | Doc::Snapshot(frame) => frame,
        };
        let inside = frame.as_ptr_range();
        assert!(inside.contains(&got.as_ptr()), "a slice, not a copy");
        // The fan-out and the room share that one buffer.
        let fanned = fx.iter().find_map(|e| match e {
            Effect::Fanout { frame, .. } => Some(frame.clone()),
            _ => None,
        });
        assert_eq!(fanned.unwrap().as_ptr(), frame.as_ptr());
    }
    // A joiner gets a snapshot cut from it (no seq), and from then on
    // the room holds the snapshot alone.
    let out = w.join(c(2), "R1", "p", false);
    assert!(out
        .last()
        .unwrap()
        .starts_with(r#"2:{"type":"document_sync","document":"xx"#));
    assert!(!out.last().unwrap().contains(r#""seq""#));
    let room = w.rooms.find("R1").unwrap().1;
    assert!(matches!(room.document, Some(Doc::Snapshot(_))));
    assert_eq!(room.document_raw().unwrap().len(), big.len());
    assert_eq!(room.document_frame_len(), document_frame_len(big.len()));
}

#[test]
fn a_restored_room_keeps_its_idle_time() {
    let mut r = Rooms::new(Some(Duration::from_secs(60)));
    let now = Instant::now();
    let mut fx = Vec::new();
    let doc = document_frame("\"D\"", None);
    let rr = r.restore(
        "R1",
        "id",
        "host",
        Some("host_public1"),
        Some("user1"),
        "2026-01-01T00:00:00.000Z",
        Some(doc),
        Duration::from_secs(50),
        now,
        &mut fx,
    );
    // Empty for 50 of its 60 s: gone 10 s later, however young the
    // monotonic clock is.
    assert!(matches!(fx.as_slice(), [Effect::ExpireAt(x, at)]
        if *x == rr && *at == now + Duration::from_secs(10)));
    let room = r.get(rr).unwrap();
    assert_eq!(room.idle_for(now), Some(Duration::from_secs(50)));
    assert_eq!(room.host_id(), "host");
    assert_eq!(room.host_public_id(), "host_public1");
    assert_eq!(room.owner(), Some("user1"));
    assert_eq!(&room.document_raw().unwrap()[..], b"\"D\"");
    fx.clear();
    assert!(!r.expire(rr, now + Duration::from_secs(9), &mut fx));
    fx.clear();
    assert!(r.expire(rr, now + Duration::from_secs(10), &mut fx));
    assert!(r.find("R1").is_none());
}

#[test]
fn create_restores_existing_and_validates() {
    let mut r = Rooms::new(None);
    let mut fx = Vec::new();
    let now = Instant::now();
    let a = r
        .create(None, None, now, SystemTime::now(), &mut rand, &mut fx)
        .unwrap();
    let room = r.get(a.room).unwrap();
    assert_eq!(room.code().len(), 6);
    assert!(room.code().bytes().all(|b| CODE_ALPHABET.contains(&b)));
    assert!(room.host_id().starts_with("host_") && room.host_id().len() == 13);
    assert!(room.host_public_id().starts_with("host_"));
    assert_ne!(room.host_public_id(), room.host_id());
    let code = room.code().to_string();
    let host = room.host_id().to_string();
    let public = room.host_public_id().to_string();
    // Only the secret host id restores the room.
    for other in [Some("other"), None, Some(public.as_str())] {
        assert_eq!(
            r.create(
                Some(&code),
                other,
                now,
                SystemTime::now(),
                &mut rand,
                &mut fx,
            )
            .err(),
            Some(CreateError::Taken)
        );
    }
    let b = r
        .create(
            Some(&code),
            Some(&host),
            now,
            SystemTime::now(),
            &mut rand,
            &mut fx,
        )
        .unwrap();
    assert!(b.restored);
    assert_eq!(b.room, a.room);
    assert_eq!(
        r.create(
            Some("bad code"),
            None,
            now,
            SystemTime::now(),
            &mut rand,
            &mut fx
        )
        .err(),
        Some(CreateError::BadRoomCode)
    );
    assert_eq!(
        r.create(None, Some(""), now, SystemTime::now(), &mut rand, &mut fx)
            .err(),
        Some(CreateError::BadHostId)
    );
    assert!(
        fx.iter().all(|e| matches!(e, Effect::Persist(_))),
        "no idle timeout, no expiry"
    );
}

impl World {
    fn join_since(
        &mut self,
        conn: ConnRef,
        code: &str,
        peer: &str,
        since: Option<(&str, u64)>,
    ) -> Vec<String> {
        let mut fx = Vec::new();
        let mut s = self.sessions.remove(&conn).unwrap_or_default();
        let since = since.map(|(epoch, seq)| Since {
            epoch: epoch.into(),
            seq,
        });
        self.rooms.join(
            conn,
            &mut s,
            code,
            peer,
            false,
            None,
            since,
            self.now,
            SystemTime::now(),
            &mut fx,
        );
        self.sessions.insert(conn, s);
        self.render(fx)
    }
    fn sync(&mut self, conn: ConnRef, doc: &str) -> Vec<String> {
        let mut fx = Vec::new();
        let raw = RawValue::from_string(json_str(doc)).unwrap();
        let s = self.sessions.remove(&conn).unwrap_or_default();
        self.rooms.sync_document(conn, &s, &raw, &mut fx);
        self.sessions.insert(conn, s);
        self.render(fx)
    }
    fn position(&self, code: &str) -> (String, u64) {
        let (_, room) = self.rooms.find(code).unwrap();
        (room.epoch().to_owned(), room.seq())
    }
}

fn field(line: &str, key: &str) -> serde_json::Value {
    let json = &line[line.find(':').unwrap() + 1..];
    serde_json::from_str::<serde_json::Value>(json).unwrap()[key].clone()
}

/// Cluster mode: a node that has just begun to follow a room replays
/// what its snapshot read from the stream.
#[test]
fn a_node_new_to_a_room_replays_from_the_stream_it_read() {
    let mut w = World::new();
    w.rooms.set_cluster(true);
    w.create("R1", "h");
    let (r, _) = w.rooms.find("R1").unwrap();
    let mut fx = Vec::new();
    w.rooms
        .cluster_start(r, "ep", 9, Vec::new(), w.now, &mut fx);
    let data = |seq: u64| {
        let body = format!(r#"{{"type":"data","from":"far","data":"m{seq}""#);
        (seq, bytes::Bytes::from(body))
    };
    w.rooms
        .cluster_history(r, 6, 6, vec![data(7), data(8), data(9)], w.now);
    let out = w.join_since(c(1), "R1", "p", Some(("ep", 7)));
    assert_eq!(
        kinds(&out),
        [
            "publish:peer_joined",
            "1:room_info",
            "1:connected",
            "1:data",
            "1:data"
        ]
    );
    assert_eq!(field(&out[1], "recovered"), true);
    assert_eq!(field(&out[3], "seq"), 8);
    assert_eq!(field(&out[4], "data"), "m9");
    // From before the last document: the whole state instead.
    let out = w.join_since(c(2), "R1", "q", Some(("ep", 5)));
    assert_eq!(field(&out[1], "recovered"), false);
}

#[test]
fn reconnect_replays_missed_data_then_the_changed_document() {
    let mut w = World::new();
    w.create("R1", "h");
    w.join(c(1), "R1", "h", true);
    w.join(c(2), "R1", "p", false);
    let (epoch, seen) = w.position("R1");
    w.leave(c(2));
    w.say(c(1), "one");
    w.sync(c(1), "DOC");
    w.say(c(1), "two");
    let out = w.join_since(c(3), "R1", "p", Some((&epoch, seen)));
    assert_eq!(
        kinds(&out),
        [
            "1:peer_joined",
            "3:room_info",
            "3:connected",
            "3:data",
            "3:data",
            "3:document_sync"
        ]
    );
    assert_eq!(field(&out[1], "recovered"), true);
    assert_eq!(field(&out[1], "seq"), 7);
    assert_eq!(field(&out[3], "data"), "one");
    assert_eq!(field(&out[3], "seq"), 4);
    assert_eq!(field(&out[4], "data"), "two");
    assert_eq!(field(&out[4], "seq"), 6);
    // The current document, once, as a snapshot.
    assert_eq!(field(&out[5], "document"), "DOC");
    assert_eq!(field(&out[5], "seq"), serde_json::Value::Null);
}

#[test]
fn reconnect_without_a_document_change_gets_no_document() {
    let mut w = World::new();
    w.create("R1", "h");
    w.join(c(1), "R1", "h", true);
    w.sync(c(1), "DOC");
    w.join(c(2), "R1", "p", false);
    let (epoch, seen) = w.position("R1");
    w.leave(c(2));
    w.say(c(1), "one");
    let out = w.join_since(c(3), "R1", "p", Some((&epoch, seen)));
    assert_eq!(
        kinds(&out),
        ["1:peer_joined", "3:room_info", "3:connected", "3:data"]
    );
    // Nothing missed: recovered, nothing replayed, no document.
    w.leave(c(3));
    let (epoch, seen) = w.position("R1");
    let out = w.join_since(c(4), "R1", "p", Some((&epoch, seen)));
    assert_eq!(kinds(&out), ["1:peer_joined", "4:room_info", "4:connected"]);
    assert_eq!(field(&out[1], "recovered"), true);
}

#[test]
fn unrecoverable_positions_get_a_normal_join() {
    let mut w = World::new();
    w.rooms.set_history_limits(history::Limits {
        per_room: 2,
        ..history::Limits::default()
    });
    w.create("R1", "h");
    w.join(c(1), "R1", "h", true);
    w.sync(c(1), "DOC");
    let (epoch, seen) = w.position("R1");
    for i in 0..3 {
        w.say(c(1), &format!("m{i}"));
    }
    let normal = [
        "1:peer_joined",
        "2:room_info",
        "2:connected",
        "2:document_sync",
    ];
    for since in [
        (epoch.as_str(), seen),    // too old: m0 fell out
        ("other-epoch", seen + 3), // another incarnation
        (epoch.as_str(), 99),      // ahead of the stream
    ] {
        let out = w.join_since(c(2), "R1", "p", Some(since));
        assert_eq!(kinds(&out), normal, "{since:?}");
        assert_eq!(field(&out[1], "recovered"), false, "{since:?}");
        w.leave(c(2));
    }
    // A position the two held events cover is recovered.
    let out = w.join_since(c(2), "R1", "p", Some((&epoch, seen + 1)));
    assert_eq!(field(&out[1], "recovered"), true);
    assert_eq!(kinds(&out)[3..], ["2:data", "2:data"]);
}

#[test]
fn a_peer_does_not_get_its_own_data_back_in_a_replay() {
    let mut w = World::new();
    w.create("R1", "h");
    w.join(c(1), "R1", "h", true);
    w.join(c(2), "R1", "p", false);
    let (epoch, seen) = w.position("R1");
    w.say(c(2), "mine");
    w.say(c(1), "theirs");
    w.leave(c(2));
    let out = w.join_since(c(3), "R1", "p", Some((&epoch, seen)));
    let data: Vec<_> = out
        .iter()
        .filter(|l| l.starts_with("3:") && field(l, "type") == "data")
        .map(|l| field(l, "data"))
        .collect();
    assert_eq!(data, ["theirs"]);
}

#[test]
fn history_memory_is_released_with_the_room() {
    let mut w = World::new();
    w.create("R1", "h");
    w.join(c(1), "R1", "h", true);
    w.join(c(2), "R1", "p", false);
    w.say(c(1), "x");
    assert_eq!(w.rooms.history_usage().1, 1);
    w.leave(c(1));
    w.leave(c(2));
    let (r, _) = w.rooms.find("R1").unwrap();
    w.now += Duration::from_secs(3);
    assert!(w.rooms.expire(r, w.now, &mut Vec::new()));
    assert_eq!(w.rooms.history_usage(), (0, 0));
}
