//! libFuzzer entry for `ws_frames`; the checks live in
//! [`sync_server_fuzz::ws_frames`] so that `tests/fuzz_regressions.rs` replays
//! the same code under plain `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_server_fuzz::ws_frames::run(data);
});
