//! Go: `//` and `/* */` comments, `"…"` strings (one line, escapes), raw
//! `` `…` `` strings (any number of lines, no escapes) and `'…'` runes.

use super::{Lexer, Region};

pub(super) fn lex(lx: &mut Lexer<'_>) {
    while let Some(byte) = lx.peek() {
        match byte {
            b'/' if lx.peek_at(1) == Some(b'/') => {
                let start = lx.pos;
                lx.line_comment(start, 2);
            }
            b'/' if lx.peek_at(1) == Some(b'*') => lx.block_comment(false),
            b'"' | b'\'' => {
                let start = lx.pos;
                lx.pos += 1;
                lx.quoted(start, byte, true, true);
            }
            b'`' => {
                let start = lx.pos;
                lx.pos += 1;
                lx.quoted(start, b'`', false, false);
            }
            _ => lx.pos += 1,
        }
    }
    debug_assert!(lx.spans.iter().all(|span| span.region != Region::Code));
}

#[cfg(test)]
mod tests {
    use crate::lex::{show, Region::*};
    use crate::Lang::Go;

    #[test]
    fn comments_strings_runes_and_backquotes() {
        let text = "x := \"a\\\"b\" // exec.Command\ny := `raw \\ \"q\"\nline` /* c */ r := '\\''";
        assert_eq!(
            show(Go, text),
            [
                (Str, "\"a\\\"b\""),
                (Comment, "// exec.Command"),
                (Str, "`raw \\ \"q\"\nline`"),
                (Comment, "/* c */"),
                (Str, "'\\''")
            ]
        );
    }
}
