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

/// Journal `MESSAGE_ID`s, one per kind of event, so an operator can list them all:
/// `journalctl -u automation-framework MESSAGE_ID=<id>`. Constants forever (a
/// changed id breaks operators' saved queries); new kinds get new ids.
pub mod message_id {
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
}

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
    fn message_ids_are_distinct_128_bit_lowercase_hex() {
        use message_id::*;
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
