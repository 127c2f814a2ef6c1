//! Scanner throughput on a generated, mixed 10 MB corpus of real-looking source
//! (Python, JavaScript, TypeScript, shell, Rust, Go and plain text files of
//! 2–16 KiB, with the comments, strings, imports and the occasional
//! secret-ish word real code has), single thread, each file scanned on its own
//! as the daemon would. Prints MB/s for the full scan and for the lexers alone.
//!
//! `cargo bench --bench throughput` (set `SCAN_BENCH_MB` for another size).

#![allow(clippy::useless_format)] // chunk templates read alike, with or without holes

use std::hint::black_box;
use std::time::Instant;

use automation_framework_scanner::{lex, Lang, Scanner};

fn main() {
    let target_mb: usize = std::env::var("SCAN_BENCH_MB")
        .ok()
        .and_then(|mb| mb.parse().ok())
        .unwrap_or(10);
    let files = corpus(target_mb << 20);
    let total: usize = files.iter().map(|(_, text)| text.len()).sum();
    let mb = total as f64 / 1e6;
    let scanner = Scanner::builtin();
    if std::env::var_os("SCAN_BENCH_BREAKDOWN").is_some() {
        breakdown(&files);
    }

    // Warm-up (regex lazy DFAs fill their caches on first use).
    let mut n_findings = 0;
    for (lang, text) in files.iter().take(50) {
        n_findings += scanner.scan(Some(*lang), text).len();
    }
    black_box(n_findings);

    let mut best = f64::MAX;
    let mut best_cpu = f64::MAX;
    let mut n_findings = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let cpu_start = thread_cpu_seconds();
        n_findings = 0;
        for (lang, text) in &files {
            n_findings += black_box(scanner.scan(Some(*lang), text)).len();
        }
        best = best.min(start.elapsed().as_secs_f64());
        if let (Some(end), Some(begin)) = (thread_cpu_seconds(), cpu_start) {
            best_cpu = best_cpu.min(end - begin);
        }
    }
    println!(
        "scan:  {:.1} MB in {} files, {:.3} s wall, {:.0} MB/s wall, {:.0} MB/s of thread CPU time, single thread ({n_findings} findings)",
        mb,
        files.len(),
        best,
        mb / best,
        mb / best_cpu
    );

    for lang in Lang::ALL {
        let subset: Vec<&str> = files
            .iter()
            .filter(|(l, _)| *l == lang)
            .map(|(_, text)| text.as_str())
            .collect();
        let bytes: usize = subset.iter().map(|text| text.len()).sum();
        if bytes == 0 {
            continue;
        }
        let start = Instant::now();
        let mut n_spans = 0;
        for text in &subset {
            n_spans += black_box(lex::lex(lang, text)).spans.len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "lex {:<10} {:>6.2} MB {:>7.0} MB/s ({n_spans} spans)",
            lang.name(),
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs
        );
    }
}

/// This thread's time on a CPU (Linux `schedstat`), so a shared, busy machine
/// measures the scanner rather than the queue for the CPU.
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: f64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(nanos / 1e9)
}

/// A deterministic xorshift generator: the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "user",
    "account",
    "request",
    "response",
    "config",
    "value",
    "items",
    "result",
    "cache",
    "handler",
    "session",
    "token",
    "client",
    "server",
    "record",
    "buffer",
    "index",
    "count",
    "payload",
    "message",
    "event",
    "state",
    "router",
    "model",
    "query",
    "path",
    "name",
    "data",
    "executor",
    "evaluate",
    "task",
    "queue",
    "retry",
    "timeout",
    "limit",
    "offset",
    "secret_name",
];

fn ident(rng: &mut Rng) -> String {
    format!("{}_{}", rng.pick(WORDS), rng.pick(WORDS))
}

fn corpus(target: usize) -> Vec<(Lang, String)> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut files = Vec::new();
    let mut total = 0;
    while total < target {
        let lang = Lang::ALL[rng.below(Lang::ALL.len())];
        let size = 2048 + rng.below(14 * 1024);
        let mut text = String::with_capacity(size + 512);
        while text.len() < size {
            text.push_str(&chunk(lang, &mut rng));
        }
        total += text.len();
        files.push((lang, text));
    }
    files
}

fn chunk(lang: Lang, rng: &mut Rng) -> String {
    let (a, b, c) = (ident(rng), ident(rng), ident(rng));
    let n = rng.below(1000);
    match lang {
        Lang::Python => match rng.below(7) {
            6 => format!("import re\nimport subprocess\n{a} = re.compile(r'^{b}-(\\d+)$')\nsubprocess.run(['git', 'log', '-n', '{n}'], check=True)\n"),
            0 => format!("import os\nfrom typing import Optional\nfrom .models import {a}\n\n"),
            1 => format!("def {a}(self, {b}: Optional[str] = None) -> dict:\n    \"\"\"Return the {b} for this {c}.\n\n    The executor evaluates each job in order.\n    \"\"\"\n    if {b} is None:\n        return {{}}\n    return {{'{c}': self.{b}.get({n}), \"key\": f\"{{{b}}}-{n}\"}}\n\n"),
            2 => format!("    # Retry the {a} call when the {b} times out.\n    for attempt in range({n}):\n        {c} = client.fetch({a}, timeout=30)\n        log.info('fetched %s', {c})\n\n"),
            3 => format!("class {}:\n    {a} = {n}\n    def run(self):\n        return self.executor.submit(self.{b})\n\n", b.to_uppercase()),
            4 => format!("{a} = [x * {n} for x in {b} if x.{c} > 0]\nresult = model.evaluate({a})\n"),
            _ => format!("password = os.environ['DB_PASSWORD']\n{a} = settings.get('{b}', '{c}')\n"),
        },
        Lang::JavaScript | Lang::TypeScript => match rng.below(7) {
            6 => format!("const {{ execFile }} = require('child_process');\nexecFile('git', ['log', '-n', '{n}'], ({a}) => {b}({a}));\n"),
            0 => format!("import {{ {a} }} from './{b}.js';\nconst {c} = require('path');\n\n"),
            1 => format!("export function {a}({b}{}) {{\n  // Build the {c} URL.\n  const url = `${{base}}/{b}/${{{b}.id}}?n={n}`;\n  return fetch(url).then((r) => r.json());\n}}\n\n", if lang == Lang::TypeScript { ": string" } else { "" }),
            2 => format!("/**\n * {a}: keeps the {b} in sync.\n * @param {{string}} {c}\n */\nconst {a} = async ({c}) => {{\n  const m = /^(\\w+)-(\\d+)$/.exec({c});\n  return m ? m[1] : null;\n}};\n\n"),
            3 => format!("const {a} = {{ {b}: '{c}', count: {n}, enabled: true }};\nconsole.log(\"{a}\", {a});\n"),
            4 => format!("if ({a}.length > {n} && {b} !== undefined) {{\n  {c}.push({a}.slice(0, {n} / 2));\n}}\n"),
            _ => format!("const apiKey = process.env.API_KEY;\nconst token = await getToken('{a}');\n"),
        },
        Lang::Shell => match rng.below(6) {
            0 => format!("#!/usr/bin/env bash\nset -euo pipefail\n{}=\"${{1:-{n}}}\"\n", a.to_uppercase()),
            1 => format!("# Fetch the {a} archive and unpack it.\ncurl -fsSL -o /tmp/{b}.tgz \"https://example.com/{b}-{n}.tgz\"\ntar xzf /tmp/{b}.tgz -C \"$DEST\"\n"),
            2 => format!("for f in \"$DIR\"/*.log; do\n  echo \"processing $f ($(wc -l < \"$f\") lines)\"\ndone\n"),
            3 => format!("cat <<EOF > /etc/{a}.conf\n{b}={n}\n{c}=true\nEOF\n"),
            4 => format!("curl -fsSL https://example.com/{a}.sh | sh  # {b}\n"),
            _ => format!("if [ -n \"${{{}:-}}\" ]; then\n  {a} --{b} '{c}' | grep -v '^#' || true\nfi\n", b.to_uppercase()),
        },
        Lang::Rust => match rng.below(5) {
            0 => format!("use std::collections::HashMap;\nuse crate::{a}::{b};\n\n"),
            1 => format!("/// Returns the {a} of the {b}.\npub fn {a}(&self, {b}: &str) -> Option<u64> {{\n    let {c} = self.map.get({b})?;\n    Some(*{c} + {n})\n}}\n\n"),
            2 => format!("    // The {a} is checked before the {b}.\n    let msg = format!(\"{{}}: {{}}\", \"{c}\", {n});\n    let raw = r#\"{{\"{a}\": {n}}}\"#;\n"),
            3 => format!("#[derive(Debug, Clone)]\npub struct {} {{\n    {a}: u32,\n    {b}: Vec<String>,\n}}\n\n", b.to_uppercase()),
            _ => format!("match {a} {{\n    Some(x) if x > {n} => {b}(x),\n    _ => {c}('x'),\n}}\n"),
        },
        Lang::Go => match rng.below(5) {
            0 => format!("import (\n\t\"fmt\"\n\t\"os\"\n)\n\n"),
            1 => format!("// {a} returns the {b}.\nfunc {a}({b} string) (int, error) {{\n\tif {b} == \"\" {{\n\t\treturn 0, fmt.Errorf(\"empty {c}\")\n\t}}\n\treturn {n}, nil\n}}\n\n"),
            2 => format!("\t{a} := `select {b} from {c} where id = ?`\n\trows, err := db.Query({a}, {n})\n\tif err != nil {{\n\t\treturn err\n\t}}\n"),
            3 => format!("type {} struct {{\n\t{a} int `json:\"{b}\"`\n\t{c} string\n}}\n\n", b.to_uppercase()),
            _ => format!("\tpassword := os.Getenv(\"PASSWORD\")\n\t{a} := '{}'\n", "x"),
        },
        Lang::Text => match rng.below(3) {
            0 => format!("## {a}\n\nThe {b} service keeps a {c} per account; see the password policy.\nIt retries {n} times before giving up.\n\n"),
            1 => format!("{}={n}\n{}=true\n", a.to_uppercase(), b.to_uppercase()),
            _ => format!("- [ ] check the {a} for {b} ({n} items)\n"),
        },
    }
}

#[allow(dead_code)]
fn breakdown(files: &[(Lang, String)]) {
    use automation_framework_scanner::RuleSet;
    let all: Vec<String> = RuleSet::builtin()
        .rules()
        .iter()
        .map(|r| r.id.clone())
        .collect();
    let groups: &[(&str, &[&str])] = &[
        ("calls", &["py-", "js-"]),
        ("twilio", &["twilio"]),
        ("generic", &["generic"]),
        ("sh", &["sh-"]),
        (
            "secrets-but-generic-twilio",
            &[
                "aws",
                "gcp",
                "azure",
                "openai",
                "anthropic",
                "github",
                "gitlab",
                "stripe",
                "slack",
                "sendgrid",
                "private",
                "jwt",
                "connection",
            ],
        ),
    ];
    let total: usize = files.iter().map(|(_, t)| t.len()).sum();
    for (name, prefixes) in groups {
        let disable: Vec<String> = all
            .iter()
            .filter(|id| !prefixes.iter().any(|p| id.starts_with(p)))
            .map(|id| format!("\"{id}\""))
            .collect();
        let file = format!("disable = [{}]", disable.join(","));
        let scanner = Scanner::new(RuleSet::builtin_with(&[("b.toml", &file)]).unwrap());
        let start = Instant::now();
        for (lang, text) in files {
            black_box(scanner.scan(Some(*lang), text));
        }
        println!(
            "only {name}: {:.0} MB/s",
            total as f64 / 1e6 / start.elapsed().as_secs_f64()
        );
    }
}
