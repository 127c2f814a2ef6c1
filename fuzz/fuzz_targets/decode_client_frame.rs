//! libFuzzer entry point; the checks live in `fuzz/checks.rs`
//! (`decode_client_frame_target`), shared with the regression test `tests/fuzzed.rs`.

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::decode_client_frame_target(data));
