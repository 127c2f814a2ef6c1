//! Hand lexers: split a text into code, comments and string literals, so a rule
//! can ask "is this match in code?".
//!
//! Each language has one small byte-level lexer (`python.rs`, `js.rs`,
//! `shell.rs`, `rust.rs`, `go.rs`). They only record the spans that are *not*
//! code (comments and strings, sorted, never overlapping); everything between is
//! code. Interpolations that run code (JS `${…}`, Python f-string `{…}`, shell
//! `$(…)` and backquotes) are code, so the string around them is cut into
//! several string spans. Every delimiter is ASCII, and an ASCII byte never occurs
//! inside a multi-byte UTF-8 character, so working on bytes is Unicode-safe; span
//! bounds always fall on character boundaries.
//!
//! The lexers never fail: unterminated literals run to the end of their line (or
//! of the text for the multi-line forms), as an editor would colour them, and
//! nesting deeper than [`MAX_DEPTH`] is treated as part of the enclosing string.

mod go;
mod js;
mod python;
mod rust;
mod shell;

use crate::Lang;

/// How deep interpolations may nest before the lexer stops recursing (bounds the
/// stack on hostile input such as `${`${`${…`).
pub const MAX_DEPTH: usize = 64;

/// What a span of text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Region {
    Code,
    Comment,
    /// A string literal (or a regex literal, or a heredoc body).
    Str,
}

/// One comment or string literal. `start..end` covers the delimiters;
/// `inner_start..inner_end` is the content between them (for a string, what the
/// program sees, modulo escapes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub region: Region,
    pub start: usize,
    pub end: usize,
    pub inner_start: usize,
    pub inner_end: usize,
}

/// The lexed form of a text: its non-code spans, sorted by position.
#[derive(Clone, Debug, Default)]
pub struct Lexed {
    pub spans: Vec<Span>,
}

/// Lexes `text` as `lang`.
pub fn lex(lang: Lang, text: &str) -> Lexed {
    let mut lexer = Lexer::new(text.as_bytes());
    match lang {
        Lang::Python => python::lex(&mut lexer),
        Lang::JavaScript | Lang::TypeScript => js::lex(&mut lexer),
        Lang::Shell => shell::lex(&mut lexer),
        Lang::Rust => rust::lex(&mut lexer),
        Lang::Go => go::lex(&mut lexer),
        Lang::Text => {}
    }
    Lexed { spans: lexer.spans }
}

// === impl Lexed ===

impl Lexed {
    /// The region at byte `pos`.
    pub fn region_at(&self, pos: usize) -> Region {
        match self.span_at(pos) {
            Some(span) => span.region,
            None => Region::Code,
        }
    }

    /// The comment or string span containing byte `pos`, if any.
    pub fn span_at(&self, pos: usize) -> Option<&Span> {
        let idx = self.spans.partition_point(|span| span.end <= pos);
        self.spans.get(idx).filter(|span| span.start <= pos)
    }
}

/// The shared cursor of the lexers.
pub(crate) struct Lexer<'a> {
    pub text: &'a [u8],
    pub pos: usize,
    pub spans: Vec<Span>,
}

// === impl Lexer ===

impl<'a> Lexer<'a> {
    fn new(text: &'a [u8]) -> Lexer<'a> {
        Lexer {
            text,
            pos: 0,
            spans: Vec::new(),
        }
    }

    pub fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    pub fn peek_at(&self, offset: usize) -> Option<u8> {
        self.text.get(self.pos + offset).copied()
    }

    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        self.text[self.pos..].starts_with(prefix)
    }

    pub fn push(&mut self, region: Region, start: usize, inner_start: usize, inner_end: usize) {
        let end = self.pos;
        // Empty spans carry nothing and would break the sorted, non-overlapping order.
        if end > start {
            self.spans.push(Span {
                region,
                start,
                end,
                inner_start: inner_start.min(end),
                inner_end: inner_end.clamp(inner_start.min(end), end),
            });
        }
    }

    /// Skips to the end of the line (not past the newline) and records a comment
    /// that began at `start` with a marker of `marker_len` bytes.
    pub fn line_comment(&mut self, start: usize, marker_len: usize) {
        let end = memchr_from(b'\n', self.text, self.pos).unwrap_or(self.text.len());
        self.pos = end;
        self.push(Region::Comment, start, start + marker_len, end);
    }

    /// A C-style `/* … */` block comment starting at the cursor; `nested` for
    /// Rust's nesting comments.
    pub fn block_comment(&mut self, nested: bool) {
        let start = self.pos;
        self.pos += 2;
        let mut depth = 1usize;
        while self.pos < self.text.len() {
            if self.starts_with(b"*/") {
                self.pos += 2;
                depth -= 1;
                if depth == 0 {
                    self.push(Region::Comment, start, start + 2, self.pos - 2);
                    return;
                }
            } else if nested && self.starts_with(b"/*") {
                self.pos += 2;
                depth += 1;
            } else {
                self.pos += 1;
            }
        }
        self.push(Region::Comment, start, start + 2, self.pos);
    }

    /// A quoted literal whose content starts at the cursor, closed by `quote`,
    /// with backslash escapes when `escapes`; stops at a newline when
    /// `single_line` (an unterminated literal). Records the span from `start`.
    pub fn quoted(&mut self, start: usize, quote: u8, escapes: bool, single_line: bool) {
        let inner_start = self.pos;
        while let Some(byte) = self.peek() {
            if byte == quote {
                self.pos += 1;
                self.push(Region::Str, start, inner_start, self.pos - 1);
                return;
            }
            if byte == b'\\' && escapes {
                self.pos = (self.pos + 2).min(self.text.len());
                continue;
            }
            if byte == b'\n' && single_line {
                break;
            }
            self.pos += 1;
        }
        self.push(Region::Str, start, inner_start, self.pos);
    }

    /// Skips an identifier (ASCII word bytes, `$` when `dollar`, and any non-ASCII
    /// byte, so Unicode identifiers stay whole) and returns it.
    pub fn ident(&mut self, dollar: bool) -> &'a [u8] {
        let start = self.pos;
        while let Some(byte) = self.peek() {
            if is_ident_byte(byte) || (dollar && byte == b'$') {
                self.pos += 1;
            } else {
                break;
            }
        }
        &self.text[start..self.pos]
    }
}

/// Whether `byte` can be part of an identifier (non-ASCII bytes count, so a
/// Unicode identifier is never split).
pub fn is_ident_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte >= 0x80
}

/// The next position of `needle` at or after `from`.
pub(crate) fn memchr_from(needle: u8, haystack: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(needle, haystack.get(from..)?).map(|idx| idx + from)
}

/// Test helper: the (region, text) of every span, for compact assertions.
#[cfg(test)]
pub(crate) fn show(lang: Lang, text: &str) -> Vec<(Region, &str)> {
    let lexed = lex(lang, text);
    for pair in lexed.spans.windows(2) {
        assert!(pair[0].end <= pair[1].start, "overlapping spans {pair:?}");
    }
    lexed
        .spans
        .iter()
        .map(|span| (span.region, &text[span.start..span.end]))
        .collect()
}
