//! Precision and recall per kind on the corpus in `tests/fixtures/constraints/`
//! (one TOML file per kind, written by `generate.py` there). Fails below 0.95
//! on either, or when the corpus shrinks below 300 positive and 300 negative
//! cases. Run with `--nocapture` to see the table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use automation_framework_scanner::{ArgKind, Kind, Lang, Scanner};
use serde::Deserialize;

#[derive(Deserialize)]
struct CorpusFile {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    lang: Option<String>,
    arg: Option<String>,
    text: String,
    expect: Vec<String>,
}

/// Removed from every text: fake keys are stored cut in two so the repository
/// holds no key-shaped literal.
const CUT: &str = "{{cut}}";

const MIN_SCORE: f64 = 0.95;

#[derive(Default)]
struct Tally {
    tp: u32,
    fp: u32,
    fn_: u32,
    positive_cases: u32,
    negative_cases: u32,
}

#[test]
fn precision_and_recall_per_kind() {
    let scanner = Scanner::builtin();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/constraints");
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut misses = Vec::new();
    let (mut n_positive, mut n_negative) = (0, 0);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    for path in files {
        let file_kind = path.file_stem().unwrap().to_string_lossy().into_owned();
        let corpus: CorpusFile = toml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        for (idx, case) in corpus.case.iter().enumerate() {
            let text = case.text.replace(CUT, "");
            let findings = match (&case.lang, &case.arg) {
                (Some(lang), None) => scanner.scan(Some(lang.parse::<Lang>().unwrap()), &text),
                (None, Some(arg)) => {
                    let kind = match arg.as_str() {
                        "path" => ArgKind::Path,
                        "shell" => ArgKind::Shell,
                        "sql" => ArgKind::Sql,
                        other => panic!("{}: case {idx}: arg {other:?}", path.display()),
                    };
                    scanner.scan_argument(kind, &text)
                }
                _ => panic!("{}: case {idx}: give lang or arg", path.display()),
            };
            for finding in &findings {
                assert!(
                    finding.kind != Kind::Secret || finding.excerpt.contains("***("),
                    "a secret finding shows its secret: {finding:?}"
                );
            }
            let found: BTreeSet<(String, Kind)> =
                findings.iter().map(|f| (f.rule.clone(), f.kind)).collect();
            let expected: BTreeSet<&str> = case.expect.iter().map(String::as_str).collect();
            if expected.is_empty() {
                n_negative += 1;
                tallies.entry(file_kind.clone()).or_default().negative_cases += 1;
            } else {
                n_positive += 1;
                tallies.entry(file_kind.clone()).or_default().positive_cases += 1;
            }
            let kind_of = |rule: &str| -> String {
                let rule = scanner.rules().get(rule).unwrap_or_else(|| {
                    panic!("{}: case {idx}: unknown rule {rule}", path.display())
                });
                kind_name(rule.kind)
            };
            for (rule, kind) in &found {
                let tally = tallies.entry(kind_name(*kind)).or_default();
                if expected.contains(rule.as_str()) {
                    tally.tp += 1;
                } else {
                    tally.fp += 1;
                    misses.push(format!(
                        "FP {rule} in {file_kind}#{idx}: {:?}",
                        short(&text)
                    ));
                }
            }
            for rule in expected {
                if !found.iter().any(|(id, _)| id == rule) {
                    tallies.entry(kind_of(rule)).or_default().fn_ += 1;
                    misses.push(format!(
                        "FN {rule} in {file_kind}#{idx}: {:?}",
                        short(&text)
                    ));
                }
            }
        }
    }
    println!(
        "\n{:<16} {:>6} {:>6} {:>5} {:>5} {:>5} {:>9} {:>7}",
        "kind", "cases+", "cases-", "TP", "FP", "FN", "precision", "recall"
    );
    let mut failed = Vec::new();
    for (kind, tally) in &tallies {
        let precision = ratio(tally.tp, tally.tp + tally.fp);
        let recall = ratio(tally.tp, tally.tp + tally.fn_);
        println!(
            "{kind:<16} {:>6} {:>6} {:>5} {:>5} {:>5} {precision:>9.3} {recall:>7.3}",
            tally.positive_cases, tally.negative_cases, tally.tp, tally.fp, tally.fn_
        );
        if precision < MIN_SCORE || recall < MIN_SCORE {
            failed.push(kind.clone());
        }
    }
    println!("cases: {n_positive} positive, {n_negative} negative");
    for miss in &misses {
        println!("{miss}");
    }
    assert!(failed.is_empty(), "below {MIN_SCORE}: {failed:?}");
    assert!(
        n_positive >= 300 && n_negative >= 300,
        "corpus too small: {n_positive}+ {n_negative}-"
    );
}

fn kind_name(kind: Kind) -> String {
    match kind {
        Kind::DangerousCall => "dangerous_call",
        Kind::Secret => "secret",
        Kind::PathTraversal => "path_traversal",
        Kind::ShellInjection => "shell_injection",
        Kind::SqlInjection => "sql_injection",
    }
    .to_owned()
}

fn ratio(num: u32, den: u32) -> f64 {
    if den == 0 {
        1.0
    } else {
        f64::from(num) / f64::from(den)
    }
}

fn short(text: &str) -> String {
    text.chars().take(100).collect()
}
