//! Rules for the names clients and operators give to agents and services.
//!
//! Names become map keys, rate-limit bucket keys and log fields, so they are short,
//! printable, and free of the NUL byte the rate keys use as a separator.
//!
//! An error message that names what a client sent repeats it through [`shown`],
//! which cuts it: a refused name may be as long as the frame that carried it, and
//! a message echoing it whole would not fit the reply (before the handshake the
//! error frame must fit in `MAX_HELLO_LEN`; after it, in `MAX_FRAME_LEN`), so the
//! client would get no answer at all, or `FrameTooLarge`, instead of the error.

use std::fmt;

/// Longest agent or service name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error("contains the control character {0:?}; use printable characters")]
    Control(char),
}

/// How many characters of a client-given string an error message repeats.
pub const SHOWN_CHARS: usize = 64;

/// A client-given string (a name, a key) as an error message may repeat it:
/// quoted and escaped like `{:?}`, and past [`SHOWN_CHARS`] characters cut, with
/// its length in bytes: `"aaaa…aaaa"… (4050 bytes)`. At most about 700 bytes,
/// whatever the client sent.
pub fn shown(text: &str) -> Shown<'_> {
    Shown(text)
}

/// See [`shown`].
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(SHOWN_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// Checks an agent or service name.
///
/// # Errors
/// A [`NameError`] saying what is wrong with it.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    // Names are printable ASCII as a rule: checked a byte at a time (every
    // admission checks its agent's name, and a lease's), the characters
    // decoded only for the rest.
    if name.bytes().all(|b| matches!(b, 0x20..=0x7e)) {
        return Ok(());
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(NameError::Control(c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name("planner-1"), Ok(()));
        assert_eq!(check_name("модель/gpt-4o"), Ok(()));
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("a\0b"), Err(NameError::Control('\0')));
        assert_eq!(check_name(&"x".repeat(129)), Err(NameError::TooLong(129)));
        // Past the printable-ASCII fast path: DEL, C1 controls, a tab.
        assert_eq!(check_name("a\u{7f}"), Err(NameError::Control('\u{7f}')));
        assert_eq!(check_name("é\u{85}"), Err(NameError::Control('\u{85}')));
        assert_eq!(check_name("a\tb"), Err(NameError::Control('\t')));
        assert_eq!(check_name("~ !"), Ok(()));
    }

    proptest::proptest! {
        /// The fast path decides as the character-by-character check does.
        #[test]
        fn the_ascii_fast_path_agrees_with_the_characters(name in "\\PC{0,8}[\\x00-\\x7f\\u{80}-\\u{a0}]{0,4}") {
            let by_chars = if name.is_empty() {
                Err(NameError::Empty)
            } else if name.len() > MAX_NAME_LEN {
                Err(NameError::TooLong(name.len()))
            } else {
                match name.chars().find(|c| c.is_control()) {
                    Some(c) => Err(NameError::Control(c)),
                    None => Ok(()),
                }
            };
            proptest::prop_assert_eq!(check_name(&name), by_chars);
        }
    }

    #[test]
    fn shown_names_are_quoted_and_cut() {
        assert_eq!(shown("planner").to_string(), "\"planner\"");
        assert_eq!(shown("a\nb").to_string(), "\"a\\nb\"");
        let exactly = "x".repeat(SHOWN_CHARS);
        assert_eq!(shown(&exactly).to_string(), format!("{exactly:?}"));
        let long = "y".repeat(4_050);
        assert_eq!(
            shown(&long).to_string(),
            format!("\"{}\"… (4050 bytes)", "y".repeat(SHOWN_CHARS))
        );
        // Cut on a character boundary, and bounded even when every character is
        // escaped at its longest.
        let wide = "é".repeat(100);
        assert_eq!(
            shown(&wide).to_string(),
            format!("\"{}\"… (200 bytes)", "é".repeat(SHOWN_CHARS))
        );
        let escaped = "\u{7f}".repeat(1_000_000);
        assert!(shown(&escaped).to_string().len() < 700);
    }
}
