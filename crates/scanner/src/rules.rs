//! Rules as data: the TOML format, its validation, the built-in set
//! (`rules/builtin.toml`, compiled in) and operator files loaded from a
//! directory. A set is all or nothing: one invalid rule rejects every file, with
//! an error naming the file, the rule and the problem, so a typo can never
//! silently switch a rule off.
//!
//! # File format
//!
//! ```toml
//! disable = ["generic-password"]    # built-in ids to switch off
//!
//! [[rule]]
//! id = "acme-token"                 # [a-z0-9._-], unique; same id as a built-in replaces it
//! kind = "secret"                   # dangerous_call | secret | path_traversal | shell_injection | sql_injection
//! languages = ["python", "text"]    # or ["*"]; empty for argument rules
//! target = "text"                   # text (default) | argument (scan_argument)
//! match = "text"                    # text (default): pattern over the text
//!                                   # call: pattern over the resolved callee name
//! pattern = '''acme_(?P<secret>[a-z0-9]{32})'''
//! arguments = '''shell\s*=\s*True'''  # call rules: must match the call's arguments
//! keywords = ["acme_"]              # pre-filter, ASCII case-insensitive; for
//!                                   # call rules, whole identifiers in exact case
//! entropy = 3.5                     # secrets: bits per char of the secret part
//! min_char_classes = 2              # secrets: of lower, upper, digit, symbol
//! multiline = false                 # text rules: may a match cross lines?
//! severity = "high"                 # low | medium | high | critical
//! message = "ACME API token"
//! where = "anywhere"                # code | strings | comments | anywhere
//! allow = ['''acme_0{32}''']        # matches of these are not findings
//!
//! [allow]
//! paths = ["tests/fixtures/**", "*.lock"]
//! patterns = ['''EXAMPLE''']
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use crate::Lang;

/// The built-in rules, compiled into the binary.
pub const BUILTIN_RULES: &str = include_str!("../rules/builtin.toml");

/// The file name reported for errors in the built-in set.
const BUILTIN_NAME: &str = "<builtin>/builtin.toml";

/// What a rule looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    DangerousCall,
    Secret,
    PathTraversal,
    ShellInjection,
    SqlInjection,
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// Which regions of a text a match may start in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Where {
    Code,
    Strings,
    Comments,
    Anywhere,
}

/// What a rule is applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Source or text given to [`crate::Scanner::scan`].
    Text,
    /// One value given to [`crate::Scanner::scan_argument`].
    Argument,
}

/// What a rule's `pattern` is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchOn {
    /// The text itself.
    Text,
    /// The resolved, dotted name of each call in code (`subprocess.run`,
    /// `child_process.exec`, `eval`), after imports and aliases are followed.
    Call,
}

/// The kinds of value [`crate::Scanner::scan_argument`] checks, each served by
/// the argument rules of one [`Kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArgKind {
    /// A file path: path traversal rules, after URL, overlong-UTF-8 and
    /// look-alike decoding.
    Path,
    /// A value a shell will see: shell metacharacter rules.
    Shell,
    /// A value a SQL query will see: SQL injection rules.
    Sql,
}

/// One validated rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    pub message: String,
    pub target: Target,
    pub match_on: MatchOn,
    pub region: Where,
    /// Keywords of the pre-filter; empty means the rule always runs.
    pub keywords: Vec<String>,
    pub entropy: Option<f64>,
    pub min_char_classes: Option<u8>,
    pub multiline: bool,
    pub(crate) languages: u8,
    pub(crate) pattern: Regex,
    pub(crate) arguments: Option<Regex>,
    pub(crate) allow: Vec<Regex>,
    /// Index of the `secret` capture group in `pattern`, if it has one.
    pub(crate) secret_group: Option<usize>,
}

/// A validated set of rules with its allow-lists.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub(crate) rules: Vec<Rule>,
    pub(crate) allow_paths: Vec<(String, Regex)>,
    pub(crate) allow_patterns: Vec<Regex>,
}

/// Why a rule set was rejected: which file, which rule, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct RuleError {
    pub file: String,
    /// The rule's id, or `rule #N` when it has none.
    pub rule: Option<String>,
    pub problem: String,
}

// === impl Kind ===

impl Kind {
    /// The kind as rule files, replies, logs and the `kind` metric label spell it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::DangerousCall => "dangerous_call",
            Kind::Secret => "secret",
            Kind::PathTraversal => "path_traversal",
            Kind::ShellInjection => "shell_injection",
            Kind::SqlInjection => "sql_injection",
        }
    }
}

// === impl Severity ===

impl Severity {
    /// Every severity, from the least to the most severe.
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The severity as rule files and replies spell it.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

// === impl Rule ===

impl Rule {
    /// Whether the rule looks at texts in `lang`.
    pub fn applies_to(&self, lang: Lang) -> bool {
        self.languages & lang.bit() != 0
    }

    /// The languages the rule looks at.
    pub fn languages(&self) -> impl Iterator<Item = Lang> + '_ {
        Lang::ALL.into_iter().filter(|lang| self.applies_to(*lang))
    }

    /// The argument kind an argument rule serves.
    pub fn arg_kind(&self) -> Option<ArgKind> {
        if self.target != Target::Argument {
            return None;
        }
        match self.kind {
            Kind::PathTraversal => Some(ArgKind::Path),
            Kind::ShellInjection => Some(ArgKind::Shell),
            Kind::SqlInjection => Some(ArgKind::Sql),
            Kind::DangerousCall | Kind::Secret => None,
        }
    }
}

// === impl RuleSet ===

impl RuleSet {
    /// The built-in rules.
    pub fn builtin() -> RuleSet {
        RuleSet::from_toml(BUILTIN_NAME, BUILTIN_RULES)
            .expect("the built-in rules are valid: tests::builtin_rules_are_valid checks them")
    }

    /// One rules file; `file` names it in errors. Its `disable` list is ignored
    /// (there is nothing to disable in a single file): use [`RuleSet::load_dir`].
    ///
    /// # Errors
    /// The first invalid rule, or invalid TOML.
    pub fn from_toml(file: &str, text: &str) -> Result<RuleSet, RuleError> {
        parse_file(file, text).map(|parsed| parsed.set)
    }

    /// The built-in rules plus every `*.toml` file in `dir`, read in name order.
    /// A rule whose id is a built-in's replaces it; `disable = [...]` switches
    /// built-ins off.
    ///
    /// # Errors
    /// An unreadable directory or file, invalid TOML, an invalid rule, an id
    /// defined twice by operator files, or a `disable` naming no known rule: the
    /// whole set is rejected and the caller keeps the set it had.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, RuleError> {
        let dir_error = |problem: String| RuleError {
            file: dir.display().to_string(),
            rule: None,
            problem,
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|err| dir_error(format!("cannot read the rules directory: {err}")))?;
        let mut paths: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| dir_error(format!("cannot list: {err}")))?;
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|err| RuleError {
                file: name.clone(),
                rule: None,
                problem: format!("cannot read: {err}"),
            })?;
            files.push((name, text));
        }
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        RuleSet::builtin_with(&files)
    }

    /// The built-in rules plus operator files given as `(name, text)` pairs
    /// (what [`RuleSet::load_dir`] does after reading the directory).
    ///
    /// # Errors
    /// As [`RuleSet::load_dir`].
    pub fn builtin_with(files: &[(&str, &str)]) -> Result<RuleSet, RuleError> {
        let mut set = RuleSet::builtin();
        let n_builtin = set.rules.len();
        let mut defined_by: HashMap<String, String> = HashMap::new();
        let mut disabled: Vec<(String, String)> = Vec::new();
        for (name, text) in files {
            let parsed = parse_file(name, text)?;
            for rule in parsed.set.rules {
                if let Some(first) = defined_by.insert(rule.id.clone(), (*name).to_owned()) {
                    return Err(RuleError {
                        file: (*name).to_owned(),
                        rule: Some(rule.id),
                        problem: format!("id already defined in {first}"),
                    });
                }
                match set.rules[..n_builtin].iter().position(|r| r.id == rule.id) {
                    Some(idx) => set.rules[idx] = rule,
                    None => set.rules.push(rule),
                }
            }
            set.allow_paths.extend(parsed.set.allow_paths);
            set.allow_patterns.extend(parsed.set.allow_patterns);
            disabled.extend(
                parsed
                    .disable
                    .into_iter()
                    .map(|id| (id, (*name).to_owned())),
            );
        }
        for (id, file) in disabled {
            let Some(idx) = set.rules.iter().position(|rule| rule.id == id) else {
                return Err(RuleError {
                    file,
                    rule: Some(id),
                    problem: "`disable` names no known rule".to_owned(),
                });
            };
            set.rules.remove(idx);
        }
        Ok(set)
    }

    /// The rules, in load order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule with this id.
    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.id == id)
    }

    /// Whether `path` is on an allow-list (its findings are dropped).
    pub fn path_allowed(&self, path: &str) -> bool {
        let path = path.trim_start_matches("./");
        let file = path.rsplit('/').next().unwrap_or(path);
        self.allow_paths.iter().any(|(glob, regex)| {
            if glob.contains('/') {
                regex.is_match(path)
            } else {
                regex.is_match(file)
            }
        })
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "rules file {}: rule {rule}: {}", self.file, self.problem),
            None => write!(f, "rules file {}: {}", self.file, self.problem),
        }
    }
}

/// A rules file: raw TOML, each rule checked on its own so its errors can name it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<toml::Value>,
    #[serde(default)]
    allow: RawAllow,
    #[serde(default)]
    disable: Vec<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    kind: Kind,
    #[serde(default)]
    languages: Vec<String>,
    target: Option<Target>,
    #[serde(rename = "match")]
    match_on: Option<MatchOn>,
    pattern: String,
    arguments: Option<String>,
    #[serde(default)]
    keywords: Vec<String>,
    entropy: Option<f64>,
    min_char_classes: Option<u8>,
    #[serde(default)]
    multiline: bool,
    severity: Severity,
    message: String,
    #[serde(rename = "where")]
    region: Option<Where>,
    #[serde(default)]
    allow: Vec<String>,
}

struct ParsedFile {
    set: RuleSet,
    disable: Vec<String>,
}

/// Regexes from rule files are bounded so that a pathological pattern fails at
/// load time instead of eating memory at scan time.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn parse_file(file: &str, text: &str) -> Result<ParsedFile, RuleError> {
    let error = |rule: Option<String>, problem: String| RuleError {
        file: file.to_owned(),
        rule,
        problem,
    };
    let raw: RawFile = toml::from_str(text).map_err(|err| {
        error(
            None,
            format!("invalid TOML: {}", err.to_string().trim_end()),
        )
    })?;
    let mut set = RuleSet::default();
    for (idx, value) in raw.rule.into_iter().enumerate() {
        let name = value
            .get("id")
            .and_then(|id| id.as_str())
            .map_or_else(|| format!("#{}", idx + 1), str::to_owned);
        let raw_rule = RawRule::deserialize(value)
            .map_err(|err| error(Some(name.clone()), err.to_string().trim_end().to_owned()))?;
        let rule = validate(raw_rule).map_err(|problem| error(Some(name.clone()), problem))?;
        if set.rules.iter().any(|other| other.id == rule.id) {
            return Err(error(
                Some(name),
                "id defined twice in this file".to_owned(),
            ));
        }
        set.rules.push(rule);
    }
    for glob in raw.allow.paths {
        let regex = glob_regex(&glob)
            .map_err(|problem| error(None, format!("allow path {glob:?}: {problem}")))?;
        set.allow_paths.push((glob, regex));
    }
    for pattern in raw.allow.patterns {
        let regex = compile(&pattern)
            .map_err(|problem| error(None, format!("allow pattern {pattern:?}: {problem}")))?;
        set.allow_patterns.push(regex);
    }
    Ok(ParsedFile {
        set,
        disable: raw.disable,
    })
}

fn compile(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|err| format!("invalid regex: {err}"))
}

fn validate(raw: RawRule) -> Result<Rule, String> {
    if raw.id.is_empty()
        || raw.id.len() > 64
        || !raw
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err("id must be 1 to 64 characters of a-z, 0-9, '.', '_', '-'".to_owned());
    }
    if raw.message.trim().is_empty() {
        return Err("message is empty".to_owned());
    }
    let target = raw.target.unwrap_or(Target::Text);
    let match_on = raw.match_on.unwrap_or(MatchOn::Text);
    let mut languages = 0u8;
    for name in &raw.languages {
        if name == "*" {
            languages = Lang::ALL.iter().fold(0, |bits, lang| bits | lang.bit());
        } else {
            languages |= name.parse::<Lang>().map_err(|err| err.to_string())?.bit();
        }
    }
    let arg_kind = matches!(
        raw.kind,
        Kind::PathTraversal | Kind::ShellInjection | Kind::SqlInjection
    );
    match target {
        Target::Text if languages == 0 => {
            return Err("a text rule needs at least one language (or \"*\")".to_owned())
        }
        Target::Argument if languages != 0 => {
            return Err("an argument rule takes no languages".to_owned())
        }
        Target::Argument if !arg_kind => {
            return Err(
                "only path_traversal, shell_injection and sql_injection rules can target arguments"
                    .to_owned(),
            )
        }
        Target::Argument if match_on == MatchOn::Call => {
            return Err("an argument rule cannot match calls".to_owned())
        }
        _ => {}
    }
    if match_on == MatchOn::Call && raw.kind != Kind::DangerousCall {
        return Err("match = \"call\" is for dangerous_call rules".to_owned());
    }
    if match_on == MatchOn::Call && matches!(raw.region, Some(w) if w != Where::Code) {
        return Err(
            "a call rule only looks at code: drop `where` or set it to \"code\"".to_owned(),
        );
    }
    if raw.arguments.is_some() && match_on != MatchOn::Call {
        return Err("`arguments` needs match = \"call\"".to_owned());
    }
    if let Some(entropy) = raw.entropy {
        if !(0.0..=8.0).contains(&entropy) {
            return Err(format!(
                "entropy {entropy} is outside 0..=8 bits per character"
            ));
        }
    }
    if raw.kind != Kind::Secret && (raw.entropy.is_some() || raw.min_char_classes.is_some()) {
        return Err("entropy and min_char_classes are for secret rules".to_owned());
    }
    if raw.min_char_classes.is_some_and(|n| n > 4) {
        return Err("min_char_classes is at most 4 (lower, upper, digit, symbol)".to_owned());
    }
    if let Some(keyword) = raw.keywords.iter().find(|k| k.len() < 2 || !k.is_ascii()) {
        return Err(format!(
            "keyword {keyword:?} must be ASCII and at least 2 characters"
        ));
    }
    let pattern = compile(&raw.pattern).map_err(|err| format!("pattern: {err}"))?;
    let secret_group = pattern
        .capture_names()
        .position(|name| name == Some("secret"));
    let arguments = raw
        .arguments
        .as_deref()
        .map(compile)
        .transpose()
        .map_err(|err| format!("arguments: {err}"))?;
    let allow = raw
        .allow
        .iter()
        .map(|pattern| compile(pattern))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("allow: {err}"))?;
    let region = raw.region.unwrap_or(match (match_on, raw.kind) {
        (MatchOn::Call, _) => Where::Code,
        (_, Kind::DangerousCall) => Where::Code,
        _ => Where::Anywhere,
    });
    Ok(Rule {
        id: raw.id,
        kind: raw.kind,
        severity: raw.severity,
        message: raw.message,
        target,
        match_on,
        region,
        keywords: raw.keywords,
        entropy: raw.entropy,
        min_char_classes: raw.min_char_classes,
        multiline: raw.multiline,
        languages,
        pattern,
        arguments,
        allow,
        secret_group,
    })
}

/// A path glob as an anchored regex: `**` crosses directories, `*` and `?` do
/// not (a regex keeps matching linear whatever the glob).
fn glob_regex(glob: &str) -> Result<Regex, String> {
    if glob.is_empty() {
        return Err("empty glob".to_owned());
    }
    let mut out = String::from("^");
    let mut rest = glob;
    while let Some(ch) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("**/") {
            out.push_str("(?:.*/)?");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("**") {
            out.push_str(".*");
            rest = after;
        } else {
            match ch {
                '*' => out.push_str("[^/]*"),
                '?' => out.push_str("[^/]"),
                _ => out.push_str(&regex::escape(ch.encode_utf8(&mut [0; 4]))),
            }
            rest = &rest[ch.len_utf8()..];
        }
    }
    out.push('$');
    compile(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_are_valid() {
        let set = RuleSet::from_toml(BUILTIN_NAME, BUILTIN_RULES).unwrap();
        assert!(set.rules.len() >= 30, "{} rules", set.rules.len());
        for kind in [
            Kind::DangerousCall,
            Kind::Secret,
            Kind::PathTraversal,
            Kind::ShellInjection,
            Kind::SqlInjection,
        ] {
            assert!(set.rules.iter().any(|rule| rule.kind == kind), "{kind:?}");
        }
        for rule in &set.rules {
            if rule.kind == Kind::Secret {
                assert!(
                    !rule.keywords.is_empty(),
                    "{}: a secret rule needs keywords",
                    rule.id
                );
            }
        }
    }

    fn rule_error(text: &str) -> String {
        RuleSet::from_toml("ops.toml", text)
            .unwrap_err()
            .to_string()
    }

    const GOOD: &str = r#"
[[rule]]
id = "acme-token"
kind = "secret"
languages = ["*"]
pattern = 'acme_(?P<secret>[a-z0-9]{32})'
keywords = ["acme_"]
severity = "high"
message = "ACME token"
"#;

    #[test]
    fn a_good_file_loads() {
        let set = RuleSet::from_toml("ops.toml", GOOD).unwrap();
        let rule = set.get("acme-token").unwrap();
        assert_eq!(rule.secret_group, Some(1));
        assert_eq!(rule.region, Where::Anywhere);
        assert_eq!(rule.languages().count(), Lang::ALL.len());
    }

    #[test]
    fn errors_name_file_rule_and_problem() {
        let err = rule_error(&GOOD.replace("[a-z0-9]{32}", "[a-z"));
        assert!(
            err.starts_with("rules file ops.toml: rule acme-token: pattern: invalid regex"),
            "{err}"
        );
        let err = rule_error(&GOOD.replace("\"secret\"", "\"secrets\""));
        assert!(
            err.contains("rule acme-token: unknown variant `secrets`"),
            "{err}"
        );
        let err = rule_error(&GOOD.replace("\"*\"", "\"cobol\""));
        assert!(
            err.contains("rule acme-token: unknown language \"cobol\""),
            "{err}"
        );
        let err = rule_error(&GOOD.replace("id = \"acme-token\"\n", ""));
        assert!(err.contains("rule #1: missing field `id`"), "{err}");
        let err = rule_error(&GOOD.replace("severity", "severty"));
        assert!(err.contains("unknown field `severty`"), "{err}");
        let err = rule_error(&format!("{GOOD}{GOOD}"));
        assert!(err.contains("id defined twice"), "{err}");
        let err = rule_error(&GOOD.replace("languages = [\"*\"]", "languages = []"));
        assert!(err.contains("needs at least one language"), "{err}");
        let err = rule_error(&GOOD.replace("\"acme_\"", "\"a\""));
        assert!(err.contains("keyword \"a\""), "{err}");
        let err = rule_error("[[rule]\n");
        assert!(
            err.starts_with("rules file ops.toml: invalid TOML"),
            "{err}"
        );
    }

    /// Each check of a rule failed on its own, from a rule that passes
    /// every other: the message names the problem.
    #[test]
    fn every_rule_check_refuses_with_its_own_message() {
        let call = GOOD
            .replace(
                "kind = \"secret\"",
                "kind = \"dangerous_call\"\nmatch = \"call\"",
            )
            .replace("keywords = [\"acme_\"]\n", "");
        RuleSet::from_toml("ops.toml", &call).expect("a call rule");
        let argument = GOOD
            .replace(
                "kind = \"secret\"",
                "kind = \"path_traversal\"\ntarget = \"argument\"",
            )
            .replace("languages = [\"*\"]\n", "")
            .replace("keywords = [\"acme_\"]\n", "");
        RuleSet::from_toml("ops.toml", &argument).expect("an argument rule");
        let cases = [
            (
                GOOD.replace("message = \"ACME token\"", "message = \" \""),
                "message is empty",
            ),
            (
                call.replace("kind = \"dangerous_call\"", "kind = \"secret\""),
                "match = \"call\" is for dangerous_call rules",
            ),
            (
                format!("{call}where = \"strings\"\n"),
                "a call rule only looks at code",
            ),
            (
                format!("{GOOD}arguments = 'x'\n"),
                "`arguments` needs match = \"call\"",
            ),
            (
                format!("{GOOD}entropy = 9.0\n"),
                "entropy 9 is outside 0..=8",
            ),
            (
                format!("{call}entropy = 3.0\n"),
                "entropy and min_char_classes are for secret rules",
            ),
            (
                format!("{GOOD}min_char_classes = 5\n"),
                "min_char_classes is at most 4",
            ),
            (
                format!("{argument}languages = [\"python\"]\n"),
                "an argument rule takes no languages",
            ),
            (
                argument.replace("path_traversal", "secret"),
                "only path_traversal, shell_injection and sql_injection rules can target arguments",
            ),
            (
                format!("{argument}match = \"call\"\n"),
                "an argument rule cannot match calls",
            ),
            (
                format!("{GOOD}[allow]\npaths = [\"\"]\n"),
                "allow path \"\": empty glob",
            ),
        ];
        for (text, problem) in cases {
            let err = rule_error(&text);
            assert!(err.contains(problem), "{problem:?} not in {err:?}");
        }
    }

    #[test]
    fn a_directory_is_rejected_whole_when_one_rule_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-good.toml"), GOOD).unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "not toml").unwrap();
        let set = RuleSet::load_dir(dir.path()).unwrap();
        assert!(set.get("acme-token").is_some());
        assert!(set.get("aws-access-key-id").is_some(), "built-ins stay");

        let bad = GOOD.replace("acme-token", "other").replace("{32}", "{32");
        std::fs::write(dir.path().join("20-bad.toml"), bad).unwrap();
        let err = RuleSet::load_dir(dir.path()).unwrap_err();
        assert!(err.file.ends_with("20-bad.toml"), "{err}");
        assert_eq!(err.rule.as_deref(), Some("other"));
        assert!(err.problem.contains("invalid regex"), "{err}");
    }

    #[test]
    fn operators_replace_and_disable_builtins() {
        let replace = GOOD.replace("acme-token", "aws-access-key-id");
        let set =
            RuleSet::builtin_with(&[("a.toml", &replace), ("b.toml", "disable = [\"py-eval\"]")])
                .unwrap();
        assert_eq!(set.get("aws-access-key-id").unwrap().message, "ACME token");
        assert!(set.get("py-eval").is_none());
        let err = RuleSet::builtin_with(&[("b.toml", "disable = [\"no-such\"]")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules file b.toml: rule no-such: `disable` names no known rule"
        );
        let err = RuleSet::builtin_with(&[("a.toml", GOOD), ("b.toml", GOOD)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules file b.toml: rule acme-token: id already defined in a.toml"
        );
    }

    #[test]
    fn path_globs() {
        let set = RuleSet::from_toml(
            "a.toml",
            "[allow]\npaths = [\"tests/fixtures/**\", \"*.lock\", \"docs/*.md\"]\n",
        )
        .unwrap();
        assert!(set.path_allowed("tests/fixtures/a/b.py"));
        assert!(set.path_allowed("./Cargo.lock"));
        assert!(set.path_allowed("sub/dir/yarn.lock"));
        assert!(set.path_allowed("docs/x.md"));
        assert!(!set.path_allowed("docs/a/x.md"));
        assert!(!set.path_allowed("src/main.py"));
    }
}
