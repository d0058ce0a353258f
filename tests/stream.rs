//! The numbered room stream and catch-up after a reconnect (§6), against
//! the real binary.

mod common;

use common::{Client, TestServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Joins with `since` and returns `room_info` (after which `connected`
/// has been read too).
fn join_since(c: &mut Client, code: &str, peer: &str, since: Option<(&str, u64)>) -> Value {
    let mut msg = json!({"action":"join","room_code":code,"peer_id":peer});
    if let Some((epoch, seq)) = since {
        msg["since"] = json!({"epoch": epoch, "seq": seq});
    }
    c.send(msg);
    let info = c.recv();
    assert_eq!(info["type"], "room_info", "{info}");
    assert_eq!(c.recv()["type"], "connected");
    info
}

fn position(info: &Value) -> (String, u64) {
    (
        info["epoch"].as_str().expect("epoch").to_owned(),
        info["seq"].as_u64().expect("seq"),
    )
}

#[test]
fn events_are_numbered_and_room_info_names_the_position() {
    let s = TestServer::start(&[]);
    s.room("N1", "h");
    let mut host = s.ws();
    let info = host.join("N1", "h", true);
    assert_eq!(info["seq"], 1, "the host's own join is event 1: {info}");
    assert!(info["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(info.get("recovered").is_none(), "no since, no recovered");
    let mut p = s.ws();
    let pinfo = p.join("N1", "p", false);
    assert_eq!(pinfo["seq"], 2);
    assert_eq!(pinfo["epoch"], info["epoch"]);
    let joined = host.recv();
    assert_eq!(
        (joined["type"].as_str(), joined["seq"].as_u64()),
        (Some("peer_joined"), Some(2))
    );
    host.send(json!({"action":"broadcast","data":"x"}));
    assert_eq!(p.recv()["seq"], 3);
    host.send(json!({"action":"sync_document","document":"D"}));
    assert_eq!(
        p.recv(),
        json!({"type":"document_sync","document":"D","seq":4})
    );
    // request_sync is a snapshot, not an event.
    p.send(json!({"action":"request_sync"}));
    assert_eq!(p.recv(), json!({"type":"document_sync","document":"D"}));
    p.send(json!({"action":"leave"}));
    assert_eq!(
        host.recv(),
        json!({"type":"peer_left","peer_id":"p","seq":5})
    );
}

#[test]
fn a_reconnect_gets_what_it_missed_with_and_without_a_document_change() {
    let s = TestServer::start(&[]);
    s.room("R1", "h");
    let mut host = s.ws();
    host.join("R1", "h", true);
    host.send(json!({"action":"sync_document","document":"v1"}));
    let mut p = s.ws();
    let info = p.join("R1", "p", false);
    assert_eq!(p.recv()["document"], "v1");
    let (epoch, seen) = position(&info);
    host.recv(); // peer_joined
    drop(p);
    assert_eq!(host.recv()["type"], "peer_left");

    // Missed: two data events, no document change.
    host.send(json!({"action":"broadcast","data":"a"}));
    host.send(json!({"action":"broadcast","data":"b"}));
    let mut p = s.ws();
    let info = join_since(&mut p, "R1", "p", Some((&epoch, seen)));
    assert_eq!(info["recovered"], true, "{info}");
    let a = p.recv();
    let b = p.recv();
    assert_eq!(
        (a["data"].as_str(), b["data"].as_str()),
        (Some("a"), Some("b"))
    );
    assert_eq!(b["seq"].as_u64().unwrap(), a["seq"].as_u64().unwrap() + 1);
    assert!(
        p.silent_for(Duration::from_millis(200)),
        "no document: it did not change"
    );
    let (_, seen) = position(&info);
    host.recv(); // peer_joined
    drop(p);
    host.recv(); // peer_left

    // Missed: data, then a new document, then data.
    host.send(json!({"action":"broadcast","data":"c"}));
    host.send(json!({"action":"sync_document","document":"v2"}));
    host.send(json!({"action":"sync_document","document":"v3"}));
    host.send(json!({"action":"broadcast","data":"d"}));
    let mut p = s.ws();
    let info = join_since(&mut p, "R1", "p", Some((&epoch, seen)));
    assert_eq!(info["recovered"], true, "{info}");
    assert_eq!(p.recv()["data"], "c");
    assert_eq!(p.recv()["data"], "d");
    // The current document once, not every version.
    assert_eq!(p.recv(), json!({"type":"document_sync","document":"v3"}));
    assert!(p.silent_for(Duration::from_millis(200)));
    // Then live, numbered after room_info's position.
    host.send(json!({"action":"broadcast","data":"live"}));
    let live = p.recv();
    assert_eq!(live["data"], "live");
    assert!(live["seq"].as_u64().unwrap() > info["seq"].as_u64().unwrap());
}

/// A sender broadcasts numbered messages without pause while a receiver
/// drops and re-joins with `since` again and again: across every boundary
/// between replay and live it must see each message exactly once, in order.
#[test]
fn exactly_once_in_order_across_reconnects_under_a_concurrent_sender() {
    let s = TestServer::start(&[("ROOM_HISTORY_SIZE", "100000")]);
    s.room("X1", "h");
    let mut host = s.ws();
    host.join("X1", "h", true);
    const TOTAL: u64 = 3000;
    // The receiver is in the room before the first message.
    let mut p = s.ws();
    let (epoch, seen) = position(&p.join("X1", "p", false));
    host.recv();
    drop(p);
    let sender = std::thread::spawn(move || {
        for i in 0..TOTAL {
            host.send(json!({"action":"broadcast","data": i.to_string()}));
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        host
    });
    let mut next = 0u64;
    let mut since = Some((epoch, seen));
    let mut reconnects = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < TOTAL {
        assert!(Instant::now() < deadline, "stalled at {next}");
        let mut p = s.ws();
        let info = join_since(
            &mut p,
            "X1",
            "p",
            since.as_ref().map(|(e, s)| (e.as_str(), *s)),
        );
        assert_eq!(info["recovered"], true, "{info}");
        reconnects += 1;
        // Recovered: the position is where we were, moved on by each
        // event we read (replayed ones are numbered below room_info's
        // position, which only a normal join starts from).
        let epoch = info["epoch"].as_str().unwrap().to_owned();
        let mut last = since.as_ref().unwrap().1;
        // Read a varying number of events, then drop without a word.
        let batch = 37 + (reconnects % 5) * 61;
        for _ in 0..batch {
            if next >= TOTAL {
                break;
            }
            let m = p.recv();
            let seq = m["seq"].as_u64().expect("numbered");
            if m["type"] == "data" {
                assert_eq!(m["data"], next.to_string(), "gap or duplicate");
                next += 1;
            }
            assert!(seq > last, "seq {seq} after {last}");
            last = seq;
        }
        since = Some((epoch, last));
        drop(p);
    }
    sender.join().unwrap();
    assert!(reconnects >= 10, "only {reconnects} reconnects");
}

#[test]
fn another_epoch_is_not_recovered() {
    let s = TestServer::start(&[]);
    s.room("E1", "h");
    let mut p = s.ws();
    let info = p.join("E1", "p", false);
    let (epoch, seq) = position(&info);
    let mut q = s.ws();
    let other = format!("{epoch}x");
    let info = join_since(&mut q, "E1", "q", Some((&other, seq)));
    assert_eq!(info["recovered"], false);
    // A restart is a new epoch: the re-created room does not replay.
    drop(s);
    let s = TestServer::start(&[]);
    s.room("E1", "h");
    let mut p = s.ws();
    let info = join_since(&mut p, "E1", "p", Some((&epoch, seq)));
    assert_eq!(info["recovered"], false, "{info}");
    assert_ne!(info["epoch"], json!(epoch));
}

/// Each bound turns a later recovery into `recovered:false`, a normal join.
#[test]
fn each_history_bound_forces_a_normal_join() {
    fn missed(env: &[(&str, &str)], traffic: impl FnOnce(&TestServer, &mut Client)) -> Value {
        let s = TestServer::start(env);
        s.room("B1", "h");
        let mut host = s.ws();
        host.join("B1", "h", true);
        let mut p = s.ws();
        let (epoch, seen) = position(&p.join("B1", "p", false));
        host.recv();
        drop(p);
        host.recv();
        traffic(&s, &mut host);
        let mut p = s.ws();
        let info = join_since(&mut p, "B1", "p", Some((&epoch, seen)));
        // A normal join replays nothing.
        assert!(p.silent_for(Duration::from_millis(200)));
        info
    }
    let say = |host: &mut Client, n: usize| {
        for i in 0..n {
            host.send(json!({"action":"broadcast","data": format!("m{i}")}));
        }
        // A round trip: the server has handled them all.
        host.send(json!({"action":"ping"}));
        assert_eq!(host.recv_type(), "pong");
    };
    // Within every bound it is recovered (the control).
    let s = TestServer::start(&[]);
    s.room("C1", "h");
    let mut host = s.ws();
    host.join("C1", "h", true);
    let mut p = s.ws();
    let (epoch, seen) = position(&p.join("C1", "p", false));
    host.recv();
    drop(p);
    host.recv();
    say(&mut host, 3);
    let mut p = s.ws();
    assert_eq!(
        join_since(&mut p, "C1", "p", Some((&epoch, seen)))["recovered"],
        true
    );

    let info = missed(&[("ROOM_HISTORY_SIZE", "2")], |_, host| say(host, 3));
    assert_eq!(info["recovered"], false, "size: {info}");
    let info = missed(&[("ROOM_HISTORY_SECONDS", "1")], |_, host| {
        say(host, 1);
        // The age bound is the input here: let one event grow old.
        std::thread::sleep(Duration::from_millis(1300));
    });
    assert_eq!(info["recovered"], false, "age: {info}");
    // The total bound: another room's newer traffic pushes this room's
    // older events out.
    let info = missed(&[("HISTORY_MEMORY_BYTES", "2000")], |s, host| {
        say(host, 1);
        s.room("B2", "h2");
        let mut other = s.ws();
        other.join("B2", "h2", true);
        let mut listener = s.ws();
        listener.join("B2", "l", false);
        other.recv();
        for i in 0..20 {
            other.send(json!({"action":"broadcast","data": format!("{i:0>100}")}));
        }
        other.send(json!({"action":"ping"}));
        assert_eq!(other.recv_type(), "pong");
    });
    assert_eq!(info["recovered"], false, "total: {info}");
}

#[test]
fn a_malformed_since_is_an_invalid_message() {
    let s = TestServer::start(&[]);
    s.room("M1", "h");
    let mut p = s.ws();
    p.send(json!({"action":"join","room_code":"M1","peer_id":"p","since":{"epoch":"e","seq":"7"}}));
    let e = p.recv();
    assert_eq!(e["type"], "error");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.starts_with("Invalid message format: "), "{msg}");
    assert!(msg.contains("since"), "{msg}");
    // The connection stays usable.
    let info = join_since(&mut p, "M1", "p", Some(("e", 0)));
    assert_eq!(info["recovered"], false);
}
