//! Fuzzes the python lexer and the whole scan of python text (see `checks.rs`).

#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::lex_python_target(data));
