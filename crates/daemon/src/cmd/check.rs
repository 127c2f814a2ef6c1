//! `Check`: what do the content rules find in this text? Also the scan that
//! `Admit` runs on a payload before its admission (`admit.rs`).
//!
//! A scan costs milliseconds per megabyte (the scanner does roughly 100 MB/s
//! per core), far too long for a connection's task or the engine lock. So a
//! request is checked (enabled, size, language) at once, and the scan then
//! runs on tokio's blocking pool, gated by a semaphore of
//! [`concurrent_scans`] permits. Why not plain `spawn_blocking`: its pool grows
//! to 512 threads, and every runnable scanning thread takes an equal share of
//! the cores from the runtime's workers, so a burst of large payloads would
//! slow every other connection's pings and admissions in proportion. With the
//! permits, at most half the cores scan at once and the others keep serving;
//! scans beyond that wait their turn without holding a thread.
//!
//! Texts waiting for (or in) a scan are bounded too, by size across the whole
//! daemon ([`MAX_QUEUED_BYTES`]): each connection may have 256 requests in
//! flight, so without it a few connections pipelining 1 MiB payloads could
//! hold gigabytes while they wait. Beyond the bound a request is answered
//! `Unavailable` at once (retry later), before it holds anything.

use std::sync::{Arc, OnceLock};

use automation_framework_scanner::{Finding, Lang, Scanner};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::invalid;
use crate::config::ContentConfig;
use crate::guard::content::Scanned;
use crate::names::shown;
use crate::protocol::{CheckReply, ErrorCode, ErrorReply, Payload, Response, Violation};
use crate::state::State;

use super::Reply;

/// At most this many violations are listed in a reply (each is at most a few
/// hundred bytes), so a reply always fits a frame; the rest are counted.
pub const MAX_LISTED: usize = 500;

/// Bytes of text waiting for or in a scan, across every connection.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

pub(super) fn apply(state: &State, payload: Payload) -> Reply {
    let config = state.config();
    let job = match Job::new(&config.content, payload) {
        Ok(job) => job,
        Err(err) => return Reply::Ready(Response::Error(err)),
    };
    Reply::Pending(Box::pin(async move {
        match job.run().await {
            Ok(scanned) => Response::Check(reply(scanned)),
            Err(err) => Response::Error(err),
        }
    }))
}

/// A checked text, ready to be scanned off the connection's task.
pub(super) struct Job {
    /// This text's share of [`MAX_QUEUED_BYTES`], given back when it is scanned.
    queued: OwnedSemaphorePermit,
    scanner: Arc<Scanner>,
    lang: Option<Lang>,
    text: String,
    deny_at: automation_framework_scanner::Severity,
    shadow: bool,
}

impl Job {
    /// Checks what can be checked without scanning: the guard is on, the text
    /// fits `content.max_payload`, the language is known.
    ///
    /// # Errors
    /// `InvalidArgument` saying what was wrong and what to do.
    pub(super) fn new(content: &ContentConfig, payload: Payload) -> Result<Job, ErrorReply> {
        if !content.enabled {
            return Err(invalid(
                "content checks are disabled on this daemon (content.enabled = false); ask its operator, or scan locally with `automation-framework check`",
            ));
        }
        let size = payload.text.len();
        if size > content.max_payload {
            return Err(invalid(format!(
                "the payload is {size} bytes, more than content.max_payload ({} bytes); send less, or ask the operator to raise content.max_payload (at most 1 MiB)",
                content.max_payload
            )));
        }
        let lang = payload
            .lang
            .as_deref()
            .map(|name| {
                name.parse::<Lang>().map_err(|_| {
                    invalid(format!(
                        "unknown language {}; use python, javascript, typescript, shell, rust, go or text (or leave lang out to have it guessed)",
                        shown(name)
                    ))
                })
            })
            .transpose()?;
        // One permit per KiB begun (a 0-byte text still takes one).
        let kib = u32::try_from(size / 1024 + 1).unwrap_or(u32::MAX);
        let queued = Arc::clone(queued_bytes())
            .try_acquire_many_owned(kib)
            .map_err(|_| {
                ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!("the daemon already holds {} MiB of text waiting to be scanned; nothing was done, retry later", MAX_QUEUED_BYTES >> 20),
                )
            })?;
        Ok(Job {
            queued,
            scanner: Arc::clone(&content.scanner),
            lang,
            text: payload.text,
            deny_at: content.deny_at,
            shadow: content.shadow,
        })
    }

    /// Scans on the blocking pool, once a permit is free (see the module doc),
    /// and counts what was found.
    ///
    /// # Errors
    /// `Internal` if the scan panicked (a bug in a rule or a lexer).
    pub(super) async fn run(self) -> Result<Scanned, ErrorReply> {
        let permit = scan_permits()
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ErrorReply::new(ErrorCode::Internal, "the scan pool is closed"))?;
        let Job {
            queued,
            scanner,
            lang,
            text,
            deny_at,
            shadow,
        } = self;
        let scanned = tokio::task::spawn_blocking(move || {
            // Held by the thread, not the future: a scan whose request was
            // abandoned still occupies its permit until it ends.
            let _permits = (permit, queued);
            let lang = lang.unwrap_or_else(|| Lang::guess(&text));
            let findings = scanner.scan(Some(lang), &text);
            Scanned {
                lang,
                findings,
                deny_at,
                shadow,
            }
        })
        .await
        .map_err(|err| {
            log::error!("a content scan failed: {err}");
            ErrorReply::new(
                ErrorCode::Internal,
                "the content scan failed inside the daemon (a bug; the daemon's log has the detail)",
            )
        })?;
        for finding in &scanned.findings {
            metrics::counter!(
                crate::metrics::CONSTRAINT_VIOLATIONS,
                "rule" => finding.rule.clone(),
                "kind" => finding.kind.name()
            )
            .increment(1);
        }
        Ok(scanned)
    }
}

/// How many scans may run at once: half the cores, at least one.
pub fn concurrent_scans() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

fn queued_bytes() -> &'static Arc<Semaphore> {
    static QUEUED: OnceLock<Arc<Semaphore>> = OnceLock::new();
    QUEUED.get_or_init(|| Arc::new(Semaphore::new(MAX_QUEUED_BYTES / 1024)))
}

fn scan_permits() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| Arc::new(Semaphore::new(concurrent_scans())))
}

fn reply(scanned: Scanned) -> CheckReply {
    let total = scanned.findings.len();
    let violations: Vec<Violation> = scanned
        .findings
        .into_iter()
        .take(MAX_LISTED)
        .map(violation)
        .collect();
    CheckReply {
        lang: scanned.lang.name().to_owned(),
        omitted: u32::try_from(total - violations.len()).unwrap_or(u32::MAX),
        violations,
    }
}

/// The wire form of a finding (already redacted by the scanner).
pub fn violation(finding: Finding) -> Violation {
    Violation {
        kind: finding.kind.name().to_owned(),
        rule: finding.rule,
        severity: finding.severity.name().to_owned(),
        line: finding.line,
        column: finding.column,
        excerpt: finding.excerpt,
        message: finding.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn job(config: &str, lang: Option<&str>, text: &str) -> Result<Job, ErrorReply> {
        let config = Config::from_toml(config).unwrap();
        let payload = Payload {
            lang: lang.map(str::to_owned),
            text: text.to_owned(),
        };
        Job::new(&config.content, payload)
    }

    #[test]
    fn a_payload_over_the_limit_is_refused_before_the_scan() {
        let err = job("[content]\nmax_payload = 8\n", None, "123456789")
            .err()
            .unwrap();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("9 bytes"), "{}", err.message);
        assert!(
            err.message.contains("content.max_payload (8 bytes)"),
            "{}",
            err.message
        );
        assert!(job("[content]\nmax_payload = 8\n", None, "12345678").is_ok());
    }

    #[test]
    fn an_unknown_language_is_named() {
        let err = job("", Some("cobol"), "x").err().unwrap();
        assert!(err.message.contains("\"cobol\""), "{}", err.message);
        assert!(job("", Some("py"), "x").is_ok());
    }

    #[test]
    fn disabled_means_no_scan() {
        let err = job("[content]\nenabled = false\n", None, "x")
            .err()
            .unwrap();
        assert!(
            err.message.contains("content.enabled = false"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn the_scan_runs_and_lists_findings() {
        let scanned = job("", Some("python"), "eval(x)\n")
            .unwrap()
            .run()
            .await
            .unwrap();
        let reply = reply(scanned);
        assert_eq!(reply.lang, "python");
        assert_eq!(reply.violations[0].rule, "py-eval");
        assert_eq!(reply.omitted, 0);
    }
}
