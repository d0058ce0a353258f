//! Cluster mode (protocol §7) against a real Redis: Debian's
//! `redis-server`, started here on a free loopback port with a temporary
//! directory (tools/test.sh installs it). A missing server fails the tests.
//!
//! The nodes of one test share a database on the SecantusDB that
//! tools/with-secantus.sh starts (the MongoDB room store, as cluster mode
//! requires); a room is created on one node and found by the others.

mod common;

use common::{http, Client, TempDir, TestServer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real redis-server on 127.0.0.1:<free port>, no persistence; killed
/// on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir: TempDir::new("redis"),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.as_str(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is required for the cluster tests (tools/test.sh installs it)");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if self.command("PING").is_some_and(|r| r.starts_with("+PONG")) {
                return;
            }
            assert!(Instant::now() < end, "redis-server did not answer PING");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One inline command; the first line of the answer.
    fn command(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

const TTL: u64 = 3;

/// A database name of its own for one test's nodes.
fn unique_db(tag: &str) -> String {
    let mut n = [0u8; 4];
    getrandom::fill(&mut n).unwrap();
    format!(
        "cl_{tag}_{}_{:x}",
        std::process::id(),
        u32::from_le_bytes(n)
    )
}

fn mongo_uri() -> String {
    match std::env::var("SYNC_TEST_MONGODB_URI") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "SYNC_TEST_MONGODB_URI is not set: cluster mode needs the MongoDB room store; \
             run the tests through tools/with-secantus.sh (tools/test.sh does)"
        ),
    }
}

fn node(redis: &Redis, db: &str, id: &str, host: &str) -> TestServer {
    node_with_ttl(redis, db, id, host, TTL)
}

fn node_with_ttl(redis: &Redis, db: &str, id: &str, host: &str, ttl: u64) -> TestServer {
    node_with(redis, db, id, host, ttl, &[])
}

fn node_with(
    redis: &Redis,
    db: &str,
    id: &str,
    host: &str,
    ttl: u64,
    extra: &[(&str, &str)],
) -> TestServer {
    let url = redis.url();
    let ttl = ttl.to_string();
    let mongo = mongo_uri();
    let mut env = vec![
        ("HOST", host),
        ("ROOM_STORE", "mongodb"),
        ("MONGODB_URI", &mongo),
        ("DB_NAME", db),
        ("JWT_SECRET", "test-secret-0123456789-abcdefghijklmnop"),
        ("REDIS_URL", &url),
        ("NODE_ID", id),
        ("NODE_TTL_SECONDS", &ttl),
    ];
    env.extend_from_slice(extra);
    TestServer::start(&env)
}

/// Creates the room on `first`; waits until every other node finds it in
/// the shared store.
fn create(code: &str, host: &str, first: &TestServer, others: &[&TestServer]) {
    let r = first.room(code, host);
    assert_eq!(r["room_code"], code);
    for n in others {
        wait_until(
            "the room in the shared store",
            Duration::from_secs(10),
            || http(n.addr, "GET", &format!("/api/rooms/{code}"), &[], b"").status == 200,
        );
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ready(addr: SocketAddr) -> u16 {
    http(addr, "GET", "/readyz", &[], b"").status
}

fn wait_ready(nodes: &[&TestServer]) {
    for n in nodes {
        wait_until("readyz 200", Duration::from_secs(10), || {
            ready(n.addr) == 200
        });
    }
}

/// Reads messages until one satisfies `f`; returns it.
fn recv_until(c: &mut Client, what: &str, mut f: impl FnMut(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        let m = c.recv();
        if f(&m) {
            return m;
        }
    }
}

/// A value of the node's `/metrics` text (0 when absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

fn join(c: &mut Client, code: &str, peer: &str) -> Value {
    c.join(code, peer, false)
}

fn peers_of(info: &Value) -> Vec<String> {
    let mut v: Vec<String> = info["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn clients_on_different_nodes_see_one_gap_free_order() {
    let redis = Redis::start();
    let db = unique_db("t");
    let a = node(&redis, &db, "node-a", "127.0.0.1");
    let b = node(&redis, &db, "node-b", "127.0.0.2");
    let c = node(&redis, &db, "node-c", "127.0.0.3");
    wait_ready(&[&a, &b, &c]);
    create("ORDER1", "host-secret", &a, &[&b, &c]);
    let mut listeners = [a.ws(), b.ws(), c.ws()];
    for (i, l) in listeners.iter_mut().enumerate() {
        join(l, "ORDER1", &format!("listener{i}"));
    }
    let mut pa = a.ws();
    let info = join(&mut pa, "ORDER1", "pub-a");
    let mut pb = b.ws();
    let info_b = join(&mut pb, "ORDER1", "pub-b");
    // Presence across nodes: B lists the peers of A and C (the joiner's
    // room_info lists those whose peer_joined reached B before it joined;
    // the others reach it as peer_joined).
    let _ = info_b;
    wait_until("B to list every peer", Duration::from_secs(5), || {
        let r = http(b.addr, "GET", "/api/rooms/ORDER1", &[], b"").json();
        peers_of(&r) == ["listener0", "listener1", "listener2", "pub-a", "pub-b"]
    });
    assert!(info["seq"].as_u64().is_some() && info["epoch"].is_string());
    // Every listener has seen both publishers join before they send. The
    // two joins were published from two nodes, so Redis may number either
    // first: take them in any order.
    for l in listeners.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let m = recv_until(l, "peer_joined", |m| m["type"] == "peer_joined");
            let id = m["peer"]["id"].as_str().unwrap().to_owned();
            if id.starts_with("pub-") && !seen.contains(&id) {
                seen.push(id);
            }
        }
    }
    const N: usize = 60;
    let t1 = std::thread::spawn(move || {
        for i in 0..N {
            pa.send(json!({"action":"broadcast","data":format!("a{i}")}));
        }
        pa
    });
    let t2 = std::thread::spawn(move || {
        for i in 0..N {
            pb.send(json!({"action":"broadcast","data":format!("b{i}")}));
        }
        pb
    });
    let _pa = t1.join().unwrap();
    let _pb = t2.join().unwrap();
    let mut runs: Vec<Vec<(u64, String)>> = Vec::new();
    for l in listeners.iter_mut() {
        let mut run = Vec::new();
        while run.len() < 2 * N {
            let m = l.recv();
            assert_eq!(m["type"], "data", "only data is published now: {m}");
            run.push((
                m["seq"].as_u64().unwrap(),
                m["data"].as_str().unwrap().to_owned(),
            ));
        }
        runs.push(run);
    }
    // Gap-free and numbered +1 per event...
    for run in &runs {
        for w in run.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1, "a gap or a repeat: {w:?}");
        }
        // ...each sender's messages in the order sent...
        for p in ["a", "b"] {
            let mine: Vec<&str> = run
                .iter()
                .filter(|(_, d)| d.starts_with(p))
                .map(|(_, d)| d.as_str())
                .collect();
            let want: Vec<String> = (0..N).map(|i| format!("{p}{i}")).collect();
            assert_eq!(mine, want);
        }
    }
    // ...and one order on every node.
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[1], runs[2]);

    // /health shows the cluster view.
    let h = http(a.addr, "GET", "/health", &[], b"").json();
    assert_eq!(h["cluster"]["node_id"], "node-a");
    assert_eq!(h["cluster"]["broker"], "ok");
    let m = http(a.addr, "GET", "/metrics", &[], b"").text();
    assert!(m.contains("sync_server_cluster_redis_up 1"), "{m}");
}

/// A subscriber of its own on a room's channel: the size of the largest
/// message published there, and how many document notices it saw.
struct ChannelWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, usize)>>,
}

impl ChannelWatch {
    fn start(redis: &Redis, code: &str) -> ChannelWatch {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut con = client.get_connection().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let channel = format!("kp:e:{code}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut ps = con.as_pubsub();
            ps.subscribe(&channel).unwrap();
            ps.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let (mut largest, mut notices) = (0, 0);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match ps.get_message() {
                    Ok(m) => {
                        let p = m.get_payload_bytes();
                        largest = largest.max(p.len());
                        // `<seq>|<epoch>|<node>|<conn>|s|…`
                        let head = p.split(|&b| b == b'\n').next().unwrap_or_default();
                        if head.split(|&b| b == b'|').nth(4) == Some(b"s") {
                            notices += 1;
                        }
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => panic!("the test's subscriber: {e}"),
                }
            }
            (largest, notices)
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        ChannelWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// `(largest message, document notices)`.
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

#[test]
fn documents_and_leaves_reach_every_node() {
    let redis = Redis::start();
    let db = unique_db("t");
    let a = node(&redis, &db, "doc-a", "127.0.0.1");
    let b = node(&redis, &db, "doc-b", "127.0.0.2");
    let c = node(&redis, &db, "doc-c", "127.0.0.3");
    wait_ready(&[&a, &b, &c]);
    create("DOC1", "host-doc", &a, &[&b, &c]);
    let watch = ChannelWatch::start(&redis, "DOC1");
    let mut host = a.ws();
    host.join("DOC1", "host-doc", true);
    let mut guest = b.ws();
    join(&mut guest, "DOC1", "guest");
    let mut guest_c = c.ws();
    join(&mut guest_c, "DOC1", "guest-c");
    // B and C publish their joins independently: either may come first.
    let mut joined = Vec::new();
    while joined.len() < 2 {
        let m = recv_until(&mut host, "guests joined", |m| m["type"] == "peer_joined");
        joined.push(m["peer"]["id"].as_str().unwrap().to_owned());
    }
    joined.sort();
    assert_eq!(joined, ["guest", "guest-c"]);
    // A 10 MiB document, host on A, guests on B and C: the same bytes
    // arrive, with one number.
    let mut doc = "abcdefghijklmnopqrstuvwxyz0123456789-".repeat((10 << 20) / 37 + 1);
    doc.truncate(10 << 20);
    host.send(json!({"action":"sync_document","document":doc}));
    let mut seqs = Vec::new();
    for g in [&mut guest, &mut guest_c] {
        // Generous: a loaded machine runs several debug builds at once.
        g.timeout(Duration::from_secs(30));
        let got = recv_until(g, "document_sync", |m| m["type"] == "document_sync");
        assert!(got["document"].as_str().unwrap() == doc, "other bytes");
        seqs.push(got["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs[0], seqs[1]);
    // Documents sent in a burst arrive all, in order, each with its own
    // bytes, and the data between them stays where it was sent.
    for i in 0..5 {
        host.send(json!({"action":"sync_document","document":format!("v{i}")}));
        host.send(json!({"action":"broadcast","data":format!("after v{i}")}));
    }
    let mut runs = Vec::new();
    for g in [&mut guest, &mut guest_c] {
        let mut run = Vec::new();
        while run.len() < 10 {
            let m = g.recv();
            let seq = m["seq"].as_u64().unwrap();
            match m["type"].as_str().unwrap() {
                "document_sync" => run.push((seq, m["document"].as_str().unwrap().to_owned())),
                "data" => run.push((seq, m["data"].as_str().unwrap().to_owned())),
                other => panic!("unexpected {other}: {m}"),
            }
        }
        let texts: Vec<&str> = run.iter().map(|(_, t)| t.as_str()).collect();
        let want: Vec<String> = (0..5)
            .flat_map(|i| [format!("v{i}"), format!("after v{i}")])
            .collect();
        assert_eq!(texts, want);
        for w in run.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1);
        }
        runs.push(run);
    }
    assert_eq!(runs[0], runs[1]);
    // No document went through pub/sub: the channel carried notices.
    let (largest, notices) = watch.finish();
    assert_eq!(notices, 6);
    assert!(
        largest < 1024,
        "a message of {largest} bytes on the channel"
    );
    // A joiner on B gets the document B learnt from the stream.
    let mut late = b.ws();
    late.join("DOC1", "late", false);
    let snap = recv_until(&mut late, "document", |m| m["type"] == "document_sync");
    assert_eq!(snap["document"], "v4");
    // Host only, across nodes too.
    guest.send(json!({"action":"sync_document","document":"nope"}));
    let e = recv_until(&mut guest, "error", |m| m["type"] == "error");
    assert!(e["message"].as_str().unwrap().contains("host"), "{e}");
    // A leave on B reaches A.
    guest.send(json!({"action":"leave"}));
    let left = recv_until(&mut host, "peer_left", |m| {
        m["type"] == "peer_left" && m["peer_id"] == "guest"
    });
    assert!(left["seq"].as_u64().is_some());
}

#[test]
fn a_room_created_on_one_node_is_joinable_at_once_on_another() {
    let redis = Redis::start();
    let db = unique_db("t");
    let a = node_with(
        &redis,
        &db,
        "new-a",
        "127.0.0.1",
        TTL,
        &[("ROOM_CREATE_BURST", "100")],
    );
    let b = node(&redis, &db, "new-b", "127.0.0.2");
    wait_ready(&[&a, &b]);
    // Joined on B the moment A has answered the creation, over and over:
    // never `Room not found`, by WebSocket or by REST.
    for i in 0..20 {
        let code = format!("NEW{i}");
        a.room(&code, "host-new");
        let mut g = b.ws();
        join(&mut g, &code, "guest");
        let code = format!("NEWR{i}");
        let r = a.post_room("");
        let code = r["room_code"].as_str().map_or(code, str::to_owned);
        let got = http(b.addr, "GET", &format!("/api/rooms/{code}"), &[], b"");
        assert_eq!(got.status, 200, "{code}: {}", got.text());
    }
    // A code nobody created is still not found.
    let mut g = b.ws();
    g.send(json!({"action":"join","room_code":"NOSUCH1","peer_id":"x"}));
    let e = recv_until(&mut g, "error", |m| m["type"] == "error");
    assert_eq!(e["message"], "Room not found");
}

#[test]
fn since_recovers_on_a_node_that_only_now_follows_the_room() {
    let redis = Redis::start();
    let db = unique_db("t");
    let a = node(&redis, &db, "rec-a", "127.0.0.1");
    let b = node(&redis, &db, "rec-b", "127.0.0.2");
    wait_ready(&[&a, &b]);
    // B is not asked about the room before the recovery.
    create("REC1", "host-rec", &a, &[]);
    let mut sender = a.ws();
    join(&mut sender, "REC1", "sender");
    let mut phone = a.ws();
    let info = join(&mut phone, "REC1", "phone");
    let epoch = info["epoch"].as_str().unwrap().to_owned();
    let seen = info["seq"].as_u64().unwrap();
    recv_until(&mut sender, "phone joined", |m| m["type"] == "peer_joined");
    // The phone drops; what is said meanwhile it must get back on B, a
    // node that has never followed the room.
    drop(phone);
    recv_until(&mut sender, "phone left", |m| m["type"] == "peer_left");
    for i in 0..3 {
        sender.send(json!({"action":"broadcast","data":format!("missed{i}")}));
    }
    wait_until("the broadcasts published", Duration::from_secs(5), || {
        let m = http(a.addr, "GET", "/metrics", &[], b"").text();
        metric(&m, "sync_server_cluster_publishes_in_flight") == 0
            && metric(&m, "sync_server_cluster_published_total") >= 6
    });
    let h = http(b.addr, "GET", "/health", &[], b"").json();
    assert_eq!(h["cluster"]["rooms_followed"], 0, "{h}");
    let mut back = b.ws();
    back.send(json!({"action":"join","room_code":"REC1","peer_id":"phone",
        "since":{"epoch":epoch,"seq":seen}}));
    let info = back.recv();
    assert_eq!(info["type"], "room_info", "{info}");
    assert_eq!(info["recovered"], true, "{info}");
    assert_eq!(back.recv()["type"], "connected");
    for i in 0..3 {
        let m = back.recv();
        assert_eq!(m["type"], "data", "{m}");
        assert_eq!(m["data"], format!("missed{i}"));
        assert!(m["seq"].as_u64().unwrap() > seen);
    }
}

#[test]
fn the_same_peer_id_on_another_node_replaces_the_older_connection() {
    let redis = Redis::start();
    let db = unique_db("t");
    let a = node(&redis, &db, "rep-a", "127.0.0.1");
    let b = node(&redis, &db, "rep-b", "127.0.0.2");
    wait_ready(&[&a, &b]);
    create("REPL1", "host-rep", &a, &[&b]);
    let mut watcher = a.ws();
    join(&mut watcher, "REPL1", "watcher");
    let mut old = a.ws();
    join(&mut old, "REPL1", "phone");
    recv_until(&mut watcher, "phone joined", |m| m["type"] == "peer_joined");
    // B has no member of the room, yet lists A's peers.
    wait_until("B to list A's peers", Duration::from_secs(5), || {
        let r = http(b.addr, "GET", "/api/rooms/REPL1", &[], b"").json();
        peers_of(&r) == ["phone", "watcher"]
    });
    let mut new = b.ws();
    let info = join(&mut new, "REPL1", "phone");
    let e = recv_until(&mut old, "replaced", |m| m["type"] == "error");
    assert_eq!(e["message"], "Replaced by a newer connection");
    assert_eq!(old.expect_close(), Some(1000));
    let left = recv_until(&mut watcher, "peer_left", |m| m["type"] == "peer_left");
    assert_eq!(left["peer_id"], "phone");
    let joined = recv_until(&mut watcher, "peer_joined", |m| m["type"] == "peer_joined");
    assert_eq!(joined["peer"]["id"], "phone");
    assert_eq!(
        joined["seq"].as_u64().unwrap(),
        left["seq"].as_u64().unwrap() + 1
    );
    assert!(peers_of(&info).contains(&"watcher".to_owned()));
    // The room keeps exactly one "phone".
    wait_until("one phone", Duration::from_secs(5), || {
        let r = http(a.addr, "GET", "/api/rooms/REPL1", &[], b"").json();
        let ids: Vec<&str> = r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        ids.iter().filter(|i| **i == "phone").count() == 1 && ids.contains(&"watcher")
    });
}

#[test]
fn a_killed_node_s_peers_leave_within_the_ttl() {
    let redis = Redis::start();
    let db = unique_db("t");
    let a = node(&redis, &db, "kill-a", "127.0.0.1");
    let mut b = node(&redis, &db, "kill-b", "127.0.0.2");
    wait_ready(&[&a, &b]);
    create("KILL1", "host-kill", &a, &[&b]);
    let mut stay = a.ws();
    join(&mut stay, "KILL1", "stays");
    wait_until("B to list stays", Duration::from_secs(5), || {
        let r = http(b.addr, "GET", "/api/rooms/KILL1", &[], b"").json();
        peers_of(&r) == ["stays"]
    });
    let mut doomed = b.ws();
    let info = join(&mut doomed, "KILL1", "doomed");
    assert!(peers_of(&info).contains(&"stays".to_owned()));
    recv_until(&mut stay, "doomed joined", |m| m["type"] == "peer_joined");
    b.signal(libc::SIGKILL);
    let killed = Instant::now();
    b.wait_exit(Duration::from_secs(5)).expect("killed");
    stay.timeout(Duration::from_secs(TTL * 2 + 5));
    let left = recv_until(&mut stay, "peer_left", |m| m["type"] == "peer_left");
    assert_eq!(left["peer_id"], "doomed");
    let took = killed.elapsed();
    // Within the TTL: the dead node's alive key lasts two thirds of it,
    // and the survivor's next heartbeat comes at most a third later (plus
    // the script and the delivery, a few ms, on a machine that may be
    // busy).
    assert!(
        took <= Duration::from_secs(TTL) + Duration::from_millis(500),
        "peer_left after {took:?}"
    );
    eprintln!("SIGKILL -> peer_left: {took:?}");
    let r = http(a.addr, "GET", "/api/rooms/KILL1", &[], b"").json();
    assert_eq!(peers_of(&r), ["stays"]);
}

#[test]
fn a_graceful_stop_removes_its_peers_at_once() {
    let redis = Redis::start();
    let db = unique_db("t");
    let a = node(&redis, &db, "stop-a", "127.0.0.1");
    let mut b = node(&redis, &db, "stop-b", "127.0.0.2");
    wait_ready(&[&a, &b]);
    create("STOP1", "host-stop", &a, &[&b]);
    let mut stay = a.ws();
    join(&mut stay, "STOP1", "stays");
    let mut going = b.ws();
    join(&mut going, "STOP1", "going");
    recv_until(&mut stay, "going joined", |m| m["type"] == "peer_joined");
    b.signal(libc::SIGTERM);
    let t = Instant::now();
    // Not ready at once (the load balancer drains it), still serving.
    wait_until("readyz 503", Duration::from_secs(2), || {
        ready(b.addr) == 503
    });
    going.send(json!({"action":"ping"}));
    recv_until(&mut going, "pong", |m| m["type"] == "pong");
    assert_eq!(going.expect_close(), Some(1001));
    stay.timeout(Duration::from_secs(TTL));
    let left = recv_until(&mut stay, "peer_left", |m| m["type"] == "peer_left");
    assert_eq!(left["peer_id"], "going");
    assert!(t.elapsed() < Duration::from_secs(TTL), "{:?}", t.elapsed());
    assert!(b
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

#[test]
fn while_redis_is_away_stream_actions_are_refused_then_members_closed() {
    let mut redis = Redis::start();
    let db = unique_db("t");
    // A grace period (NODE_TTL_SECONDS / 3) long enough that a loaded
    // machine sends and reads the refused broadcast inside it.
    const OUT_TTL: u64 = 12;
    let a = node_with_ttl(&redis, &db, "out-a", "127.0.0.1", OUT_TTL);
    wait_ready(&[&a]);
    create("OUT1", "host-out", &a, &[]);
    let mut m = a.ws();
    join(&mut m, "OUT1", "member");
    // `room_info` comes before Redis has taken the join's `peer_joined`; a
    // join whose announcement Redis never took is refused after the fact
    // (`Service unavailable`, then 1013: its presence is unknown), which
    // is not what this test is about. Redis goes once it has the join.
    wait_until("the join published", Duration::from_secs(5), || {
        let m = http(a.addr, "GET", "/metrics", &[], b"").text();
        metric(&m, "sync_server_cluster_published_total") >= 1
            && metric(&m, "sync_server_cluster_publishes_in_flight") == 0
    });
    // Taken before the kill: the node may see Redis go before kill()
    // returns.
    let killed = Instant::now();
    redis.kill();
    wait_until("readyz 503", Duration::from_secs(5), || {
        ready(a.addr) == 503
    });
    m.send(json!({"action":"broadcast","data":"lost?"}));
    // The broadcast is refused, never delivered; then, and not before the
    // grace period (NODE_TTL_SECONDS / 3) has run out, the member is closed
    // with 1013.
    let grace = Duration::from_secs(OUT_TTL / 3);
    m.timeout(Duration::from_secs(OUT_TTL + 5));
    let mut refused = false;
    loop {
        match m.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "error", "nothing is delivered meanwhile: {v}");
                assert_eq!(v["message"], "Service unavailable");
                refused = true;
            }
            Ok(tungstenite::Message::Close(f)) => {
                let took = killed.elapsed();
                let f = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                assert_eq!(
                    f.as_ref().map(|f| f.0),
                    Some(1013),
                    "{f:?}; log:\n{}",
                    a.log()
                );
                assert!(
                    refused && took >= grace,
                    "closed ({f:?}) after {took:?}, refusal heard: {refused}; log:\n{}",
                    a.log()
                );
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("waiting for the refusal and the 1013 close: {e}"),
        }
    }
    // Redis back (empty: no persistence): the node serves again.
    redis.spawn();
    wait_ready(&[&a]);
    let mut again = a.ws();
    let info = join(&mut again, "OUT1", "member");
    assert!(info["seq"].as_u64().is_some());
    let mut other = a.ws();
    join(&mut other, "OUT1", "other");
    let j = recv_until(&mut again, "peer_joined", |v| v["type"] == "peer_joined");
    assert_eq!(j["peer"]["id"], "other");
}

#[test]
fn lost_pubsub_messages_are_read_back_or_members_re_join() {
    let redis = Redis::start();
    let db = unique_db("t");
    let a = node(&redis, &db, "gap-a", "127.0.0.1");
    let b = node(&redis, &db, "gap-b", "127.0.0.2");
    wait_ready(&[&a, &b]);
    create("GAP1", "host-gap", &a, &[&b]);
    let mut listen = a.ws();
    join(&mut listen, "GAP1", "listen");
    let mut sender = b.ws();
    join(&mut sender, "GAP1", "sender");
    let first = recv_until(&mut listen, "sender joined", |m| m["type"] == "peer_joined");
    let mut last = first["seq"].as_u64().unwrap();
    let mut received: HashMap<String, u64> = HashMap::new();
    let mut refused = 0;
    let mut closed = false;
    const ROUNDS: usize = 5;
    const PER_ROUND: usize = 20;
    for round in 0..ROUNDS {
        // Cut every subscriber off, then publish while they come back:
        // the sender's node refuses what it cannot stand behind, the
        // listener's node reads back what it missed.
        let r = redis.command("CLIENT KILL TYPE pubsub").unwrap();
        assert!(r.starts_with(':'), "{r}");
        for i in 0..PER_ROUND {
            sender.send(json!({"action":"broadcast","data":format!("r{round}m{i}")}));
            std::thread::sleep(Duration::from_millis(2));
        }
        listen.timeout(Duration::from_millis(1500));
        loop {
            match listen.ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    let s = v["seq"].as_u64().unwrap();
                    assert_eq!(s, last + 1, "a gap: {v}");
                    last = s;
                    received.insert(v["data"].as_str().unwrap().to_owned(), s);
                }
                Ok(tungstenite::Message::Close(f)) => {
                    assert_eq!(f.map(|f| u16::from(f.code)), Some(1013));
                    closed = true;
                    break;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break
                }
                Err(e) => panic!("{e}; node a log:\n{}", a.log()),
            }
        }
        sender.timeout(Duration::from_millis(300));
        while let Ok(m) = sender.ws.read() {
            if let tungstenite::Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" {
                    assert_eq!(v["message"], "Service unavailable");
                    refused += 1;
                }
            }
        }
        if closed {
            break;
        }
    }
    eprintln!("delivered {}, refused {refused}", received.len());
    assert!(
        closed || received.len() + refused == ROUNDS * PER_ROUND,
        "delivered {} + refused {refused}",
        received.len()
    );
    assert!(!received.is_empty());
    let h = http(a.addr, "GET", "/health", &[], b"").json();
    assert_eq!(h["cluster"]["broker"], "ok", "{h}");
}

#[test]
fn cluster_mode_refuses_a_store_that_is_not_shared() {
    let out = Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("ROOM_STORE", "memory")
        .env("REDIS_URL", "redis://127.0.0.1:1/0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let mut err = String::new();
    out.stderr.as_slice().read_to_string(&mut err).unwrap();
    assert!(
        err.contains("REDIS_URL") && err.contains("ROOM_STORE=mongodb"),
        "{err}"
    );
}

/// Debian's HAProxy running deploy/cluster/haproxy.cfg with this test's
/// addresses; killed on drop.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Haproxy {
    fn start(nodes: &[SocketAddr]) -> Haproxy {
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/cluster/haproxy.cfg"
        ))
        .unwrap();
        let port = free_port();
        let mut cfg = String::new();
        let mut servers_written = false;
        for line in example.lines() {
            let t = line.trim_start();
            if t.starts_with("maxconn ") {
                // Within this machine's open-file limit.
                cfg.push_str("    maxconn 500\n");
            } else if t.starts_with("bind ") {
                cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
            } else if t.starts_with("server ") {
                if !servers_written {
                    for (i, a) in nodes.iter().enumerate() {
                        cfg.push_str(&format!("    server node{i} {a} check\n"));
                    }
                    servers_written = true;
                }
            } else {
                cfg.push_str(line);
                cfg.push('\n');
            }
        }
        assert!(servers_written, "the example names no servers");
        let dir = TempDir::new("haproxy");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is required for the cluster tests (tools/test.sh installs it)");
        let h = Haproxy {
            child,
            port,
            _dir: dir,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until("haproxy to answer", Duration::from_secs(10), || {
            TcpStream::connect(addr).is_ok() && http(addr, "GET", "/readyz", &[], b"").status == 200
        });
        h
    }

    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_room_works_through_haproxy_round_robin() {
    let redis = Redis::start();
    let db = unique_db("t");
    let a = node(&redis, &db, "lb-a", "127.0.0.1");
    let b = node(&redis, &db, "lb-b", "127.0.0.2");
    wait_ready(&[&a, &b]);
    create("LB1", "host-lb", &a, &[&b]);
    let lb = Haproxy::start(&[a.addr, b.addr]);
    // Round-robin puts consecutive clients on different nodes.
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(lb.addr())).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        join(c, "LB1", &format!("lb{i}"));
    }
    let local = |n: &TestServer| {
        http(n.addr, "GET", "/health", &[], b"").json()["connections"]
            .as_u64()
            .unwrap()
    };
    assert!(
        local(&a) >= 2 && local(&b) >= 2,
        "{} / {}",
        local(&a),
        local(&b)
    );
    // Everyone sees the last joiner's message, with the same number.
    clients[3].send(json!({"action":"broadcast","data":"through the proxy"}));
    let mut seqs = Vec::new();
    for c in clients.iter_mut().take(3) {
        let m = recv_until(c, "data", |m| m["type"] == "data");
        assert_eq!(m["data"], "through the proxy");
        assert_eq!(m["from"], "lb3");
        seqs.push(m["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] == w[1]), "{seqs:?}");
    // Every client saw every later joiner, wherever it landed.
    wait_until(
        "every peer listed through the proxy",
        Duration::from_secs(5),
        || {
            let info = http(lb.addr(), "GET", "/api/rooms/LB1", &[], b"").json();
            peers_of(&info) == ["lb0", "lb1", "lb2", "lb3"]
        },
    );
}

#[test]
fn a_rolling_restart_keeps_the_room_and_its_document() {
    let redis = Redis::start();
    let db = unique_db("t");
    let mut a = node(&redis, &db, "roll-a", "127.0.0.1");
    let mut b = node(&redis, &db, "roll-b", "127.0.0.2");
    wait_ready(&[&a, &b]);
    create("ROLL1", "host-roll", &a, &[&b]);
    let mut host = a.ws();
    host.join("ROLL1", "host-roll", true);
    host.send(json!({"action":"sync_document","document":"state-1"}));
    let mut guest = b.ws();
    join(&mut guest, "ROLL1", "guest");
    let doc_of = |c: &mut Client| {
        c.send(json!({"action":"request_sync"}));
        // The answer carries no seq (a stream event before it would).
        recv_until(c, "document", |m| {
            m["type"] == "document_sync" && m["seq"].is_null()
        })["document"]
            .clone()
    };
    wait_until("B holds the document", Duration::from_secs(5), || {
        doc_of(&mut guest) == "state-1"
    });
    for round in 0..2 {
        // Restart A: its host moves to B, then A comes back.
        a.signal(libc::SIGTERM);
        assert_eq!(host.expect_close(), Some(1001));
        assert!(a
            .wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success()));
        let mut moved = b.ws();
        moved.join("ROLL1", "host-roll", true);
        assert_eq!(doc_of(&mut moved), format!("state-{}", round + 1));
        moved.send(json!({"action":"sync_document","document":format!("state-{}", round + 2)}));
        let want = format!("state-{}", round + 2);
        recv_until(&mut guest, "new document", |m| {
            m["type"] == "document_sync" && m["document"] == want.as_str()
        });
        a = node(&redis, &db, "roll-a", "127.0.0.1");
        wait_ready(&[&a]);
        // Then restart B: everyone moves to A.
        b.signal(libc::SIGTERM);
        assert_eq!(moved.expect_close(), Some(1001));
        assert_eq!(guest.expect_close(), Some(1001));
        assert!(b
            .wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success()));
        host = a.ws();
        host.join("ROLL1", "host-roll", true);
        assert_eq!(doc_of(&mut host), format!("state-{}", round + 2));
        b = node(&redis, &db, "roll-b", "127.0.0.2");
        wait_ready(&[&b]);
        guest = b.ws();
        join(&mut guest, "ROLL1", "guest");
        assert_eq!(doc_of(&mut guest), format!("state-{}", round + 2));
        host.send(json!({"action":"sync_document","document":format!("state-{}", round + 2)}));
    }
}
