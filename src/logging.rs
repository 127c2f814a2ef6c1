//! Keeping the log useful under load: a storm of denials (a misbehaving agent, an
//! open breaker in front of a busy fleet) must not flood the journal or cost the
//! hot path a log write per request.
//!
//! Denial lines pass at most [`DENIALS_PER_SECOND`] a second; the rest are counted
//! and summed up in one line when the next second's first denial is logged, and in
//! `automation_framework_log_lines_suppressed_total`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Denial lines logged per second at most.
pub const DENIALS_PER_SECOND: u64 = 20;

/// A per-second budget of log lines.
pub struct LogBudget {
    per_second: u64,
    window: Mutex<Window>,
    suppressed_total: AtomicU64,
}

struct Window {
    started: Option<Instant>,
    logged: u64,
    suppressed: u64,
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

/// The budget of denial lines, shared by every connection.
pub static DENIALS: LogBudget = LogBudget::new(DENIALS_PER_SECOND);

// === impl LogBudget ===

impl LogBudget {
    pub const fn new(per_second: u64) -> LogBudget {
        LogBudget {
            per_second,
            window: Mutex::new(Window {
                started: None,
                logged: 0,
                suppressed: 0,
            }),
            suppressed_total: AtomicU64::new(0),
        }
    }

    /// Takes one line from the budget at `now`.
    pub fn take(&self, now: Instant) -> Verdict {
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let expired = window
            .started
            .is_none_or(|started| now.duration_since(started).as_secs() >= 1);
        if expired {
            let suppressed = std::mem::take(&mut window.suppressed);
            *window = Window {
                started: Some(now),
                logged: 1,
                suppressed: 0,
            };
            return Verdict::Log { suppressed };
        }
        if window.logged < self.per_second {
            window.logged += 1;
            return Verdict::Log { suppressed: 0 };
        }
        window.suppressed += 1;
        self.suppressed_total.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::LOG_SUPPRESSED).increment(1);
        Verdict::Drop
    }

    /// Lines dropped since the daemon started.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_storm_is_cut_to_the_budget_and_counted() {
        let budget = LogBudget::new(3);
        let t0 = Instant::now();
        let verdicts: Vec<_> = (0..10).map(|_| budget.take(t0)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v != Verdict::Drop).count(), 3);
        assert_eq!(budget.suppressed_total(), 7);
        // The next second's first line says how many were dropped.
        assert_eq!(
            budget.take(t0 + Duration::from_secs(1)),
            Verdict::Log { suppressed: 7 }
        );
        assert_eq!(
            budget.take(t0 + Duration::from_secs(1)),
            Verdict::Log { suppressed: 0 }
        );
    }
}
