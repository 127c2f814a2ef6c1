//! The content guard: an admission's payload (the code or text the call will
//! run or send) checked against the content rules (SPEC §3.7).
//!
//! Scanning costs up to milliseconds per megabyte and needs no state, so it
//! does not happen here: `cmd/admit.rs` scans on a blocking thread, outside
//! the engine lock and off the connection's task, and hands the result in the
//! [`Call`] as a [`Scanned`]. This stage only turns that result into a vote,
//! so it runs in microseconds under the lock like every other guard, and shows
//! up in votes, metrics and logs like them. It takes nothing, so it has
//! nothing to undo, settle or release.
//!
//! The policy (`content.deny_at`, `content.shadow`) travels with the scan: it
//! is read from the same config snapshot the request decided with, and the
//! guard keeps no state a reload would have to rebuild.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use automation_framework_scanner::{Finding, Lang, Severity};

use super::{Call, Checked, Guard, GuardKind, Keep, Reason, Report, Settled, Verdict, Vote};

/// A payload's scan, done before the admission.
#[derive(Debug)]
pub struct Scanned {
    /// The language it was scanned as (given, or guessed).
    pub lang: Lang,
    /// What the scanner found, in the order of the text.
    pub findings: Vec<Finding>,
    /// Findings at or above this severity deny the call.
    pub deny_at: Severity,
    /// Record a denial, never deny (`content.shadow`).
    pub shadow: bool,
}

/// Why the content guard said no: the finding that decided, already redacted
/// by the scanner (a secret shows at most four characters and its length).
#[derive(Debug)]
pub struct ContentDenial {
    pub finding: Finding,
    /// Other findings at or above `deny_at`.
    pub more: usize,
}

/// The pipeline stage. Stateless: see the module doc.
#[derive(Debug, Default)]
pub struct Content;

/// The allowed vote's rule name: no single rule decided.
const RULE: &str = "content";

impl Guard for Content {
    fn check(&mut self, call: &Call<'_>, out: &mut Checked) -> Verdict {
        let Some(scanned) = call.content else {
            // No payload: nothing to judge, no vote (as a disabled breaker).
            return Verdict::Allow;
        };
        let shadow = scanned.shadow || call.shadow_all;
        let mut at_or_above = scanned
            .findings
            .iter()
            .filter(|f| f.severity >= scanned.deny_at);
        // The first of the most severe: the one a reader fixes first.
        let decisive = at_or_above
            .clone()
            .fold(None::<&Finding>, |best, f| match best {
                Some(b) if b.severity >= f.severity => Some(b),
                _ => Some(f),
            });
        let Some(decisive) = decisive else {
            out.vote(Vote::allow(
                GuardKind::Content,
                Arc::from(RULE),
                shadow,
                Reason::Fixed(if scanned.findings.is_empty() {
                    "no violation found"
                } else {
                    "violations found, all below content.deny_at"
                }),
            ));
            return Verdict::Allow;
        };
        let more = at_or_above.by_ref().count() - 1;
        out.vote(Vote::deny(
            GuardKind::Content,
            Arc::from(decisive.rule.as_str()),
            shadow,
            ContentDenial {
                finding: decisive.clone(),
                more,
            },
            None,
        ));
        if shadow {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    fn undo(&mut self, _taken: &mut (dyn Any + Send)) {}

    fn abort(&mut self, _taken: &mut (dyn Any + Send)) {}

    fn settle(&mut self, _taken: &mut (dyn Any + Send), _report: &Report, _out: &mut Settled) {}

    fn release(&mut self, _taken: &mut (dyn Any + Send)) {}

    fn disconnect(&mut self, _taken: &mut (dyn Any + Send)) -> Keep {
        Keep::No
    }
}

// === impl ContentDenial ===

impl fmt::Display for ContentDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let finding = &self.finding;
        write!(
            f,
            "{} ({}, {}) at line {} column {}: {}",
            finding.message,
            finding.kind.name(),
            finding.severity.name(),
            finding.line,
            finding.column,
            finding.excerpt
        )?;
        if self.more > 0 {
            write!(f, "; and {} more at or above the deny level", self.more)?;
        }
        Ok(())
    }
}

impl std::error::Error for ContentDenial {}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use automation_framework_scanner::Scanner;

    use super::*;
    use crate::clock::Moment;
    use crate::money::Usd;

    fn call(content: Option<&Scanned>, shadow_all: bool) -> Call<'_> {
        Call {
            agent: "a",
            service: "s",
            model: None,
            units: NonZeroU32::MIN,
            estimate: Usd::ZERO,
            now: Moment {
                mono: Duration::ZERO,
                unix: 0,
            },
            shadow_all,
            content,
            attempt: 1,
            session: 1,
            pid: 0,
            uid: 0,
            lease: None,
            waiter: None,
            places: crate::guard::Places::default(),
        }
    }

    fn scanned(text: &str, deny_at: Severity, shadow: bool) -> Scanned {
        Scanned {
            lang: Lang::Python,
            findings: Scanner::builtin().scan(Some(Lang::Python), text),
            deny_at,
            shadow,
        }
    }

    fn vote(scan: Option<&Scanned>, shadow_all: bool) -> (Verdict, Vec<Vote>) {
        let mut votes = crate::guard::Votes::new();
        let verdict = Content.check(&call(scan, shadow_all), &mut Checked::new(&mut votes));
        (verdict, votes.into_vec())
    }

    #[test]
    fn no_payload_no_vote() {
        let (verdict, votes) = vote(None, false);
        assert_eq!(verdict, Verdict::Allow);
        assert!(votes.is_empty());
    }

    #[test]
    fn a_clean_payload_is_allowed_with_a_vote() {
        let clean = scanned(
            "def evaluate(x):\n    return x + 1\n",
            Severity::High,
            false,
        );
        let (verdict, votes) = vote(Some(&clean), false);
        assert_eq!(verdict, Verdict::Allow);
        assert_eq!(votes.len(), 1);
        assert!(votes[0].allow);
        assert_eq!(votes[0].reason.to_string(), "no violation found");
    }

    #[test]
    fn a_dangerous_call_denies_and_names_its_rule() {
        let bad = scanned("x = eval(input())\n", Severity::High, false);
        let (verdict, votes) = vote(Some(&bad), false);
        assert_eq!(verdict, Verdict::Deny);
        assert!(!votes[0].allow && !votes[0].shadow);
        assert_eq!(&*votes[0].rule, "py-eval");
        let reason = votes[0].reason.to_string();
        assert!(reason.contains("line 1 column 5"), "{reason}");
    }

    #[test]
    fn findings_below_the_threshold_allow() {
        let bad = scanned("x = eval(input())\n", Severity::Critical, false);
        let severity = bad.findings[0].severity;
        assert!(severity < Severity::Critical, "{severity:?}");
        let (verdict, votes) = vote(Some(&bad), false);
        assert_eq!(verdict, Verdict::Allow);
        assert!(votes[0].allow);
    }

    #[test]
    fn shadow_records_the_denial_and_allows() {
        for (shadow, shadow_all) in [(true, false), (false, true)] {
            let bad = scanned("x = eval(input())\n", Severity::High, shadow);
            let (verdict, votes) = vote(Some(&bad), shadow_all);
            assert_eq!(verdict, Verdict::Allow);
            assert!(!votes[0].allow && votes[0].shadow);
        }
    }

    #[test]
    fn a_secret_is_never_in_the_reason() {
        // Split so that no secret scanner fires on this source file.
        let key = format!("AKIA{}", "NYPHP3WL6NO733BT");
        let bad = scanned(
            &format!("AWS_ACCESS_KEY_ID = \"{key}\"\n"),
            Severity::Low,
            false,
        );
        let (verdict, votes) = vote(Some(&bad), false);
        assert_eq!(verdict, Verdict::Deny);
        let reason = votes[0].reason.to_string();
        assert!(!reason.contains(&key), "{reason}");
        assert!(!reason.contains(&key[4..]), "{reason}");
    }
}
