//! Fuzzes the javascript lexer and the whole scan of javascript text (see `checks.rs`).

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::lex_javascript_target(data));
