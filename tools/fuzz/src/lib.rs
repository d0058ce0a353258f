//! Fuzz harnesses for the sync server's sans-io cores.
//!
//! Each target module has `run(data)`: it turns the fuzzer's bytes into
//! input for the server's own code (a sans-io core, or the whole connection
//! engine `sync_server::conn::Engine` through the in-memory sockets of
//! [`mem`]), checks the target's invariants with `assert!`, and returns a
//! short summary of what happened. The libFuzzer binaries in
//! `fuzz_targets/` call `run`; `tests/fuzz_regressions.rs` in the root crate
//! includes this file with `#[path]` and calls the very same `run` on every
//! seed and regression file, so a fix stays fixed without the fuzzer.
//!
//! This file and its modules use only `sync_server`, `serde_json`,
//! `httparse`, `mio` and std, which both the fuzz crate and the root
//! crate's tests have. They hold inputs, oracles and adapters; the server's
//! behaviour comes from `sync_server` alone.

pub mod api_rooms;
pub mod common;
pub mod http_head;
pub mod http_query;
pub mod http_stream;
pub mod mem;
pub mod ratelimit;
pub mod ws_client_message;
pub mod ws_frames;

/// A target's entry point: checks one input, returns its summary.
pub type Target = fn(&[u8]) -> String;

/// Every target by name, for the replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("http_head", http_head::run),
    ("http_stream", http_stream::run),
    ("ws_frames", ws_frames::run),
    ("ws_client_message", ws_client_message::run),
    ("api_rooms", api_rooms::run),
    ("http_query", http_query::run),
    ("ratelimit", ratelimit::run),
];
