//! libFuzzer entry point; the checks live in `fuzz/checks.rs`
//! (`handshake_target`), shared with the regression test `tests/fuzzed.rs`.

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::handshake_target(data));
