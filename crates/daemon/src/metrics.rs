//! Metric names, their descriptions, and the hot handles of the request path.
//!
//! A low layer: it imports nothing of the daemon's state, so anything may import
//! it. The scrape-time refresh of the state gauges lives with the HTTP listener
//! (`http/gauges.rs`).
//!
//! Names follow Prometheus conventions: one `automation_framework_` prefix,
//! counters end in `_total`, durations are `_seconds` histograms with buckets,
//! money is in `_dollars`. Labels are bounded: request kind, guard, outcome,
//! configured rule, budget and quota names, and service names (bounded by
//! `daemon.max_services`); never agent names or keys.
//!
//! The recorder is process-global and installed only by the daemon's `main`; the
//! library's `metrics::…!` calls are no-ops elsewhere (tests, the CLI).

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

pub const REQUESTS: &str = "automation_framework_requests_total";
pub const REQUEST_DURATION: &str = "automation_framework_request_duration_seconds";
pub const DECISIONS: &str = "automation_framework_decisions_total";
pub const ADMISSIONS: &str = "automation_framework_admissions_total";
pub const RATE_LIMIT_HITS: &str = "automation_framework_rate_limit_hits_total";
pub const CONSTRAINT_VIOLATIONS: &str = "automation_framework_constraint_violations_total";
pub const RETRIES_ADVISED: &str = "automation_framework_retries_advised_total";
pub const RETRIES_REFUSED: &str = "automation_framework_retries_refused_total";
pub const ROUTE_CHOICES: &str = "automation_framework_route_choices_total";
pub const BREAKER_TRANSITIONS: &str = "automation_framework_breaker_transitions_total";
pub const BREAKER_STATE: &str = "automation_framework_breaker_state";
pub const BUDGET_SPENT: &str = "automation_framework_budget_spent_dollars";
pub const BUDGET_RESERVED: &str = "automation_framework_budget_reserved_dollars";
pub const BUDGET_LIMIT: &str = "automation_framework_budget_limit_dollars";
pub const QUOTA_USAGE: &str = "automation_framework_quota_max_usage_ratio";
pub const CONNECTIONS: &str = "automation_framework_connections";
pub const ACTIVE_AGENTS: &str = "automation_framework_active_agents";
pub const OPEN_RESERVATIONS: &str = "automation_framework_open_reservations";
pub const LIMIT_HITS: &str = "automation_framework_limit_hits_total";
pub const LOG_SUPPRESSED: &str = "automation_framework_log_lines_suppressed_total";
pub const ALERTS_SENT: &str = "automation_framework_alerts_sent_total";
pub const ALERTS_FAILED: &str = "automation_framework_alerts_failed_total";
pub const ALERTS_DROPPED: &str = "automation_framework_alerts_dropped_total";
pub const BULKHEAD_IN_FLIGHT: &str = "automation_framework_bulkhead_in_flight";
pub const BULKHEAD_WAITING: &str = "automation_framework_bulkhead_waiting";
pub const BULKHEAD_DENIALS: &str = "automation_framework_bulkhead_denials_total";
pub const BULKHEAD_WAITS: &str = "automation_framework_bulkhead_waits_total";
pub const LEASES_HELD: &str = "automation_framework_leases_held";
pub const STORE_UP: &str = "automation_framework_store_up";
pub const STORE_COMMIT_DURATION: &str = "automation_framework_store_commit_duration_seconds";
pub const STORE_COMMIT_JOBS: &str = "automation_framework_store_commit_jobs";
pub const STORE_SYNC_DURATION: &str = "automation_framework_store_sync_duration_seconds";
pub const STORE_SYNC_JOBS: &str = "automation_framework_store_sync_jobs";
pub const STORE_CHECKPOINT_DURATION: &str =
    "automation_framework_store_checkpoint_duration_seconds";
pub const STORE_WRITER_CHECKPOINTS: &str = "automation_framework_store_writer_checkpoints_total";
pub const STORE_WRITER_CHECKPOINTS_BUSY: &str =
    "automation_framework_store_writer_checkpoints_busy_total";
pub const ENGINE_LOCK_WAITS: &str = "automation_framework_engine_lock_waits_total";
pub const ENGINE_LOCK_WAITED: &str = "automation_framework_engine_lock_waited_seconds";
pub const BUDGET_CLOCK_STEPS_BACK: &str = "automation_framework_budget_clock_steps_back_total";

/// Handles of the metrics every request touches, registered once: looking a
/// labelled metric up by name and labels on each request (what `counter!` with
/// labels does) cost more than the decision it counts.
pub struct Hot {
    requests: Vec<metrics::Counter>,
    durations: Vec<metrics::Histogram>,
    /// allow, deny.
    admissions: [metrics::Counter; 2],
    /// By guard (rate, breaker, budget, quota, content), then outcome (allow, deny, shadow_deny).
    decisions: Vec<[metrics::Counter; 3]>,
    /// Waits for a bulkhead permit that ended admitted (or refused by another
    /// guard), and that timed out.
    waits: [metrics::Counter; 2],
    /// Denials by rate limit and by bulkhead, labelled by the rule's name.
    rate_limit_hits: ByRule,
    bulkhead_denials: ByRule,
    /// Log lines the log budget dropped: a client hammering a limit it
    /// exceeds drops one per request, and the macro's registry lookup cost
    /// more than the rest of the budget's check.
    log_suppressed: metrics::Counter,
}

/// A counter per rule name, registered with the recorder at the rule's first
/// denial and looked up by name after that: registering builds the label and
/// its key (three allocations and the registry's own lookup), which a client
/// hammering a limit it exceeds would otherwise pay on every request.
struct ByRule {
    name: &'static str,
    label: &'static str,
    counters: std::sync::RwLock<
        std::collections::HashMap<
            std::sync::Arc<str>,
            metrics::Counter,
            foldhash::fast::RandomState,
        >,
    >,
}

/// Outcomes of a guard's vote, as the `outcome` label says them.
pub const OUTCOMES: [&str; 3] = ["allow", "deny", "shadow_deny"];

/// The hot handles. Registered with the recorder installed at the first call, so
/// the daemon calls [`install`] before serving; without a recorder (tests, the
/// CLI) they are no-ops.
pub fn hot() -> &'static Hot {
    static HOT: std::sync::OnceLock<Hot> = std::sync::OnceLock::new();
    HOT.get_or_init(|| {
        use crate::protocol::Request;
        Hot {
            requests: Request::OPS
                .iter()
                .map(|&op| metrics::counter!(REQUESTS, "op" => op))
                .collect(),
            durations: Request::OPS
                .iter()
                .map(|&op| metrics::histogram!(REQUEST_DURATION, "op" => op))
                .collect(),
            admissions: ["allow", "deny"].map(|d| metrics::counter!(ADMISSIONS, "decision" => d)),
            decisions: crate::protocol::GuardKind::ALL
                .iter()
                .map(|kind| {
                    let guard = kind.name();
                    OUTCOMES.map(|outcome| {
                        metrics::counter!(DECISIONS, "guard" => guard, "outcome" => outcome)
                    })
                })
                .collect(),
            waits: ["served", "timed_out"]
                .map(|outcome| metrics::counter!(BULKHEAD_WAITS, "outcome" => outcome)),
            rate_limit_hits: ByRule::new(RATE_LIMIT_HITS, "rule"),
            bulkhead_denials: ByRule::new(BULKHEAD_DENIALS, "bulkhead"),
            log_suppressed: metrics::counter!(LOG_SUPPRESSED),
        }
    })
}

impl Hot {
    /// The log budget dropped a line.
    pub fn log_suppressed(&self) {
        self.log_suppressed.increment(1);
    }

    /// A request of kind `kind` (its variant index) arrived.
    pub fn request(&self, kind: usize) {
        self.requests[kind].increment(1);
    }

    /// A request of kind `kind` was answered `seconds` after it arrived.
    pub fn duration(&self, kind: usize, seconds: f64) {
        self.durations[kind].record(seconds);
    }

    pub fn admission(&self, allowed: bool) {
        self.admissions[usize::from(!allowed)].increment(1);
    }

    /// One guard's vote; `guard` is the `GuardKind`'s index and `outcome` indexes
    /// [`OUTCOMES`].
    pub fn decision(&self, guard: usize, outcome: usize) {
        self.decisions[guard][outcome].increment(1);
    }

    /// A wait for a bulkhead permit ended: its turn came (`true`), or its
    /// time ran out.
    pub fn waited(&self, served: bool) {
        self.waits[usize::from(!served)].increment(1);
    }

    /// The rate limit `rule` denied a call.
    pub fn rate_limit_hit(&self, rule: &std::sync::Arc<str>) {
        self.rate_limit_hits.increment(rule);
    }

    /// The bulkhead `rule` denied a call.
    pub fn bulkhead_denial(&self, rule: &std::sync::Arc<str>) {
        self.bulkhead_denials.increment(rule);
    }
}

impl ByRule {
    fn new(name: &'static str, label: &'static str) -> ByRule {
        ByRule {
            name,
            label,
            counters: std::sync::RwLock::default(),
        }
    }

    fn increment(&self, rule: &std::sync::Arc<str>) {
        use std::sync::PoisonError;
        if let Some(counter) = self
            .counters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(rule)
        {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(self.name, self.label => String::from(&**rule));
        counter.increment(1);
        self.counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(std::sync::Arc::clone(rule), counter);
    }
}

/// How long after the last scrape that set it a state gauge is dropped from
/// `/metrics`: its budget, bulkhead, quota or service is gone.
const GAUGE_GONE_AFTER: Duration = Duration::from_secs(1);

/// Installs the Prometheus recorder and describes every metric.
///
/// # Errors
/// When a recorder is already installed or the buckets are invalid.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let latency = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        1.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)?
        .set_buckets_for_metric(
            Matcher::Suffix("_jobs".into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
            ],
        )?
        // The state gauges are set at every scrape (`http::gauges`) for what
        // exists then; one not set since the last scrape names a budget, a
        // bulkhead, a quota or a service a reload took out, and goes (the
        // exporter has no other way to drop a series). Counters and
        // histograms are never dropped.
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_GONE_AFTER))
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    describe();
    // Register the hot handles with this recorder now, before any request.
    hot();
    Ok(handle)
}

/// Without upkeep the exporter's histograms grow without bound
/// (metrics-rs/metrics#467); run this for the life of the process.
pub async fn upkeep(handle: PrometheusHandle, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

fn describe() {
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Requests handled, by request kind (op)"
    );
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Time from decoding a request to its reply being ready, by op (includes the ledger's group commit)");
    describe_counter!(
        DECISIONS,
        Unit::Count,
        "Guard votes on admissions, by guard and outcome (allow, deny, shadow_deny)"
    );
    describe_counter!(
        ADMISSIONS,
        Unit::Count,
        "Admissions decided, by decision (allow, deny)"
    );
    describe_counter!(
        RATE_LIMIT_HITS,
        Unit::Count,
        "Admissions a rate limit refused, by rule"
    );
    describe_counter!(
        CONSTRAINT_VIOLATIONS,
        Unit::Count,
        "Content rule violations found in Check texts and Admit payloads, by rule and kind (never the text)"
    );
    describe_counter!(
        RETRIES_ADVISED,
        Unit::Count,
        "Retryable failures answered with advice to retry, by service"
    );
    describe_counter!(
        RETRIES_REFUSED,
        Unit::Count,
        "Retryable failures answered with advice to give up, by service and reason (attempts, budget, breaker); retries denied at admission are decisions_total{guard=\"retry\"}"
    );
    describe_counter!(
        ROUTE_CHOICES,
        Unit::Count,
        "Services chosen by route and admit-by-route, by route (empty for a chain given in the request) and service (\"none\" when every service was skipped)"
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        Unit::Count,
        "Circuit breaker state changes, by service and new state"
    );
    describe_gauge!(
        BREAKER_STATE,
        "1 for the state each service's breaker is in, by service and state"
    );
    describe_gauge!(
        BUDGET_SPENT,
        "Spent in the budget's current period, in US dollars"
    );
    describe_gauge!(BUDGET_RESERVED, "Held by open reservations, in US dollars");
    describe_gauge!(BUDGET_LIMIT, "The budget's limit, in US dollars");
    describe_gauge!(
        QUOTA_USAGE,
        "Highest used/limit ratio among the quota's counters in their current windows"
    );
    describe_gauge!(CONNECTIONS, "Handshaken agent connections");
    describe_gauge!(
        ACTIVE_AGENTS,
        "Distinct agent names with an open connection"
    );
    describe_gauge!(
        OPEN_RESERVATIONS,
        "Admissions not yet reported (including orphans)"
    );
    describe_counter!(
        LOG_SUPPRESSED,
        Unit::Count,
        "Denial log lines dropped to keep a storm of denials from flooding the log"
    );
    describe_counter!(ALERTS_SENT, Unit::Count, "Alerts the webhook accepted");
    describe_counter!(
        ALERTS_FAILED,
        Unit::Count,
        "Alerts not delivered after every retry"
    );
    describe_counter!(
        ALERTS_DROPPED,
        Unit::Count,
        "Alerts dropped because the delivery queue (alerts.queue) was full"
    );
    describe_counter!(
        LIMIT_HITS,
        Unit::Count,
        "Connections and requests a limit or an access rule turned away, by limit"
    );
    describe_gauge!(
        BULKHEAD_IN_FLIGHT,
        "Calls holding a permit of the bulkhead, over all its keys (max_active_agents: agents with calls in flight)"
    );
    describe_gauge!(
        BULKHEAD_WAITING,
        "Admissions waiting in line for a permit of the bulkhead (wait_ms)"
    );
    describe_counter!(
        BULKHEAD_DENIALS,
        Unit::Count,
        "Admissions a bulkhead (or max_active_agents) refused, by bulkhead; a waiting admission counts once, when its wait ends"
    );
    describe_counter!(
        BULKHEAD_WAITS,
        Unit::Count,
        "Waits for a bulkhead permit, by how they ended: served (its turn came) or timed_out"
    );
    describe_gauge!(LEASES_HELD, "Named leases held and not expired");
    describe_gauge!(
        STORE_UP,
        "1 when the ledger's last transaction succeeded, 0 when it is failing"
    );
    describe_counter!(
        ENGINE_LOCK_WAITS,
        Unit::Count,
        "Times a request or a ledger completion found the admission engine's lock held and waited for it"
    );
    describe_gauge!(
        ENGINE_LOCK_WAITED,
        Unit::Seconds,
        "Time spent waiting for the admission engine's lock since start, in all (a gauge that only grows: the exporter's counters are whole numbers); its rate near 0 means the one lock is not the bottleneck"
    );
    describe_counter!(
        BUDGET_CLOCK_STEPS_BACK,
        Unit::Count,
        "Times the wall clock stepped back into an earlier period than a budget's (the budget stays in its newest period)"
    );
    describe_histogram!(
        STORE_COMMIT_DURATION,
        Unit::Seconds,
        "Time to apply and commit one group commit of the ledger (the fsync that charges wait for is the syncer thread's, not included)"
    );
    describe_histogram!(
        STORE_COMMIT_JOBS,
        Unit::Count,
        "Jobs (reservations, charges, …) made durable by one group commit"
    );
    describe_histogram!(
        STORE_SYNC_DURATION,
        Unit::Seconds,
        "Time of one fdatasync of the ledger's write-ahead log by the syncer thread, which charges, refunds and admin changes wait for"
    );
    describe_histogram!(
        STORE_CHECKPOINT_DURATION,
        Unit::Seconds,
        "Time of one checkpoint of the ledger's write-ahead log into the database by the checkpoint thread, which no request waits for"
    );
    describe_counter!(
        STORE_WRITER_CHECKPOINTS,
        Unit::Count,
        "Checkpoints the ledger's writer thread ran itself because the write-ahead log reached its limit (the commits queued meanwhile waited); rising steadily means the checkpoint thread does not keep up"
    );
    describe_counter!(
        STORE_WRITER_CHECKPOINTS_BUSY,
        Unit::Count,
        "Commits after which the write-ahead log was at its limit but the writer could not checkpoint, the checkpoint thread copying: each lets the log grow past its limit by one commit's pages"
    );
    describe_histogram!(
        STORE_SYNC_JOBS,
        Unit::Count,
        "Jobs (charges, refunds, admin changes, durable quota counts) answered after one fsync"
    );
}
