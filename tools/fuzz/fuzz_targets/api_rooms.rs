//! libFuzzer entry for `api_rooms`; the checks live in
//! [`sync_server_fuzz::api_rooms`] so that `tests/fuzz_regressions.rs` replays
//! the same code under plain `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_server_fuzz::api_rooms::run(data);
});
