//! Decoding of path arguments before the traversal rules see them, so that
//! `%2e%2e%2f`, `%252e%252e%252f`, `%c0%ae%c0%ae/`, `%u002e` and look-alike
//! characters (`．．／`) all read as `../`.

/// Percent-decoding rounds: enough for double and triple encoding, bounded so a
/// hostile value cannot make decoding expensive.
const MAX_ROUNDS: usize = 4;

/// `value` decoded the way a lenient web stack or file API might: repeated
/// percent-decoding (including IIS `%uXXXX`), overlong UTF-8 forms read as the
/// ASCII they encode, and Unicode look-alikes of `.`, `/` and `\` mapped to
/// them. Returns the original when nothing changes.
pub fn normalize_path(value: &str) -> String {
    let mut bytes = value.as_bytes().to_vec();
    for _ in 0..MAX_ROUNDS {
        let decoded = percent_decode(&bytes);
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    let bytes = decode_overlong(&bytes);
    String::from_utf8_lossy(&bytes)
        .chars()
        .map(fold_lookalike)
        .collect()
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut idx = 0;
    while idx < input.len() {
        let byte = input[idx];
        if byte == b'%' {
            if let Some(value) = hex_at(input, idx + 1, 2) {
                out.push(value as u8);
                idx += 3;
                continue;
            }
            if matches!(input.get(idx + 1), Some(b'u' | b'U')) {
                if let Some(ch) = hex_at(input, idx + 2, 4).and_then(char::from_u32) {
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                    idx += 6;
                    continue;
                }
            }
        }
        out.push(byte);
        idx += 1;
    }
    out
}

fn hex_at(input: &[u8], start: usize, len: usize) -> Option<u32> {
    let digits = input.get(start..start + len)?;
    let text = std::str::from_utf8(digits).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// Reads overlong two- and three-byte UTF-8 forms of ASCII (`C0 AE`, `E0 80 AE`,
/// and the `C0 2F`-style forms with a broken continuation byte some decoders
/// accept) as the ASCII byte they encode.
fn decode_overlong(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut idx = 0;
    while idx < input.len() {
        let byte = input[idx];
        if (byte == 0xC0 || byte == 0xC1) && idx + 1 < input.len() {
            let next = input[idx + 1];
            out.push((((byte & 0x1F) as u32) << 6 | (next & 0x3F) as u32) as u8 & 0x7F);
            idx += 2;
            continue;
        }
        if byte == 0xE0 && idx + 2 < input.len() && input[idx + 1] & 0xE0 == 0x80 {
            let value = ((input[idx + 1] & 0x3F) as u32) << 6 | (input[idx + 2] & 0x3F) as u32;
            if value < 0x80 {
                out.push(value as u8);
                idx += 3;
                continue;
            }
        }
        out.push(byte);
        idx += 1;
    }
    out
}

/// Characters that some normalizers (NFKC, best-fit code pages) turn into `.`,
/// `/` or `\`.
fn fold_lookalike(ch: char) -> char {
    match ch {
        '\u{2024}' | '\u{FF0E}' | '\u{FE52}' | '\u{3002}' | '\u{FF61}' | '\u{2E31}' => '.',
        '\u{2215}' | '\u{2044}' | '\u{FF0F}' | '\u{29F8}' | '\u{2571}' | '\u{1735}' => '/',
        '\u{FF3C}' | '\u{2216}' | '\u{29F5}' | '\u{29F9}' | '\u{FE68}' | '\u{2572}' => '\\',
        _ => ch,
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_path;

    #[test]
    fn encodings_decode_to_dot_dot_slash() {
        for (value, expect) in [
            ("../etc", "../etc"),
            ("%2e%2e%2fetc", "../etc"),
            ("%252e%252e%252fetc", "../etc"),
            ("%25252e%25252e%25252f", "../"),
            ("%c0%ae%c0%ae%c0%afetc", "../etc"),
            ("%e0%80%ae%e0%80%ae/", "../"),
            ("%u002e%u002e%u2215", "../"),
            ("\u{FF0E}\u{FF0E}\u{FF0F}etc", "../etc"),
            ("..%5cwindows", "..\\windows"),
            ("caf\u{e9}/men\u{fc}.txt", "caf\u{e9}/men\u{fc}.txt"),
            // Not hex digits, though `u32::from_str_radix` would take a sign.
            ("%+e%-1x", "%+e%-1x"),
        ] {
            assert_eq!(normalize_path(value), expect, "{value}");
        }
    }
}
