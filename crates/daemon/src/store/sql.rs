//! SQLite's integers and the daemon's: SQLite stores signed 64-bit
//! integers, and the ledger's ids, times and counts are unsigned.

/// Our ids, times and counts never reach 2^63.
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A negative value (a hand edit) reads as 0.
pub(super) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
