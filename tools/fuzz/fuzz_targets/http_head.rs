//! libFuzzer entry for `http_head`; the checks live in
//! [`sync_server_fuzz::http_head`] so that `tests/fuzz_regressions.rs` replays
//! the same code under plain `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_server_fuzz::http_head::run(data);
});
