//! Integration tests: each starts the real `automation-frameworkd` binary on a
//! temporary socket and speaks the protocol to it, through the Rust client or as
//! raw frames. One test binary; the modules are listed here.

// Shared harness: start a daemon with a config, connect clients, send raw frames.
mod util;

// Handshake, pipelining, batches, version mismatch, unknown requests, typed errors.
mod protocol;

// Clients that send garbage, huge lengths, truncated frames or nothing at all, while
// a well-behaved client connected alongside keeps being served.
mod hostile;

// Access control: who may connect, agent-name bindings, admin operations; the
// tests that act as another uid need root.
mod access;

// Per-connection and per-uid limits, with the server in process to check that each
// limit hit is counted.
mod limits;

// Rate limits and circuit breakers through the socket, across connections.
mod guards;

// Retry advice, the shared retry budget, the breaker's half-open race and routes.
mod retries;

// The money budget and quotas: exact under concurrency, idempotent, and durable
// across kill -9.
mod ledger;

// One commit path: connections cut off while their ledger writes are in flight
// leave the daemon's memory equal to its ledger (issue 10's regressions).
mod commit;

// The operator's HTTP side: /metrics, /health, /ready.
mod http;

// Alert webhooks: delivered to a local receiver, suppressed per key.
mod alerts;

// The CLI binary: exit codes, --json, config check, the JSON-lines session.
mod cli;

// Config reload by SIGHUP and by the admin request: what changed applies, guard
// state survives, a bad file changes nothing.
mod reload;

// Lifecycle: SIGTERM drains and exits 0, the socket path rules.
mod lifecycle;

// The committed fuzz inputs (seeds and crash regressions) through the fuzz
// targets' checks, without cargo-fuzz.
mod fuzzed;

// The content guard: the check request, admit with a payload, the CLI's check,
// the session's check, a reload with a broken rules file.
mod content;

// Issue 16: clock steps, overflow, floods, a vanished ledger, a full or frozen
// disk (the mounting tests are ignored; .ci/faults runs them as root).
mod faults;
// Bulkheads, waiting for a permit, and leases: exact capacity under churn,
// first come first served, what a dropped connection gives back.
mod concurrency;
// Floods (issue 16): orphaned reservations capped and settled in batches, empty
// and huge configs refused, half-sent HTTP requests that cannot starve /health.
mod floods;

// Issue 15's durability split, under strace: a reservation-only batch makes no
// fsync, a batch with a charge exactly one; both survive kill -9.
mod durability;
