//! Khun Phaen Sync Server: a single-threaded mio server for the Khun Phaen
//! Task Tracker's rooms.
//!
//! The sans-io cores ([`http`], [`ws`], [`protocol`], [`rooms`],
//! [`ratelimit`], [`timers`]) are plain functions of bytes, events and `now`;
//! [`server`] is the thin mio shell that owns sockets and applies their
//! effects. Blocking work (accounts) runs on a worker pool in [`accounts`].

pub mod accounts;
pub mod api;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod healthcheck;
pub mod history;
pub mod http;
pub mod memguard;
#[cfg(feature = "accounts")]
pub mod mongo;
pub mod notify;
pub mod ops;
pub mod outq;
pub mod protocol;
pub mod ratelimit;
pub mod refs;
pub mod rooms;
pub mod shell;
pub mod store;
pub mod timers;
pub mod util;
pub mod ws;
