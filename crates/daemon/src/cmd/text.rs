//! Votes and waits as the wire shows them: a typed reason becomes text, a
//! duration whole milliseconds. Shared by `admit` and `route`, which both turn
//! the engine's typed votes into replies.

use std::borrow::Cow;
use std::time::Duration;

use crate::admission::Reason;

/// A vote's reason as text: a fixed reason is not copied, and the reasons an
/// allowed admission carries with numbers (rate cells taken, calls in flight)
/// are built without the `fmt` machinery, which cost more than the checks.
pub(super) fn reason_text(reason: &Reason) -> Cow<'static, str> {
    match reason {
        Reason::Burst { taken, burst } => Cow::Owned(taken_of_burst(*taken, *burst)),
        Reason::Fixed(text) => Cow::Borrowed(text),
        Reason::InFlight { n, max } => Cow::Owned(in_flight_of(*n, *max)),
        other => Cow::Owned(other.to_string()),
    }
}

/// "`taken` of burst `burst` taken", without `format!`.
fn taken_of_burst(taken: u32, burst: u32) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut reason = String::with_capacity(40);
    reason.push_str(numbers.format(taken));
    reason.push_str(" of burst ");
    reason.push_str(numbers.format(burst));
    reason.push_str(" taken");
    reason
}

/// "`n` of `max` in flight", without `format!`.
fn in_flight_of(n: u32, max: u32) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut reason = String::with_capacity(32);
    reason.push_str(numbers.format(n));
    reason.push_str(" of ");
    reason.push_str(numbers.format(max));
    reason.push_str(" in flight");
    reason
}

/// Whole milliseconds, rounded up: coming back after the advertised wait must work.
pub(super) fn millis_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_rate_reason_reads_as_the_display_form() {
        for (taken, burst) in [(1, 100), (u32::MAX, 7)] {
            assert_eq!(
                taken_of_burst(taken, burst),
                Reason::Burst { taken, burst }.to_string()
            );
        }
        assert_eq!(taken_of_burst(1, 100), "1 of burst 100 taken");
        assert_eq!(
            in_flight_of(3, 4),
            Reason::InFlight { n: 3, max: 4 }.to_string()
        );
    }
}
