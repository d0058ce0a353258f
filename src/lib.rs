//! Khun Phaen Sync Server: a single-threaded mio server for the Khun Phaen
//! Task Tracker's rooms.
//!
//! # The layers
//!
//! | module | owns |
//! |---|---|
//! | [`shell`] | the mio loop: poll, accept, sockets, the read scratch buffer, signals |
//! | [`conn`] | the connection engine: each connection's state machine, budgets, timers, fan-out, the flush; [`conn::routes`] the REST routes |
//! | [`http`] | HTTP/1.1 parsing and answers; [`conn::routes`] routes the REST paths |
//! | [`ws`] | WebSocket frames: the decoder of client frames, server frame building |
//! | [`protocol`] | the room protocol's messages (client actions in, server messages out) |
//! | [`rooms`] | rooms, membership, documents, the numbered stream and its history |
//! | [`store`] | durable rooms: the write-behind policy and the redb / MongoDB writers |
//! | [`accounts`] | users, sessions and tokens, on worker threads (MongoDB, argon2) |
//! | [`cluster`] | several nodes on Redis: the broker threads and the ordering core |
//! | [`ops`] | the operator's view: metrics, health, admin, logs, memory guard, systemd notify |
//!
//! Shared cores: [`config`], [`ratelimit`] (one token bucket), [`timers`]
//! (the deadline heap), [`refs`] (connection and room references), [`util`].
//! The modules form no import cycle: [`shell`] uses [`conn`], [`conn`] uses
//! the rest, and the layers below it do not reach back up.
//! Everything but [`shell`] and the worker threads is sans-io: plain
//! functions of input and `now` that return what to do.
//!
//! # One `broadcast`, from the socket to every recipient
//!
//! 1. The socket is readable: [`shell`] reads it into its scratch buffer and
//!    hands the bytes to [`conn::Engine::input`].
//! 2. The engine appends them to the connection's buffer and, in its
//!    WebSocket state, lets [`ws::Decoder`] cut complete messages under the
//!    connection's turn budget and message rate.
//! 3. [`protocol::decode`] turns the text into an action; the engine checks
//!    the memory guard and the cluster's state, then calls
//!    [`rooms::Rooms::broadcast`].
//! 4. The room builds the `data` frame once (the sender's prefix, the data,
//!    its `seq`), keeps it in its history for catch-up, and returns an
//!    [`rooms::Effect::Fanout`] naming the recipients (in cluster mode an
//!    [`rooms::Effect::Publish`]: Redis numbers it and every node, this one
//!    too, delivers it back through [`rooms::Rooms::deliver`]).
//! 5. The engine queues the one shared frame on each recipient's
//!    [`conn::outq::OutQueue`] (a reference count each) and marks them for
//!    the end-of-turn flush.
//! 6. [`conn::Engine::flush_dirty`] writes each queue with `writev` under
//!    the per-connection and per-turn write budgets; a queue still over
//!    `MAX_OUTBOUND_BYTES` after the socket took what it would is closed
//!    with 1008.

pub mod accounts;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod http;
#[cfg(feature = "accounts")]
pub mod mongo;
pub mod ops;
pub mod protocol;
pub mod ratelimit;
pub mod refs;
pub mod rooms;
pub mod shell;
pub mod store;
pub mod timers;
pub mod util;
pub mod ws;
