//! systemd service notifications (`Type=notify`): readiness, stopping, status
//! text and watchdog pings, sent as one datagram each to `$NOTIFY_SOCKET`.
//!
//! Every function is a silent no-op when `NOTIFY_SOCKET` is unset (running by
//! hand, in Docker, under tests), and none of them can stall the event loop:
//! the datagram socket is non-blocking, so a wedged or slow service manager
//! costs us a dropped notification (logged at debug), never a stuck loop.
//!
//! The message vocabulary (`READY=1`, `STOPPING=1`, `STATUS=…`, `WATCHDOG=1`)
//! and the `WATCHDOG_USEC`/`WATCHDOG_PID` rules come from the `sd-notify`
//! crate; the send itself is done here because that crate's `notify` uses a
//! blocking socket and does not accept abstract (`@name`) socket addresses.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use sd_notify::NotifyState;

/// A listening socket the service manager handed over (socket activation:
/// `LISTEN_PID` names this process and `LISTEN_FDS` counts the sockets
/// from fd 3; `sd-notify` checks both and clears them). The first one is
/// served; `HOST` and `PORT` are then not used. Anything handed over that
/// is not a listening TCP socket is an error, not a silent fallback.
pub fn inherited_listener() -> io::Result<Option<std::net::TcpListener>> {
    use std::os::fd::FromRawFd;
    let Some(fd) = sd_notify::listen_fds()?.next() else {
        return Ok(None);
    };
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ACCEPTCONN writes one int into `listening`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || listening == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "LISTEN_FDS: fd 3 is not a listening socket",
        ));
    }
    // SAFETY: the service manager gave this descriptor to this process
    // (LISTEN_PID), and nothing else here owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    listener.local_addr()?;
    // SAFETY: F_SETFD on an open descriptor: not inherited by children.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(Some(listener))
}

/// Tells the service manager that start-up is complete (after the listener is
/// bound). systemd moves the unit to "active" on this.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// Tells the service manager that shutdown has begun (on SIGTERM/SIGINT), so
/// it does not mistake the drain period for a hang.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A one-line human status shown by `systemctl status`. Newlines would end the
/// assignment early, so they are replaced by spaces.
pub fn status(msg: &str) {
    let line: String = msg
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    send(&[NotifyState::Status(&line)]);
}

/// Watchdog keep-alive; call at least every [`watchdog_interval`].
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to call [`watchdog`]: half of `WATCHDOG_USEC` (the margin
/// `sd_watchdog_enabled(3)` recommends), or `None` when no watchdog is
/// configured for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

fn send(states: &[NotifyState<'_>]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if path.is_empty() {
        return;
    }
    let mut msg = String::new();
    for s in states {
        msg.push_str(&s.to_string());
        msg.push('\n');
    }
    if let Err(e) = send_to(&path, msg.as_bytes()) {
        // Debug only: a missing notification is not worth waking anyone up
        // for, and the message content is never sensitive anyway.
        log::debug!("sd_notify {:?} failed: {e}", msg.trim_end());
    }
}

fn send_to(path: &std::ffi::OsStr, msg: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;

    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract namespace socket (systemd may hand these to containers).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg, &addr)?;
    } else {
        sock.send_to(msg, path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("notification expected");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    // One test on purpose: NOTIFY_SOCKET and WATCHDOG_* are process-global, so
    // every case that touches them runs in sequence here.
    #[test]
    fn protocol_against_a_real_socket() {
        let dir = std::env::temp_dir().join(format!("sync-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

        // Without NOTIFY_SOCKET: nothing is sent and nothing fails.
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        ready();
        stopping();
        watchdog();
        status("ignored");
        assert_eq!(watchdog_interval(), None);
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        assert!(sock.recv(&mut buf).is_err(), "nothing may arrive unset");
        sock.set_nonblocking(false).unwrap();

        std::env::set_var("NOTIFY_SOCKET", &path);
        ready();
        assert_eq!(recv(&sock), "READY=1\n");
        status("serving 3 rooms\nsecond line");
        assert_eq!(recv(&sock), "STATUS=serving 3 rooms second line\n");
        watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1\n");
        stopping();
        assert_eq!(recv(&sock), "STOPPING=1\n");

        // Watchdog interval: only for our own PID, half the period.
        std::env::set_var("WATCHDOG_USEC", "30000000");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(15)));
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(watchdog_interval(), None);
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");

        // A socket nobody listens on must not panic or block.
        std::env::set_var("NOTIFY_SOCKET", dir.join("absent.sock"));
        ready();

        // A full receive queue must not block the sender: fill it, then one
        // more send returns promptly (EAGAIN is swallowed).
        std::env::set_var("NOTIFY_SOCKET", &path);
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            watchdog();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "sends must never wait for the receiver"
        );

        std::env::remove_var("NOTIFY_SOCKET");
        drop(sock);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
