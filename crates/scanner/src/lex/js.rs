//! JavaScript and TypeScript: `//` and `/* */` comments, a `#!` first line,
//! `'…'` and `"…"` strings, template literals whose `${…}` parts are code, and
//! regex literals (told from division by the token before the slash, as
//! editors do).

use super::{is_ident_byte, Lexer, Region, MAX_DEPTH};

pub(super) fn lex(lx: &mut Lexer<'_>) {
    if lx.starts_with(b"#!") {
        lx.line_comment(0, 2);
    }
    code(lx, 0, false);
}

/// Words after which a `/` starts a regex rather than a division.
const REGEX_AFTER: &[&[u8]] = &[
    b"return",
    b"typeof",
    b"instanceof",
    b"in",
    b"of",
    b"new",
    b"delete",
    b"void",
    b"throw",
    b"case",
    b"do",
    b"else",
    b"yield",
    b"await",
];

/// Code until the end, or (in a template `${…}`) until the `}` that closes it.
fn code(lx: &mut Lexer<'_>, depth: usize, in_template: bool) {
    let mut braces = 0usize;
    let mut regex_allowed = true;
    while let Some(byte) = lx.peek() {
        match byte {
            b'/' if lx.peek_at(1) == Some(b'/') => {
                let start = lx.pos;
                lx.line_comment(start, 2);
            }
            b'/' if lx.peek_at(1) == Some(b'*') => lx.block_comment(false),
            b'/' if regex_allowed => {
                regex(lx);
                regex_allowed = false;
            }
            b'\'' | b'"' => {
                let start = lx.pos;
                lx.pos += 1;
                lx.quoted(start, byte, true, true);
                regex_allowed = false;
            }
            b'`' => {
                template(lx, depth);
                regex_allowed = false;
            }
            b'{' => {
                braces += 1;
                lx.pos += 1;
                regex_allowed = true;
            }
            b'}' => {
                if in_template && braces == 0 {
                    return;
                }
                braces = braces.saturating_sub(1);
                lx.pos += 1;
                regex_allowed = true;
            }
            b')' | b']' => {
                lx.pos += 1;
                regex_allowed = false;
            }
            _ if is_ident_byte(byte) || byte == b'$' => {
                let word = lx.ident(true);
                regex_allowed = REGEX_AFTER.contains(&word);
            }
            b' ' | b'\t' | b'\r' | b'\n' => lx.pos += 1,
            _ => {
                lx.pos += 1;
                regex_allowed = true;
            }
        }
    }
}

/// A regex literal at the cursor. A newline before the closing slash means it
/// was a division after all: the slash alone is consumed as code.
fn regex(lx: &mut Lexer<'_>) {
    let start = lx.pos;
    lx.pos += 1;
    let mut in_class = false;
    while let Some(byte) = lx.peek() {
        match byte {
            b'\\' => lx.pos += 2,
            b'[' => {
                in_class = true;
                lx.pos += 1;
            }
            b']' => {
                in_class = false;
                lx.pos += 1;
            }
            b'/' if !in_class => {
                lx.pos += 1;
                let inner_end = lx.pos - 1;
                lx.ident(false);
                lx.push(Region::Str, start, start + 1, inner_end);
                return;
            }
            b'\n' => break,
            _ => lx.pos += 1,
        }
    }
    lx.pos = start + 1;
}

/// A template literal at the cursor; each `${…}` is lexed as code.
fn template(lx: &mut Lexer<'_>, depth: usize) {
    let mut piece_start = lx.pos;
    lx.pos += 1;
    let mut inner_start = lx.pos;
    while let Some(byte) = lx.peek() {
        match byte {
            b'\\' => lx.pos = (lx.pos + 2).min(lx.text.len()),
            b'`' => {
                lx.pos += 1;
                lx.push(Region::Str, piece_start, inner_start, lx.pos - 1);
                return;
            }
            b'$' if lx.peek_at(1) == Some(b'{') && depth < MAX_DEPTH => {
                lx.push(Region::Str, piece_start, inner_start, lx.pos);
                lx.pos += 2;
                code(lx, depth + 1, true);
                if lx.peek() == Some(b'}') {
                    lx.pos += 1;
                }
                piece_start = lx.pos;
                inner_start = lx.pos;
            }
            _ => lx.pos += 1,
        }
    }
    let end = lx.pos;
    lx.push(Region::Str, piece_start, inner_start, end);
}

#[cfg(test)]
mod tests {
    use crate::lex::{show, Region::*};
    use crate::Lang::{JavaScript, TypeScript};

    #[test]
    fn comments_and_strings() {
        assert_eq!(
            show(
                JavaScript,
                "#!/usr/bin/env node\nlet a = 'x//y'; // eval(a)\n/* a\n b */ b = \"q\\\"\""
            ),
            [
                (Comment, "#!/usr/bin/env node"),
                (Str, "'x//y'"),
                (Comment, "// eval(a)"),
                (Comment, "/* a\n b */"),
                (Str, "\"q\\\"\"")
            ]
        );
    }

    #[test]
    fn template_interpolations_are_code() {
        assert_eq!(
            show(JavaScript, "t = `a ${eval(x) + `in ${y}`} b`;"),
            [(Str, "`a "), (Str, "`in "), (Str, "`"), (Str, " b`")]
        );
        assert_eq!(
            show(TypeScript, "const s: string = `x ${ {a: '}'}.a } y`"),
            [(Str, "`x "), (Str, "'}'"), (Str, " y`")]
        );
        assert_eq!(show(JavaScript, "`a\nb\\`c`"), [(Str, "`a\nb\\`c`")]);
    }

    #[test]
    fn regex_literals_versus_division() {
        assert_eq!(
            show(
                JavaScript,
                "const re = /ev'al[/]/g; x = a / b / c; re.exec(s)"
            ),
            [(Str, "/ev'al[/]/g")]
        );
        assert_eq!(
            show(JavaScript, "if (x) return /a\"b/.test(s)"),
            [(Str, "/a\"b/")]
        );
        // A slash with no closing slash on its line is a division.
        assert_eq!(show(JavaScript, "a = 1 /\n2; s = 'q'"), [(Str, "'q'")]);
    }
}
