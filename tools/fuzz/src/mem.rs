//! In-memory sockets and a fake clock for the real connection engine
//! (`sync_server::conn::Engine`): the adapter through which `http_stream`,
//! `ws_client_message` and `tests/properties.rs` drive it.
//!
//! Each connection has a [`Pipe`]: the client's bytes the engine has not
//! read yet (with the client's FIN after them), everything the engine wrote,
//! and whether the client reads (one that does not makes every write say
//! `WouldBlock`, as a full socket does). [`Net`] plays the part of the mio
//! shell with every socket always ready: it hands the engine what a client
//! sent as soon as it is sent (within the engine's read allowance), then
//! runs the engine's end of turn (buffered input, timers, the flush, its
//! `Io` actions) until the engine has nothing left to do now. Time moves
//! only when a caller says so ([`Net::advance`]).
//!
//! Checked here for every input: an `Io::Drop` or `Io::ShutdownWrite` names
//! a connection at most once, and the engine settles in a bounded number of
//! turns.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync_server::config::Config;
use sync_server::conn::{Admission, Engine, Io, Sockets, READ_BUDGET};
use sync_server::rooms::ConnRef;

/// Turns one settle may take before the engine is judged to spin.
const MAX_TURNS: usize = 10_000;

/// A configuration for the engine under test: an in-memory room store and
/// the given settings (any other setting at its default).
pub fn config(settings: &[(&str, &str)]) -> Config {
    Config::from_lookup(|k| {
        if k == "ROOM_STORE" {
            return Some("memory".into());
        }
        settings
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    })
    .unwrap_or_else(|e| panic!("harness configuration refused: {e}"))
}

/// One connection as both ends see it.
#[derive(Debug, Default)]
pub struct Pipe {
    /// What the client sent that the engine has not read yet.
    pub to_server: Vec<u8>,
    /// The client shut its write side after `to_server`.
    pub client_fin: bool,
    /// The engine was told of that FIN.
    fin_told: bool,
    /// Everything the engine wrote, in order.
    pub from_server: Vec<u8>,
    /// The client reads what it is sent; when false, writes would block.
    pub reading: bool,
    /// The engine shut the write side (`Io::ShutdownWrite`).
    pub server_fin: bool,
    /// The engine dropped the socket (`Io::Drop`).
    pub dropped: bool,
}

impl io::Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        assert!(!self.dropped && !self.server_fin, "write after close");
        if !self.reading {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            self.from_server.extend_from_slice(b);
            n += b.len();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Pipes(HashMap<ConnRef, Pipe>);

impl Sockets for Pipes {
    type Stream = Pipe;
    fn stream(&mut self, cref: ConnRef) -> Option<&mut Pipe> {
        self.0.get_mut(&cref).filter(|p| !p.dropped)
    }
}

/// The engine with in-memory sockets and a fake clock.
pub struct Net {
    pub engine: Engine,
    pipes: Pipes,
    t0: Instant,
    elapsed: Duration,
}

thread_local! {
    /// The engine wants a waker for its workers' replies; none are started
    /// with an in-memory store, so one poll per thread serves every engine.
    static WAKER: (mio::Poll, Arc<mio::Waker>) = {
        let poll = mio::Poll::new().expect("mio poll");
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("mio waker");
        (poll, Arc::new(waker))
    };
}

impl Net {
    pub fn new(cfg: Config) -> Net {
        let t0 = Instant::now();
        let waker = WAKER.with(|(_, w)| w.clone());
        let engine = Engine::new(cfg, waker, t0).expect("engine starts");
        Net {
            engine,
            pipes: Pipes(HashMap::new()),
            t0,
            elapsed: Duration::ZERO,
        }
    }

    /// The fake clock's reading.
    pub fn now(&self) -> Instant {
        self.t0 + self.elapsed
    }

    /// Time since the engine started.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// A new connection from `ip` whose client reads; `None` if refused.
    pub fn connect(&mut self, ip: IpAddr) -> Option<ConnRef> {
        self.apply_io();
        match self.engine.admit(ip) {
            Admission::Admitted(cref) => {
                let pipe = Pipe {
                    reading: true,
                    ..Pipe::default()
                };
                assert!(
                    self.pipes.0.insert(cref, pipe).is_none(),
                    "connection {cref:?} admitted twice"
                );
                Some(cref)
            }
            Admission::Refused(_) => None,
        }
    }

    pub fn pipe(&self, cref: ConnRef) -> &Pipe {
        &self.pipes.0[&cref]
    }

    /// The client sends `bytes`; the engine reads them as a readable edge
    /// would make the shell do, then finishes its turn.
    pub fn send(&mut self, cref: ConnRef, bytes: &[u8]) {
        if let Some(p) = self.pipes.0.get_mut(&cref).filter(|p| !p.dropped) {
            assert!(!p.client_fin, "client wrote after its FIN");
            p.to_server.extend_from_slice(bytes);
            self.read(cref);
        }
        self.settle();
    }

    /// The client shuts its write side (after what it sent).
    pub fn fin(&mut self, cref: ConnRef) {
        if let Some(p) = self.pipes.0.get_mut(&cref).filter(|p| !p.dropped) {
            p.client_fin = true;
            self.read(cref);
        }
        self.settle();
    }

    /// The socket fails (a reset): the shell tells the engine to abort.
    pub fn reset(&mut self, cref: ConnRef) {
        if self.pipes.0.get(&cref).is_some_and(|p| !p.dropped) {
            self.engine.abort(cref);
            self.apply_io();
        }
        self.settle();
    }

    /// The client stops or resumes reading; resuming raises a writable edge.
    pub fn set_reading(&mut self, cref: ConnRef, reading: bool) {
        if let Some(p) = self.pipes.0.get_mut(&cref).filter(|p| !p.dropped) {
            let resumed = reading && !p.reading;
            p.reading = reading;
            if resumed {
                self.engine.writable(cref);
            }
        }
        self.settle();
    }

    /// `d` passes on the fake clock; due timers fire.
    pub fn advance(&mut self, d: Duration) {
        self.elapsed += d;
        self.settle();
    }

    /// Runs engine turns until nothing is left to do without time passing.
    pub fn settle(&mut self) {
        for _ in 0..MAX_TURNS {
            let now = self.now();
            self.engine.set_now(now);
            for cref in self.engine.take_again() {
                self.engine.resume_buffered(cref);
                self.read(cref);
            }
            // Everything the kernel holds unsent here is nothing: writes
            // either land whole or block.
            self.engine.fire_timers(&mut |_| Some(0));
            self.engine.tick();
            self.apply_io();
            self.engine.flush_dirty(&mut self.pipes);
            self.apply_io();
            if self.engine.timeout() > Duration::ZERO {
                return;
            }
        }
        panic!("the engine did not settle in {MAX_TURNS} turns");
    }

    /// Reads as the shell does: until nothing is left, the engine's
    /// allowance says stop, or the turn's read budget is used.
    fn read(&mut self, cref: ConnRef) {
        let mut total = 0;
        while let Some(want) = self.engine.read_allowance(cref) {
            let Some(p) = self.pipes.0.get_mut(&cref).filter(|p| !p.dropped) else {
                break;
            };
            if p.to_server.is_empty() {
                if p.client_fin && !p.fin_told {
                    p.fin_told = true;
                    self.engine.eof(cref);
                }
                break;
            }
            let n = want.min(p.to_server.len());
            let data: Vec<u8> = p.to_server.drain(..n).collect();
            total += n;
            if !self.engine.input(cref, &data) {
                break;
            }
            if total >= READ_BUDGET {
                self.engine.again(cref);
                break;
            }
        }
        self.apply_io();
    }

    fn apply_io(&mut self) {
        let io: Vec<Io> = self.engine.take_io().collect();
        for action in io {
            match action {
                Io::Drop(cref) => {
                    let p = self.pipes.0.get_mut(&cref).expect("dropped a known socket");
                    assert!(!p.dropped, "{cref:?} dropped twice");
                    p.dropped = true;
                }
                Io::ShutdownWrite(cref) => {
                    let p = self.pipes.0.get_mut(&cref).expect("shut a known socket");
                    assert!(!p.dropped, "{cref:?} shut after its drop");
                    assert!(!p.server_fin, "{cref:?} shut twice");
                    p.server_fin = true;
                }
                Io::StopListening | Io::Trim => {}
            }
        }
    }
}
