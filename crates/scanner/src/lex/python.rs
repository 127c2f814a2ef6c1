//! Python: `#` comments; strings with prefixes (`r`, `b`, `u`, `f`, `t` and
//! their pairs), single or triple quoted; the `{…}` replacement fields of
//! f-strings (and t-strings) are code, `{{` is a literal brace.

use super::{is_ident_byte, Lexer, Region, MAX_DEPTH};

pub(super) fn lex(lx: &mut Lexer<'_>) {
    code(lx, 0, false);
}

/// Code until the end, or (in an f-string field) until the `}` that closes it.
fn code(lx: &mut Lexer<'_>, depth: usize, in_field: bool) {
    let mut braces = 0usize;
    while let Some(byte) = lx.peek() {
        match byte {
            b'#' => {
                let start = lx.pos;
                lx.line_comment(start, 1);
            }
            b'\'' | b'"' => string(lx, lx.pos, b"", depth),
            b'{' if in_field => {
                braces += 1;
                lx.pos += 1;
            }
            b'}' if in_field => {
                if braces == 0 {
                    return;
                }
                braces -= 1;
                lx.pos += 1;
            }
            _ if is_ident_byte(byte) => {
                let start = lx.pos;
                let word = lx.ident(false);
                if word.len() <= 2
                    && matches!(lx.peek(), Some(b'\'' | b'"'))
                    && word.iter().all(|b| b"rRbBuUfFtT".contains(b))
                {
                    string(lx, start, word, depth);
                }
            }
            _ => lx.pos += 1,
        }
    }
}

/// A string literal whose quote is at the cursor; `start` is where its prefix
/// began.
fn string(lx: &mut Lexer<'_>, start: usize, prefix: &[u8], depth: usize) {
    let quote = lx.peek().unwrap_or(b'"');
    let interpolated = prefix.iter().any(|b| b"fFtT".contains(b));
    let triple = lx.peek_at(1) == Some(quote) && lx.peek_at(2) == Some(quote);
    let quote_len = if triple { 3 } else { 1 };
    lx.pos += quote_len;
    let mut piece_start = start;
    let mut inner_start = lx.pos;
    while let Some(byte) = lx.peek() {
        if byte == quote
            && (!triple || (lx.peek_at(1) == Some(quote) && lx.peek_at(2) == Some(quote)))
        {
            lx.pos += quote_len;
            lx.push(Region::Str, piece_start, inner_start, lx.pos - quote_len);
            return;
        }
        match byte {
            // A backslash keeps the next byte in the string, raw or not
            // (`r"\""` is one string in Python too).
            b'\\' => lx.pos = (lx.pos + 2).min(lx.text.len()),
            b'\n' if !triple => break,
            b'{' if interpolated && lx.peek_at(1) == Some(b'{') => lx.pos += 2,
            b'{' if interpolated && depth < MAX_DEPTH => {
                lx.push(Region::Str, piece_start, inner_start, lx.pos);
                lx.pos += 1;
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
    use crate::Lang::Python;

    #[test]
    fn comments_and_plain_strings() {
        assert_eq!(
            show(Python, "x = 'a#b'  # eval(x)\ny = \"it's\"\n"),
            [(Str, "'a#b'"), (Comment, "# eval(x)"), (Str, "\"it's\"")]
        );
    }

    #[test]
    fn triple_quoted_strings_span_lines() {
        let text = "def f():\n    \"\"\"Docstring: do not eval(x).\n    'quotes' inside\"\"\"\n    return 1\n";
        assert_eq!(
            show(Python, text),
            [(
                Str,
                "\"\"\"Docstring: do not eval(x).\n    'quotes' inside\"\"\""
            )]
        );
        assert_eq!(
            show(Python, "s = '''a\n\"b\"'''"),
            [(Str, "'''a\n\"b\"'''")]
        );
    }

    #[test]
    fn prefixes_and_raw_strings() {
        assert_eq!(
            show(Python, r#"p = r"\d+\"" + b'\x00' + Rb"x""#),
            [(Str, r#"r"\d+\"""#), (Str, r"b'\x00'"), (Str, r#"Rb"x""#)]
        );
        // An identifier ending in a prefix letter is not a prefix.
        assert_eq!(show(Python, "bar'x'"), [(Str, "'x'")]);
    }

    #[test]
    fn f_string_fields_are_code() {
        assert_eq!(
            show(Python, "f'a {eval(x)} b {{lit}} {d[\"k\"]}'"),
            [
                (Str, "f'a "),
                (Str, " b {{lit}} "),
                (Str, "\"k\""),
                (Str, "'")
            ]
        );
        assert_eq!(
            show(Python, "f\"\"\"x\n{ {'a': 1}['a'] }\n\"\"\""),
            [
                (Str, "f\"\"\"x\n"),
                (Str, "'a'"),
                (Str, "'a'"),
                (Str, "\n\"\"\"")
            ]
        );
    }

    #[test]
    fn unterminated_strings_end_at_the_line() {
        assert_eq!(
            show(Python, "s = 'abc\nx = 1 # c"),
            [(Str, "'abc"), (Comment, "# c")]
        );
        assert_eq!(show(Python, "s = '''abc\nx"), [(Str, "'''abc\nx")]);
    }
}
