//! `automation-framework check`: the content scanner run here, on a file or
//! stdin, with the rules the daemon would use (built-ins plus a rules
//! directory), so an agent's author can check code before the daemon does and
//! a CI job can gate on it without a daemon.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use automation_framework_scanner::{Finding, Lang, RuleSet, Scanner};
use serde::Serialize;

use automation_framework_protocol::{Violation, MAX_PAYLOAD_LEN};

/// What `--json` prints: the daemon's `Check` reply, plus the file.
#[derive(Serialize)]
struct Report<'a> {
    file: &'a str,
    lang: &'a str,
    violations: Vec<Violation>,
}

/// Scans `file` and prints what was found; `Ok(true)` when something was.
///
/// # Errors
/// An unreadable file or rules directory, an invalid rule, an unknown language.
pub fn run(
    file: &Path,
    lang: Option<&str>,
    rules_dir: Option<&Path>,
    json: bool,
) -> anyhow::Result<bool> {
    let lang = lang
        .map(|name| {
            name.parse::<Lang>().map_err(|_| {
                anyhow::anyhow!("unknown language {name:?}; use python, javascript, typescript, shell, rust, go or text")
            })
        })
        .transpose()?;
    let rules = match rules_dir {
        Some(dir) => RuleSet::load_dir(dir).map_err(|err| anyhow::anyhow!("{err}"))?,
        None => RuleSet::builtin(),
    };
    let scanner = Scanner::new(rules);
    let text = read(file)?;
    let shown = file.display().to_string();
    let findings = if shown == "-" {
        scanner.scan(lang, &text)
    } else {
        scanner.scan_file(&shown, lang, &text)
    };
    let lang = lang
        .or_else(|| Lang::from_path(&shown))
        .unwrap_or_else(|| Lang::guess(&text));
    let found = !findings.is_empty();
    if json {
        let report = Report {
            file: &shown,
            lang: lang.name(),
            violations: findings.into_iter().map(violation).collect(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &findings {
            println!(
                "{shown}:{}:{}: {} {} ({}): {}\n    {}",
                f.line,
                f.column,
                f.severity.name(),
                f.rule,
                f.kind.name(),
                f.message,
                f.excerpt
            );
        }
        if !found {
            println!("{shown}: clean ({})", lang.name());
        }
    }
    Ok(found)
}

/// The text of `file` (`-`: stdin), at most 64 times the daemon's payload limit
/// (a local scan has no frame to fit, but a runaway pipe should not eat memory).
///
/// # Errors
/// Unreadable, too large or not UTF-8.
pub fn read(file: &Path) -> anyhow::Result<String> {
    let limit = 64 * MAX_PAYLOAD_LEN as u64;
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .context("cannot read stdin")?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    if bytes.len() as u64 > limit {
        anyhow::bail!("{} is larger than {limit} bytes", file.display());
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", file.display()))
}

fn violation(f: Finding) -> Violation {
    Violation {
        kind: f.kind.name().to_owned(),
        rule: f.rule,
        severity: f.severity.name().to_owned(),
        line: f.line,
        column: f.column,
        excerpt: f.excerpt,
        message: f.message,
    }
}
