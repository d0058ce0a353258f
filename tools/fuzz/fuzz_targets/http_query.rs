//! libFuzzer entry for `http_query`; the checks live in
//! [`sync_server_fuzz::http_query`] so that `tests/fuzz_regressions.rs` replays
//! the same code under plain `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_server_fuzz::http_query::run(data);
});
