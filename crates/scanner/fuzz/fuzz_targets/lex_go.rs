//! Fuzzes the go lexer and the whole scan of go text (see `checks.rs`).

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::lex_go_target(data));
