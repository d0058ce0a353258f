//! §2 of the contract over real WebSockets: every action, reply order,
//! error, host rule, move, replacement, ordering, limits, keepalive and
//! shutdown.

mod common;

use common::{http, raw_upgrade, Client, TestServer};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::Message;

#[test]
fn join_reply_order_and_peer_joined() {
    let s = TestServer::start(&[]);
    s.room("R1", "host1");
    let mut host = s.ws();
    host.send(json!({"action":"join","room_code":"R1","peer_id":"host1","is_host":true,"metadata":{"n":"H"}}));
    let info = host.recv();
    assert_eq!(info["type"], "room_info");
    assert_eq!(info["room_code"], "R1");
    // Everyone else sees the host under its public id; the host itself is
    // told the id it joined with (rule 11).
    let public = http(s.addr, "GET", "/api/rooms/R1", &[], b"").json()["host_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(public.starts_with("host_") && public != "host1");
    assert_eq!(info["host_id"], "host1");
    assert_eq!(info["peers"].as_array().unwrap().len(), 1);
    assert_eq!(info["peers"][0]["id"], "host1");
    assert_eq!(info["peers"][0]["is_host"], true);
    assert_eq!(info["peers"][0]["metadata"]["n"], "H");
    let c = host.recv();
    assert_eq!(
        c,
        json!({"type":"connected","peer_id":"host1","room_code":"R1"})
    );

    let mut p = s.ws();
    let info = p.join("R1", "p2", false);
    let ids: Vec<_> = info["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].clone())
        .collect();
    assert_eq!(ids, [json!(public), json!("p2")]);
    let pj = host.recv();
    assert_eq!(pj["type"], "peer_joined");
    assert_eq!(pj["peer"]["id"], "p2");
    assert_eq!(pj["peer"]["is_host"], false);
    assert_eq!(pj["peer"]["metadata"], serde_json::Value::Null);
    assert!(pj["peer"]["joined_at"].is_string());
    // The joiner does not hear about itself.
    assert!(p.silent_for(Duration::from_millis(300)));
}

#[test]
fn join_errors() {
    let s = TestServer::start(&[]);
    s.room("R1", "host1");
    let mut c = s.ws();
    c.send(json!({"action":"join","room_code":"ZZZ","peer_id":"p"}));
    assert_eq!(c.recv(), json!({"type":"error","message":"Room not found"}));
    c.send(json!({"action":"join","room_code":"R1","peer_id":"impostor","is_host":true}));
    assert_eq!(c.recv_type(), "error");
    // Not joined: a room action still says so, and the connection works.
    c.send(json!({"action":"broadcast","data":"x"}));
    assert_eq!(c.recv(), json!({"type":"error","message":"Not in a room"}));
    c.join("R1", "p", false);
}

#[test]
fn not_in_room_and_bad_input_keep_the_connection() {
    let s = TestServer::start(&[]);
    let mut c = s.ws();
    for a in ["broadcast", "sync_document", "request_sync"] {
        let msg = match a {
            "broadcast" => json!({"action":a,"data":"x"}),
            "sync_document" => json!({"action":a,"document":"x"}),
            _ => json!({"action":a}),
        };
        c.send(msg);
        assert_eq!(
            c.recv(),
            json!({"type":"error","message":"Not in a room"}),
            "{a}"
        );
    }
    for bad in [
        "{not json",
        r#"{"action":"fly"}"#,
        r#"{"action":"broadcast","data":7}"#,
        "[1,2]",
        r#"{"action":5}"#,
    ] {
        c.send_text(bad);
        let e = c.recv();
        assert_eq!(e["type"], "error");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid message format: "),
            "{e}"
        );
    }
    c.ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(c.recv_type(), "error");
    c.send(json!({"action":"ping"}));
    assert_eq!(c.recv(), json!({"type":"pong"}));
}

#[test]
fn broadcast_reaches_everyone_else_with_sender() {
    let s = TestServer::start(&[]);
    s.room("R1", "h");
    let mut a = s.ws();
    let mut b = s.ws();
    let mut c = s.ws();
    a.join("R1", "a", false);
    b.join("R1", "b", false);
    a.recv();
    c.join("R1", "c", false);
    a.recv();
    b.recv();
    b.send(json!({"action":"broadcast","data":"hello \"world\" ✓"}));
    // Three joins were the room's events 1-3 (§6).
    let expect = json!({"type":"data","from":"b","data":"hello \"world\" ✓","seq":4});
    assert_eq!(a.recv(), expect);
    assert_eq!(c.recv(), expect);
    assert!(b.silent_for(Duration::from_millis(200)));
}

#[test]
fn document_is_host_only_stored_and_replayed() {
    let s = TestServer::start(&[]);
    s.room("D", "h");
    let mut host = s.ws();
    host.join("D", "h", true);
    let mut p = s.ws();
    p.join("D", "p", false);
    host.recv();
    // A non-host cannot sync; nobody else hears anything.
    p.send(json!({"action":"sync_document","document":"evil"}));
    assert_eq!(p.recv_type(), "error");
    assert!(host.silent_for(Duration::from_millis(200)));
    // request_sync with no document gives "".
    p.send(json!({"action":"request_sync"}));
    assert_eq!(p.recv(), json!({"type":"document_sync","document":""}));

    host.send(json!({"action":"sync_document","document":"{\"tasks\":[1,2]}"}));
    assert_eq!(
        p.recv(),
        json!({"type":"document_sync","document":"{\"tasks\":[1,2]}","seq":3})
    );
    assert!(host.silent_for(Duration::from_millis(200)));
    p.send(json!({"action":"request_sync"}));
    assert_eq!(p.recv()["document"], "{\"tasks\":[1,2]}");
    assert_eq!(
        http(s.addr, "GET", "/api/rooms/D", &[], b"").json()["has_document"],
        true
    );

    // A late joiner gets room_info, connected, then the document.
    let mut late = s.ws();
    late.send(json!({"action":"join","room_code":"D","peer_id":"late"}));
    assert_eq!(late.recv_type(), "room_info");
    assert_eq!(late.recv_type(), "connected");
    assert_eq!(
        late.recv(),
        json!({"type":"document_sync","document":"{\"tasks\":[1,2]}"})
    );
    // A restore reports the document.
    assert_eq!(s.room("D", "h")["has_document"], true);
}

#[test]
fn leave_closes_1000_and_others_hear_peer_left() {
    let s = TestServer::start(&[]);
    s.room("L", "h");
    let mut a = s.ws();
    let mut b = s.ws();
    a.join("L", "a", false);
    b.join("L", "b", false);
    a.recv();
    b.send(json!({"action":"leave"}));
    assert_eq!(b.expect_close(), Some(1000));
    assert_eq!(a.recv(), json!({"type":"peer_left","peer_id":"b","seq":3}));
    // A TCP drop is a leave too.
    let mut c = s.ws();
    c.join("L", "c", false);
    a.recv();
    drop(c);
    assert_eq!(a.recv(), json!({"type":"peer_left","peer_id":"c","seq":5}));
    // So is a close frame.
    let mut d = s.ws();
    d.join("L", "d", false);
    a.recv();
    d.ws.close(None).unwrap();
    assert_eq!(a.recv(), json!({"type":"peer_left","peer_id":"d","seq":7}));
}

#[test]
fn moving_between_rooms() {
    let s = TestServer::start(&[]);
    s.room("A", "ha");
    s.room("B", "hb");
    let mut a1 = s.ws();
    let mut b1 = s.ws();
    let mut mover = s.ws();
    a1.join("A", "a1", false);
    b1.join("B", "b1", false);
    mover.join("A", "m", false);
    a1.recv();
    let info = mover.join("B", "m", false);
    assert_eq!(info["room_code"], "B");
    assert_eq!(a1.recv(), json!({"type":"peer_left","peer_id":"m","seq":3}));
    assert_eq!(b1.recv()["type"], "peer_joined");
    // Broadcasts now reach room B only.
    mover.send(json!({"action":"broadcast","data":"in B"}));
    assert_eq!(b1.recv()["data"], "in B");
    assert!(a1.silent_for(Duration::from_millis(200)));
    assert_eq!(
        http(s.addr, "GET", "/api/rooms/A", &[], b"").json()["peer_count"],
        1
    );
}

#[test]
fn newer_connection_replaces_older_with_same_peer_id() {
    let s = TestServer::start(&[]);
    s.room("R", "h");
    let mut watcher = s.ws();
    watcher.join("R", "w", false);
    let mut old = s.ws();
    old.join("R", "same", false);
    watcher.recv();
    let mut new = s.ws();
    new.join("R", "same", false);
    let e = old.recv();
    assert_eq!(
        e,
        json!({"type":"error","message":"Replaced by a newer connection"})
    );
    assert_eq!(old.expect_close(), Some(1000));
    let j = http(s.addr, "GET", "/api/rooms/R", &[], b"").json();
    assert_eq!(j["peer_count"], 2);
    let ids: Vec<_> = j["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["w", "same"]);
    // The new connection works.
    new.send(json!({"action":"broadcast","data":"hi"}));
    loop {
        let m = watcher.recv();
        if m["type"] == "data" {
            assert_eq!(m["from"], "same");
            break;
        }
    }
}

#[test]
fn thousand_back_to_back_broadcasts_arrive_in_order_everywhere() {
    let s = TestServer::start(&[]);
    s.room("O", "h");
    let mut sender = s.ws();
    sender.join("O", "s", false);
    let mut receivers: Vec<Client> = (0..4)
        .map(|i| {
            let mut c = s.ws();
            c.join("O", &format!("r{i}"), false);
            c
        })
        .collect();
    // Drain peer_joined notices.
    for (i, r) in receivers.iter_mut().enumerate() {
        for _ in i + 1..4 {
            assert_eq!(r.recv_type(), "peer_joined");
        }
    }
    for _ in 0..4 {
        sender.recv();
    }
    for i in 0..1000 {
        sender
            .ws
            .write(Message::text(
                json!({"action":"broadcast","data":format!("m{i}")}).to_string(),
            ))
            .unwrap();
    }
    sender.ws.flush().unwrap();
    for r in receivers.iter_mut() {
        for i in 0..1000 {
            let m = r.recv();
            assert_eq!(m["data"], format!("m{i}"));
            assert_eq!(m["from"], "s");
        }
    }
}

#[test]
fn oversized_message_closes_1009() {
    let s = TestServer::start(&[("MAX_MESSAGE_BYTES", "1024")]);
    s.room("R", "h");
    let mut c = s.ws();
    c.join("R", "p", false);
    let big = "x".repeat(2000);
    c.send(json!({"action":"broadcast","data":big}));
    assert_eq!(c.expect_close(), Some(1009));
    // The server goes on.
    assert_eq!(http(s.addr, "GET", "/health", &[], b"").status, 200);
}

#[test]
fn invalid_utf8_closes_1007() {
    let s = TestServer::start(&[]);
    let mut sock = raw_upgrade(s.addr);
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A masked text frame holding 0xFF 0xFE (mask of zeros).
    sock.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe])
        .unwrap();
    let mut got = Vec::new();
    let _ = sock.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    let i = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        &got[i..i + 4],
        &[0x88, got[i + 1], 0x03, 0xef],
        "close 1007"
    );
}

#[test]
fn slow_reader_is_cut_off_with_1008_while_others_keep_receiving() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let s = TestServer::start(&[("MAX_OUTBOUND_BYTES", "1048576")]);
    s.room("S", "h");
    let mut sender = s.ws();
    sender.join("S", "sender", false);
    let mut good = s.ws();
    good.join("S", "good", false);
    sender.recv();
    // The slow peer joins with a raw socket and never reads again.
    let mut slow = raw_upgrade(s.addr);
    slow.write_all(&client_text_frame(
        br#"{"action":"join","room_code":"S","peer_id":"slow"}"#,
    ))
    .unwrap();
    assert_eq!(sender.recv()["type"], "peer_joined");
    assert_eq!(good.recv()["type"], "peer_joined");

    let payload = "p".repeat(8 * 1024);
    let n = 3000; // 24 MB in all: far past the kernel buffers and the bound.
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let reader = std::thread::spawn(move || {
        let mut saw_left = false;
        let mut got = 0;
        while got < n || !saw_left {
            let m = good.recv();
            match m["type"].as_str().unwrap() {
                "data" => {
                    // Complete and in order: each payload carries its index.
                    let d = m["data"].as_str().unwrap();
                    assert_eq!(d.len(), 8 * 1024 + 8);
                    assert_eq!(&d[..8], format!("{got:08}"));
                    got += 1;
                    seen.store(got, Ordering::Release);
                }
                "peer_left" => {
                    assert_eq!(m["peer_id"], "slow");
                    saw_left = true;
                }
                other => panic!("unexpected {other}"),
            }
        }
        got
    });
    for i in 0..n {
        let data = format!("{i:08}{payload}");
        sender
            .ws
            .send(Message::text(
                json!({"action":"broadcast","data":data}).to_string(),
            ))
            .unwrap();
        // Keep the healthy reader within its bound: it is the slow one
        // that must be cut off, not a reader that merely lags a burst.
        while i >= 32 && received.load(Ordering::Acquire) + 32 < i {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(reader.join().unwrap(), n);
    // The slow reader was told 1008 at the end of a whole-frame stream.
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut all = Vec::new();
    let _ = slow.read_to_end(&mut all);
    assert_eq!(
        last_close_code(&all),
        Some(1008),
        "slow reader closed with 1008"
    );
}

/// Walks server frames after the 101 response; returns the close code of
/// the last frame if it is a close frame.
fn last_close_code(raw: &[u8]) -> Option<u16> {
    let mut i = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut last = None;
    while i + 2 <= raw.len() {
        let op = raw[i] & 0x0f;
        let (len, hl) = match raw[i + 1] & 0x7f {
            126 if i + 4 <= raw.len() => (u16::from_be_bytes([raw[i + 2], raw[i + 3]]) as usize, 4),
            127 if i + 10 <= raw.len() => (
                u64::from_be_bytes(raw[i + 2..i + 10].try_into().unwrap()) as usize,
                10,
            ),
            n if n < 126 => (n as usize, 2),
            _ => break,
        };
        if i + hl + len > raw.len() {
            panic!("truncated frame in the slow reader's stream");
        }
        last = (op == 8 && len >= 2).then(|| u16::from_be_bytes([raw[i + hl], raw[i + hl + 1]]));
        i += hl + len;
    }
    last
}

#[test]
fn empty_room_is_removed_after_idle_timeout() {
    let s = TestServer::start(&[("ROOM_IDLE_TIMEOUT_SECONDS", "2")]);
    s.room("IDLE", "h");
    let mut c = s.ws();
    c.join("IDLE", "p", false);
    std::thread::sleep(Duration::from_millis(2500));
    // Occupied rooms are kept.
    assert_eq!(http(s.addr, "GET", "/api/rooms/IDLE", &[], b"").status, 200);
    c.send(json!({"action":"leave"}));
    c.expect_close();
    let left = Instant::now();
    // Still there just before the timeout...
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(http(s.addr, "GET", "/api/rooms/IDLE", &[], b"").status, 200);
    // ...and gone within a second after it.
    loop {
        let st = http(s.addr, "GET", "/api/rooms/IDLE", &[], b"").status;
        if st == 404 {
            break;
        }
        assert!(
            left.elapsed() < Duration::from_secs(3),
            "room outlived its timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(left.elapsed() >= Duration::from_millis(1900));
    assert_eq!(http(s.addr, "GET", "/health", &[], b"").json()["rooms"], 0);
}

#[test]
fn keepalive_pings_and_silent_connections_are_closed() {
    let s = TestServer::start(&[("PING_INTERVAL_SECONDS", "1")]);
    // A tungstenite client answers pings while it reads, so it stays.
    let mut alive = s.ws();
    let answering = std::thread::spawn(move || {
        let mut pings = 0;
        alive.timeout(Duration::from_millis(200));
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            match alive.ws.read() {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("answering client dropped: {e}"),
            }
        }
        alive.timeout(Duration::from_secs(5));
        alive.send(json!({"action":"ping"}));
        assert_eq!(alive.recv()["type"], "pong");
        pings
    });
    // A raw socket that never answers is closed after two intervals.
    let mut mute = raw_upgrade(s.addr);
    mute.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let t0 = Instant::now();
    let mut all = Vec::new();
    let _ = mute.read_to_end(&mut all);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "closed in time: {:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() >= Duration::from_millis(1500));
    assert!(all.windows(2).any(|w| w == [0x89, 0x00]), "pings were sent");
    assert!(
        answering.join().unwrap() >= 2,
        "the answering client was pinged and kept"
    );
}

#[test]
fn sigterm_closes_websockets_with_1001_and_exits_0() {
    let mut s = TestServer::start(&[]);
    s.room("Q", "h");
    let mut a = s.ws();
    a.join("Q", "a", false);
    let mut b = s.ws();
    b.join("Q", "b", false);
    s.signal(libc::SIGTERM);
    assert_eq!(a.expect_close(), Some(1001));
    assert_eq!(b.expect_close().unwrap_or(1001), 1001);
    drop(a);
    drop(b);
    let status = s.wait_exit(Duration::from_secs(7)).expect("exited");
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(s.addr).is_err(), "no longer accepting");
}

#[test]
fn fragmented_message_and_client_ping_are_handled() {
    let s = TestServer::start(&[]);
    let mut sock = raw_upgrade(s.addr);
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let part1 = br#"{"action":"#;
    let part2 = br#""ping"}"#;
    let mut f = vec![0x01, 0x80 | part1.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(part1);
    f.extend_from_slice(&[0x89, 0x82, 0, 0, 0, 0, b'h', b'i']);
    f.extend_from_slice(&[0x80, 0x80 | part2.len() as u8, 0, 0, 0, 0]);
    f.extend_from_slice(part2);
    sock.write_all(&f).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains(r#"{"type":"pong"}"#) && Instant::now() < end {
        let n = sock.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    let i = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        &got[i..i + 4],
        &[0x8a, 0x02, b'h', b'i'],
        "pong echoes the ping payload first"
    );
    assert!(String::from_utf8_lossy(&got[i + 4..]).contains(r#"{"type":"pong"}"#));
}

/// A masked client text frame (any length).
fn client_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the payload as is
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_burst_past_a_small_outbound_bound_reaches_a_reader_that_keeps_up() {
    // Ten 20 KB messages arrive in one write and are fanned out in one turn:
    // 200 KB for a 64 KiB bound, yet the receiver's socket takes them.
    let s = TestServer::start(&[("MAX_OUTBOUND_BYTES", "65536")]);
    s.room("B", "h");
    let mut rx = s.ws();
    rx.join("B", "rx", false);
    let mut tx = raw_upgrade(s.addr);
    tx.write_all(&client_text_frame(
        br#"{"action":"join","room_code":"B","peer_id":"tx"}"#,
    ))
    .unwrap();
    assert_eq!(rx.recv()["type"], "peer_joined");
    let mut burst = Vec::new();
    for i in 0..10 {
        let msg = format!(
            r#"{{"action":"broadcast","data":"{i:02}{}"}}"#,
            "b".repeat(20_000)
        );
        burst.extend(client_text_frame(msg.as_bytes()));
    }
    tx.write_all(&burst).unwrap();
    for i in 0..10 {
        let m = rx.recv();
        assert_eq!(m["type"], "data", "message {i}: {m}");
        assert_eq!(&m["data"].as_str().unwrap()[..2], format!("{i:02}"));
    }
}

/// Sends `bytes` with `MSG_MORE` and then shuts the write side, so that the
/// data and the FIN leave in one segment and arrive as one readable edge.
fn send_then_fin_in_one_segment(sock: &TcpStream, bytes: &[u8]) {
    use std::os::fd::AsRawFd;
    // SAFETY: send(2) on a socket we own, with a valid buffer.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_MORE,
        )
    };
    assert_eq!(n, bytes.len() as isize);
    sock.shutdown(std::net::Shutdown::Write).unwrap();
}

#[test]
fn a_fin_that_arrives_with_the_last_message_is_seen_at_once() {
    let s = TestServer::start(&[]);
    s.room("F", "h");
    let mut stay = s.ws();
    stay.join("F", "stay", false);
    for round in 0..5 {
        let mut go = raw_upgrade(s.addr);
        go.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let id = format!("go{round}");
        go.write_all(&client_text_frame(
            format!(r#"{{"action":"join","room_code":"F","peer_id":"{id}"}}"#).as_bytes(),
        ))
        .unwrap();
        assert_eq!(stay.recv()["type"], "peer_joined");
        let t0 = Instant::now();
        send_then_fin_in_one_segment(
            &go,
            &client_text_frame(br#"{"action":"broadcast","data":"bye"}"#),
        );
        assert_eq!(stay.recv()["data"], "bye");
        let m = stay.recv();
        assert_eq!(m["type"], "peer_left", "{m}");
        assert_eq!(m["peer_id"], id.as_str());
        // Not the keepalive's doing: that would take a minute.
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }

    // The same over HTTP: answered, then closed at once (not after the
    // request timeout).
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t0 = Instant::now();
    send_then_fin_in_one_segment(&c, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    assert!(all.starts_with(b"HTTP/1.1 200"));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn a_flood_of_pings_from_a_peer_that_never_reads_ends_in_1008() {
    // N empty pings make 6 MB of pongs: under an 8 MiB bound counted in
    // bytes alone, but what they cost in memory is many times that, and the
    // bound counts it.
    const N: usize = 3_000_000;
    let s = TestServer::start(&[("MAX_OUTBOUND_BYTES", "8388608")]);
    let mut c = small_window_socket(s.addr);
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ping = [0x89u8, 0x80, 1, 2, 3, 4];
    let flood: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * N).collect();
    // The server may close before it has read them all.
    let _ = c.write_all(&flood);
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    let close_1008 = [0x88, 0x00, 0x03, 0xF0];
    assert!(
        all.windows(4)
            .any(|w| w[0] == close_1008[0] && w[2..] == close_1008[2..]),
        "no close 1008 after {} bytes",
        all.len()
    );
    assert_eq!(http(s.addr, "GET", "/health", &[], b"").status, 200);
}

/// A TCP connection whose receive buffer is 4 KiB (set before connecting,
/// so the window never opens wider): a peer that reads nothing holds back
/// almost everything sent to it in the sender's queue.
fn small_window_socket(addr: std::net::SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("IPv4 expected")
    };
    // SAFETY: plain socket calls on a descriptor we create and then hand to
    // TcpStream, which owns it from there.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn a_fin_right_after_a_bad_request_still_gets_its_answer() {
    let s = TestServer::start(&[]);
    for _ in 0..5 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send_then_fin_in_one_segment(&c, b"BROKEN\r\n\r\n");
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        assert!(
            all.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&all)
        );
    }
}

/// A peer that pipelines far more than the server will hold for it, behind
/// a 4 KiB receive window, still gets every answer: the server stops
/// reading it while its answers wait, rather than dropping or buffering
/// them. What such peers cost in memory is measured under a real
/// 100 MiB cgroup by `tools/memcap.sh --attack pipeline`, not here.
#[test]
fn a_pipelining_peer_behind_a_small_window_gets_every_answer() {
    let s = TestServer::start(&[]);
    const N: usize = 100_000;
    let mut c = small_window_socket(s.addr);
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // 3.4 MB of requests, about 25 MB of answers.
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let reqs = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".repeat(N);
        w.write_all(&reqs).unwrap();
    });
    // Every request gets its answer, read 4 KiB of window at a time while
    // the writer is still pushing: the server keeps stopping and resuming.
    let status = b"HTTP/1.1 ";
    let (mut answered, mut ok) = (0, 0);
    let mut buf = vec![0u8; 256 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    while answered < N {
        let n = c.read(&mut buf).expect("answers keep coming");
        assert!(n > 0, "closed after {answered} answers");
        tail.extend_from_slice(&buf[..n]);
        let mut i = 0;
        while let Some(at) = tail[i..]
            .windows(status.len() + 3)
            .position(|w| w.starts_with(status))
        {
            answered += 1;
            ok += usize::from(&tail[i + at + status.len()..i + at + status.len() + 3] == b"200");
            i += at + status.len();
        }
        tail.drain(
            ..tail
                .len()
                .saturating_sub(status.len() + 2)
                .max(i.min(tail.len())),
        );
    }
    assert_eq!((answered, ok), (N, N));
    writer.join().unwrap();
}

#[test]
fn a_join_that_arrives_with_a_fin_is_still_answered() {
    let s = TestServer::start(&[]);
    s.room("J", "h");
    let mut stay = s.ws();
    stay.join("J", "stay", false);
    let mut c = raw_upgrade(s.addr);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the upgrade is done
    send_then_fin_in_one_segment(
        &c,
        &client_text_frame(br#"{"action":"join","room_code":"J","peer_id":"brief"}"#),
    );
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains(r#""type":"room_info""#), "{text}");
    assert!(text.contains(r#""type":"connected""#), "{text}");
    // The others saw it come and go.
    assert_eq!(stay.recv()["type"], "peer_joined");
    assert_eq!(stay.recv()["type"], "peer_left");
}
