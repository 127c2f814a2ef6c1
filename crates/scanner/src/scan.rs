//! The scanner: runs a compiled rule set over a text or an argument and reports
//! findings.
//!
//! One pass of an Aho-Corasick automaton over the text finds every rule
//! keyword; a rule with keywords runs only if one of them is present, and then
//! (unless it is `multiline`) only on the lines that hold one, so a text costs
//! one automaton pass plus work proportional to what it contains. The lexer
//! runs only when a surviving rule cares about regions, and the call resolver
//! only when a call rule survives.

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::calls::find_calls;
use crate::lex::{is_ident_byte, lex, Lexed, Region};
use crate::rules::{ArgKind, Kind, MatchOn, Rule, RuleSet, Severity, Target, Where};
use crate::{args, secret, Lang};

/// The marker of an inline allow: `automation-framework: allow RULE[, RULE…]`
/// (or `allow all`) in a comment silences those rules on that line.
pub const ALLOW_MARKER: &str = "automation-framework: allow";

/// Excerpts are cut to this many characters.
const MAX_EXCERPT_CHARS: usize = 120;

/// One thing the scanner found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The rule's id.
    pub rule: String,
    pub kind: Kind,
    pub severity: Severity,
    /// 1-based line of the match's start.
    pub line: u32,
    /// 1-based column of the match's start, in characters (not bytes).
    pub column: u32,
    /// The matched text on its line, cut to 120 characters, with any secret
    /// replaced by its redacted form.
    pub excerpt: String,
    pub message: String,
}

/// A compiled rule set, ready to scan. Immutable, so one scanner is shared by
/// every connection (`Arc<Scanner>`) and swapped whole on reload.
#[derive(Debug)]
pub struct Scanner {
    rules: RuleSet,
    /// Over every text rule's keywords, ASCII case-insensitive.
    keywords: AhoCorasick,
    /// Keyword pattern index → the rules that listed it.
    keyword_rules: Vec<Vec<usize>>,
}

// === impl Scanner ===

impl Scanner {
    /// A scanner with the built-in rules.
    pub fn builtin() -> Scanner {
        Scanner::new(RuleSet::builtin())
    }

    /// A scanner for `rules`.
    pub fn new(rules: RuleSet) -> Scanner {
        let mut patterns: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        for (rule_idx, rule) in rules.rules.iter().enumerate() {
            if rule.target != Target::Text {
                continue;
            }
            for keyword in &rule.keywords {
                let keyword = keyword.to_ascii_lowercase();
                match patterns.iter().position(|p| *p == keyword) {
                    Some(idx) => keyword_rules[idx].push(rule_idx),
                    None => {
                        patterns.push(keyword);
                        keyword_rules.push(vec![rule_idx]);
                    }
                }
            }
        }
        let keywords = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .expect("validated keywords (ASCII, at least 2 bytes, < 1 MiB in all) always build");
        Scanner {
            rules,
            keywords,
            keyword_rules,
        }
    }

    /// The rules this scanner runs.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Scans `text` as `lang` (guessed from the text when `None`).
    pub fn scan(&self, lang: Option<Lang>, text: &str) -> Vec<Finding> {
        let lang = lang.unwrap_or_else(|| Lang::guess(text));
        Scan::new(self, lang, text).run()
    }

    /// Scans a file's content: nothing when the path is on an allow-list; the
    /// language from `lang`, else the path's extension, else a guess.
    pub fn scan_file(&self, path: &str, lang: Option<Lang>, text: &str) -> Vec<Finding> {
        if self.rules.path_allowed(path) {
            return Vec::new();
        }
        self.scan(lang.or_else(|| Lang::from_path(path)), text)
    }

    /// Checks one value destined for a path, a shell or a query against the
    /// argument rules of that kind. Paths are decoded first (URL encoding, also
    /// doubled; overlong UTF-8; look-alike characters).
    pub fn scan_argument(&self, kind: ArgKind, value: &str) -> Vec<Finding> {
        let decoded;
        let subject = if kind == ArgKind::Path {
            decoded = args::normalize_path(value);
            decoded.as_str()
        } else {
            value
        };
        let mut findings = Vec::new();
        for rule in &self.rules.rules {
            if rule.arg_kind() != Some(kind) {
                continue;
            }
            let Some(found) = rule.pattern.find(subject) else {
                continue;
            };
            if self.is_allowed(rule, found.as_str()) {
                continue;
            }
            // The position in the value as given, when the match is there
            // verbatim; a match only visible after decoding points at the start.
            let pos = if subject.len() == value.len() {
                found.start()
            } else {
                value.find(found.as_str()).unwrap_or(0)
            };
            let (line, column) = line_column(value, pos);
            findings.push(Finding {
                rule: rule.id.clone(),
                kind: rule.kind,
                severity: rule.severity,
                line,
                column,
                excerpt: excerpt(found.as_str()),
                message: rule.message.clone(),
            });
        }
        findings
    }

    fn is_allowed(&self, rule: &Rule, matched: &str) -> bool {
        rule.allow.iter().any(|re| re.is_match(matched))
            || self
                .rules
                .allow_patterns
                .iter()
                .any(|re| re.is_match(matched))
    }
}

/// A match before it is located and checked against inline allows.
struct Hit {
    rule_idx: usize,
    /// Byte range of the match (for a secret: of the secret itself).
    range: Range<usize>,
    excerpt: String,
}

/// One scan of one text.
struct Scan<'s, 't> {
    scanner: &'s Scanner,
    lang: Lang,
    text: &'t str,
    lexed: Option<Lexed>,
    hits: Vec<Hit>,
}

// === impl Scan ===

impl<'s, 't> Scan<'s, 't> {
    fn new(scanner: &'s Scanner, lang: Lang, text: &'t str) -> Scan<'s, 't> {
        Scan {
            scanner,
            lang,
            text,
            lexed: None,
            hits: Vec::new(),
        }
    }

    fn lexed(&mut self) -> &Lexed {
        let (lang, text) = (self.lang, self.text);
        self.lexed.get_or_insert_with(|| lex(lang, text))
    }

    fn run(mut self) -> Vec<Finding> {
        let rules = &self.scanner.rules.rules;
        let windows = self.keyword_windows();
        let mut call_rules = Vec::new();
        for (rule_idx, rule) in rules.iter().enumerate() {
            if rule.target != Target::Text || !rule.applies_to(self.lang) {
                continue;
            }
            let ranges = if rule.keywords.is_empty() {
                std::iter::once(0..self.text.len()).collect()
            } else {
                match windows.get(rule_idx) {
                    Some(ranges) if !ranges.is_empty() => merge(ranges.clone()),
                    _ => continue,
                }
            };
            match rule.match_on {
                MatchOn::Call => call_rules.push(rule_idx),
                MatchOn::Text => self.text_rule(rule_idx, rule, &ranges),
            }
        }
        if !call_rules.is_empty() {
            self.call_rules(&call_rules);
        }
        self.findings()
    }

    /// For each rule, the line ranges holding one of its keywords.
    fn keyword_windows(&self) -> Vec<Vec<Range<usize>>> {
        let rules = &self.scanner.rules.rules;
        let mut windows: Vec<Vec<Range<usize>>> = vec![Vec::new(); rules.len()];
        let bytes = self.text.as_bytes();
        for hit in self.scanner.keywords.find_overlapping_iter(self.text) {
            let mut line: Option<Range<usize>> = None;
            let whole_word = || {
                let before = hit.start().checked_sub(1).map(|idx| bytes[idx]);
                let after = bytes.get(hit.end()).copied();
                !before.is_some_and(is_ident_byte) && !after.is_some_and(is_ident_byte)
            };
            let found = &bytes[hit.range()];
            for &rule_idx in &self.scanner.keyword_rules[hit.pattern().as_usize()] {
                // A call rule's keywords name identifiers, which are whole
                // words in their exact case: `eval` inside `evaluate`, or
                // `function` for `Function`, cannot make the call.
                if rules[rule_idx].match_on == MatchOn::Call
                    && !(whole_word()
                        && rules[rule_idx]
                            .keywords
                            .iter()
                            .any(|k| k.as_bytes() == found))
                {
                    continue;
                }
                let range = if rules[rule_idx].multiline {
                    line_start(bytes, hit.start())..bytes.len()
                } else {
                    line.get_or_insert_with(|| {
                        line_start(bytes, hit.start())..line_end(bytes, hit.end())
                    })
                    .clone()
                };
                let ranges = &mut windows[rule_idx];
                // Hits come in order: a range already covering this one is common.
                if ranges
                    .last()
                    .is_some_and(|last| last.end >= range.end && last.start <= range.start)
                {
                    continue;
                }
                ranges.push(range);
            }
        }
        windows
    }

    fn text_rule(&mut self, rule_idx: usize, rule: &Rule, ranges: &[Range<usize>]) {
        let needs_captures = rule.secret_group.is_some();
        for range in ranges {
            let haystack = &self.text[range.clone()];
            if needs_captures {
                for caps in rule.pattern.captures_iter(haystack) {
                    let whole = caps.get(0).expect("group 0 is the whole match");
                    let secret = rule.secret_group.and_then(|group| caps.get(group));
                    let (secret_range, secret_text) = match secret {
                        Some(found) => (found.range(), found.as_str()),
                        None => (whole.range(), whole.as_str()),
                    };
                    let start = range.start + whole.start();
                    if !self.region_ok(rule, start) || self.scanner.is_allowed(rule, whole.as_str())
                    {
                        continue;
                    }
                    if rule.kind == Kind::Secret && !looks_secret(rule, secret_text) {
                        continue;
                    }
                    let shown = redacted(
                        whole.as_str(),
                        secret_range.start - whole.start()..secret_range.end - whole.start(),
                    );
                    let secret_at =
                        range.start + secret_range.start..range.start + secret_range.end;
                    self.hits.push(Hit {
                        rule_idx,
                        range: secret_at,
                        excerpt: shown,
                    });
                }
            } else {
                for found in rule.pattern.find_iter(haystack) {
                    let start = range.start + found.start();
                    if !self.region_ok(rule, start) || self.scanner.is_allowed(rule, found.as_str())
                    {
                        continue;
                    }
                    let shown = if rule.kind == Kind::Secret {
                        secret::redact(found.as_str())
                    } else {
                        excerpt(found.as_str())
                    };
                    if rule.kind == Kind::Secret && !looks_secret(rule, found.as_str()) {
                        continue;
                    }
                    self.hits.push(Hit {
                        rule_idx,
                        range: start..range.start + found.end(),
                        excerpt: shown,
                    });
                }
            }
        }
    }

    fn region_ok(&mut self, rule: &Rule, pos: usize) -> bool {
        let wanted = match rule.region {
            Where::Anywhere => return true,
            Where::Code => Region::Code,
            Where::Strings => Region::Str,
            Where::Comments => Region::Comment,
        };
        self.lexed().region_at(pos) == wanted
    }

    fn call_rules(&mut self, call_rules: &[usize]) {
        if !matches!(
            self.lang,
            Lang::Python | Lang::JavaScript | Lang::TypeScript
        ) {
            return;
        }
        let (lang, text) = (self.lang, self.text);
        let rules = &self.scanner.rules.rules;
        let wanted = |name: &str| {
            call_rules
                .iter()
                .any(|&idx| rules[idx].pattern.is_match(name))
        };
        let calls = find_calls(lang, text, self.lexed(), &wanted);
        for call in &calls {
            for &rule_idx in call_rules {
                let rule = &rules[rule_idx];
                if !rule.pattern.is_match(&call.name) {
                    continue;
                }
                if rule
                    .arguments
                    .as_ref()
                    .is_some_and(|re| !re.is_match(&call.args))
                {
                    continue;
                }
                let source = &text[call.pos..call.end];
                if self.scanner.is_allowed(rule, source) {
                    continue;
                }
                self.hits.push(Hit {
                    rule_idx,
                    range: call.pos..call.end,
                    excerpt: excerpt(source),
                });
            }
        }
    }

    /// The hits as findings: located, inline-allowed ones dropped, sorted,
    /// one per rule and position.
    fn findings(mut self) -> Vec<Finding> {
        if self.hits.is_empty() {
            return Vec::new();
        }
        let rules = &self.scanner.rules.rules;
        self.hits.sort_by_key(|hit| (hit.range.start, hit.rule_idx));
        self.hits
            .dedup_by(|a, b| a.rule_idx == b.rule_idx && a.range.start == b.range.start);
        // One secret, one finding: where secret rules overlap (a provider's
        // key assigned to `api_key = "…"` also fits the generic rule), the
        // most severe rule wins, then the first in the set.
        let secret_hits: Vec<(usize, Range<usize>, usize)> = self
            .hits
            .iter()
            .enumerate()
            .filter(|(_, hit)| rules[hit.rule_idx].kind == Kind::Secret)
            .map(|(idx, hit)| (idx, hit.range.clone(), hit.rule_idx))
            .collect();
        let mut shadowed = vec![false; self.hits.len()];
        for (idx, range, rule_idx) in &secret_hits {
            for (other_idx, other_range, other_rule) in &secret_hits {
                let overlaps = range.start < other_range.end && other_range.start < range.end;
                let outranked = (rules[*other_rule].severity, std::cmp::Reverse(*other_rule))
                    > (rules[*rule_idx].severity, std::cmp::Reverse(*rule_idx));
                if idx != other_idx && overlaps && outranked {
                    shadowed[*idx] = true;
                }
            }
        }
        let allowed = self.inline_allows();
        let line_starts = line_starts(self.text.as_bytes());
        let mut findings = Vec::with_capacity(self.hits.len());
        let hits = std::mem::take(&mut self.hits);
        for (hit, shadowed) in hits.into_iter().zip(shadowed) {
            if shadowed {
                continue;
            }
            let (rule_idx, pos, shown) = (hit.rule_idx, hit.range.start, hit.excerpt);
            let rule = &rules[rule_idx];
            let line_idx = line_starts.partition_point(|&start| start <= pos) - 1;
            if allowed.iter().any(|(line, ids)| {
                *line == line_idx && ids.iter().any(|id| id == "all" || *id == rule.id)
            }) {
                continue;
            }
            let column = self.text[line_starts[line_idx]..pos].chars().count() + 1;
            findings.push(Finding {
                rule: rule.id.clone(),
                kind: rule.kind,
                severity: rule.severity,
                line: u32::try_from(line_idx + 1).unwrap_or(u32::MAX),
                column: u32::try_from(column).unwrap_or(u32::MAX),
                excerpt: shown,
                message: rule.message.clone(),
            });
        }
        findings
    }

    /// The lines (0-based) with an allow marker in a comment (anywhere in plain
    /// text), and the rule ids each names.
    fn inline_allows(&mut self) -> Vec<(usize, Vec<String>)> {
        let text = self.text;
        let mut out = Vec::new();
        for (pos, _) in text.match_indices(ALLOW_MARKER) {
            if self.lang != Lang::Text && self.lexed().region_at(pos) != Region::Comment {
                continue;
            }
            let rest = &text[pos + ALLOW_MARKER.len()..];
            let rest = &rest[..rest.find('\n').unwrap_or(rest.len())];
            let ids: Vec<String> = rest
                .split(|ch: char| ch == ',' || ch.is_whitespace())
                .map(|word| word.trim_end_matches("*/").trim_end_matches("-->"))
                .take_while(|word| {
                    word.is_empty()
                        || word.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                        })
                })
                .filter(|word| !word.is_empty())
                .map(str::to_owned)
                .collect();
            let line = text.as_bytes()[..pos]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            out.push((line, ids));
        }
        out
    }
}

/// Whether a secret rule's match is a credential, not an example.
fn looks_secret(rule: &Rule, secret_text: &str) -> bool {
    if secret::is_placeholder(secret_text) {
        return false;
    }
    if rule
        .entropy
        .is_some_and(|threshold| secret::entropy(secret_text) < threshold)
    {
        return false;
    }
    rule.min_char_classes
        .is_none_or(|min| secret::char_classes(secret_text) >= min)
}

/// `whole` with `secret` (a range inside it) redacted, cut to one line.
fn redacted(whole: &str, secret: Range<usize>) -> String {
    let shown = format!(
        "{}{}{}",
        &whole[..secret.start],
        secret::redact(&whole[secret.clone()]),
        &whole[secret.end..]
    );
    let mut shown = excerpt(&shown);
    // A secret spread over lines (a key block) keeps its closing marker visible.
    if whole[secret.end..].contains('\n') && !shown.contains("***") {
        shown = format!(
            "{}{}",
            excerpt(&whole[..secret.start]),
            secret::redact(&whole[secret])
        );
    }
    shown
}

/// The first line of `text`, cut to [`MAX_EXCERPT_CHARS`] characters.
fn excerpt(text: &str) -> String {
    let line = text
        .split('\n')
        .next()
        .unwrap_or(text)
        .trim_end_matches('\r');
    match line.char_indices().nth(MAX_EXCERPT_CHARS) {
        Some((idx, _)) => format!("{}…", &line[..idx]),
        None => line.to_owned(),
    }
}

fn merge(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|range| range.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match out.last_mut() {
            Some(last) if range.start <= last.end + 1 => last.end = last.end.max(range.end),
            _ => out.push(range),
        }
    }
    out
}

fn line_start(bytes: &[u8], pos: usize) -> usize {
    memchr::memrchr(b'\n', &bytes[..pos]).map_or(0, |idx| idx + 1)
}

fn line_end(bytes: &[u8], pos: usize) -> usize {
    memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |idx| pos + idx)
}

fn line_starts(bytes: &[u8]) -> Vec<usize> {
    std::iter::once(0)
        .chain(memchr::memchr_iter(b'\n', bytes).map(|idx| idx + 1))
        .collect()
}

/// 1-based line and character column of byte `pos` in `text`.
fn line_column(text: &str, pos: usize) -> (u32, u32) {
    let start = line_start(text.as_bytes(), pos);
    let line = text.as_bytes()[..pos]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let column = text[start..pos].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}
