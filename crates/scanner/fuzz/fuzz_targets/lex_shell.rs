//! Fuzzes the shell lexer and the whole scan of shell text (see `checks.rs`).

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::lex_shell_target(data));
