//! Deployment contract of the `sync-server` binary, tested on the real
//! process exactly as a container runtime or systemd drives it:
//! `sync-server healthcheck` exit codes, the `NOTIFY_SOCKET` protocol
//! (READY=1 after bind, WATCHDOG=1 pings, STOPPING=1 on SIGTERM, exit 0), and
//! running as an unprivileged user (what the distroless `nonroot` image does).
//!
//! The binary is the one Cargo built for this test run; set `SYNC_SERVER_BIN`
//! to test another build (e.g. `target/release/sync-server`).

use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(20);

fn server_bin() -> PathBuf {
    std::env::var_os("SYNC_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sync-server")))
}

/// A port that was free a moment ago (bind to :0, read it, release it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let mut n = [0u8; 8];
        getrandom::fill(&mut n).unwrap();
        let p = std::env::temp_dir().join(format!(
            "sync-deploy-{tag}-{}-{}",
            std::process::id(),
            u64::from_le_bytes(n)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process; SIGKILLed on drop if still running. Its stderr goes to a
/// file so that a failing assertion can show the log.
struct Server {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Server {
    /// `configure` adds env, uid, etc. to a command that already has a clean
    /// environment with `HOST=127.0.0.1` and `PORT=port`.
    fn spawn(bin: &Path, port: u16, configure: impl FnOnce(&mut Command)) -> Server {
        let dir = TempDir::new("srv");
        let log = dir.path().join("stderr.log");
        // The room store's directory, writable by whichever user a case
        // runs the server as.
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut cmd = Command::new(bin);
        base_env(&mut cmd, port);
        cmd.env("DATA_DIR", &data);
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        configure(&mut cmd);
        let child = cmd.spawn().expect("spawn sync-server");
        Server {
            child,
            log,
            _dir: dir,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the port accepts TCP connections; panics (with the log)
    /// if the process exits first or it takes too long.
    fn wait_listening(&mut self, port: u16) {
        let end = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("server exited early ({st}); log:\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < end,
                "server not listening on {port} after {START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A clean environment: nothing from the test runner's (no MONGODB_URI,
/// NOTIFY_SOCKET, WATCHDOG_* leaking in), only what the case sets.
fn base_env(cmd: &mut Command, port: u16) {
    cmd.env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string());
}

/// Runs `sync-server healthcheck` against `port`; returns (exit code, stderr).
fn healthcheck(bin: &Path, port: u16, configure: impl FnOnce(&mut Command)) -> (i32, String) {
    let mut cmd = Command::new(bin);
    base_env(&mut cmd, port);
    cmd.arg("healthcheck")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    configure(&mut cmd);
    let started = Instant::now();
    let out = cmd.output().expect("run sync-server healthcheck");
    // The probe's own timeouts are 2 s connect/read and 5 s in all.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "healthcheck took {:?}",
        started.elapsed()
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn healthcheck_exit_codes() {
    let bin = server_bin();
    let port = free_port();
    let mut srv = Server::spawn(&bin, port, |_| {});
    srv.wait_listening(port);

    let (code, err) = healthcheck(&bin, port, |_| {});
    assert_eq!(
        code,
        0,
        "healthy server: stderr {err:?}; log:\n{}",
        srv.log()
    );

    // Nothing listens on a port we just released.
    let dead = free_port();
    let (code, err) = healthcheck(&bin, dead, |_| {});
    assert_eq!(code, 1, "dead port must fail");
    assert!(
        !err.trim().is_empty(),
        "a failure explains itself on stderr"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err:?}");

    // A port that is not a port is a failure too, not a panic.
    let mut cmd = Command::new(&bin);
    let out = cmd
        .env_clear()
        .env("PORT", "not-a-port")
        .arg("healthcheck")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    srv.signal(libc::SIGTERM);
    let st = srv.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "exit after SIGTERM: {st:?}; log:\n{}",
        srv.log()
    );
}

/// Receives notifications until one satisfies `want`; returns everything seen.
fn recv_until(sock: &UnixDatagram, limit: Duration, want: impl Fn(&str) -> bool) -> Vec<String> {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(&want);
                seen.push(msg);
                if hit {
                    return seen;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(e) => panic!("recv on notify socket: {e}"),
        }
    }
    panic!("notification not received within {limit:?}; got {seen:?}");
}

#[test]
fn notify_ready_watchdog_stopping_and_clean_exit() {
    let bin = server_bin();
    let port = free_port();
    let dir = TempDir::new("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();

    // systemd sets WATCHDOG_PID to the main PID, which a test only knows
    // after spawning; `exec` from a shell keeps the shell's PID, so `$$` is
    // exactly the server's PID.
    let mut srv = Server::spawn(Path::new("/bin/sh"), port, |cmd| {
        cmd.arg("-c")
            .arg(r#"WATCHDOG_PID=$$ exec "$0""#)
            .arg(&bin)
            .env("NOTIFY_SOCKET", &sock_path)
            // 2 s period: the server pings every second.
            .env("WATCHDOG_USEC", "2000000");
    });

    let seen = recv_until(&sock, START_TIMEOUT, |l| l == "READY=1");
    assert!(!seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");
    // READY means bound: a connection must succeed at once, no retry.
    TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("READY=1 before the port accepts: {e}; log:\n{}", srv.log()));

    recv_until(&sock, Duration::from_secs(5), |l| l == "WATCHDOG=1");

    srv.signal(libc::SIGTERM);
    recv_until(&sock, Duration::from_secs(10), |l| l == "STOPPING=1");
    let st = srv.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "exit status after SIGTERM: {st:?}; log:\n{}",
        srv.log()
    );
}

fn user_exists(uid: u32) -> bool {
    // SAFETY: getpwuid returns a pointer into static storage or null; we only
    // test it for null, and no other thread of this test calls it.
    unsafe { !libc::getpwuid(uid).is_null() }
}

fn proc_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn runs_and_passes_healthcheck_as_unprivileged_user() {
    const NOBODY: u32 = 65534;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !user_exists(NOBODY) {
        eprintln!("skipped: needs root and a uid {NOBODY} (nobody) to switch to");
        return;
    }
    // Like the image, run a copy from a world-readable place: the build
    // directory may sit under a path that only root can traverse.
    let dir = TempDir::new("nonroot");
    let bin = dir.path().join("sync-server");
    std::fs::copy(server_bin(), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    use std::os::unix::process::CommandExt;
    let port = free_port();
    let mut srv = Server::spawn(&bin, port, |cmd| {
        cmd.uid(NOBODY).gid(NOBODY);
    });
    srv.wait_listening(port);
    assert_eq!(
        proc_uid(srv.pid()),
        Some(NOBODY),
        "server must not run as root"
    );

    let (code, err) = healthcheck(&bin, port, |cmd| {
        cmd.uid(NOBODY).gid(NOBODY);
    });
    assert_eq!(code, 0, "stderr {err:?}; log:\n{}", srv.log());

    srv.signal(libc::SIGTERM);
    let st = srv.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "{st:?}; log:\n{}",
        srv.log()
    );
}
