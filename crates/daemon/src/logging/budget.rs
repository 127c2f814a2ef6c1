//! The budget of denial lines: a storm of denials (a misbehaving agent, an open
//! breaker in front of a busy fleet) must not flood the journal or cost the hot
//! path a log write per request.
//!
//! Denial lines pass a governor rate limiter of [`DENIALS_PER_SECOND`] a second
//! (burst as large): lock-free, on the daemon's own clock type. The lines it
//! refuses are counted, in `automation_framework_log_lines_suppressed_total` and
//! in the next line it lets through, which says how many were dropped before it.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::clock::SharedClock;

/// Denial lines logged per second at most.
pub const DENIALS_PER_SECOND: u32 = 20;

/// A budget of log lines per second.
pub struct LogBudget {
    limiter: RateLimiter<NotKeyed, InMemoryState, SharedClock, NoOpMiddleware<Duration>>,
    /// Refused since the last line let through.
    suppressed: AtomicU64,
    suppressed_total: AtomicU64,
}

/// Whether to log this line, and how many were suppressed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` lines were dropped since the last one logged.
    Log {
        suppressed: u64,
    },
    Drop,
}

/// The budget of denial lines, shared by every connection, on the system clock.
pub static DENIALS: LazyLock<LogBudget> = LazyLock::new(|| {
    LogBudget::new(
        NonZeroU32::new(DENIALS_PER_SECOND).expect("DENIALS_PER_SECOND is not zero"),
        SharedClock::system(),
    )
});

// === impl LogBudget ===

impl LogBudget {
    /// `per_second` lines a second, as a burst or spread out, timed by `clock`.
    pub fn new(per_second: NonZeroU32, clock: SharedClock) -> LogBudget {
        LogBudget {
            limiter: RateLimiter::direct_with_clock(Quota::per_second(per_second), clock),
            suppressed: AtomicU64::new(0),
            suppressed_total: AtomicU64::new(0),
        }
    }

    /// Takes one line from the budget, now.
    pub fn take(&self) -> Verdict {
        if self.limiter.check().is_ok() {
            return Verdict::Log {
                suppressed: self.suppressed.swap(0, Ordering::Relaxed),
            };
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        self.suppressed_total.fetch_add(1, Ordering::Relaxed);
        crate::metrics::hot().log_suppressed();
        Verdict::Drop
    }

    /// Lines dropped since the budget was made.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// A budget of `per_second` lines on a clock the test moves.
    fn budget(per_second: u32) -> (LogBudget, ManualClock) {
        let clock = ManualClock::new();
        let per_second = NonZeroU32::new(per_second).expect("not zero");
        (
            LogBudget::new(per_second, SharedClock::new(clock.clone())),
            clock,
        )
    }

    #[test]
    fn a_storm_is_cut_to_the_budget_and_counted() {
        let (budget, clock) = budget(3);
        let verdicts: Vec<_> = (0..10).map(|_| budget.take()).collect();
        assert_eq!(verdicts.iter().filter(|v| **v != Verdict::Drop).count(), 3);
        assert_eq!(budget.suppressed_total(), 7);
        // The next second's first line says how many were dropped.
        clock.advance(Duration::from_secs(1));
        assert_eq!(budget.take(), Verdict::Log { suppressed: 7 });
        assert_eq!(budget.take(), Verdict::Log { suppressed: 0 });
    }

    #[test]
    fn a_steady_trickle_under_the_budget_is_never_cut() {
        let (budget, clock) = budget(3);
        for _ in 0..30 {
            assert_eq!(budget.take(), Verdict::Log { suppressed: 0 });
            clock.advance(Duration::from_millis(334));
        }
        assert_eq!(budget.suppressed_total(), 0);
    }
}
