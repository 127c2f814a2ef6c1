//! Rules for the names clients and operators give to agents and services.
//!
//! Names become map keys, rate-limit bucket keys and log fields, so they are short,
//! printable, and free of the NUL byte the rate keys use as a separator.

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
    }
}
