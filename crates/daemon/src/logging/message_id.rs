//! Journal `MESSAGE_ID`s, one per kind of event, so an operator can list them all:
//! `journalctl -u automation-framework MESSAGE_ID=<id>`. Constants forever (a
//! changed id breaks operators' saved queries); new kinds get new ids.

/// A circuit breaker opened.
pub const BREAKER_OPENED: &str = "95aaedc4aeda493d9a0ef317c76426b7";
/// A circuit breaker changed state otherwise (half-open, closed, forced).
pub const BREAKER_CHANGED: &str = "d8a6168ea93b480e92d9cebccd7f8058";
/// An admission was denied.
pub const DENIED: &str = "688acea186994359b5b10e6de5d50410";
/// A budget crossed an alert threshold.
pub const BUDGET_THRESHOLD: &str = "63217c82fa12467eaae16eac59b9165b";
/// The configuration was reloaded.
pub const RELOADED: &str = "b6bce62fd91f41329fa1a715c06991ba";
/// A reload was refused; the old configuration stays in force.
pub const RELOAD_FAILED: &str = "8aafb94f4baa403ab96828a649822495";
/// A ledger transaction failed.
pub const LEDGER_FAILED: &str = "5a33506844fe4da1b69b4c3dad821f55";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_distinct_128_bit_lowercase_hex() {
        let ids = [
            BREAKER_OPENED,
            BREAKER_CHANGED,
            DENIED,
            BUDGET_THRESHOLD,
            RELOADED,
            RELOAD_FAILED,
            LEDGER_FAILED,
        ];
        for id in ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
                "{id}"
            );
        }
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }
}
