//! automation-framework-scanner: finds dangerous calls, hard-coded secrets and
//! hostile arguments in code and text (SPEC §3.7, content constraints), without
//! crying wolf on comments, strings, docs examples and fixtures.
//!
//! # Layout
//!
//! * [`Lang`] (`lang.rs`) — the languages, their names, a guess from the text.
//! * [`lex`] — one hand lexer per language: which bytes are code, comment or
//!   string (interpolations such as JS `${…}` are code).
//! * [`rules`] — rules as data: the TOML format, validation, the built-in set
//!   (`rules/builtin.toml`, compiled in), operator directories, allow-lists.
//! * `calls.rs` — calls in code with their callee resolved through imports and
//!   aliases, for the `dangerous_call` rules that match on calls.
//! * `secret.rs` — entropy, placeholder filtering and redaction.
//! * `args.rs` — decoding of path arguments (URL, overlong UTF-8, look-alikes).
//! * [`Scanner`] (`scan.rs`) — the compiled rule set: `scan`, `scan_file`,
//!   `scan_argument`, each returning [`Finding`]s.
//!
//! **Architecture Invariant:** the scanner does no I/O except
//! [`RuleSet::load_dir`], holds no lock and no interior mutability: a `Scanner`
//! is immutable, `Send + Sync`, and shared as `Arc<Scanner>`.
//!
//! **Architecture Invariant:** a finding never holds a secret in full: secret
//! rules' excerpts show at most four characters and the length.

#![forbid(unsafe_code)]

mod args;
mod calls;
mod lang;
pub mod lex;
pub mod rules;
mod scan;
mod secret;

pub use args::normalize_path;
pub use lang::{Lang, UnknownLang};
pub use rules::{ArgKind, Kind, Rule, RuleError, RuleSet, Severity};
pub use scan::{Finding, Scanner, ALLOW_MARKER};
pub use secret::{entropy, redact};

#[cfg(test)]
mod tests;
