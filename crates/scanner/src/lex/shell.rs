//! POSIX shell and bash: `#` comments (only where a word starts), `'…'` (no
//! escapes), `$'…'` (C escapes), `"…"` whose `$(…)` and backquote parts are
//! code, `$(…)` and backquotes in code, and heredoc bodies (`<<EOF`, `<<-EOF`,
//! `<<'EOF'`), which are strings whatever their quoting.

use super::{Lexer, Region, MAX_DEPTH};

pub(super) fn lex(lx: &mut Lexer<'_>) {
    code(lx, 0, Until::End);
}

/// What ends a stretch of code.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    End,
    /// The `)` of a `$(`.
    Paren,
    /// The closing backquote of a command substitution.
    Backquote,
}

/// A heredoc announced on the current line, read after its newline.
struct Heredoc {
    delimiter: Vec<u8>,
    strip_tabs: bool,
}

fn code(lx: &mut Lexer<'_>, depth: usize, until: Until) {
    let mut parens = 0usize;
    let mut word_start = true;
    let mut heredocs: Vec<Heredoc> = Vec::new();
    while let Some(byte) = lx.peek() {
        let mut next_word_start = false;
        match byte {
            b'#' if word_start => {
                let start = lx.pos;
                lx.line_comment(start, 1);
            }
            b'\'' => {
                let start = lx.pos;
                lx.pos += 1;
                lx.quoted(start, b'\'', false, false);
            }
            b'"' => double_quoted(lx, depth),
            b'$' if lx.peek_at(1) == Some(b'\'') => {
                let start = lx.pos;
                lx.pos += 2;
                lx.quoted(start, b'\'', true, false);
            }
            b'$' if lx.peek_at(1) == Some(b'(') && depth < MAX_DEPTH => {
                lx.pos += 2;
                code(lx, depth + 1, Until::Paren);
                if lx.peek() == Some(b')') {
                    lx.pos += 1;
                }
            }
            b'$' if lx.peek_at(1) == Some(b'{') => parameter_expansion(lx),
            // `$#`, `$$`: never a comment.
            b'$' => lx.pos += if lx.peek_at(1) == Some(b'#') { 2 } else { 1 },
            b'`' => {
                if until == Until::Backquote {
                    return;
                }
                lx.pos += 1;
                if depth < MAX_DEPTH {
                    code(lx, depth + 1, Until::Backquote);
                    if lx.peek() == Some(b'`') {
                        lx.pos += 1;
                    }
                }
            }
            b'(' => {
                parens += 1;
                lx.pos += 1;
                next_word_start = true;
            }
            b')' => {
                if until == Until::Paren && parens == 0 {
                    return;
                }
                parens = parens.saturating_sub(1);
                lx.pos += 1;
                next_word_start = true;
            }
            b'\\' => lx.pos = (lx.pos + 2).min(lx.text.len()),
            // A here-string (`<<<`), not a heredoc.
            b'<' if lx.starts_with(b"<<<") => lx.pos += 3,
            b'<' if lx.starts_with(b"<<") => {
                lx.pos += 2;
                if let Some(heredoc) = heredoc_operator(lx) {
                    heredocs.push(heredoc);
                }
            }
            b'\n' => {
                lx.pos += 1;
                for heredoc in heredocs.drain(..) {
                    heredoc_body(lx, &heredoc);
                }
                next_word_start = true;
            }
            b' ' | b'\t' | b'\r' | b';' | b'|' | b'&' | b'<' | b'>' | b'{' | b'}' => {
                lx.pos += 1;
                next_word_start = true;
            }
            _ => lx.pos += 1,
        }
        word_start = next_word_start;
    }
}

/// `${…}` at the cursor: code up to the matching brace (`${#x}`, `${x:-y}`),
/// not the start of a comment or a word.
fn parameter_expansion(lx: &mut Lexer<'_>) {
    lx.pos += 2;
    let mut depth = 1usize;
    while let Some(byte) = lx.peek() {
        lx.pos += 1;
        match byte {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            b'\n' => return,
            _ => {}
        }
    }
}

/// A double-quoted string at the cursor.
fn double_quoted(lx: &mut Lexer<'_>, depth: usize) {
    let mut piece_start = lx.pos;
    lx.pos += 1;
    let mut inner_start = lx.pos;
    while let Some(byte) = lx.peek() {
        match byte {
            b'\\' => lx.pos = (lx.pos + 2).min(lx.text.len()),
            b'"' => {
                lx.pos += 1;
                lx.push(Region::Str, piece_start, inner_start, lx.pos - 1);
                return;
            }
            b'$' if lx.peek_at(1) == Some(b'(') && depth < MAX_DEPTH => {
                lx.push(Region::Str, piece_start, inner_start, lx.pos);
                lx.pos += 2;
                code(lx, depth + 1, Until::Paren);
                if lx.peek() == Some(b')') {
                    lx.pos += 1;
                }
                piece_start = lx.pos;
                inner_start = lx.pos;
            }
            b'`' if depth < MAX_DEPTH => {
                lx.push(Region::Str, piece_start, inner_start, lx.pos);
                lx.pos += 1;
                code(lx, depth + 1, Until::Backquote);
                if lx.peek() == Some(b'`') {
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

/// After `<<`: an optional `-`, blanks, then the delimiter word, bare or quoted.
fn heredoc_operator(lx: &mut Lexer<'_>) -> Option<Heredoc> {
    let strip_tabs = lx.peek() == Some(b'-');
    if strip_tabs {
        lx.pos += 1;
    }
    while matches!(lx.peek(), Some(b' ' | b'\t')) {
        lx.pos += 1;
    }
    let mut delimiter = Vec::new();
    while let Some(byte) = lx.peek() {
        match byte {
            b'\'' | b'"' => {
                lx.pos += 1;
                while let Some(inner) = lx.peek() {
                    lx.pos += 1;
                    if inner == byte {
                        break;
                    }
                    delimiter.push(inner);
                }
            }
            b'\\' => lx.pos += 1,
            b' ' | b'\t' | b'\n' | b'\r' | b';' | b'|' | b'&' | b'<' | b'>' | b'(' | b')' => break,
            _ => {
                delimiter.push(byte);
                lx.pos += 1;
            }
        }
    }
    (!delimiter.is_empty()).then_some(Heredoc {
        delimiter,
        strip_tabs,
    })
}

/// The body of a heredoc, from the cursor (a line start) through its
/// delimiter line (or the end of the text).
fn heredoc_body(lx: &mut Lexer<'_>, heredoc: &Heredoc) {
    let start = lx.pos;
    while lx.pos < lx.text.len() {
        let line_end = super::memchr_from(b'\n', lx.text, lx.pos).unwrap_or(lx.text.len());
        let mut line = &lx.text[lx.pos..line_end];
        if heredoc.strip_tabs {
            while let [b'\t', rest @ ..] = line {
                line = rest;
            }
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == heredoc.delimiter.as_slice() {
            let inner_end = lx.pos;
            lx.pos = line_end;
            lx.push(Region::Str, start, start, inner_end);
            return;
        }
        lx.pos = (line_end + 1).min(lx.text.len());
    }
    let end = lx.pos;
    lx.push(Region::Str, start, start, end);
}

#[cfg(test)]
mod tests {
    use crate::lex::{show, Region::*};
    use crate::Lang::Shell;

    #[test]
    fn comments_only_at_word_starts() {
        assert_eq!(
            show(Shell, "echo a#b ${#x} $# # curl x | sh\n"),
            [(Comment, "# curl x | sh")]
        );
    }

    #[test]
    fn quoting_forms() {
        assert_eq!(
            show(Shell, r#"echo 'it\' "a \" b" $'c\'d'"#),
            [(Str, r"'it\'"), (Str, r#""a \" b""#), (Str, r"$'c\'d'")]
        );
    }

    #[test]
    fn command_substitution_is_code_even_in_quotes() {
        assert_eq!(
            show(Shell, r#"x="a $(curl "$u" | sh) b `id`" y=$(echo ')')"#),
            [
                (Str, r#""a "#),
                (Str, r#""$u""#),
                (Str, " b "),
                (Str, "\""),
                (Str, "')'")
            ]
        );
    }

    #[test]
    fn heredoc_bodies_are_strings() {
        let text = "cat <<EOF > f\ncurl x | sh # not code\nEOF\necho 'q'\ncat <<-'END'\n\tbody\n\tEND\nls\n";
        assert_eq!(
            show(Shell, text),
            [
                (Str, "curl x | sh # not code\nEOF"),
                (Str, "'q'"),
                (Str, "\tbody\n\tEND")
            ]
        );
        // `<<<` is a here-string, not a heredoc.
        assert_eq!(show(Shell, "cat <<< word\nls # c"), [(Comment, "# c")]);
    }
}
