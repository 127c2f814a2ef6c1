//! What each scanner fuzz target checks, shared by the libFuzzer targets
//! (`fuzz_targets/*.rs`) and the test that replays the committed inputs on
//! every `cargo test` (`tests/fuzzed.rs`), so a crash found once is checked
//! forever with the same code. Public API only.

#![allow(dead_code)]

use std::sync::OnceLock;

use automation_framework_scanner::lex::{lex, Region};
use automation_framework_scanner::{ArgKind, Lang, RuleSet, Scanner};

fn scanner() -> &'static Scanner {
    static SCANNER: OnceLock<Scanner> = OnceLock::new();
    SCANNER.get_or_init(Scanner::builtin)
}

pub fn lex_python_target(data: &[u8]) {
    lex_target(Lang::Python, data);
}

pub fn lex_javascript_target(data: &[u8]) {
    lex_target(Lang::JavaScript, data);
}

pub fn lex_shell_target(data: &[u8]) {
    lex_target(Lang::Shell, data);
}

pub fn lex_rust_target(data: &[u8]) {
    lex_target(Lang::Rust, data);
}

pub fn lex_go_target(data: &[u8]) {
    lex_target(Lang::Go, data);
}

/// A lexer on any text: spans sorted, disjoint, inside the text, on character
/// boundaries, their content inside them; then the whole scan of that text
/// (calls, rules, locations) must not panic and must locate every finding
/// inside the text.
fn lex_target(lang: Lang, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lexed = lex(lang, &text);
    let mut last_end = 0;
    for span in &lexed.spans {
        assert!(
            span.start >= last_end,
            "spans overlap or are unsorted: {span:?}"
        );
        assert!(
            span.start < span.end && span.end <= text.len(),
            "bad bounds: {span:?}"
        );
        assert!(
            span.start <= span.inner_start
                && span.inner_start <= span.inner_end
                && span.inner_end <= span.end,
            "content outside its span: {span:?}"
        );
        for pos in [span.start, span.end, span.inner_start, span.inner_end] {
            assert!(
                text.is_char_boundary(pos),
                "span cuts a character: {span:?}"
            );
        }
        assert_ne!(span.region, Region::Code, "code is never a span");
        last_end = span.end;
    }
    let n_lines = text.split('\n').count();
    for finding in scanner().scan(Some(lang), &text) {
        assert!(
            finding.line >= 1 && finding.line as usize <= n_lines,
            "{finding:?}"
        );
        assert!(finding.column >= 1, "{finding:?}");
        assert!(finding.excerpt.chars().count() <= 121, "{finding:?}");
    }
}

/// The rule loader on any text: it accepts or rejects with a message naming
/// the file; what it accepts builds a scanner that scans texts and arguments
/// without panicking.
pub fn rules_target(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RuleSet::from_toml("fuzz.toml", text) {
        Err(err) => {
            assert_eq!(err.file, "fuzz.toml");
            assert!(
                err.to_string().starts_with("rules file fuzz.toml: "),
                "{err}"
            );
        }
        Ok(rules) => {
            let scanner = Scanner::new(rules);
            let sample = "import os\nos.system(cmd)  # x\npassword = \"hunter2!X9\"\n";
            for lang in Lang::ALL {
                scanner.scan(Some(lang), sample);
            }
            for kind in [ArgKind::Path, ArgKind::Shell, ArgKind::Sql] {
                scanner.scan_argument(kind, "../x; ' OR 1=1");
            }
        }
    }
}
