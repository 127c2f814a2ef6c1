//! Scanner-level unit tests: locations, redaction, regions, allow-lists and the
//! argument checks. The per-kind precision and recall live in
//! `tests/corpus.rs`.

use std::sync::Arc;

use crate::{ArgKind, Kind, Lang, RuleSet, Scanner};

fn ids(lang: Lang, text: &str) -> Vec<String> {
    Scanner::builtin()
        .scan(Some(lang), text)
        .into_iter()
        .map(|finding| finding.rule)
        .collect()
}

/// Fake keys are assembled from two pieces so the source holds no key-shaped
/// literal for push-protection scanners to trip on.
fn fake(prefix: &str, body: &str) -> String {
    format!("{prefix}{body}")
}

#[test]
fn scanner_is_send_sync_and_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Scanner>();
    let scanner = Arc::new(Scanner::builtin());
    let other = Arc::clone(&scanner);
    let handle = std::thread::spawn(move || other.scan(Some(Lang::Python), "eval(x)").len());
    assert_eq!(handle.join().unwrap(), 1);
}

#[test]
fn line_and_column_count_characters() {
    let text = "# héllo wörld\ns = \"ü\"; eval(s)\n";
    let findings = Scanner::builtin().scan(Some(Lang::Python), text);
    assert_eq!(findings.len(), 1);
    let finding = &findings[0];
    assert_eq!(
        (finding.rule.as_str(), finding.line, finding.column),
        ("py-eval", 2, 10)
    );
    assert_eq!(finding.excerpt, "eval(s)");
    assert_eq!(finding.kind, Kind::DangerousCall);
}

#[test]
fn secrets_are_redacted() {
    let key = fake("AKIA", "Q3MHXB7ZK2VN4RTY");
    let text = format!("aws_key = \"{key}\"\n");
    let findings = Scanner::builtin().scan(Some(Lang::Python), &text);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].rule, "aws-access-key-id");
    assert!(
        !findings[0].excerpt.contains(&key[4..]),
        "{}",
        findings[0].excerpt
    );
    assert_eq!(findings[0].excerpt, "AK***(20 chars)");

    let pem_body = "MIIEowIBAAKCAQEA7bq0X2kLr9Vt5gq3Yw8mN1pZs4cHd6Jf0aT2uE9vRxKyLb3n\nQ5wPz8sMe1tFj7hUc4oGi2dXk9aVrN6yBq0LlWmSx3EpCZ5Ku8TfHg1Jn7vDyO2r\n";
    let text =
        format!("-----BEGIN RSA PRIVATE KEY-----\n{pem_body}-----END RSA PRIVATE KEY-----\n");
    let findings = Scanner::builtin().scan(Some(Lang::Text), &text);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(
        !findings[0].excerpt.contains("MIIEowIBAAKCAQEA7bq0"),
        "{}",
        findings[0].excerpt
    );
    assert!(
        findings[0]
            .excerpt
            .starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{}",
        findings[0].excerpt
    );
}

#[test]
fn comments_and_strings_do_not_fire_call_rules() {
    assert_eq!(
        ids(
            Lang::Python,
            "# eval(x)\n'''exec(y)'''\nprint('os.system(z)')\n"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(Lang::JavaScript, "// eval(x)\nconst s = `eval(y)`;\n"),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(Lang::JavaScript, "const s = `${eval(y)}`;\n"),
        ["js-eval"]
    );
    assert_eq!(
        ids(Lang::Shell, "# curl x | sh\necho \"curl x | sh\"\n"),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(Lang::Shell, "curl -fsSL https://x.sh | sudo bash\n"),
        ["sh-curl-pipe-shell"]
    );
}

#[test]
fn inline_allow_markers() {
    let text = "eval(x)  # automation-framework: allow py-eval\neval(y)\nexec(z)  # automation-framework: allow py-eval\n";
    assert_eq!(ids(Lang::Python, text), ["py-eval", "py-exec"]);
    // A marker in a string is not a marker.
    assert_eq!(
        ids(
            Lang::Python,
            "eval('automation-framework: allow py-eval')\n"
        ),
        ["py-eval"]
    );
    assert_eq!(
        ids(
            Lang::JavaScript,
            "eval(x) /* automation-framework: allow all */\n"
        ),
        Vec::<String>::new()
    );
}

#[test]
fn allow_lists_from_rule_files() {
    let key = fake("ghp_", "Zq8Lm2Xv0Kp4Tn7BwYc3Rd5Fg9Hj1Sa6Ue2I");
    let rules = RuleSet::builtin_with(&[(
        "ops.toml",
        "[allow]\npaths = [\"tests/fixtures/**\"]\npatterns = ['Zq8Lm2']\n",
    )])
    .unwrap();
    let scanner = Scanner::new(rules);
    let text = format!("token = \"{key}\"\n");
    assert!(scanner
        .scan_file("tests/fixtures/a.py", None, "eval(x)\n")
        .is_empty());
    assert_eq!(scanner.scan_file("src/a.py", None, "eval(x)\n").len(), 1);
    assert!(scanner.scan(Some(Lang::Python), &text).is_empty());
    assert_eq!(Scanner::builtin().scan(Some(Lang::Python), &text).len(), 1);
}

#[test]
fn argument_checks() {
    let scanner = Scanner::builtin();
    let rules = |kind, value| -> Vec<String> {
        scanner
            .scan_argument(kind, value)
            .into_iter()
            .map(|finding| finding.rule)
            .collect()
    };
    assert_eq!(
        rules(ArgKind::Path, "%252e%252e%252fetc/passwd"),
        ["path-traversal"]
    );
    assert_eq!(
        rules(ArgKind::Path, "reports/2024/q1..q2.csv"),
        Vec::<String>::new()
    );
    assert_eq!(
        rules(ArgKind::Shell, "a.txt; rm -rf /"),
        ["shell-metacharacters"]
    );
    assert_eq!(
        rules(ArgKind::Shell, "my report (final).txt"),
        Vec::<String>::new()
    );
    assert_eq!(rules(ArgKind::Sql, "' OR '1'='1"), ["sql-tautology"]);
    assert_eq!(rules(ArgKind::Sql, "O'Brien"), Vec::<String>::new());
    let finding = &scanner.scan_argument(ArgKind::Shell, "héllo && id")[0];
    assert_eq!((finding.line, finding.column), (1, 7));
}

/// A marker inside a string that runs to the end of its line reads like a
/// real one; it still allows nothing.
#[test]
fn a_marker_in_a_string_to_the_end_of_the_line_allows_nothing() {
    let text = "eval(x); s = \"\"\"automation-framework: allow py-eval\n\"\"\"\n";
    assert_eq!(ids(Lang::Python, text), ["py-eval"]);
}

/// The `[allow]` patterns of a rules file reach the argument checks and the
/// call rules too, not only text rules. A pattern is matched against what
/// the rule matched: `/../` within a path, `../` at its start.
#[test]
fn allow_patterns_reach_argument_checks_and_call_rules() {
    let rules = RuleSet::builtin_with(&[(
        "ops.toml",
        "[allow]\npatterns = ['^/\\.\\./$', '^eval\\(1\\)$']\n",
    )])
    .unwrap();
    let scanner = Scanner::new(rules);
    let argument = |value| scanner.scan_argument(ArgKind::Path, value).len();
    assert_eq!(argument("fixtures/../data"), 0, "allowed by pattern");
    assert_eq!(argument("../etc/passwd"), 1, "still found");
    let calls = |text| scanner.scan(Some(Lang::Python), text).len();
    assert_eq!(calls("eval(1)\n"), 0, "allowed by pattern");
    assert_eq!(calls("eval(x)\n"), 1, "still found");
}

/// A secret rule without a `secret` group judges its whole match: a
/// placeholder is not a finding, a random value is.
#[test]
fn a_secret_rule_without_a_secret_group_still_skips_placeholders() {
    let rules = RuleSet::builtin_with(&[(
        "ops.toml",
        "[[rule]]\nid = \"tok\"\nkind = \"secret\"\nlanguages = [\"*\"]\n\
         pattern = 'tok_[A-Za-z0-9]{16}'\nkeywords = [\"tok_\"]\nseverity = \"high\"\nmessage = \"t\"\n",
    )])
    .unwrap();
    let scanner = Scanner::new(rules);
    let found = |text: &str| -> Vec<String> {
        scanner
            .scan(Some(Lang::Text), text)
            .into_iter()
            .map(|finding| finding.rule)
            .collect()
    };
    assert_eq!(
        found(&fake("tok_", "EXAMPLEexample00")),
        Vec::<String>::new()
    );
    assert_eq!(found(&fake("tok_", "q8Lm2Xv0Kp4Tn7Bw")), ["tok"]);
}

/// An unterminated string ends at its line: the code on the next line is
/// code again.
#[test]
fn an_unterminated_string_ends_at_its_line() {
    assert_eq!(ids(Lang::JavaScript, "s = 'open\neval(x)\n"), ["js-eval"]);
}

/// A text rule of an argument kind (`sql_injection` looked for in code)
/// stays a text rule: argument checks do not run it.
#[test]
fn a_text_rule_of_an_argument_kind_is_not_an_argument_check() {
    let rules = RuleSet::builtin_with(&[(
        "ops.toml",
        "[[rule]]\nid = \"raw-sql\"\nkind = \"sql_injection\"\nlanguages = [\"*\"]\n\
         pattern = 'zzqq'\nseverity = \"high\"\nmessage = \"m\"\n",
    )])
    .unwrap();
    let scanner = Scanner::new(rules);
    assert_eq!(scanner.scan(Some(Lang::Text), "zzqq").len(), 1);
    assert!(scanner.scan_argument(ArgKind::Sql, "zzqq").is_empty());
}
