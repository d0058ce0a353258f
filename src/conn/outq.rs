//! A connection's ordered output queue: shared frames written with `writev`.
//!
//! Everything a connection sends (HTTP responses, its own replies, room
//! fan-out, control frames) goes through one queue, so bytes leave in the
//! order they were queued. Frames are `Bytes` shared with the other
//! recipients of the same event; queuing one costs a reference count, not a
//! copy. The queue knows its byte length so the shell can enforce
//! `MAX_OUTBOUND_BYTES`, and it gives its memory back once drained.

use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// Most frames handed to one `writev` call (Linux allows 1024; this keeps
/// the stack array small while still coalescing a burst).
const IOV_MAX: usize = 64;

/// Memory one queued frame costs beyond its bytes: its slot in the ring and
/// the allocation behind a frame of its own (a shared fan-out frame costs
/// less, so this errs on the safe side).
pub const CHUNK_COST: usize = 64;

/// How one flush attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Drained,
    /// The socket would block; wait for a writable event.
    Blocked,
    /// The per-turn byte budget ran out; try again next turn.
    Budget,
}

#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Bytes>,
    bytes: usize,
}

impl OutQueue {
    pub fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        self.chunks.push_back(frame);
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// What the queue costs in memory, as `MAX_OUTBOUND_BYTES` counts it:
    /// the bytes plus [`CHUNK_COST`] per queued frame. Without the overhead
    /// a flood of tiny frames (pongs to empty pings) would hold many times
    /// the bound in allocations and queue slots.
    pub fn cost(&self) -> usize {
        self.bytes + self.chunks.len() * CHUNK_COST
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The queued frames in order, the front one possibly cut by a partial
    /// write (read-only: for tests and fuzz oracles).
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.chunks.iter().map(|c| &c[..])
    }

    /// Drops everything queued (the connection is being torn down).
    pub fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.bytes = 0;
    }

    /// Keeps only the frame at the front (it may be partly written already)
    /// and drops the rest, so a close frame queued next follows whole frames.
    pub fn truncate_to_front(&mut self) {
        self.chunks.truncate(1);
        self.bytes = self.chunks.front().map_or(0, Bytes::len);
    }

    /// Writes as much as the socket takes, up to `budget` bytes.
    pub fn flush_to<W: Write>(&mut self, w: &mut W, budget: usize) -> io::Result<Flush> {
        let mut written = 0usize;
        let result = loop {
            if self.chunks.is_empty() {
                break Ok(Flush::Drained);
            }
            if written >= budget {
                break Ok(Flush::Budget);
            }
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let mut n_iov = 0;
            for (slot, chunk) in iov.iter_mut().zip(self.chunks.iter()) {
                *slot = IoSlice::new(chunk);
                n_iov += 1;
            }
            match w.write_vectored(&iov[..n_iov]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    written += n;
                    self.bytes -= n;
                    while n > 0 {
                        let front = self.chunks.front_mut().expect("wrote more than queued");
                        if n >= front.len() {
                            n -= front.len();
                            self.chunks.pop_front();
                        } else {
                            front.advance(n);
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flush::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
        };
        if self.chunks.is_empty() && self.chunks.capacity() > 16 {
            // A burst grew the ring; an idle connection should not keep it.
            self.chunks = VecDeque::new();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_counts_each_queued_frame() {
        let mut q = OutQueue::default();
        assert_eq!(q.cost(), 0);
        for _ in 0..10 {
            q.push(Bytes::from_static(&[0x8A, 0x00]));
        }
        q.push(Bytes::from(vec![7u8; 1000]));
        assert_eq!(q.len(), 1020);
        assert_eq!(q.cost(), 1020 + 11 * CHUNK_COST);
        q.clear();
        assert_eq!(q.cost(), 0);
    }

    /// A writer that accepts at most `per_call` bytes, then blocks after
    /// `calls` calls.
    struct Trickle {
        out: Vec<u8>,
        per_call: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls -= 1;
            let mut left = self.per_call;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Ok(self.per_call - left)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_and_count() {
        let mut q = OutQueue::default();
        let shared = Bytes::from_static(b"shared-payload");
        q.push(Bytes::from_static(b"ab"));
        q.push(shared.clone());
        q.push(Bytes::from_static(b"cd"));
        assert_eq!(q.len(), 18);
        let mut w = Trickle {
            out: Vec::new(),
            per_call: 5,
            calls: 2,
        };
        assert_eq!(q.flush_to(&mut w, usize::MAX).unwrap(), Flush::Blocked);
        assert_eq!(q.len(), 8);
        w.calls = 100;
        assert_eq!(q.flush_to(&mut w, usize::MAX).unwrap(), Flush::Drained);
        assert_eq!(w.out, b"abshared-payloadcd");
        assert!(q.is_empty());
    }

    #[test]
    fn budget_stops_a_flush() {
        let mut q = OutQueue::default();
        for _ in 0..10 {
            q.push(Bytes::from_static(b"0123456789"));
        }
        let mut w = Trickle {
            out: Vec::new(),
            per_call: 10,
            calls: 100,
        };
        assert_eq!(q.flush_to(&mut w, 25).unwrap(), Flush::Budget);
        assert_eq!(w.out.len(), 30);
        assert_eq!(q.flush_to(&mut w, usize::MAX).unwrap(), Flush::Drained);
        assert_eq!(w.out.len(), 100);
    }
}
