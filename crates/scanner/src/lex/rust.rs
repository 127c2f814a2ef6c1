//! Rust: `//` and nesting `/* */` comments; `"…"`, `b"…"`, `c"…"` strings;
//! raw strings `r"…"`, `r#"…"#` (any number of `#`), `br#…`, `cr#…`; char
//! and byte literals told apart from lifetimes; raw identifiers `r#fn`.

use super::{is_ident_byte, Lexer, Region};

pub(super) fn lex(lx: &mut Lexer<'_>) {
    while let Some(byte) = lx.peek() {
        match byte {
            b'/' if lx.peek_at(1) == Some(b'/') => {
                let start = lx.pos;
                lx.line_comment(start, 2);
            }
            b'/' if lx.peek_at(1) == Some(b'*') => lx.block_comment(true),
            b'"' => {
                let start = lx.pos;
                lx.pos += 1;
                lx.quoted(start, b'"', true, false);
            }
            b'\'' => char_or_lifetime(lx, lx.pos),
            _ if is_ident_byte(byte) => {
                let start = lx.pos;
                let word = lx.ident(false);
                match (word, lx.peek()) {
                    (b"b" | b"c", Some(b'"')) => {
                        lx.pos += 1;
                        lx.quoted(start, b'"', true, false);
                    }
                    (b"b", Some(b'\'')) => char_or_lifetime(lx, start),
                    (b"r" | b"br" | b"cr", Some(b'"' | b'#')) => raw_string(lx, start),
                    _ => {}
                }
            }
            _ => lx.pos += 1,
        }
    }
}

/// At a `'`: a char literal (`'a'`, `'\n'`, `'é'`) or a lifetime / label (`'a`).
fn char_or_lifetime(lx: &mut Lexer<'_>, start: usize) {
    lx.pos += 1;
    match lx.peek() {
        Some(b'\\') => lx.quoted(start, b'\'', true, true),
        Some(lead) => {
            let width = utf8_width(lead);
            if lx.peek_at(width) == Some(b'\'') {
                lx.pos += width + 1;
                lx.push(Region::Str, start, lx.pos - width - 1, lx.pos - 1);
            }
        }
        None => {}
    }
}

/// After `r`, `br` or `cr` with a `"` or `#` at the cursor: a raw string, or a
/// raw identifier (`r#type`), which is code.
fn raw_string(lx: &mut Lexer<'_>, start: usize) {
    let hashes_start = lx.pos;
    while lx.peek() == Some(b'#') {
        lx.pos += 1;
    }
    let n_hashes = lx.pos - hashes_start;
    if lx.peek() != Some(b'"') {
        return;
    }
    lx.pos += 1;
    let inner_start = lx.pos;
    while let Some(byte) = lx.peek() {
        lx.pos += 1;
        if byte == b'"' {
            let closing = &lx.text[lx.pos..];
            if closing.len() >= n_hashes && closing[..n_hashes].iter().all(|&b| b == b'#') {
                let inner_end = lx.pos - 1;
                lx.pos += n_hashes;
                lx.push(Region::Str, start, inner_start, inner_end);
                return;
            }
        }
    }
    let end = lx.pos;
    lx.push(Region::Str, start, inner_start, end);
}

/// Bytes in the UTF-8 character starting with `lead`.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use crate::lex::{show, Region::*};
    use crate::Lang::Rust;

    #[test]
    fn comments_nest() {
        assert_eq!(
            show(Rust, "a /* x /* y */ z */ b // c\nd"),
            [(Comment, "/* x /* y */ z */"), (Comment, "// c")]
        );
    }

    #[test]
    fn raw_strings_with_hashes() {
        assert_eq!(
            show(
                Rust,
                r###"let s = r#"a "quoted" \ b"#; let t = br##"x"#y"##; r"\";"###
            ),
            [
                (Str, r###"r#"a "quoted" \ b"#"###),
                (Str, r###"br##"x"#y"##"###),
                (Str, r#"r"\""#)
            ]
        );
        // A raw identifier is code.
        assert_eq!(show(Rust, r#"let r#type = "t";"#), [(Str, r#""t""#)]);
    }

    #[test]
    fn chars_bytes_and_lifetimes() {
        assert_eq!(
            show(
                Rust,
                r#"fn f<'a>(x: &'a str) -> char { let _ = b'"'; '\''; 'é' }"#
            ),
            [(Str, r#"b'"'"#), (Str, r"'\''"), (Str, "'é'")]
        );
        assert_eq!(show(Rust, "'outer: loop { break 'outer; }"), []);
    }

    #[test]
    fn strings_span_lines_and_escape_quotes() {
        assert_eq!(
            show(Rust, "let s = \"a\n\\\"b\"; let c = c\"x\";"),
            [(Str, "\"a\n\\\"b\""), (Str, "c\"x\"")]
        );
    }
}
