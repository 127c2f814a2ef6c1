//! Votes and waits as the wire shows them: a typed reason becomes text, a
//! duration whole milliseconds. Shared by `admit` and `route`, which both turn
//! the engine's typed votes into replies.

use std::fmt::Write as _;
use std::time::Duration;

use crate::admission::Reason;
use crate::guard::rate::Per;
use crate::protocol::Text;

/// A vote's reason as text, without a heap allocation for the usual ones: a
/// fixed reason is referred to, not copied; the reasons an allowed admission
/// carries with numbers (rate cells taken, calls in flight) are built in place
/// from [`with_reason_pieces`], the one place their words are written
/// (at most 36 bytes, within `Text::INLINE`) and without the `fmt` machinery,
/// which cost more than the checks. Other reasons go through `Display`, still
/// in place when short.
pub(super) fn reason_text(reason: &Reason) -> Text {
    match reason {
        Reason::Fixed(text) => Text::fixed(text),
        Reason::Burst { .. } | Reason::InFlight { .. } => with_reason_pieces(reason, |pieces| {
            let mut text = Text::new();
            for piece in pieces {
                text.push_str(piece);
            }
            text
        }),
        Reason::RateExceeded { rate, per, burst } => rate_exceeded(*rate, *per, *burst),
        other => {
            let mut text = Text::new();
            // Writing into a `Text` cannot fail; only a `Display` that reports
            // an error could, and then the text is what was written.
            let _ = write!(text, "{other}");
            text
        }
    }
}

/// Hands `write` a vote's reason in pieces that make its text when written
/// one after the other: the usual allowed reasons (rate cells taken, calls in
/// flight) as their numbers' digits and the words between them, so no text is
/// built for them at all (every admission's reply carries one per guard);
/// other reasons as [`reason_text`] makes them.
#[inline(always)]
pub(super) fn with_reason_pieces<R>(reason: &Reason, write: impl FnOnce(&[&str]) -> R) -> R {
    let (mut first, mut second) = (itoa::Buffer::new(), itoa::Buffer::new());
    match reason {
        Reason::Burst { taken, burst } => write(&[
            first.format(*taken),
            " of burst ",
            second.format(*burst),
            " taken",
        ]),
        Reason::InFlight { n, max } => {
            write(&[first.format(*n), " of ", second.format(*max), " in flight"])
        }
        Reason::Fixed(text) => write(&[text]),
        other => write(&[reason_text(other).as_str()]),
    }
}

/// "rate limit of `rate` per `per` (burst `burst`) exceeded", without
/// `format!`, written once: past `Text::INLINE` for most limits, so built in
/// a `String` of its final size and handed over.
fn rate_exceeded(rate: u32, per: Duration, burst: u32) -> Text {
    let mut numbers = itoa::Buffer::new();
    let mut reason = String::with_capacity(64);
    reason.push_str("rate limit of ");
    reason.push_str(numbers.format(rate));
    reason.push_str(" per ");
    let per = Per(per);
    match per.whole() {
        Some((n, unit)) => {
            reason.push_str(numbers.format(n));
            reason.push_str(unit);
        }
        None => {
            let _ = write!(reason, "{per}");
        }
    }
    reason.push_str(" (burst ");
    reason.push_str(numbers.format(burst));
    reason.push_str(") exceeded");
    Text::from(reason)
}

/// Whole milliseconds, rounded up: coming back after the advertised wait must work.
pub(super) fn millis_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_denial_reads_as_the_typed_denial_does() {
        use crate::guard::RateDenial;
        let periods = [
            Duration::from_secs(1),
            Duration::from_secs(3600),
            Duration::from_millis(100),
            Duration::from_millis(1500),
            Duration::from_nanos(1_000_001),
        ];
        for per in periods {
            for (rate, burst) in [(1, 1), (100, 7), (u32::MAX, u32::MAX)] {
                let typed = RateDenial::NotUntil {
                    rate,
                    per,
                    burst,
                    retry_after: Duration::from_secs(1),
                }
                .to_string();
                let reason = Reason::RateExceeded { rate, per, burst };
                assert_eq!(rate_exceeded(rate, per, burst), typed.as_str());
                assert_eq!(reason_text(&reason), typed.as_str());
                assert_eq!(reason.to_string(), typed);
            }
        }
        assert_eq!(
            rate_exceeded(1, Duration::from_secs(3600), 1),
            "rate limit of 1 per 3600s (burst 1) exceeded"
        );
        assert_eq!(
            rate_exceeded(5, Duration::from_millis(1500), 2),
            "rate limit of 5 per 1.5s (burst 2) exceeded"
        );
    }

    #[test]
    fn a_reason_in_pieces_reads_as_its_text() {
        let reasons = [
            Reason::Burst {
                taken: 0,
                burst: u32::MAX,
            },
            Reason::InFlight { n: 3, max: 4 },
            Reason::InFlight {
                n: u32::MAX,
                max: 1,
            },
            Reason::Fixed("held by this session"),
            Reason::RateExceeded {
                rate: 5,
                per: Duration::from_millis(1500),
                burst: 2,
            },
        ];
        for reason in reasons {
            let joined = with_reason_pieces(&reason, |pieces| pieces.concat());
            assert_eq!(joined, reason.to_string());
            assert_eq!(reason_text(&reason), joined.as_str());
        }
    }

    #[test]
    fn the_allowed_rate_reason_reads_as_the_display_form() {
        for (taken, burst) in [(1, 100), (u32::MAX, 7), (u32::MAX, u32::MAX)] {
            let text = reason_text(&Reason::Burst { taken, burst });
            assert_eq!(text, Reason::Burst { taken, burst }.to_string().as_str());
            assert!(!text.is_heap_allocated(), "{text:?} is on the heap");
        }
        let most = reason_text(&Reason::InFlight {
            n: u32::MAX,
            max: u32::MAX,
        });
        assert!(!most.is_heap_allocated(), "{most:?} is on the heap");
        assert_eq!(
            reason_text(&Reason::Burst {
                taken: 1,
                burst: 100
            }),
            "1 of burst 100 taken"
        );
        assert_eq!(
            reason_text(&Reason::InFlight { n: 3, max: 4 }),
            Reason::InFlight { n: 3, max: 4 }.to_string().as_str()
        );
    }
}
