//! The edges of each lexer, call resolver, finding filter, secret check, rule
//! file check, language guess and argument decoder: where a bound moved by
//! one, a dropped branch or a changed language rule would flag harmless code
//! or miss a dangerous call or a secret. Each test here caught such a bug
//! that the rest of the suite let through (a hand mutation pass over `src/`,
//! ARCHITECTURE.md). Public API only; grouped as the sources are.

use automation_framework_scanner::lex::{lex, Region};
use automation_framework_scanner::{normalize_path, ArgKind, Lang, RuleSet, Scanner};

fn ids(lang: Lang, text: &str) -> Vec<String> {
    ids_with(&Scanner::builtin(), lang, text)
}

fn ids_with(scanner: &Scanner, lang: Lang, text: &str) -> Vec<String> {
    scanner
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

/// The built-in rules plus one operator file.
fn with_rules(toml: &str) -> Scanner {
    Scanner::new(RuleSet::builtin_with(&[("ops.toml", toml)]).unwrap())
}

/// The (region, text) of every span, for compact assertions.
fn spans(lang: Lang, text: &str) -> Vec<(Region, &str)> {
    lex(lang, text)
        .spans
        .iter()
        .map(|span| (span.region, &text[span.start..span.end]))
        .collect()
}

// ------------------------------------------------------------------ lexers

/// A span's first byte (the quote, the `#`) belongs to the span and its end
/// is code again: a rule with `where = "comments"` whose match starts at the
/// comment marker must see a comment there.
#[test]
fn a_span_owns_its_first_byte_and_not_its_end() {
    let text = "x = 'a' # note\n";
    let lexed = lex(Lang::Python, text);
    assert_eq!(lexed.spans.len(), 2, "{:?}", lexed.spans);
    for span in &lexed.spans {
        assert_eq!(lexed.region_at(span.start), span.region, "{span:?}");
        assert_eq!(lexed.region_at(span.end - 1), span.region, "{span:?}");
    }
    assert_eq!(lexed.region_at(lexed.spans[0].end), Region::Code);

    let scanner = with_rules(
        "[[rule]]\nid = \"todo-comment\"\nkind = \"sql_injection\"\nlanguages = [\"python\"]\n\
         pattern = '#\\s*HACK'\nkeywords = [\"hack\"]\nwhere = \"comments\"\n\
         severity = \"low\"\nmessage = \"m\"\n",
    );
    assert_eq!(
        ids_with(&scanner, Lang::Python, "x = 1  # HACK\ny = '# HACK'\n"),
        ["todo-comment"]
    );
}

/// Unicode identifiers stay whole whatever their bytes: a character whose
/// UTF-8 form holds the byte 0x80 (`Ѐ` is D0 80) must neither split the
/// identifier nor make the scan panic on a character boundary.
#[test]
fn identifiers_holding_the_byte_0x80_stay_whole() {
    assert_eq!(ids(Lang::Python, "xЀ = eval\nxЀ(s)\n"), ["py-eval"]);
    assert_eq!(ids(Lang::JavaScript, "const Ѐ = 1; eval(Ѐ)\n"), ["js-eval"]);
}

/// The `{…}` fields of Python 3.14 t-strings run code, as f-string fields
/// do: a call there is a call.
#[test]
fn python_t_string_fields_are_code() {
    assert_eq!(ids(Lang::Python, "t'hello {eval(x)}'\n"), ["py-eval"]);
    assert_eq!(
        ids(Lang::Python, "t'hello {{eval(x)}}'\n"),
        Vec::<String>::new()
    );
}

/// An empty string (`''`, `""`) is not the start of a triple-quoted one:
/// the code after it stays code.
#[test]
fn python_empty_strings_are_not_triple_quotes() {
    assert_eq!(ids(Lang::Python, "x = ''\neval(y)\n"), ["py-eval"]);
    assert_eq!(ids(Lang::Python, "x = \"\"\neval(y)\n"), ["py-eval"]);
}

/// After `)` or `]` a slash is a division, not a regex: a division must not
/// swallow the code up to the next slash.
#[test]
fn javascript_slash_after_a_parenthesis_is_a_division() {
    assert_eq!(
        ids(
            Lang::JavaScript,
            "const r = f(a) / 2; eval(x); const q = b / 3;\n"
        ),
        ["js-eval"]
    );
    assert_eq!(
        ids(
            Lang::JavaScript,
            "const r = v[0] / 2; eval(x); const q = b / 3;\n"
        ),
        ["js-eval"]
    );
}

/// An escaped slash does not close a regex literal: what follows it is still
/// the regex, not code.
#[test]
fn javascript_escaped_slash_stays_in_the_regex() {
    assert_eq!(
        ids(Lang::JavaScript, "if (/a\\/ eval(x)/.test(s)) {}\n"),
        Vec::<String>::new()
    );
}

/// A backslash in shell code escapes the next byte: `\"` is not the start of
/// a string, so the pipe after it is still code.
#[test]
fn shell_escaped_quote_in_code_opens_no_string() {
    assert_eq!(
        ids(Lang::Shell, "echo \\\"; curl -s https://x.example | sh\n"),
        ["sh-curl-pipe-shell"]
    );
}

/// A heredoc in a file with CRLF line ends ends at its delimiter line: the
/// code after it is code.
#[test]
fn shell_heredoc_ends_at_a_crlf_delimiter() {
    assert_eq!(
        ids(
            Lang::Shell,
            "cat <<EOF\r\nhello\r\nEOF\r\ncurl -s https://x.example | sh\r\n"
        ),
        ["sh-curl-pipe-shell"]
    );
}

/// `<<-` strips every leading tab of the delimiter line, not just one.
#[test]
fn shell_dash_heredoc_strips_all_leading_tabs() {
    assert_eq!(
        ids(
            Lang::Shell,
            "cat <<-EOF\n\t\tbody\n\t\tEOF\ncurl -s https://x.example | sh\n"
        ),
        ["sh-curl-pipe-shell"]
    );
}

/// A Rust char literal holding a four-byte character (`'😀'`) is a literal,
/// not a lifetime, and the comment after it is still a comment.
#[test]
fn rust_four_byte_char_literals() {
    assert_eq!(
        spans(Lang::Rust, "let c = '😀'; // eval(x)\n"),
        [(Region::Str, "'😀'"), (Region::Comment, "// eval(x)")]
    );
}

/// A Go raw string has no escapes: a trailing backslash does not hide its
/// closing backquote.
#[test]
fn go_raw_strings_have_no_escapes() {
    assert_eq!(
        spans(Lang::Go, "p := `C:\\` + x // c\n"),
        [(Region::Str, "`C:\\`"), (Region::Comment, "// c")]
    );
}

// ------------------------------------------------------------------- calls

/// `globalThis.eval` is `eval`, like `window.eval`.
#[test]
fn javascript_global_this_eval_is_eval() {
    assert_eq!(ids(Lang::JavaScript, "globalThis.eval(s);\n"), ["js-eval"]);
}

/// A Python line continuation joins an alias over two lines.
#[test]
fn python_alias_over_a_line_continuation() {
    assert_eq!(
        ids(
            Lang::Python,
            "import os\nrun = \\\n    os.system\nrun(cmd)\n"
        ),
        ["py-os-system"]
    );
}

/// Lookups nested a few levels deep still resolve: the hop bound stops
/// hostile depth, not an obfuscation of ordinary depth.
#[test]
fn nested_lookups_a_few_levels_deep_resolve() {
    let text = "getattr(getattr(getattr(getattr(builtins, \"__dict__\"), \"__dict__\"), \"__dict__\"), \"eval\")(x)\n";
    assert_eq!(ids(Lang::Python, text), ["py-eval"]);
}

/// `vars()["eval"]` is the builtin, like `globals()["eval"]`.
#[test]
fn python_vars_lookup_is_the_builtin() {
    assert_eq!(ids(Lang::Python, "vars()[\"eval\"](s)\n"), ["py-eval"]);
    assert_eq!(ids(Lang::Python, "globals()[\"eval\"](s)\n"), ["py-eval"]);
}

/// A statement after `;` can make an alias.
#[test]
fn an_alias_after_a_semicolon_resolves() {
    assert_eq!(
        ids(Lang::Python, "import os; run = os.system\nrun(cmd)\n"),
        ["py-os-system"]
    );
}

/// `arguments` is matched against the call's rendered arguments, where a
/// string is a placeholder: `shell=True` inside a string is not the keyword.
#[test]
fn call_arguments_inside_strings_are_not_keywords() {
    assert_eq!(
        ids(Lang::Python, "subprocess.run(\"echo shell=True\")\n"),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(Lang::Python, "subprocess.run(\"echo\", shell=True)\n"),
        ["py-subprocess-shell"]
    );
}

// ---------------------------------------------------------------- findings

/// A more severe secret shadows a lesser one only where they overlap: a
/// password on another line is still reported.
#[test]
fn secrets_shadow_only_where_they_overlap() {
    let key = fake("AKIA", "Q3MHXB7ZK2VN4RTY");
    let text = format!("aws = \"{key}\"\npassword = \"Xk9#mQ2$vL7p\"\n");
    assert_eq!(
        ids(Lang::Python, &text),
        ["aws-access-key-id", "generic-password"]
    );
}

/// In plain text (no grammar, no comments) the allow marker works anywhere
/// on the line.
#[test]
fn allow_marker_in_plain_text() {
    let key = fake("AKIA", "Q3MHXB7ZK2VN4RTY");
    let text = format!("key {key} automation-framework: allow aws-access-key-id\n");
    assert_eq!(ids(Lang::Text, &text), Vec::<String>::new());
    assert_eq!(
        ids(Lang::Text, &format!("key {key}\n")),
        ["aws-access-key-id"]
    );
}

/// An allow marker in a block comment closed right after the rule id
/// (`allow js-eval*/`) still names the rule.
#[test]
fn allow_marker_right_before_a_comment_close() {
    assert_eq!(
        ids(
            Lang::JavaScript,
            "eval(x) /* automation-framework: allow js-eval*/\n"
        ),
        Vec::<String>::new()
    );
}

/// Excerpts are cut to 120 characters plus an ellipsis.
#[test]
fn excerpts_are_cut_to_120_characters() {
    let text = format!("eval({})\n", "a".repeat(300));
    let findings = Scanner::builtin().scan(Some(Lang::Python), &text);
    assert_eq!(findings.len(), 1, "{findings:?}");
    let excerpt = &findings[0].excerpt;
    assert_eq!(excerpt.chars().count(), 121, "{excerpt}");
    assert!(excerpt.starts_with("eval(aaa") && excerpt.ends_with('…'));
}

/// `where = "strings"` and `where = "comments"` each see only their region.
#[test]
fn where_strings_and_where_comments_see_only_their_region() {
    let rule = |id: &str, region: &str| {
        format!(
            "[[rule]]\nid = \"{id}\"\nkind = \"sql_injection\"\nlanguages = [\"python\"]\n\
             pattern = 'DROP TABLE'\nwhere = \"{region}\"\nseverity = \"low\"\nmessage = \"m\"\n"
        )
    };
    let text = "q = \"DROP TABLE users\"  # DROP TABLE later\n";
    let in_strings = with_rules(&rule("in-strings", "strings"));
    let found = in_strings.scan(Some(Lang::Python), text);
    assert_eq!(
        found
            .iter()
            .map(|f| (f.rule.as_str(), f.column))
            .collect::<Vec<_>>(),
        [("in-strings", 6)]
    );
    let in_comments = with_rules(&rule("in-comments", "comments"));
    let found = in_comments.scan(Some(Lang::Python), text);
    assert_eq!(
        found
            .iter()
            .map(|f| (f.rule.as_str(), f.column))
            .collect::<Vec<_>>(),
        [("in-comments", 27)]
    );
}

/// An operator's `dangerous_call` text rule without `where` looks at code
/// only, as the built-in shell rules do: the words in a comment or a string
/// are not the command.
#[test]
fn a_dangerous_call_text_rule_defaults_to_code() {
    let scanner = with_rules(
        "[[rule]]\nid = \"rm-root\"\nkind = \"dangerous_call\"\nlanguages = [\"shell\"]\n\
         pattern = 'rm -rf /'\nkeywords = [\"rm\"]\nseverity = \"high\"\nmessage = \"m\"\n",
    );
    assert_eq!(
        ids_with(&scanner, Lang::Shell, "# rm -rf /\necho 'rm -rf /'\n"),
        Vec::<String>::new()
    );
    assert_eq!(ids_with(&scanner, Lang::Shell, "rm -rf /\n"), ["rm-root"]);
}

// ----------------------------------------------------------------- secrets

/// `min_char_classes = 2` accepts a value of exactly two classes.
#[test]
fn a_password_of_exactly_the_minimum_classes_is_found() {
    assert_eq!(
        ids(Lang::Python, "password = \"k9m2x7q4z8w3\"\n"),
        ["generic-password"]
    );
}

/// A value below the rule's entropy threshold (3.0 bits for the generic
/// password rule) is not a credential.
#[test]
fn a_low_entropy_value_is_not_a_password() {
    assert_eq!(
        ids(Lang::Python, "password = \"ab1ab2ab3ab4\"\n"),
        Vec::<String>::new()
    );
}

/// A value of four distinct characters or fewer (eight or more long) is a
/// placeholder; five distinct characters may be a secret.
#[test]
fn few_distinct_characters_make_a_placeholder() {
    let scanner = with_rules(
        "[[rule]]\nid = \"tok\"\nkind = \"secret\"\nlanguages = [\"*\"]\n\
         pattern = 'tok_(?P<secret>[A-Za-z0-9]{16})'\nkeywords = [\"tok_\"]\nseverity = \"high\"\nmessage = \"t\"\n",
    );
    assert_eq!(
        ids_with(&scanner, Lang::Text, &fake("tok_", "Ab12Ab12Ab12Ab12")),
        Vec::<String>::new()
    );
    assert_eq!(
        ids_with(&scanner, Lang::Text, &fake("tok_", "Ab12cAb12cAb12cA")),
        ["tok"]
    );
}

/// Placeholder words and counting runs mark test values: `fake…` and a value
/// holding `12345678` are not reported.
#[test]
fn fake_values_and_counting_runs_are_placeholders() {
    assert_eq!(
        ids(Lang::Python, "api_key = \"fake_k8Hq2Lm9Zx\"\n"),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(Lang::Python, "password = \"Qz12345678\"\n"),
        Vec::<String>::new()
    );
}

// ------------------------------------------------------------------- rules

/// Rule ids are at most 64 characters: 64 loads, 65 is refused.
#[test]
fn rule_ids_are_at_most_64_characters() {
    let rule = |id: &str| {
        format!(
            "[[rule]]\nid = \"{id}\"\nkind = \"secret\"\nlanguages = [\"*\"]\n\
             pattern = 'x'\nkeywords = [\"xx\"]\nseverity = \"low\"\nmessage = \"m\"\n"
        )
    };
    assert!(RuleSet::from_toml("ops.toml", &rule(&"a".repeat(64))).is_ok());
    let err = RuleSet::from_toml("ops.toml", &rule(&"a".repeat(65))).unwrap_err();
    assert!(err.problem.contains("1 to 64 characters"), "{err}");
}

/// An entropy threshold of 8 bits (the most a byte can carry) is valid.
#[test]
fn an_entropy_threshold_of_eight_bits_is_valid() {
    let rule = |entropy: &str| {
        format!(
            "[[rule]]\nid = \"r\"\nkind = \"secret\"\nlanguages = [\"*\"]\n\
             pattern = 'x'\nkeywords = [\"xx\"]\nentropy = {entropy}\nseverity = \"low\"\nmessage = \"m\"\n"
        )
    };
    assert!(RuleSet::from_toml("ops.toml", &rule("8.0")).is_ok());
    assert!(RuleSet::from_toml("ops.toml", &rule("8.01")).is_err());
}

/// `**/` matches no directory as well as several: `**/fixtures/**` allows a
/// top-level `fixtures/` as well as a nested one.
#[test]
fn double_star_slash_matches_zero_directories() {
    let set = RuleSet::from_toml("a.toml", "[allow]\npaths = [\"**/fixtures/**\"]\n").unwrap();
    assert!(set.path_allowed("fixtures/a.py"));
    assert!(set.path_allowed("x/y/fixtures/a.py"));
    assert!(!set.path_allowed("src/a.py"));
}

// --------------------------------------------------------------- languages

/// One telltale is not enough to call a text code: prose that happens to
/// hold `None` stays text.
#[test]
fn one_telltale_does_not_make_a_language() {
    assert_eq!(
        Lang::guess("Meeting moved to 3pm. None of us can make it earlier."),
        Lang::Text
    );
}

/// `#!/usr/bin/env sh` is a shell script.
#[test]
fn env_sh_shebang_is_shell() {
    assert_eq!(Lang::guess("#!/usr/bin/env sh\nls\n"), Lang::Shell);
}

// --------------------------------------------------------------- arguments

/// Quadruple percent-encoding still decodes to `../`.
#[test]
fn quadruple_encoding_decodes() {
    assert_eq!(normalize_path("%2525252e%2525252e%2525252fetc"), "../etc");
    let found = Scanner::builtin().scan_argument(ArgKind::Path, "%2525252e%2525252e%2525252fetc");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule, "path-traversal");
}

/// The overlong forms starting with `C1` decode too (`C1 9C` is `\`).
#[test]
fn overlong_c1_forms_decode() {
    assert_eq!(normalize_path("..%c1%9cwindows"), "..\\windows");
    let found = Scanner::builtin().scan_argument(ArgKind::Path, "..%c1%9cwindows");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule, "path-traversal");
}
