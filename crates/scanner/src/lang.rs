//! The languages the scanner knows, how callers name them, and a guess from the
//! text when they do not.

use std::fmt;
use std::str::FromStr;

/// A language with its own lexer. TypeScript shares the JavaScript lexer (type
/// annotations hold no strings or comments of their own) but stays a separate
/// value so a rule can name one and not the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lang {
    Python,
    JavaScript,
    TypeScript,
    Shell,
    Rust,
    Go,
    /// Prose or data without a grammar: every byte is seen as code, so only rules
    /// that list `text` (secrets, mostly) look at it.
    Text,
}

/// A language name the scanner does not know; carries what was given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown language {0:?}: expected one of python, javascript, typescript, shell, rust, go, text (or an extension such as py, js, ts, sh, rs)")]
pub struct UnknownLang(pub String);

// === impl Lang ===

impl Lang {
    /// Every language, in a fixed order (used for tables and bit sets).
    pub const ALL: [Lang; 7] = [
        Lang::Python,
        Lang::JavaScript,
        Lang::TypeScript,
        Lang::Shell,
        Lang::Rust,
        Lang::Go,
        Lang::Text,
    ];

    /// The canonical name, as written in rule files.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::JavaScript => "javascript",
            Lang::TypeScript => "typescript",
            Lang::Shell => "shell",
            Lang::Rust => "rust",
            Lang::Go => "go",
            Lang::Text => "text",
        }
    }

    /// A small bit for language sets (`1 << index in ALL`).
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The language of a file name, from its extension or a well-known name.
    pub fn from_path(path: &str) -> Option<Lang> {
        let file = path.rsplit(['/', '\\']).next().unwrap_or(path);
        match file {
            "Dockerfile" | "Makefile" | ".bashrc" | ".profile" | ".zshrc" => {
                return Some(Lang::Shell)
            }
            _ => {}
        }
        let (_, ext) = file.rsplit_once('.')?;
        ext.parse().ok()
    }

    /// Guesses the language of an unlabelled text: a shebang decides; otherwise
    /// each language scores the telltale constructs found in the first 8 KiB,
    /// and a text with no clear winner is [`Lang::Text`] (the safe choice: it
    /// keeps the secret rules and drops the call rules, which need a grammar).
    pub fn guess(text: &str) -> Lang {
        let head = match text.char_indices().nth(8192) {
            Some((idx, _)) => &text[..idx],
            None => text,
        };
        if let Some(first) = head.lines().next() {
            if let Some(shebang) = first.strip_prefix("#!") {
                for (word, lang) in [
                    ("python", Lang::Python),
                    ("node", Lang::JavaScript),
                    ("deno", Lang::TypeScript),
                    ("ts-node", Lang::TypeScript),
                    ("bash", Lang::Shell),
                    ("zsh", Lang::Shell),
                    ("/sh", Lang::Shell),
                    (" sh", Lang::Shell),
                ] {
                    if shebang.contains(word) {
                        return lang;
                    }
                }
            }
        }
        const TELLS: &[(Lang, &[&str])] = &[
            (
                Lang::Python,
                &[
                    "\ndef ",
                    "def __init__",
                    "import ",
                    "from ",
                    "self.",
                    "elif ",
                    "print(",
                    "):\n",
                    "None",
                    "True",
                    "__name__",
                ],
            ),
            (
                Lang::JavaScript,
                &[
                    "function ",
                    "const ",
                    "let ",
                    "=> ",
                    "require(",
                    "console.log",
                    "===",
                    "module.exports",
                    "document.",
                    "undefined",
                ],
            ),
            (
                Lang::TypeScript,
                &[
                    ": string",
                    ": number",
                    "interface ",
                    ": boolean",
                    "export type ",
                    "readonly ",
                    "<T>",
                    "as const",
                    ": void",
                ],
            ),
            (
                Lang::Shell,
                &[
                    "#!/bin/", "\nfi\n", "\ndone\n", "; then", "; do", "echo ", "$(", "${",
                    "export ", "esac",
                ],
            ),
            (
                Lang::Rust,
                &[
                    "fn ", "let mut ", "impl ", "pub fn", "::", "use std", "&self", "-> ",
                    "#[derive", "match ", "Some(",
                ],
            ),
            (
                Lang::Go,
                &[
                    "package ",
                    "func ",
                    ":= ",
                    "import (",
                    "fmt.",
                    "err != nil",
                    "go ",
                    "chan ",
                    "defer ",
                ],
            ),
        ];
        let mut best = (Lang::Text, 1usize);
        for (lang, tells) in TELLS {
            let mut score = tells.iter().filter(|tell| head.contains(*tell)).count();
            // TypeScript is JavaScript plus types: its score stands on both.
            if *lang == Lang::TypeScript && score > 0 {
                score += TELLS[1]
                    .1
                    .iter()
                    .filter(|tell| head.contains(*tell))
                    .count();
            }
            if score > best.1 {
                best = (*lang, score);
            }
        }
        best.0
    }
}

impl FromStr for Lang {
    type Err = UnknownLang;

    /// Accepts the canonical names, common aliases and file extensions, in any
    /// case (`Python`, `py`, `node`, `tsx`, `bash`, `rs`, `golang`, `txt`, …).
    fn from_str(name: &str) -> Result<Lang, UnknownLang> {
        let lower = name.trim().trim_start_matches('.').to_ascii_lowercase();
        let lang = match lower.as_str() {
            "python" | "py" | "python3" | "py3" | "pyw" | "pyi" => Lang::Python,
            "javascript" | "js" | "node" | "nodejs" | "jsx" | "mjs" | "cjs" | "ecmascript" => {
                Lang::JavaScript
            }
            "typescript" | "ts" | "tsx" | "mts" | "cts" => Lang::TypeScript,
            "shell" | "sh" | "bash" | "zsh" | "ksh" | "dash" | "posix-shell" => Lang::Shell,
            "rust" | "rs" => Lang::Rust,
            "go" | "golang" => Lang::Go,
            "text" | "txt" | "plain" | "plaintext" | "md" | "markdown" | "log" | "env" | "ini"
            | "toml" | "yaml" | "yml" | "json" | "cfg" | "conf" => Lang::Text,
            _ => return Err(UnknownLang(name.to_owned())),
        };
        Ok(lang)
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_aliases_and_extensions_parse() {
        for (name, lang) in [
            ("python", Lang::Python),
            ("PY", Lang::Python),
            ("node", Lang::JavaScript),
            (".mjs", Lang::JavaScript),
            ("tsx", Lang::TypeScript),
            ("bash", Lang::Shell),
            ("rs", Lang::Rust),
            ("golang", Lang::Go),
            ("md", Lang::Text),
        ] {
            assert_eq!(name.parse::<Lang>(), Ok(lang), "{name}");
        }
        let err = "cobol".parse::<Lang>().unwrap_err();
        assert!(err.to_string().contains("\"cobol\""), "{err}");
        for lang in Lang::ALL {
            assert_eq!(lang.name().parse::<Lang>(), Ok(lang));
        }
    }

    #[test]
    fn paths_map_to_languages() {
        assert_eq!(Lang::from_path("src/app/main.py"), Some(Lang::Python));
        assert_eq!(Lang::from_path("C:\\x\\y.ts"), Some(Lang::TypeScript));
        assert_eq!(Lang::from_path("deploy/Dockerfile"), Some(Lang::Shell));
        assert_eq!(Lang::from_path("LICENSE"), None);
    }

    #[test]
    fn guesses_from_shebang_and_telltales() {
        assert_eq!(Lang::guess("#!/usr/bin/env python3\nx = 1\n"), Lang::Python);
        assert_eq!(Lang::guess("#!/bin/sh\nls\n"), Lang::Shell);
        assert_eq!(
            Lang::guess("import os\n\ndef main():\n    print(os.getcwd())\n"),
            Lang::Python
        );
        assert_eq!(
            Lang::guess("const fs = require('fs');\nfunction f() { console.log(1) }\n"),
            Lang::JavaScript
        );
        assert_eq!(
            Lang::guess("interface A { name: string }\nconst f = (a: A): void => {}\n"),
            Lang::TypeScript
        );
        assert_eq!(
            Lang::guess(
                "use std::io;\npub fn main() -> io::Result<()> { let mut x = 1; Ok(()) }\n"
            ),
            Lang::Rust
        );
        assert_eq!(
            Lang::guess(
                "package main\n\nimport (\n\t\"fmt\"\n)\n\nfunc main() { fmt.Println(1) }\n"
            ),
            Lang::Go
        );
        assert_eq!(
            Lang::guess("if [ -f x ]; then\n  echo yes\nfi\n"),
            Lang::Shell
        );
        assert_eq!(Lang::guess("Dear team, the meeting moved."), Lang::Text);
    }
}
