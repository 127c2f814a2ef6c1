//! Fuzzes the rust lexer and the whole scan of rust text (see `checks.rs`).

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::lex_rust_target(data));
