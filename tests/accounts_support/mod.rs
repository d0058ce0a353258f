//! Helpers for the accounts integration tests: the accounts layer run
//! in-process against the real database (a `mio::Poll` + `Waker` stand in
//! for the server loop), a SecantusDB daemon of a test's own (for the outage
//! test), and raw access to the `users` collection for assertions.
//!
//! The database comes from `tools/with-secantus.sh`, which exports
//! `SYNC_TEST_MONGODB_URI` and `SYNC_TEST_SECANTUS_BIN`. Without them these
//! helpers panic: the tests must fail, never skip.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};
use sync_server::accounts::{Accounts, AccountsConfig, AuthRequest, HttpReply, Job, Reply};

pub const JWT_SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";
pub const SETUP_TOKEN: &str = "setup-token-for-tests-9f8e7d6c";

const RUN_VIA: &str = "run the tests through tools/with-secantus.sh (tools/test.sh does), \
which starts a SecantusDB daemon and exports SYNC_TEST_MONGODB_URI and SYNC_TEST_SECANTUS_BIN";

/// The shared test database. Panics (fails the test) when it is not set.
pub fn mongo_uri() -> String {
    match std::env::var("SYNC_TEST_MONGODB_URI") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "SYNC_TEST_MONGODB_URI is not set: the accounts tests need a real database; {RUN_VIA}"
        ),
    }
}

pub fn secantus_bin() -> String {
    match std::env::var("SYNC_TEST_SECANTUS_BIN") {
        Ok(b) if !b.is_empty() => b,
        _ => panic!("SYNC_TEST_SECANTUS_BIN is not set; {RUN_VIA}"),
    }
}

/// A database name no other test (or earlier run) uses.
pub fn unique_db(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(30)
        .collect();
    format!("t_{name}_{}_{n}_{nanos:x}", std::process::id())
}

/// An answer from the accounts layer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub json: Value,
    pub raw: String,
    pub retry_after: Option<u64>,
    pub allow: Option<&'static str>,
    pub elapsed: Duration,
}

impl Resp {
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
    pub fn token(&self) -> String {
        self.json["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {}", self.raw))
            .to_string()
    }
}

/// The accounts layer in-process: real worker pool, real database.
pub struct Harness {
    pub accounts: Option<Accounts>,
    poll: Poll,
    events: Events,
    next_tag: u64,
    ready: HashMap<u64, Reply>,
    /// Strings that must never appear in any answer (passwords, hashes).
    pub secrets: Vec<String>,
    pub uri: String,
    pub db_name: String,
}

pub fn env_lookup(pairs: Vec<(String, String)>) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.into_iter().collect();
    move |k| map.get(k).cloned()
}

impl Harness {
    /// Accounts on a fresh database of the shared daemon. `env` adds to or
    /// overrides MONGODB_URI, DB_NAME and JWT_SECRET.
    pub fn start(name: &str, env: &[(&str, &str)]) -> Harness {
        Harness::start_on(&mongo_uri(), &unique_db(name), env)
    }

    pub fn start_on(uri: &str, db_name: &str, env: &[(&str, &str)]) -> Harness {
        let mut h = Harness::start_no_wait(uri, db_name, env);
        h.wait_ready(Duration::from_secs(30));
        h
    }

    pub fn start_no_wait(uri: &str, db_name: &str, env: &[(&str, &str)]) -> Harness {
        Harness::start_with(uri, db_name, env, |_| {})
    }

    /// Like [`start_no_wait`](Self::start_no_wait), with a last word on the
    /// configuration (e.g. rate limits slower than the variables allow).
    pub fn start_with(
        uri: &str,
        db_name: &str,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut AccountsConfig),
    ) -> Harness {
        let mut pairs: Vec<(String, String)> = vec![
            ("MONGODB_URI".into(), uri.into()),
            ("DB_NAME".into(), db_name.into()),
            ("JWT_SECRET".into(), JWT_SECRET.into()),
        ];
        for (k, v) in env {
            pairs.retain(|(pk, _)| pk != k);
            pairs.push((k.to_string(), v.to_string()));
        }
        let mut cfg = AccountsConfig::from_lookup(env_lookup(pairs))
            .expect("config")
            .expect("accounts enabled");
        tweak(&mut cfg);
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let accounts = Accounts::start(cfg, waker).expect("Accounts::start");
        Harness {
            accounts: Some(accounts),
            poll,
            events: Events::with_capacity(16),
            next_tag: 1,
            ready: HashMap::new(),
            secrets: Vec::new(),
            uri: uri.into(),
            db_name: db_name.into(),
        }
    }

    pub fn accounts(&self) -> &Accounts {
        self.accounts.as_ref().unwrap()
    }

    /// Until the routes stop answering 503 (connected, indexes made,
    /// bootstrap admin handled).
    pub fn wait_ready(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let r = self.get("/api/auth/me").send();
            if r.status != 503 {
                assert_eq!(r.status, 401, "{}", r.raw);
                return;
            }
            assert!(
                Instant::now() < end,
                "accounts not ready after {limit:?}: {}",
                r.raw
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Submits a job; panics if the queue refuses it.
    pub fn submit(&mut self, job: Job) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        if self.accounts().submit(tag, job).is_err() {
            panic!("queue refused the job");
        }
        tag
    }

    /// `Some(tag)` if the queue took the job.
    pub fn try_submit(&mut self, job: Job) -> Option<u64> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.accounts().submit(tag, job).ok().map(|_| tag)
    }

    /// Runs the "loop" until the reply for `tag` arrives.
    pub fn wait(&mut self, tag: u64, limit: Duration) -> Reply {
        let end = Instant::now() + limit;
        loop {
            let accounts = self.accounts.as_ref().unwrap();
            let ready = &mut self.ready;
            accounts.drain(|t, r| {
                assert!(ready.insert(t, r).is_none(), "two replies for tag {t}");
            });
            if let Some(r) = self.ready.remove(&tag) {
                return r;
            }
            let now = Instant::now();
            assert!(now < end, "no reply for tag {tag} within {limit:?}");
            self.poll.poll(&mut self.events, Some(end - now)).unwrap();
        }
    }

    pub fn authorize(&mut self, token: &str) -> bool {
        let tag = self.submit(Job::Authorize {
            token: token.to_string(),
        });
        match self.wait(tag, Duration::from_secs(10)) {
            Reply::Authorized(p) => p.is_some(),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn req(&mut self, method: &str, path: &str) -> Req<'_> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        Req {
            h: self,
            req: AuthRequest {
                method: method.into(),
                path,
                query,
                authorization: None,
                setup_token: None,
                body: Vec::new(),
                client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            },
        }
    }
    pub fn get(&mut self, path: &str) -> Req<'_> {
        self.req("GET", path)
    }
    pub fn post(&mut self, path: &str) -> Req<'_> {
        self.req("POST", path)
    }
    pub fn put(&mut self, path: &str) -> Req<'_> {
        self.req("PUT", path)
    }
    pub fn delete(&mut self, path: &str) -> Req<'_> {
        self.req("DELETE", path)
    }

    /// Checks an answer against the secrets this test has used.
    pub fn check_no_secrets(&self, raw: &str) {
        assert!(!raw.contains("$argon2"), "a password hash leaked: {raw}");
        assert!(
            !raw.contains("password_hash"),
            "a password hash field leaked: {raw}"
        );
        assert!(
            !raw.contains("token_version"),
            "internal field leaked: {raw}"
        );
        for s in &self.secrets {
            assert!(
                !raw.contains(s.as_str()),
                "a secret leaked into an answer: {raw}"
            );
        }
    }

    /// Logs in and returns the token (asserting success).
    pub fn login(&mut self, email: &str, password: &str) -> String {
        let r = self
            .post("/api/auth/login")
            .json(json!({"email": email, "password": password}))
            .send();
        assert_eq!(r.status, 200, "login {email}: {}", r.raw);
        r.token()
    }

    /// Creates the first user (an admin) with the setup token and logs in.
    pub fn first_admin(&mut self, email: &str, password: &str) -> String {
        self.secrets.push(password.to_string());
        let r = self
            .post("/api/auth/invite")
            .setup_token(SETUP_TOKEN)
            .json(json!({"email": email, "password": password}))
            .send();
        assert_eq!(r.status, 200, "first user: {}", r.raw);
        self.login(email, password)
    }

    /// An admin invites a user with a password; returns the user's token.
    pub fn add_user(&mut self, admin: &str, email: &str, password: &str, role: &str) -> String {
        self.secrets.push(password.to_string());
        let r = self
            .post("/api/auth/invite")
            .bearer(admin)
            .json(json!({"email": email, "password": password, "role": role}))
            .send();
        assert_eq!(r.status, 200, "invite {email}: {}", r.raw);
        self.login(email, password)
    }

    /// The `users` collection as stored.
    pub fn raw_users(&self) -> Vec<Document> {
        let client = mongodb::sync::Client::with_uri_str(&self.uri).unwrap();
        let coll = client
            .database(&self.db_name)
            .collection::<Document>("users");
        coll.find(doc! {})
            .run()
            .unwrap()
            .map(|d| d.unwrap())
            .collect()
    }

    /// Changes a stored user behind the server's back (e.g. to age it).
    pub fn raw_update_user(&self, email: &str, update: Document) {
        let client = mongodb::sync::Client::with_uri_str(&self.uri).unwrap();
        let coll = client
            .database(&self.db_name)
            .collection::<Document>("users");
        let r = coll
            .update_one(doc! { "email": email }, update)
            .run()
            .unwrap();
        assert_eq!(r.matched_count, 1, "no stored user {email}");
    }

    pub fn raw_user(&self, email: &str) -> Document {
        self.raw_users()
            .into_iter()
            .find(|d| d.get_str("email").ok() == Some(email))
            .unwrap_or_else(|| panic!("no stored user {email}"))
    }

    pub fn shutdown(&mut self) {
        if let Some(a) = self.accounts.take() {
            a.shutdown();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown();
        // Leave no test database behind (best effort: the daemon may be gone).
        if let Ok(mut opts) = mongodb::options::ClientOptions::parse(&self.uri).run() {
            opts.server_selection_timeout = Some(Duration::from_millis(500));
            if let Ok(c) = mongodb::sync::Client::with_options(opts) {
                let _ = c.database(&self.db_name).drop().run();
            }
        }
    }
}

pub struct Req<'a> {
    h: &'a mut Harness,
    req: AuthRequest,
}

impl Req<'_> {
    pub fn bearer(mut self, token: &str) -> Self {
        self.req.authorization = Some(format!("Bearer {token}"));
        self
    }
    pub fn authorization(mut self, raw: &str) -> Self {
        self.req.authorization = Some(raw.to_string());
        self
    }
    pub fn setup_token(mut self, t: &str) -> Self {
        self.req.setup_token = Some(t.to_string());
        self
    }
    pub fn json(mut self, v: Value) -> Self {
        self.req.body = v.to_string().into_bytes();
        self
    }
    pub fn body(mut self, b: &[u8]) -> Self {
        self.req.body = b.to_vec();
        self
    }
    pub fn ip(mut self, ip: &str) -> Self {
        self.req.client_ip = ip.parse().unwrap();
        self
    }
    pub fn send(self) -> Resp {
        self.send_within(Duration::from_secs(30))
    }
    /// Hands the request to the workers without waiting; the tag is for
    /// [`Harness::wait`]. For requests that must be in flight together.
    pub fn submit(self) -> u64 {
        self.h.submit(Job::Http(self.req))
    }
    pub fn send_within(self, limit: Duration) -> Resp {
        let t0 = Instant::now();
        let tag = self.h.submit(Job::Http(self.req));
        let reply = self.h.wait(tag, limit);
        let elapsed = t0.elapsed();
        let Reply::Http(HttpReply {
            status,
            body,
            retry_after,
            allow,
        }) = reply
        else {
            panic!("expected an HTTP reply, got {reply:?}");
        };
        let raw = String::from_utf8(body).expect("UTF-8 body");
        let json: Value =
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"));
        // Every answer: JSON, errors in the §1 shape, no secrets.
        if status >= 400 {
            assert_eq!(json["success"], false, "{raw}");
            assert!(
                json["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{raw}"
            );
        } else {
            assert_eq!(json["success"], true, "{raw}");
        }
        self.h.check_no_secrets(&raw);
        Resp {
            status,
            json,
            raw,
            retry_after,
            allow,
            elapsed,
        }
    }
}

/// A SecantusDB daemon owned by one test (so stopping it hurts no other
/// test). Stopped and its storage removed on drop.
pub struct Daemon {
    bin: String,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether process `pid` holds the listening IPv4 socket on loopback `port`
/// (from `/proc/net/tcp` and the process's file descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1].ends_with(&local) && f[3] == "0A")
                .then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|t| inodes.iter().any(|i| t.as_os_str() == i.as_str()))
}

/// Whether every thread of `pid` is in the stopped state (`T`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
            .unwrap_or(false)
    })
}

impl Daemon {
    pub fn start() -> Daemon {
        let bin = secantus_bin();
        let dir = std::env::temp_dir().join(format!(
            "accounts-test-secantus-{}-{}",
            std::process::id(),
            unique_db("d")
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("secantusd.toml"), "").unwrap();
        let mut d = Daemon {
            bin,
            port: free_port(),
            dir,
            child: None,
        };
        d.launch();
        d
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("secantusd.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .current_dir(&self.dir)
            .arg("--config")
            .arg(self.dir.join("secantusd.toml"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--storage-path",
            ])
            .arg(self.dir.join("data"))
            .args(["--log-level", "WARNING"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin));
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        // The port was free when it was drawn, but another test's daemon
        // (stopped for an outage, restarting) may hold it now: only a
        // listener that is our own child's counts.
        let pid = self.child.as_ref().unwrap().id();
        while !(TcpStream::connect(("127.0.0.1", self.port)).is_ok() && listens_on(pid, self.port))
        {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("secantusd-py exited ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "secantusd-py did not listen within 30 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("secantusd.log")).unwrap_or_default()
    }

    /// SIGSTOP: the daemon keeps its connections open and answers nothing,
    /// like a database host that hangs.
    pub fn freeze(&self) {
        let child = self.child.as_ref().expect("daemon running");
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGSTOP);
        }
        // kill(2) returns before every thread has stopped; a query sent in
        // that gap could still be answered.
        let end = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(child.id()) {
            assert!(Instant::now() < end, "daemon did not stop on SIGSTOP");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGCONT after [`Daemon::freeze`].
    pub fn thaw(&self) {
        let child = self.child.as_ref().expect("daemon running");
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGCONT);
        }
    }

    /// SIGTERM, then SIGKILL after 15 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > end {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
    }

    /// Starts again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds an HS256 token by hand (for expired / forged-claims cases).
pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn b64url(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes a JWT's payload without checking anything.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in payload.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => continue,
        } as u32;
        bits = bits << 6 | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    serde_json::from_slice(&out).unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
