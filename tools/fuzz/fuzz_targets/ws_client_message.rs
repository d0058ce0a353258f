//! libFuzzer entry for `ws_client_message`; the checks live in
//! [`sync_server_fuzz::ws_client_message`] so that `tests/fuzz_regressions.rs` replays
//! the same code under plain `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_server_fuzz::ws_client_message::run(data);
});
