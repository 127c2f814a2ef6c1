//! What makes a match a secret rather than an example: entropy, character
//! classes, placeholder words and shapes; and how a secret is shown (never in
//! full).

/// Shannon entropy of `value`'s bytes, in bits per byte.
pub fn entropy(value: &str) -> f64 {
    let mut counts = [0u32; 256];
    for byte in value.bytes() {
        counts[usize::from(byte)] += 1;
    }
    let len = value.len() as f64;
    if len == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = f64::from(count) / len;
            -p * p.log2()
        })
        .sum()
}

/// How many of lower case, upper case, digits and symbols `value` uses. The
/// separators of names and paths (`-_./:`) are not symbols, so `prod/db/creds`
/// and `my-app-name` count one class, like the identifiers they are.
pub fn char_classes(value: &str) -> u8 {
    let mut classes = [false; 4];
    for ch in value.chars() {
        let idx = if ch.is_ascii_lowercase() {
            0
        } else if ch.is_ascii_uppercase() {
            1
        } else if ch.is_ascii_digit() {
            2
        } else if "-_./:".contains(ch) {
            continue;
        } else {
            3
        };
        classes[idx] = true;
    }
    classes.iter().filter(|&&seen| seen).count() as u8
}

/// Words that mark a documentation example, a template or a test value.
const PLACEHOLDER_WORDS: &[&str] = &[
    "example",
    "your",
    "xxxx",
    "placeholder",
    "dummy",
    "sample",
    "changeme",
    "change_me",
    "change-me",
    "redacted",
    "fake",
    "insert",
    "replace",
    "<",
    ">",
    "${",
    "{{",
    "%s",
    "%(",
    "****",
    "...",
    "\u{2026}",
    "todo",
    "fixme",
    "notreal",
    "not_real",
    "not-a-real",
    "mock",
];

/// Whole values that are placeholders, not passwords.
const PLACEHOLDER_VALUES: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "secret",
    "admin",
    "root",
    "test",
    "guest",
    "pwd",
    "user",
    "username",
    "123456",
    "12345678",
    "hunter2",
    "none",
    "null",
    "undefined",
    "true",
    "false",
];

/// Whether `value` reads as a placeholder: a word from the lists above, a
/// variable reference (`$VAR`, `%VAR%`), a counting run (`12345678`,
/// `abcdefgh`), very few distinct characters, or a UUID (an identifier, not a
/// credential, in nearly every text that holds one).
pub fn is_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    if PLACEHOLDER_VALUES.contains(&lower.as_str())
        || PLACEHOLDER_WORDS.iter().any(|word| lower.contains(word))
        || lower.starts_with('$')
        || (lower.starts_with('{') && lower.ends_with('}'))
        || (lower.starts_with('%') && lower.ends_with('%'))
        || lower.contains("12345678")
        || lower.contains("abcdefgh")
        || is_uuid(&lower)
    {
        return true;
    }
    let mut seen = [false; 256];
    let mut distinct = 0;
    for byte in value.bytes() {
        if !seen[usize::from(byte)] {
            seen[usize::from(byte)] = true;
            distinct += 1;
        }
    }
    value.len() >= 8 && distinct < 5
}

fn is_uuid(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(idx, &byte)| match idx {
            8 | 13 | 18 | 23 => byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// A secret as it may be shown: at most its first four characters (fewer for a
/// short one), then its length. Never enough to use it.
pub fn redact(secret: &str) -> String {
    let n_chars = secret.chars().count();
    let keep = match n_chars {
        0..=11 => 0,
        12..=23 => 2,
        _ => 4,
    };
    let kept: String = secret.chars().take(keep).collect();
    format!("{kept}***({n_chars} chars)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_known_strings() {
        assert_eq!(entropy(""), 0.0);
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
        assert!(entropy("q8Zr2LmX0vKp4TnB7wYc") > 4.0);
    }

    #[test]
    fn placeholders() {
        for value in [
            "YOUR_API_KEY",
            "xxxxxxxxxxxxxxxx",
            "<token>",
            "${DB_PASSWORD}",
            "$PGPASS",
            "%APP_SECRET%",
            "sk_live_1234567890abcdef",
            "123e4567-e89b-12d3-a456-426614174000",
            "password",
            "aaaaaaaaaaaaaaab",
            "{{ secrets.TOKEN }}",
        ] {
            assert!(is_placeholder(value), "{value}");
        }
        for value in ["q8Zr2LmX0vKp4TnB7wYc", "Tr0ub4dor&3", "9fK2-mQ7x!pL"] {
            assert!(!is_placeholder(value), "{value}");
        }
    }

    #[test]
    fn redaction_never_shows_the_secret() {
        assert_eq!(redact("AKIAQ3MHXB7ZK2VN4RTY"), "AK***(20 chars)");
        assert_eq!(redact("hunter22"), "***(8 chars)");
        assert_eq!(
            redact("ghp_0123456789abcdefghijABCDEFGHIJ0123ab"),
            "ghp_***(40 chars)"
        );
        assert_eq!(redact("é€ü中文字符串éé€€ü"), "é€***(13 chars)");
    }

    #[test]
    fn classes() {
        assert_eq!(char_classes("abc"), 1);
        assert_eq!(char_classes("aB3!"), 4);
        assert_eq!(char_classes("hello-world"), 1);
        assert_eq!(char_classes("prod/db/creds"), 1);
    }
}
