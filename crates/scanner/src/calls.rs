//! Calls in code, with their callee names resolved: the code-aware part that a
//! regex cannot do.
//!
//! The lexed text becomes a token stream (identifiers, punctuation, string
//! contents; comments dropped). An alias table is built from the text's own
//! imports and simple assignments (`import subprocess as sp`, `from os import
//! system as s`, `const { exec } = require('child_process')`, `import * as cp
//! from 'node:child_process'`, `e = eval`). Each call's callee is then read as
//! a dotted path, following `getattr(m, "x")`, `m["x"]`, `m.__dict__["x"]`,
//! `__import__("m")`, `require("m")` and `importlib.import_module("m")`, with
//! its first name replaced through the alias table. Rules match that name, so
//! they stay data (`^subprocess\.run$`), and a different identifier
//! (`evaluate`, `my_exec`, `re.exec`) never reads as a dangerous one.

use std::collections::HashMap;

use crate::lex::{is_ident_byte, Lexed, Region};
use crate::Lang;

/// One call found in code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The resolved callee (`subprocess.run`, `eval`, `new Function`).
    pub name: String,
    /// Byte offset of the callee's first token.
    pub pos: usize,
    /// Byte offset just past the call's closing parenthesis (or its last token).
    pub end: usize,
    /// The arguments, rendered from tokens: identifiers and punctuation as
    /// written, each string literal as `"…"` (so `shell=True` inside a string
    /// never reads as the keyword argument).
    pub args: String,
}

/// Calls longer than this many tokens have their argument text cut.
const MAX_ARG_TOKENS: usize = 256;
/// Keywords that a `(` may follow without making a call.
const NOT_CALLEES: &[&str] = &[
    "import", "if", "elif", "while", "for", "return", "and", "or", "not", "in", "is", "with",
    "assert", "yield", "await", "lambda", "except", "switch", "catch", "typeof", "void",
];
/// Alias chains longer than this are not followed (`a = b; b = a`).
const MAX_ALIAS_HOPS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Ident(&'a str),
    Punct(u8),
    Str(&'a str),
    Newline,
}

#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    tok: Tok<'a>,
    pos: usize,
    end: usize,
}

/// Every call in the code regions of `text` whose resolved name passes
/// `wanted` (the scanner passes "some call rule matches it", so the arguments
/// of the other calls are never rendered).
pub fn find_calls(
    lang: Lang,
    text: &str,
    lexed: &Lexed,
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<Call> {
    let tokens = tokenize(lang, text, lexed);
    let mut resolver = Resolver {
        lang,
        tokens: &tokens,
        aliases: HashMap::new(),
        star_modules: Vec::new(),
        wanted,
    };
    resolver.collect_aliases();
    let mut calls = Vec::new();
    for idx in 0..tokens.len() {
        resolver.call_at(idx, &mut calls);
    }
    calls.sort_by(|a, b| (a.pos, &a.name).cmp(&(b.pos, &b.name)));
    calls.dedup_by(|a, b| a.pos == b.pos && a.name == b.name);
    calls
}

fn tokenize<'a>(lang: Lang, text: &'a str, lexed: &Lexed) -> Vec<Token<'a>> {
    let bytes = text.as_bytes();
    let dollar = matches!(lang, Lang::JavaScript | Lang::TypeScript);
    let mut tokens = Vec::new();
    let mut pos = 0;
    let mut spans = lexed.spans.iter().peekable();
    while pos < bytes.len() {
        if let Some(span) = spans.peek() {
            if span.start <= pos {
                if span.region == Region::Str {
                    tokens.push(Token {
                        tok: Tok::Str(&text[span.inner_start..span.inner_end]),
                        pos: span.start,
                        end: span.end,
                    });
                }
                pos = pos.max(span.end);
                spans.next();
                continue;
            }
        }
        let code_end = spans.peek().map_or(bytes.len(), |span| span.start);
        while pos < code_end {
            let byte = bytes[pos];
            if is_ident_byte(byte) || (dollar && byte == b'$') {
                let start = pos;
                while pos < code_end
                    && (is_ident_byte(bytes[pos]) || (dollar && bytes[pos] == b'$'))
                {
                    pos += 1;
                }
                tokens.push(Token {
                    tok: Tok::Ident(&text[start..pos]),
                    pos: start,
                    end: pos,
                });
                continue;
            }
            let tok = match byte {
                b'\n' => Some(Tok::Newline),
                b' ' | b'\t' | b'\r' => None,
                // A Python line continuation joins two lines into one statement.
                b'\\' if bytes.get(pos + 1) == Some(&b'\n') => {
                    pos += 2;
                    continue;
                }
                _ => Some(Tok::Punct(byte)),
            };
            if let Some(tok) = tok {
                tokens.push(Token {
                    tok,
                    pos,
                    end: pos + 1,
                });
            }
            pos += 1;
        }
    }
    tokens
}

struct Resolver<'t, 'a> {
    lang: Lang,
    tokens: &'t [Token<'a>],
    /// Local name → the dotted path it stands for.
    aliases: HashMap<&'a str, Vec<String>>,
    /// Modules imported with `from m import *` (Python).
    star_modules: Vec<String>,
    wanted: &'t dyn Fn(&str) -> bool,
}

// === impl Resolver ===

impl<'a> Resolver<'_, 'a> {
    fn tok(&self, idx: usize) -> Option<Tok<'a>> {
        self.tokens.get(idx).map(|token| token.tok)
    }

    fn is_punct(&self, idx: usize, byte: u8) -> bool {
        self.tok(idx) == Some(Tok::Punct(byte))
    }

    fn is_statement_start(&self, idx: usize) -> bool {
        idx == 0
            || matches!(
                self.tok(idx - 1),
                Some(Tok::Newline | Tok::Punct(b';' | b'{' | b'}' | b':'))
            )
    }

    fn python(&self) -> bool {
        self.lang == Lang::Python
    }

    fn collect_aliases(&mut self) {
        for idx in 0..self.tokens.len() {
            match self.tok(idx) {
                Some(Tok::Ident("import")) if self.python() && self.is_statement_start(idx) => {
                    self.python_import(idx + 1)
                }
                Some(Tok::Ident("from")) if self.python() && self.is_statement_start(idx) => {
                    self.python_from_import(idx + 1)
                }
                Some(Tok::Ident("import")) if !self.python() => self.js_import(idx + 1),
                Some(Tok::Ident(name))
                    if self.is_statement_start(idx) || self.is_declaration(idx) =>
                {
                    self.assignment(idx, name)
                }
                Some(Tok::Punct(b'{')) if !self.python() && self.is_declaration(idx) => {
                    self.js_destructure(idx)
                }
                _ => {}
            }
        }
    }

    /// Whether the token before `idx` is `const`, `let` or `var`.
    fn is_declaration(&self, idx: usize) -> bool {
        idx > 0 && matches!(self.tok(idx - 1), Some(Tok::Ident("const" | "let" | "var")))
    }

    /// `import a.b as c, d` (after the keyword).
    fn python_import(&mut self, mut idx: usize) {
        loop {
            let (path, next) = self.dotted(idx);
            if path.is_empty() {
                return;
            }
            idx = next;
            if self.tok(idx) == Some(Tok::Ident("as")) {
                if let Some(Tok::Ident(local)) = self.tok(idx + 1) {
                    self.aliases.insert(local, path);
                }
                idx += 2;
            }
            if !self.is_punct(idx, b',') {
                return;
            }
            idx += 1;
        }
    }

    /// `from m import a as b, c` / `from m import (a, b)` / `from m import *`.
    fn python_from_import(&mut self, mut idx: usize) {
        let (module, next) = self.dotted(idx);
        idx = next;
        if module.is_empty() || self.tok(idx) != Some(Tok::Ident("import")) {
            return;
        }
        idx += 1;
        let parens = self.is_punct(idx, b'(');
        if parens {
            idx += 1;
        }
        if self.is_punct(idx, b'*') {
            self.star_modules.push(module.join("."));
            return;
        }
        loop {
            while parens && self.tok(idx) == Some(Tok::Newline) {
                idx += 1;
            }
            let Some(Tok::Ident(name)) = self.tok(idx) else {
                return;
            };
            let mut local = name;
            idx += 1;
            if self.tok(idx) == Some(Tok::Ident("as")) {
                if let Some(Tok::Ident(alias)) = self.tok(idx + 1) {
                    local = alias;
                }
                idx += 2;
            }
            let mut path = module.clone();
            path.push(name.to_owned());
            self.aliases.insert(local, path);
            while parens && self.tok(idx) == Some(Tok::Newline) {
                idx += 1;
            }
            if !self.is_punct(idx, b',') {
                return;
            }
            idx += 1;
        }
    }

    /// `import x from 'm'`, `import * as x from 'm'`, `import { a, b as c } from 'm'`.
    fn js_import(&mut self, mut idx: usize) {
        let mut bindings: Vec<(&'a str, Option<&'a str>)> = Vec::new();
        let mut in_braces = false;
        while let Some(tok) = self.tok(idx) {
            match tok {
                Tok::Ident("from") if !in_braces => break,
                Tok::Punct(b'{') => in_braces = true,
                Tok::Punct(b'}') => in_braces = false,
                Tok::Punct(b'*') => {
                    if let (Some(Tok::Ident("as")), Some(Tok::Ident(local))) =
                        (self.tok(idx + 1), self.tok(idx + 2))
                    {
                        bindings.push((local, None));
                        idx += 2;
                    }
                }
                Tok::Ident("as") if in_braces => {
                    if let (Some((_, member)), Some(Tok::Ident(local))) =
                        (bindings.pop(), self.tok(idx + 1))
                    {
                        bindings.push((local, member));
                        idx += 1;
                    }
                }
                Tok::Ident("type") => {}
                Tok::Ident(name) if in_braces => bindings.push((name, Some(name))),
                Tok::Ident(name) => bindings.push((name, None)),
                Tok::Punct(b',') | Tok::Newline => {}
                _ => return,
            }
            idx += 1;
        }
        let Some(Tok::Str(module)) = self.tok(idx + 1) else {
            return;
        };
        let module = js_module(module);
        for (local, member) in bindings {
            let mut path = vec![module.clone()];
            path.extend(member.map(str::to_owned));
            self.aliases.insert(local, path);
        }
    }

    /// `const { a, b: c } = <reference>`: each name stands for a member.
    fn js_destructure(&mut self, open: usize) {
        let mut idx = open + 1;
        let mut bindings: Vec<(&'a str, &'a str)> = Vec::new();
        while let Some(tok) = self.tok(idx) {
            match tok {
                Tok::Punct(b'}') => break,
                Tok::Ident(name) => {
                    if self.is_punct(idx + 1, b':') {
                        if let Some(Tok::Ident(local)) = self.tok(idx + 2) {
                            bindings.push((local, name));
                            idx += 2;
                        }
                    } else {
                        bindings.push((name, name));
                    }
                }
                Tok::Punct(b',') | Tok::Newline => {}
                _ => return,
            }
            idx += 1;
        }
        if !self.is_punct(idx + 1, b'=') {
            return;
        }
        let Some((base, _)) = self.reference(idx + 2) else {
            return;
        };
        for (local, member) in bindings {
            let mut path = base.clone();
            path.push(member.to_owned());
            self.aliases.insert(local, path);
        }
    }

    /// `name = <reference>` ending the statement (no call after it): `name`
    /// now stands for what the reference resolves to.
    fn assignment(&mut self, idx: usize, name: &'a str) {
        if !self.is_punct(idx + 1, b'=') || self.is_punct(idx + 2, b'=') {
            return;
        }
        if !self.may_be_alias(idx + 2) {
            return;
        }
        let Some((path, next)) = self.reference(idx + 2) else {
            return;
        };
        let ends = matches!(
            self.tok(next),
            None | Some(Tok::Newline | Tok::Punct(b';' | b','))
        );
        if ends && path.first().map(String::as_str) != Some(name) {
            self.aliases.insert(name, path);
        }
    }

    /// A dotted name `a.b.c` from `idx`: its parts and the index after it.
    fn dotted(&self, mut idx: usize) -> (Vec<String>, usize) {
        let mut parts = Vec::new();
        while let Some(Tok::Ident(name)) = self.tok(idx) {
            parts.push(name.to_owned());
            idx += 1;
            if !self.is_punct(idx, b'.') {
                break;
            }
            idx += 1;
        }
        (parts, idx)
    }

    /// Reads a reference expression at `idx`: a name, then `.x`, `["x"]`
    /// and the namespace functions. Returns its resolved path and the index
    /// after it.
    fn reference(&self, idx: usize) -> Option<(Vec<String>, usize)> {
        self.reference_depth(idx, 0)
    }

    fn reference_depth(&self, idx: usize, depth: usize) -> Option<(Vec<String>, usize)> {
        if depth > MAX_ALIAS_HOPS {
            return None;
        }
        let Some(Tok::Ident(first)) = self.tok(idx) else {
            return None;
        };
        let mut path: Vec<String>;
        let mut next;
        let open = idx + 1;
        match first {
            // getattr(obj, "name")
            "getattr" if self.python() && self.is_punct(open, b'(') => {
                let (inner, after) = self.reference_depth(open + 1, depth + 1)?;
                let (Some(Tok::Punct(b',')), Some(Tok::Str(member))) =
                    (self.tok(after), self.tok(after + 1))
                else {
                    return None;
                };
                path = inner;
                path.push(member.to_owned());
                next = self.skip_to_close(after + 2)?;
            }
            // __import__("m"), require("m")
            "__import__" | "require"
                if self.is_punct(open, b'(') && matches!(self.tok(open + 1), Some(Tok::Str(_))) =>
            {
                let Some(Tok::Str(module)) = self.tok(open + 1) else {
                    return None;
                };
                path = if self.python() {
                    module.split('.').map(str::to_owned).collect()
                } else {
                    vec![js_module(module)]
                };
                next = self.skip_to_close(open + 2)?;
            }
            // globals()["x"], vars()["x"]
            "globals" | "locals" | "vars"
                if self.python() && self.is_punct(open, b'(') && self.is_punct(open + 1, b')') =>
            {
                path = vec!["builtins".to_owned()];
                next = open + 2;
            }
            _ => {
                path = self.resolve(first);
                next = idx + 1;
            }
        }
        loop {
            // importlib.import_module("m")
            if path.len() == 2
                && path[0] == "importlib"
                && path[1] == "import_module"
                && self.is_punct(next, b'(')
            {
                let Some(Tok::Str(module)) = self.tok(next + 1) else {
                    break;
                };
                path = module.split('.').map(str::to_owned).collect();
                next = self.skip_to_close(next + 2)?;
            } else if self.is_punct(next, b'.') {
                let Some(Tok::Ident(member)) = self.tok(next + 1) else {
                    break;
                };
                path.push(member.to_owned());
                next += 2;
            } else if self.is_punct(next, b'[') {
                let (Some(Tok::Str(member)), true) =
                    (self.tok(next + 1), self.is_punct(next + 2, b']'))
                else {
                    break;
                };
                path.push(member.to_owned());
                next += 3;
            } else {
                break;
            }
        }
        Some((path, next))
    }

    /// The index after the `)` that closes the parenthesis already open before
    /// `idx`.
    fn skip_to_close(&self, mut idx: usize) -> Option<usize> {
        let mut depth = 0usize;
        let limit = idx + MAX_ARG_TOKENS * 4;
        while idx < self.tokens.len().min(limit) {
            match self.tok(idx) {
                Some(Tok::Punct(b'(' | b'[' | b'{')) => depth += 1,
                Some(Tok::Punct(b')' | b']' | b'}')) => {
                    if depth == 0 {
                        return Some(idx + 1);
                    }
                    depth -= 1;
                }
                _ => {}
            }
            idx += 1;
        }
        None
    }

    /// A local name through the alias table.
    fn resolve(&self, name: &str) -> Vec<String> {
        let mut path = vec![name.to_owned()];
        for _ in 0..MAX_ALIAS_HOPS {
            let Some(target) = self.aliases.get(path[0].as_str()) else {
                break;
            };
            if target.first() == Some(&path[0]) {
                path.splice(0..1, target.iter().cloned());
                break;
            }
            path.splice(0..1, target.iter().cloned());
        }
        path
    }

    /// Records the call whose callee starts at `idx`, if there is one.
    fn call_at(&self, idx: usize, calls: &mut Vec<Call>) {
        let Some(Tok::Ident(first)) = self.tok(idx) else {
            return;
        };
        if NOT_CALLEES.contains(&first) {
            return;
        }
        if idx > 0 {
            match self.tok(idx - 1) {
                Some(Tok::Punct(b'.')) => return,
                Some(Tok::Ident("def" | "class" | "function" | "fn" | "func" | "async")) => return,
                _ => {}
            }
        }
        if !self.may_be_call(idx) {
            return;
        }
        let new = idx > 0 && self.tok(idx - 1) == Some(Tok::Ident("new"));
        let Some((path, next)) = self.reference(idx) else {
            return;
        };
        if self.is_punct(next, b'(') {
            let mut names = vec![self.normalize(&path)];
            if path.len() == 1 && path[0] == first {
                names.extend(
                    self.star_modules
                        .iter()
                        .map(|module| format!("{module}.{first}")),
                );
            }
            self.push_calls(idx, next, new, names, calls);
        }
        // The namespace function itself (`__import__(…)`, `getattr(…)`) is a
        // call too, when the reference went on past it.
        if next != idx + 1 && self.is_punct(idx + 1, b'(') {
            let names = vec![self.normalize(&self.resolve(first))];
            self.push_calls(idx, idx + 1, new, names, calls);
        }
    }

    /// A cheap look ahead, without allocating: does a `(` follow the name at
    /// `idx` and its `.x` / `["x"]` steps? Most identifiers are not callees,
    /// and this keeps the resolver off them.
    fn may_be_call(&self, idx: usize) -> bool {
        let mut next = idx + 1;
        loop {
            match (self.tok(next), self.tok(next + 1), self.tok(next + 2)) {
                (Some(Tok::Punct(b'(')), _, _) => return true,
                (Some(Tok::Punct(b'.')), Some(Tok::Ident(_)), _) => next += 2,
                (Some(Tok::Punct(b'[')), Some(Tok::Str(_)), Some(Tok::Punct(b']'))) => next += 3,
                _ => return false,
            }
        }
    }

    /// A cheap look ahead for [`Resolver::assignment`]: is the right-hand side
    /// at `idx` a plain reference ending the statement, or one of the
    /// namespace functions? Keeps the resolver off ordinary assignments.
    fn may_be_alias(&self, idx: usize) -> bool {
        match self.tok(idx) {
            Some(Tok::Ident(
                "getattr" | "require" | "__import__" | "importlib" | "globals" | "vars" | "locals",
            )) => return true,
            Some(Tok::Ident(_)) => {}
            _ => return false,
        }
        let mut next = idx + 1;
        loop {
            match (self.tok(next), self.tok(next + 1), self.tok(next + 2)) {
                (None | Some(Tok::Newline | Tok::Punct(b';' | b',')), _, _) => return true,
                (Some(Tok::Punct(b'.')), Some(Tok::Ident(_)), _) => next += 2,
                (Some(Tok::Punct(b'[')), Some(Tok::Str(_)), Some(Tok::Punct(b']'))) => next += 3,
                _ => return false,
            }
        }
    }

    /// Pushes a call named each of `names`, callee at `idx`, `(` at `open`.
    fn push_calls(
        &self,
        idx: usize,
        open: usize,
        new: bool,
        names: Vec<String>,
        calls: &mut Vec<Call>,
    ) {
        let names: Vec<String> = names
            .into_iter()
            .map(|name| if new { format!("new {name}") } else { name })
            .filter(|name| (self.wanted)(name))
            .collect();
        if names.is_empty() {
            return;
        }
        let close = self.skip_to_close(open + 1);
        // A method definition in a JS class body (`exec(cmd) { … }`) is not a call.
        if !self.python() && close.is_some_and(|close| self.is_punct(close, b'{')) {
            return;
        }
        let end_idx = close.unwrap_or(self.tokens.len());
        let args = self.render(open + 1, end_idx.saturating_sub(1));
        let end = self.tokens[end_idx.saturating_sub(1).max(idx)].end;
        let pos = self.tokens[idx].pos;
        for name in names {
            calls.push(Call {
                name,
                pos,
                end,
                args: args.clone(),
            });
        }
    }

    /// Drops the namespaces that hold the builtins (`builtins.eval` is `eval`,
    /// `window.eval` is `eval`) and `__dict__` steps.
    fn normalize(&self, path: &[String]) -> String {
        let mut parts: Vec<&str> = path
            .iter()
            .map(String::as_str)
            .filter(|part| *part != "__dict__")
            .collect();
        let globals: &[&str] = if self.python() {
            &["builtins", "__builtins__", "__builtin__"]
        } else {
            &["window", "globalThis", "global", "self"]
        };
        while parts.len() > 1 && globals.contains(&parts[0]) {
            parts.remove(0);
        }
        parts.join(".")
    }

    /// The argument tokens `from..to` as text (strings as `"…"`).
    fn render(&self, from: usize, to: usize) -> String {
        let mut out = String::new();
        for token in self.tokens.iter().take(to).skip(from).take(MAX_ARG_TOKENS) {
            match token.tok {
                Tok::Ident(name) => {
                    if out.ends_with(|ch: char| ch.is_alphanumeric() || ch == '_') {
                        out.push(' ');
                    }
                    out.push_str(name);
                }
                Tok::Punct(byte) => out.push(char::from(byte)),
                Tok::Str(_) => out.push_str("\"…\""),
                Tok::Newline => out.push(' '),
            }
        }
        out
    }
}

/// A JS module specifier as a name: `node:child_process` is `child_process`.
fn js_module(module: &str) -> String {
    module.strip_prefix("node:").unwrap_or(module).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lex::lex;

    fn names(lang: Lang, text: &str) -> Vec<String> {
        find_calls(lang, text, &lex(lang, text), &|_| true)
            .into_iter()
            .map(|call| call.name)
            .collect()
    }

    #[test]
    fn python_imports_and_aliases_resolve() {
        let text = "import subprocess as sp\nfrom os import system as s, path\nimport os.path\nsp.run(cmd, shell=True)\ns('ls')\npath.join(a)\n";
        assert_eq!(
            names(Lang::Python, text),
            ["subprocess.run", "os.system", "os.path.join"]
        );
        let text = "from subprocess import (\n    Popen as P,\n    run,\n)\nP(x)\nrun(y)\n";
        assert_eq!(
            names(Lang::Python, text),
            ["subprocess.Popen", "subprocess.run"]
        );
        assert_eq!(
            names(Lang::Python, "from os import *\nsystem('x')\n"),
            ["os.system", "system"]
        );
    }

    #[test]
    fn python_dynamic_lookups_resolve() {
        assert_eq!(
            names(Lang::Python, "getattr(builtins, \"eval\")(x)"),
            ["eval", "getattr"]
        );
        assert_eq!(names(Lang::Python, "__builtins__[\"exec\"](c)"), ["exec"]);
        assert_eq!(
            names(Lang::Python, "__builtins__.__dict__['eval'](c)"),
            ["eval"]
        );
        assert_eq!(
            names(Lang::Python, "__import__('os').system('id')"),
            ["__import__", "os.system"]
        );
        assert_eq!(
            names(
                Lang::Python,
                "importlib.import_module('subprocess').call(c, shell=True)"
            ),
            ["subprocess.call"]
        );
        assert_eq!(names(Lang::Python, "e = eval\ne(x)\n"), ["eval"]);
        assert_eq!(
            names(Lang::Python, "f = getattr(os, 'system')\nf(c)\n"),
            ["getattr", "os.system"]
        );
    }

    #[test]
    fn python_non_calls_and_other_names() {
        assert_eq!(
            names(
                Lang::Python,
                "def eval(self):\n    pass\nx.eval(y)\nevaluate(z)\nmy_exec(q)\n"
            ),
            ["x.eval", "evaluate", "my_exec"]
        );
        assert_eq!(
            names(Lang::Python, "# eval(x)\ns = 'exec(y)'\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn javascript_requires_and_imports_resolve() {
        let text = "const cp = require('child_process');\nconst { exec: run, spawn } = require(\"node:child_process\");\ncp.exec(c); run(c); spawn(c, {shell: true});\n";
        assert_eq!(
            names(Lang::JavaScript, text),
            [
                "require",
                "require",
                "child_process.exec",
                "child_process.exec",
                "child_process.spawn"
            ]
        );
        let text = "import * as cp from 'child_process';\nimport { execSync as x } from 'child_process';\ncp.exec(a); x(b);";
        assert_eq!(
            names(Lang::TypeScript, text),
            ["child_process.exec", "child_process.execSync"]
        );
        assert_eq!(
            names(
                Lang::JavaScript,
                "require('child_process').exec(c); window.eval(s); new Function('a', b)"
            ),
            ["child_process.exec", "require", "eval", "new Function"]
        );
    }

    #[test]
    fn javascript_regex_exec_and_methods_are_not_dangerous() {
        assert_eq!(
            names(
                Lang::JavaScript,
                "const m = /a(b)/.exec(s); re.exec(t);\nclass A { exec(cmd) { return 1 } }"
            ),
            ["re.exec"]
        );
    }

    /// What an assignment makes an alias of: a bare reference, not a call's
    /// result; a name that refers to itself resolves once, not a hop per
    /// allowed hop; nested lookups stop at the hop limit, however deep.
    #[test]
    fn aliases_are_references_resolved_a_bounded_number_of_times() {
        assert_eq!(names(Lang::Python, "ev = eval(s)\nev(t)\n"), ["eval", "ev"]);
        assert_eq!(names(Lang::Python, "from e import f as e\ne(x)\n"), ["e.f"]);
        let deep = format!(
            "{}builtins{}(x)\n",
            "getattr(".repeat(100_000),
            ", \"eval\")".repeat(100_000)
        );
        assert!(
            !names(Lang::Python, &deep).contains(&"eval".to_owned()),
            "past the hop limit nothing resolves"
        );
    }

    #[test]
    fn arguments_keep_words_apart() {
        let text = "os.system(cmd if x else y)";
        let calls = find_calls(Lang::Python, text, &lex(Lang::Python, text), &|_| true);
        assert_eq!(calls[0].args, "cmd if x else y");
    }

    #[test]
    fn arguments_render_strings_as_placeholders() {
        let text = "subprocess.run('shell=True', shell = True)";
        let calls = find_calls(Lang::Python, text, &lex(Lang::Python, text), &|_| true);
        assert_eq!(calls[0].args, "\"…\",shell=True");
        assert_eq!(calls[0].end, text.len());
    }
}
