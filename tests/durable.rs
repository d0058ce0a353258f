//! Durable rooms (protocol §5) against the real binary and real stores:
//! every scenario runs on the `file` store (a temporary `DATA_DIR`) and on
//! the `mongodb` store (a database of its own on the SecantusDB that
//! `tools/with-secantus.sh` starts; without it those fail, saying so).
//! Restarts by SIGTERM and SIGKILL, large documents, retention across
//! restarts, outages, start-up refusals.

#[cfg(feature = "accounts")]
mod accounts_support;
mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Where a scenario keeps its rooms; the same across its restarts.
enum Store {
    File(TempDir),
    #[cfg(feature = "accounts")]
    Mongo {
        uri: String,
        db: String,
    },
}

impl Store {
    fn file(tag: &str) -> Store {
        Store::File(TempDir::new(tag))
    }

    #[cfg(feature = "accounts")]
    fn mongo(tag: &str) -> Store {
        Store::Mongo {
            uri: accounts_support::mongo_uri(),
            db: accounts_support::unique_db(tag),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Store::File(_) => "file",
            #[cfg(feature = "accounts")]
            Store::Mongo { .. } => "mongodb",
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        match self {
            Store::File(dir) => vec![("DATA_DIR".into(), dir.as_str().into())],
            #[cfg(feature = "accounts")]
            Store::Mongo { uri, db } => vec![
                ("ROOM_STORE".into(), "mongodb".into()),
                ("MONGODB_URI".into(), uri.clone()),
                ("DB_NAME".into(), db.clone()),
                ("JWT_SECRET".into(), accounts_support::JWT_SECRET.into()),
            ],
        }
    }
}

/// Starts a server on `store` with `extra` settings.
fn start(store: &Store, extra: &[(&str, &str)]) -> TestServer {
    let owned = store.env();
    let mut env: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend_from_slice(extra);
    TestServer::start(&env)
}

/// Each scenario, once per store.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod file {
            $(#[test]
            fn $name() {
                super::$name(super::Store::file(stringify!($name)))
            })*
        }
        #[cfg(feature = "accounts")]
        mod mongodb {
            $(#[test]
            fn $name() {
                super::$name(super::Store::mongo(stringify!($name)))
            })*
        }
    };
}

on_both_stores!(
    sigterm_restart_keeps_room_host_and_document,
    sigkill_after_the_save_window_keeps_the_document,
    a_16_mib_document_round_trips,
    an_idle_expired_room_stays_gone_after_a_restart,
    an_empty_rooms_clock_survives_a_restart,
    concurrent_requests_for_a_stored_room_all_find_it,
);

fn stop(mut s: TestServer) -> String {
    s.signal(libc::SIGTERM);
    let st = s.wait_exit(Duration::from_secs(15));
    assert!(
        st.is_some_and(|st| st.success()),
        "exit after SIGTERM: {st:?}; log:\n{}",
        s.log()
    );
    s.log()
}

fn kill(mut s: TestServer) {
    s.signal(libc::SIGKILL);
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
}

fn health(s: &TestServer) -> Value {
    let r = http(s.addr, "GET", "/health", &[], b"");
    assert_eq!(r.status, 200);
    r.json()
}

/// Waits until `/health` says every change is written.
fn wait_saved(s: &TestServer) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let h = health(s);
        if h["room_store"]["unsaved_rooms"] == 0 {
            return;
        }
        assert!(Instant::now() < end, "never saved: {h}; log:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Joins and returns every message up to and including `connected`, plus
/// the `document_sync` that follows it if `doc` is expected.
fn rejoin(s: &TestServer, code: &str, peer: &str, host: bool, doc: bool) -> (Value, Option<Value>) {
    let mut c = s.ws();
    c.send(json!({"action":"join","room_code":code,"peer_id":peer,"is_host":host}));
    let info = c.recv();
    assert_eq!(info["type"], "room_info", "{info}; log:\n{}", s.log());
    assert_eq!(c.recv()["type"], "connected");
    let d = doc.then(|| {
        let d = c.recv();
        assert_eq!(d["type"], "document_sync", "{d}");
        d
    });
    (info, d)
}

fn sigterm_restart_keeps_room_host_and_document(dir: Store) {
    // A save delay longer than the test: only the shutdown flush can save.
    let slow = [
        ("ROOM_SAVE_DELAY_MS", "600000"),
        ("ROOM_SAVE_MAX_DELAY_MS", "600000"),
    ];
    let s = start(&dir, &slow);
    let created = s.room("KEEP1", "host-secret-1");
    let mut host = s.ws();
    host.join("KEEP1", "host-secret-1", true);
    host.send(json!({"action":"sync_document","document":"{\"tasks\":[1,2,3]}"}));
    // A request_sync after it proves the document was taken.
    host.send(json!({"action":"request_sync"}));
    assert_eq!(host.recv()["document"], "{\"tasks\":[1,2,3]}");
    let h = health(&s);
    assert_eq!(h["room_store"]["kind"], dir.kind(), "{h}");
    assert_eq!(h["room_store"]["status"], "ok", "{h}");
    assert_eq!(h["room_store"]["unsaved_rooms"], 1, "{h}");
    let info = http(s.addr, "GET", "/api/rooms/KEEP1", &[], b"").json();
    stop(s);

    let s = start(&dir, &slow);
    // The host comes back first, as a browser reconnecting does.
    let (room_info, doc) = rejoin(&s, "KEEP1", "host-secret-1", true, true);
    assert_eq!(doc.unwrap()["document"], "{\"tasks\":[1,2,3]}");
    // The host is told its own id; the public id (rule 11) everyone else
    // sees is kept across the restart, never the secret.
    assert_eq!(room_info["host_id"], "host-secret-1");
    assert_ne!(info["host_id"], "host-secret-1");
    let again = http(s.addr, "GET", "/api/rooms/KEEP1", &[], b"").json();
    assert_eq!(again["host_id"], info["host_id"]);
    assert_eq!(again["created_at"], info["created_at"]);
    assert_eq!(again["has_document"], true);
    // The restore path of a browser host: same room, same ids.
    let r = s.room("KEEP1", "host-secret-1");
    assert_eq!(r["restored"], true, "{r}");
    assert_eq!(r["room_id"], created["room_id"]);
    assert_eq!(r["host_id"], created["host_id"]);
    assert_eq!(r["has_document"], true);
    stop(s);
}

fn sigkill_after_the_save_window_keeps_the_document(dir: Store) {
    let fast = [
        ("ROOM_SAVE_DELAY_MS", "100"),
        ("ROOM_SAVE_MAX_DELAY_MS", "300"),
    ];
    let s = start(&dir, &fast);
    s.room("KILL1", "h1");
    let mut host = s.ws();
    host.join("KILL1", "h1", true);
    host.send(json!({"action":"sync_document","document":"\"v1\""}));
    host.send(json!({"action":"request_sync"}));
    host.recv();
    wait_saved(&s);
    kill(s);

    let s = start(&dir, &fast);
    let (_, doc) = rejoin(&s, "KILL1", "h1", true, true);
    assert_eq!(doc.unwrap()["document"], "\"v1\"");

    // Inside the window: a burst of versions, killed at once. What comes
    // back is one whole version, never a mix.
    let mut host = s.ws();
    host.join("KILL1", "h1", true);
    host.recv(); // document_sync
    let versions: Vec<String> = (2..60)
        .map(|i| format!("\"v{i}-{}\"", "x".repeat(i * 1000)))
        .collect();
    for v in &versions {
        host.send(json!({"action":"sync_document","document":v}));
    }
    host.send(json!({"action":"request_sync"}));
    host.recv();
    kill(s);

    let s = start(&dir, &fast);
    let (_, doc) = rejoin(&s, "KILL1", "h1", true, true);
    let doc = doc.unwrap()["document"].as_str().unwrap().to_string();
    assert!(
        doc == "\"v1\"" || versions.contains(&doc),
        "a torn or unknown document: {}…",
        &doc[..doc.len().min(40)]
    );
    stop(s);
}

fn a_16_mib_document_round_trips(dir: Store) {
    let s = start(&dir, &[]);
    s.room("BIG1", "h1");
    let mut host = s.ws();
    host.join("BIG1", "h1", true);
    // The whole message stays within the default MAX_MESSAGE_BYTES (16 MiB).
    let inner = "d".repeat(16 * 1024 * 1024 - 100);
    let doc = format!("\"{inner}\"");
    let msg = format!(r#"{{"action":"sync_document","document":{doc}}}"#);
    assert!(msg.len() <= 16 * 1024 * 1024);
    host.send_text(&msg);
    host.send(json!({"action":"ping"}));
    assert_eq!(host.recv_type(), "pong");
    drop(host);
    stop(s);

    let s = start(&dir, &[]);
    let (_, got) = rejoin(&s, "BIG1", "h1", true, true);
    let got = got.unwrap();
    let got = got["document"].as_str().unwrap();
    assert_eq!(got.len(), inner.len());
    assert!(got == inner, "the document changed on the way");
    stop(s);
}

fn an_idle_expired_room_stays_gone_after_a_restart(dir: Store) {
    let idle = [("ROOM_IDLE_TIMEOUT_SECONDS", "1")];
    let s = start(&dir, &idle);
    // Expires while the server runs: removed from the store too.
    s.room("GONE1", "h1");
    let end = Instant::now() + Duration::from_secs(10);
    while http(s.addr, "GET", "/api/rooms/GONE1", &[], b"").status != 404 {
        assert!(Instant::now() < end, "room never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_saved(&s);
    // Expires while the server is down: its clock went on meanwhile.
    let created = Instant::now();
    s.room("GONE2", "h2");
    stop(s);
    while created.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(50));
    }

    let s = start(&dir, &idle);
    for code in ["GONE1", "GONE2"] {
        let r = http(s.addr, "GET", &format!("/api/rooms/{code}"), &[], b"");
        assert_eq!(r.status, 404, "{code}: {}", r.text());
        let mut c = s.ws();
        c.send(json!({"action":"join","room_code":code,"peer_id":"p"}));
        assert_eq!(c.recv()["message"], "Room not found");
    }
    // A room created under the same code is a new room.
    let fresh = s.room("GONE2", "other-host");
    assert!(fresh.get("restored").is_none(), "{fresh}");
    stop(s);
}

fn an_empty_rooms_clock_survives_a_restart(dir: Store) {
    let idle = [("ROOM_IDLE_TIMEOUT_SECONDS", "3")];
    let s = start(&dir, &idle);
    let created = Instant::now();
    s.room("CLOCK1", "h1");
    stop(s);
    let s = start(&dir, &idle);
    // Back on demand, still inside its 3 s.
    let r = http(s.addr, "GET", "/api/rooms/CLOCK1", &[], b"");
    if created.elapsed() < Duration::from_millis(2500) {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Gone 3 s after it emptied (its creation), not 3 s after the restart
    // or the lookup: within the contract's one second of slack.
    let end = Instant::now() + Duration::from_secs(10);
    while http(s.addr, "GET", "/api/rooms/CLOCK1", &[], b"").status != 404 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        created.elapsed() < Duration::from_millis(4200),
        "expired {:?} after it emptied",
        created.elapsed()
    );
    stop(s);
}

fn concurrent_requests_for_a_stored_room_all_find_it(dir: Store) {
    let s = start(&dir, &[]);
    s.room("SHARE1", "h1");
    stop(s);
    let s = start(&dir, &[]);
    let addr = s.addr;
    let threads: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    http(addr, "GET", "/api/rooms/SHARE1", &[], b"").status
                } else {
                    let mut c = Client::connect(addr);
                    c.send(json!({"action":"join","room_code":"SHARE1","peer_id":format!("p{i}")}));
                    match c.recv()["type"].as_str() {
                        Some("room_info") => 200,
                        _ => 500,
                    }
                }
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let h = health(&s);
    assert_eq!(h["rooms"], 1, "{h}");
    stop(s);
}

#[test]
fn memory_store_keeps_nothing() {
    let s = TestServer::start(&[("ROOM_STORE", "memory")]);
    s.room("MEM1", "h1");
    let h = health(&s);
    assert_eq!(
        h["room_store"],
        json!({"kind":"memory","status":"ok","unsaved_rooms":0,"oldest_unsaved_seconds":0})
    );
    stop(s);
    let s = TestServer::start(&[("ROOM_STORE", "memory")]);
    assert_eq!(http(s.addr, "GET", "/api/rooms/MEM1", &[], b"").status, 404);
}

#[test]
fn a_data_dir_that_cannot_be_used_stops_start_up() {
    let dir = TempDir::new("bad");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATA_DIR", &file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DATA_DIR") && err.contains(file.to_str().unwrap()),
        "{err}"
    );

    // A store another server holds open is refused, not started over.
    let s = TestServer::start(&[("DATA_DIR", dir.as_str())]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DATA_DIR") && err.contains(dir.as_str()),
        "{err}"
    );
    stop(s);
}

/// The database goes away (frozen, then stopped) while a host keeps
/// syncing: the room works from memory, `/health` counts the unsaved room,
/// and the change lands when the database is back and survives a SIGKILL.
#[cfg(feature = "accounts")]
#[test]
fn mongodb_outage_loses_nothing() {
    use accounts_support::{unique_db, Daemon};
    let mut daemon = Daemon::start();
    let store = Store::Mongo {
        uri: daemon.uri(),
        db: unique_db("outage"),
    };
    let fast = [
        ("ROOM_SAVE_DELAY_MS", "100"),
        ("ROOM_SAVE_MAX_DELAY_MS", "300"),
    ];
    let s = start(&store, &fast);
    s.room("DOWN1", "h1");
    let mut host = s.ws();
    host.join("DOWN1", "h1", true);
    host.send(json!({"action":"sync_document","document":"\"v1\""}));
    host.send(json!({"action":"request_sync"}));
    host.recv();
    wait_saved(&s);

    for (outage, version) in [("frozen", "\"v2\""), ("stopped", "\"v3\"")] {
        if outage == "frozen" {
            daemon.freeze();
        } else {
            daemon.stop();
        }
        host.send(json!({"action":"sync_document","document":version}));
        // The room goes on from memory: a guest joins and gets the change.
        let (_, doc) = rejoin(&s, "DOWN1", &format!("guest-{outage}"), false, true);
        assert_eq!(doc.unwrap()["document"], version);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let h = health(&s);
            let rs = &h["room_store"];
            if rs["status"] == "unavailable" && rs["unsaved_rooms"] == 1 {
                break;
            }
            assert!(Instant::now() < end, "{outage}: {h}");
            std::thread::sleep(Duration::from_millis(50));
        }
        if outage == "frozen" {
            daemon.thaw();
        } else {
            daemon.restart();
        }
        wait_saved(&s);
        assert_eq!(health(&s)["room_store"]["status"], "ok");
    }
    let public = http(s.addr, "GET", "/api/rooms/DOWN1", &[], b"").json()["host_id"].clone();
    kill(s);

    let s = start(&store, &fast);
    let (info, doc) = rejoin(&s, "DOWN1", "h1", true, true);
    assert_eq!(info["host_id"], "h1", "the host is told its own id");
    let again = http(s.addr, "GET", "/api/rooms/DOWN1", &[], b"").json()["host_id"].clone();
    assert_eq!(again, public, "the host's public id is kept");
    assert_eq!(doc.unwrap()["document"], "\"v3\"");
    // A room the store cannot be asked about is 503, never "Room not found".
    daemon.stop();
    let r = http(s.addr, "GET", "/api/rooms/ELSEWHERE", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "Room store unavailable");
    let mut c = s.ws();
    c.send(json!({"action":"join","room_code":"ELSEWHERE","peer_id":"p"}));
    assert_eq!(c.recv()["message"], "Room store unavailable");
    stop(s);
}
