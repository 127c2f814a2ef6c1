//! Replays every committed fuzz input (`fuzz/seeds/<target>/` and the crashes
//! turned regressions in `fuzz/regressions/<target>/`) through the same checks
//! the libFuzzer targets run (`fuzz/checks.rs`), so `cargo test` keeps them
//! fixed without cargo-fuzz.

use std::path::Path;

#[path = "../fuzz/checks.rs"]
mod checks;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("lex_python", checks::lex_python_target),
    ("lex_javascript", checks::lex_javascript_target),
    ("lex_shell", checks::lex_shell_target),
    ("lex_rust", checks::lex_rust_target),
    ("lex_go", checks::lex_go_target),
    ("rules", checks::rules_target),
];

#[test]
fn committed_fuzz_inputs_pass_their_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n_inputs = 0;
    for (target, check) in TARGETS {
        for kind in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let result = std::panic::catch_unwind(|| check(&data));
                assert!(result.is_ok(), "{} fails its check", path.display());
                n_inputs += 1;
            }
        }
    }
    assert!(n_inputs >= 24, "the seeds are missing: {n_inputs} inputs");
}
