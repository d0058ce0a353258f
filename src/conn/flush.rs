//! The end-of-turn flush: the one place bytes leave for sockets.
//!
//! Connections that gained output this turn are written in the order they
//! gained it, each up to `WRITE_BUDGET`, all together up to
//! `TURN_WRITE_BUDGET`; the rest wait, first in line, for the next turn.
//! Short queues (at most `SHORT_QUEUE`: a pong, an HTTP answer, small
//! broadcasts) go before the long ones, with at most half the turn's
//! budget: behind a 16 MiB document to 50 peers, which the budget spreads
//! over some 200 turns, they would otherwise wait for most of it. The long
//! queues share the rest in order, then the short ones the first half did
//! not reach, so neither kind can starve the other and a turn of only
//! short queues (fan-out of small messages) still has the whole budget. A
//! WebSocket whose queue is over `MAX_OUTBOUND_BYTES` is handed everything
//! the socket takes, whatever the turn's budget, and only if it is still
//! over is it closed with 1008: a reader that keeps up is never cut off by
//! a burst fanned out in one turn.

use super::*;
use crate::conn::outq::Flush;

/// Where the flush writes: the shell's sockets, or in tests and fuzz
/// targets in-memory streams.
pub trait Sockets {
    type Stream: io::Write;
    /// The stream of a live connection.
    fn stream(&mut self, cref: ConnRef) -> Option<&mut Self::Stream>;
}

impl Engine {
    /// Writes what the connections marked this turn have queued.
    pub fn flush_dirty<S: Sockets>(&mut self, socks: &mut S) {
        let mut dirty = std::mem::take(&mut self.dirty);
        let [mut long, mut later] = std::mem::take(&mut self.dirty_scratch);
        let mut left = TURN_WRITE_BUDGET / 2;
        for cref in dirty.drain(..) {
            let short = self
                .conn_ref(cref)
                .map_or(true, |c| c.out.len() <= SHORT_QUEUE);
            if !short {
                long.push(cref);
            } else if left > 0 {
                left = self.flush_one(socks, cref, left);
            } else {
                later.push(cref);
            }
        }
        // The long queues get the other half (and what the short ones left);
        // short ones the first half did not reach come after them, so a
        // turn without long queues still has the whole budget for short
        // ones (fan-out of small messages is all short queues).
        left += TURN_WRITE_BUDGET - TURN_WRITE_BUDGET / 2;
        for cref in long.drain(..).chain(later.drain(..)) {
            left = self.flush_one(socks, cref, left);
        }
        self.dirty_scratch = [long, later];
        self.reap();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// One connection's go at the flush, with `left` of the turn's budget;
    /// returns what is left after it.
    fn flush_one<S: Sockets>(&mut self, socks: &mut S, cref: ConnRef, left: usize) -> usize {
        let max = self.cfg.max_outbound_bytes;
        let Some(c) = live(&mut self.conns, cref) else {
            return left;
        };
        let over = c.out.cost() > max && c.is_websocket();
        if left == 0 && !over {
            // Still marked dirty: first in line next turn.
            self.dirty.push(cref);
            return 0;
        }
        c.dirty = false;
        let Some(stream) = socks.stream(cref) else {
            return left;
        };
        let budget = if over {
            usize::MAX
        } else {
            left.min(WRITE_BUDGET)
        };
        let left = left.saturating_sub(self.flush(cref, stream, budget));
        if over && self.conn_ref(cref).is_some_and(|c| c.out.cost() > max) {
            self.doom(
                cref,
                Close::Ws(ws::close::POLICY, "Outbound queue limit exceeded"),
            );
        }
        left
    }

    /// Writes up to about `budget` bytes of the connection's queue; returns
    /// what the stream took.
    fn flush<W: io::Write>(&mut self, cref: ConnRef, w: &mut W, budget: usize) -> usize {
        let now = self.now;
        let timeout = self.cfg.request_timeout;
        let Some(c) = live(&mut self.conns, cref) else {
            return 0;
        };
        let queued = c.out.len();
        let result = c.out.flush_to(w, budget);
        let written = queued.saturating_sub(c.out.len());
        self.metrics.bytes_sent += written as u64;
        count_http(&mut self.http_backlog, c);
        let total_ok = self.http_backlog < self.cfg.max_http_backlog_bytes || c.out.is_empty();
        let cost = c.out.cost();
        if let State::Http(h) = &mut c.state {
            if h.held.is_some() && written > 0 {
                // The peer is reading what it asked for: the wait is ours,
                // so its request clock does not run meanwhile.
                h.deadline = now + timeout;
            }
            if h.held.is_some() && cost < HTTP_BACKLOG && total_ok {
                // Room again: answer what is buffered, then read on. The
                // wait was ours, not the peer's: its request clock starts
                // afresh.
                h.held = None;
                h.deadline = now + timeout;
                self.again.push(cref);
                self.arm_request_timer(cref);
            }
        }
        self.flush_result(cref, result);
        written
    }

    fn flush_result(&mut self, cref: ConnRef, result: io::Result<Flush>) {
        let Some(c) = live(&mut self.conns, cref) else {
            return;
        };
        match result {
            Ok(Flush::Drained) => match &mut c.state {
                State::Http(h) if h.close_when_flushed => self.close(cref, Close::Linger),
                State::Ws(ws) if ws.eof => self.close(cref, Close::Linger),
                // Both sides are done: no need to linger.
                State::Closing(cl) if cl.peer_eof => self.close(cref, Close::Abort),
                State::Closing(cl) if !cl.write_shut => {
                    cl.write_shut = true;
                    self.io.push(Io::ShutdownWrite(cref));
                }
                _ => {}
            },
            Ok(Flush::Blocked) => {}
            Ok(Flush::Budget) => self.mark_dirty(cref),
            Err(e) => {
                debug!("[{}] write error: {e}", cref.key);
                self.close(cref, Close::Abort);
            }
        }
    }
}
