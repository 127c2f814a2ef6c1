//! Fuzzes the rule loader, and scans with whatever it accepts (see `checks.rs`).

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::rules_target(data));
