//! The Python-side reply objects, and the one conversion from a protocol
//! `Response` to them that the sync and async clients share.
//!
//! Replies become frozen classes with attributes rather than dicts so that
//! editors and mypy see their fields (`_native.pyi`). Durations the daemon sends
//! in milliseconds are offered in seconds as floats (`retry_after`), the unit
//! `time.sleep` and `asyncio.sleep` take, with the exact milliseconds beside them.

use pyo3::prelude::*;
use pyo3::types::PyList;

use automation_framework_protocol::{
    AdmitReply, BreakerInfo, BreakerState, BudgetInfo, BudgetReply, CheckReply, GuardKind, Health,
    InFlight as WireInFlight, LeaseHolder as WireLeaseHolder, LeaseReply, Pong, QuotaInfo,
    ReportReply, Response, RetryAdvice as WireRetryAdvice, RouteReply, RouteSkip as WireRouteSkip,
    StatusReport, Violation as WireViolation, Vote as WireVote,
};

use crate::errors::Failure;

fn seconds(ms: Option<u64>) -> Option<f64> {
    ms.map(|ms| ms as f64 / 1000.0)
}

fn guard_name(guard: Option<GuardKind>) -> Option<&'static str> {
    guard.map(GuardKind::name)
}

fn breaker_state_name(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
        BreakerState::ForcedOpen => "forced_open",
        BreakerState::ForcedClosed => "forced_closed",
        BreakerState::Disabled => "disabled",
    }
}

/// The daemon's verdict on one `admit`: truthy when the call may be made.
#[pyclass(frozen, get_all, module = "automation_framework")]
pub struct Decision {
    allowed: bool,
    reservation: Option<u64>,
    guard: Option<&'static str>,
    rule: Option<String>,
    reason: Option<String>,
    retry_after: Option<f64>,
    retry_after_ms: Option<u64>,
    votes: Vec<Vote>,
    cost: Option<f64>,
    service: Option<String>,
}

#[pymethods]
impl Decision {
    fn __bool__(&self) -> bool {
        self.allowed
    }

    fn __repr__(&self) -> String {
        if self.allowed {
            format!(
                "Decision(allowed=True, reservation={}, cost={}, service={})",
                opt(&self.reservation),
                opt(&self.cost),
                opt_str(self.service.as_deref())
            )
        } else {
            format!(
                "Decision(allowed=False, guard={}, rule={}, reason={}, retry_after={})",
                opt_str(self.guard),
                opt_str(self.rule.as_deref()),
                opt_str(self.reason.as_deref()),
                opt(&self.retry_after)
            )
        }
    }
}

impl From<AdmitReply> for Decision {
    fn from(reply: AdmitReply) -> Decision {
        Decision {
            allowed: reply.allowed,
            reservation: reply.reservation,
            guard: guard_name(reply.guard),
            rule: reply.rule,
            reason: reply.reason,
            retry_after: seconds(reply.retry_after_ms),
            retry_after_ms: reply.retry_after_ms,
            votes: reply.votes.into_iter().map(Vote::from).collect(),
            cost: reply.cost,
            service: reply.service,
        }
    }
}

impl Decision {
    pub fn reservation(&self) -> Option<u64> {
        self.reservation
    }
}

/// One guard's opinion on an admission.
#[pyclass(frozen, get_all, module = "automation_framework")]
#[derive(Clone)]
pub struct Vote {
    guard: &'static str,
    rule: String,
    allow: bool,
    shadow: bool,
    reason: String,
    retry_after: Option<f64>,
}

#[pymethods]
impl Vote {
    fn __repr__(&self) -> String {
        format!(
            "Vote(guard={:?}, rule={:?}, allow={}, shadow={}, reason={:?})",
            self.guard,
            self.rule,
            py_bool(self.allow),
            py_bool(self.shadow),
            self.reason
        )
    }
}

impl From<WireVote> for Vote {
    fn from(vote: WireVote) -> Vote {
        Vote {
            guard: vote.guard.name(),
            rule: vote.rule.to_string(),
            allow: vote.allow,
            shadow: vote.shadow,
            reason: vote.reason.into_string(),
            retry_after: seconds(vote.retry_after_ms),
        }
    }
}

/// The daemon's acknowledgement of a `report`.
#[pyclass(frozen, get_all, module = "automation_framework")]
pub struct Report {
    ok: bool,
    duplicate: bool,
    breaker: Option<&'static str>,
    charged: Option<f64>,
    retry: Option<RetryAdvice>,
}

#[pymethods]
impl Report {
    fn __repr__(&self) -> String {
        format!(
            "Report(ok={}, duplicate={}, breaker={}, charged={}, retry={})",
            py_bool(self.ok),
            py_bool(self.duplicate),
            opt_str(self.breaker),
            opt(&self.charged),
            self.retry
                .as_ref()
                .map_or_else(|| "None".to_owned(), RetryAdvice::__repr__)
        )
    }
}

/// The daemon's word on retrying a failure reported `retryable`: its backoff,
/// the upstream's Retry-After, the breaker and the service's retry budget
/// shared by every agent, combined. Truthy when the call should be retried.
#[pyclass(frozen, get_all, module = "automation_framework")]
#[derive(Clone)]
pub struct RetryAdvice {
    retry: bool,
    after: Option<f64>,
    after_ms: Option<u64>,
    attempt: u32,
    reason: String,
}

#[pymethods]
impl RetryAdvice {
    fn __bool__(&self) -> bool {
        self.retry
    }

    fn __repr__(&self) -> String {
        format!(
            "RetryAdvice(retry={}, after={}, attempt={}, reason={:?})",
            py_bool(self.retry),
            opt(&self.after),
            self.attempt,
            self.reason
        )
    }
}

impl From<WireRetryAdvice> for RetryAdvice {
    fn from(advice: WireRetryAdvice) -> RetryAdvice {
        RetryAdvice {
            retry: advice.retry,
            after: seconds(advice.after_ms),
            after_ms: advice.after_ms,
            attempt: advice.attempt,
            reason: advice.reason,
        }
    }
}

/// The service a `route` chose (truthy), or none (falsy), and why each service
/// before it was passed over.
#[pyclass(frozen, get_all, module = "automation_framework")]
pub struct RouteResult {
    service: Option<String>,
    skipped: Vec<RouteSkip>,
    retry_after: Option<f64>,
    retry_after_ms: Option<u64>,
}

#[pymethods]
impl RouteResult {
    fn __bool__(&self) -> bool {
        self.service.is_some()
    }

    fn __repr__(&self) -> String {
        format!(
            "RouteResult(service={}, skipped={:?}, retry_after={})",
            opt_str(self.service.as_deref()),
            self.skipped.iter().map(|s| &s.service).collect::<Vec<_>>(),
            opt(&self.retry_after)
        )
    }
}

impl From<RouteReply> for RouteResult {
    fn from(reply: RouteReply) -> RouteResult {
        RouteResult {
            service: reply.service,
            skipped: reply.skipped.into_iter().map(RouteSkip::from).collect(),
            retry_after: seconds(reply.retry_after_ms),
            retry_after_ms: reply.retry_after_ms,
        }
    }
}

/// A service a route passed over: the guard that ruled it out, and why.
#[pyclass(frozen, get_all, module = "automation_framework")]
#[derive(Clone)]
pub struct RouteSkip {
    service: String,
    guard: &'static str,
    reason: String,
    retry_after: Option<f64>,
}

#[pymethods]
impl RouteSkip {
    fn __repr__(&self) -> String {
        format!(
            "RouteSkip(service={:?}, guard={:?}, reason={:?}, retry_after={})",
            self.service,
            self.guard,
            self.reason,
            opt(&self.retry_after)
        )
    }
}

impl From<WireRouteSkip> for RouteSkip {
    fn from(skip: WireRouteSkip) -> RouteSkip {
        RouteSkip {
            service: skip.service,
            guard: skip.guard.name(),
            reason: skip.reason,
            retry_after: seconds(skip.retry_after_ms),
        }
    }
}

/// A named lease after `lease()`: truthy when this connection holds it.
#[pyclass(frozen, get_all, module = "automation_framework")]
pub struct Lease {
    granted: bool,
    name: String,
    expires_in: Option<f64>,
    expires_in_ms: Option<u64>,
    holder: Option<LeaseHolder>,
    released: bool,
}

#[pymethods]
impl Lease {
    fn __bool__(&self) -> bool {
        self.granted
    }

    fn __repr__(&self) -> String {
        format!(
            "Lease(name={:?}, granted={}, expires_in={}, holder={}, released={})",
            self.name,
            py_bool(self.granted),
            opt(&self.expires_in),
            self.holder
                .as_ref()
                .map_or_else(|| "None".to_owned(), LeaseHolder::__repr__),
            py_bool(self.released)
        )
    }
}

impl From<LeaseReply> for Lease {
    fn from(reply: LeaseReply) -> Lease {
        Lease {
            granted: reply.granted,
            name: reply.name,
            expires_in: seconds(reply.expires_in_ms),
            expires_in_ms: reply.expires_in_ms,
            holder: reply.holder.map(LeaseHolder::from),
            released: reply.released,
        }
    }
}

/// The session (one connection of one process) holding a lease.
#[pyclass(frozen, get_all, module = "automation_framework")]
#[derive(Clone)]
pub struct LeaseHolder {
    agent: String,
    pid: u32,
    uid: u32,
    session: u64,
    expires_in: f64,
    expires_in_ms: u64,
}

#[pymethods]
impl LeaseHolder {
    fn __repr__(&self) -> String {
        format!(
            "LeaseHolder(agent={:?}, pid={}, uid={}, session={}, expires_in={})",
            self.agent, self.pid, self.uid, self.session, self.expires_in
        )
    }
}

impl From<WireLeaseHolder> for LeaseHolder {
    fn from(holder: WireLeaseHolder) -> LeaseHolder {
        LeaseHolder {
            agent: holder.agent,
            pid: holder.pid,
            uid: holder.uid,
            session: holder.session,
            expires_in: holder.expires_in_ms as f64 / 1000.0,
            expires_in_ms: holder.expires_in_ms,
        }
    }
}

/// One bulkhead key's occupancy, in `status().in_flight`.
#[pyclass(frozen, get_all, module = "automation_framework")]
#[derive(Clone)]
pub struct InFlight {
    bulkhead: String,
    key: String,
    in_flight: u32,
    limit: u32,
    waiting: u32,
}

#[pymethods]
impl InFlight {
    fn __repr__(&self) -> String {
        format!(
            "InFlight(bulkhead={:?}, key={:?}, in_flight={}, limit={}, waiting={})",
            self.bulkhead, self.key, self.in_flight, self.limit, self.waiting
        )
    }
}

impl From<WireInFlight> for InFlight {
    fn from(f: WireInFlight) -> InFlight {
        InFlight {
            bulkhead: f.bulkhead,
            key: f.key,
            in_flight: f.in_flight,
            limit: f.limit,
            waiting: f.waiting,
        }
    }
}

impl From<ReportReply> for Report {
    fn from(reply: ReportReply) -> Report {
        Report {
            ok: reply.ok,
            duplicate: reply.duplicate,
            breaker: reply.breaker.map(breaker_state_name),
            charged: reply.charged,
            retry: reply.retry.map(RetryAdvice::from),
        }
    }
}

/// One service's circuit breaker.
#[pyclass(frozen, get_all, module = "automation_framework")]
pub struct Breaker {
    service: String,
    state: &'static str,
    failures: u32,
    window_failures: u32,
    window_calls: u32,
    trials_in_flight: u32,
    trial_successes: u32,
    open_remaining: Option<f64>,
    times_opened: u64,
}

#[pymethods]
impl Breaker {
    fn __repr__(&self) -> String {
        format!(
            "Breaker(service={:?}, state={:?}, failures={}, open_remaining={})",
            self.service,
            self.state,
            self.failures,
            opt(&self.open_remaining)
        )
    }
}

impl From<BreakerInfo> for Breaker {
    fn from(info: BreakerInfo) -> Breaker {
        Breaker {
            service: info.service,
            state: breaker_state_name(info.state),
            failures: info.failures,
            window_failures: info.window_failures,
            window_calls: info.window_calls,
            trials_in_flight: info.trials_in_flight,
            trial_successes: info.trial_successes,
            open_remaining: seconds(info.open_remaining_ms),
            times_opened: info.times_opened,
        }
    }
}

/// Money in USD: the most specific budget asked for, and every budget that applies.
#[pyclass(frozen, get_all, module = "automation_framework")]
pub struct Budget {
    spent: f64,
    reserved: f64,
    limit: f64,
    remaining: f64,
    budgets: Vec<BudgetEntry>,
}

#[pymethods]
impl Budget {
    fn __repr__(&self) -> String {
        format!(
            "Budget(spent={}, reserved={}, limit={}, remaining={}, budgets=[{} entries])",
            self.spent,
            self.reserved,
            self.limit,
            self.remaining,
            self.budgets.len()
        )
    }
}

impl From<BudgetReply> for Budget {
    fn from(reply: BudgetReply) -> Budget {
        Budget {
            spent: reply.spent,
            reserved: reply.reserved,
            limit: reply.limit,
            remaining: reply.remaining,
            budgets: reply.budgets.into_iter().map(BudgetEntry::from).collect(),
        }
    }
}

/// One budget (`global`, `agent:NAME`, `service:NAME`) in its current period.
#[pyclass(frozen, get_all, module = "automation_framework")]
#[derive(Clone)]
pub struct BudgetEntry {
    name: String,
    spent: f64,
    reserved: f64,
    limit: f64,
    remaining: f64,
    orphaned: u32,
    reset: String,
    resets_in_s: Option<u64>,
}

#[pymethods]
impl BudgetEntry {
    fn __repr__(&self) -> String {
        format!(
            "BudgetEntry(name={:?}, spent={}, reserved={}, limit={}, orphaned={})",
            self.name, self.spent, self.reserved, self.limit, self.orphaned
        )
    }
}

impl From<BudgetInfo> for BudgetEntry {
    fn from(info: BudgetInfo) -> BudgetEntry {
        BudgetEntry {
            name: info.name,
            spent: info.spent,
            reserved: info.reserved,
            limit: info.limit,
            remaining: info.remaining,
            orphaned: info.orphaned,
            reset: info.reset,
            resets_in_s: info.resets_in_s,
        }
    }
}

/// One quota counter (one key of one quota) in its current window.
#[pyclass(frozen, get_all, module = "automation_framework")]
pub struct Quota {
    quota: String,
    key: String,
    used: u64,
    limit: u64,
    window: String,
    resets_in_s: Option<u64>,
}

#[pymethods]
impl Quota {
    fn __repr__(&self) -> String {
        format!(
            "Quota(quota={:?}, key={:?}, used={}, limit={}, window={:?})",
            self.quota, self.key, self.used, self.limit, self.window
        )
    }
}

impl From<QuotaInfo> for Quota {
    fn from(info: QuotaInfo) -> Quota {
        Quota {
            quota: info.quota,
            key: info.key,
            used: info.used,
            limit: info.limit,
            window: info.window,
            resets_in_s: info.resets_in_s,
        }
    }
}

/// The daemon's health document (`status`).
#[pyclass(frozen, get_all, module = "automation_framework")]
pub struct Status {
    status: &'static str,
    reasons: Vec<String>,
    version: String,
    uptime_s: u64,
    mode: String,
    connections: u32,
    active_agents: u32,
    open_reservations: u64,
    breakers_closed: u32,
    breakers_open: u32,
    breakers_half_open: u32,
    store: String,
    budget_spent: f64,
    budget_limit: f64,
    leases_held: u32,
    in_flight: Vec<InFlight>,
}

#[pymethods]
impl Status {
    fn __repr__(&self) -> String {
        format!(
            "Status(status={:?}, version={:?}, connections={}, open_reservations={})",
            self.status, self.version, self.connections, self.open_reservations
        )
    }
}

impl From<StatusReport> for Status {
    fn from(report: StatusReport) -> Status {
        Status {
            status: match report.status {
                Health::Healthy => "healthy",
                Health::Degraded => "degraded",
                Health::Unhealthy => "unhealthy",
            },
            reasons: report.reasons,
            version: report.version,
            uptime_s: report.uptime_s,
            mode: report.mode,
            connections: report.connections,
            active_agents: report.active_agents,
            open_reservations: report.open_reservations,
            breakers_closed: report.circuit_breakers.closed,
            breakers_open: report.circuit_breakers.open,
            breakers_half_open: report.circuit_breakers.half_open,
            store: report.store,
            budget_spent: report.budget_spent,
            budget_limit: report.budget_limit,
            leases_held: report.leases_held,
            in_flight: report.in_flight.into_iter().map(InFlight::from).collect(),
        }
    }
}

/// The answer to `ping`: the daemon is there, and who it thinks this session is.
#[pyclass(frozen, get_all, name = "Pong", module = "automation_framework")]
pub struct PongReply {
    version: String,
    session: u64,
    agent: String,
}

#[pymethods]
impl PongReply {
    fn __repr__(&self) -> String {
        format!(
            "Pong(version={:?}, session={}, agent={:?})",
            self.version, self.session, self.agent
        )
    }
}

impl From<Pong> for PongReply {
    fn from(pong: Pong) -> PongReply {
        PongReply {
            version: pong.version,
            session: pong.session,
            agent: pong.agent,
        }
    }
}

/// What the content scanner found in a text (`check`); truthy when nothing was
/// found, as a `Decision` is truthy when the call may be made.
#[pyclass(frozen, get_all, module = "automation_framework")]
pub struct CheckResult {
    lang: String,
    violations: Vec<Violation>,
    omitted: u32,
}

#[pymethods]
impl CheckResult {
    /// Nothing was found (no violation listed, none omitted).
    #[getter]
    fn clean(&self) -> bool {
        self.violations.is_empty() && self.omitted == 0
    }

    fn __bool__(&self) -> bool {
        self.clean()
    }

    fn __len__(&self) -> usize {
        self.violations.len() + self.omitted as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "CheckResult(lang={:?}, violations=[{} found], omitted={})",
            self.lang,
            self.violations.len(),
            self.omitted
        )
    }
}

impl From<CheckReply> for CheckResult {
    fn from(reply: CheckReply) -> CheckResult {
        CheckResult {
            lang: reply.lang,
            violations: reply.violations.into_iter().map(Violation::from).collect(),
            omitted: reply.omitted,
        }
    }
}

/// One finding of the content scanner. A secret's excerpt never holds the
/// secret: at most its first four characters and its length.
#[pyclass(frozen, get_all, module = "automation_framework")]
#[derive(Clone)]
pub struct Violation {
    kind: String,
    rule: String,
    severity: String,
    line: u32,
    column: u32,
    excerpt: String,
    message: String,
}

#[pymethods]
impl Violation {
    fn __repr__(&self) -> String {
        format!(
            "Violation(kind={:?}, rule={:?}, severity={:?}, line={}, column={}, excerpt={:?})",
            self.kind, self.rule, self.severity, self.line, self.column, self.excerpt
        )
    }
}

impl From<WireViolation> for Violation {
    fn from(v: WireViolation) -> Violation {
        Violation {
            kind: v.kind,
            rule: v.rule,
            severity: v.severity,
            line: v.line,
            column: v.column,
            excerpt: v.excerpt,
            message: v.message,
        }
    }
}

/// A reply as the Python object its request returns, or the typed exception of
/// an error reply. The reply's kind decides (replies are matched to requests by
/// id before they get here), so both clients share this one mapping.
pub fn response_to_py(py: Python<'_>, response: Response) -> PyResult<Py<PyAny>> {
    Ok(match response {
        Response::Admit(reply) => Decision::from(reply).into_pyobject(py)?.into_any().unbind(),
        Response::Report(reply) => Report::from(reply).into_pyobject(py)?.into_any().unbind(),
        Response::Budget(reply) => Budget::from(reply).into_pyobject(py)?.into_any().unbind(),
        Response::Breakers(reply) => list(py, reply.breakers.into_iter().map(Breaker::from))?,
        Response::Quotas(reply) => list(py, reply.quotas.into_iter().map(Quota::from))?,
        Response::Status(report) => Status::from(report).into_pyobject(py)?.into_any().unbind(),
        Response::Pong(pong) => PongReply::from(pong).into_pyobject(py)?.into_any().unbind(),
        Response::Check(reply) => CheckResult::from(reply)
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Response::Route(reply) => RouteResult::from(reply)
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        Response::Lease(reply) => Lease::from(reply).into_pyobject(py)?.into_any().unbind(),
        Response::Error(err) => return Err(Failure::Refused(err).into_pyerr(py)),
        other => {
            return Err(Failure::Protocol(format!(
                "the daemon answered with a reply this package does not request: {other:?}"
            ))
            .into_pyerr(py))
        }
    })
}

fn list<'py, T>(py: Python<'py>, items: impl ExactSizeIterator<Item = T>) -> PyResult<Py<PyAny>>
where
    T: IntoPyObject<'py>,
{
    Ok(PyList::new(py, items)?.into_any().unbind())
}

fn opt<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "None".to_owned(), ToString::to_string)
}

fn opt_str(value: Option<&str>) -> String {
    value.map_or_else(|| "None".to_owned(), |v| format!("{v:?}"))
}

fn py_bool(value: bool) -> &'static str {
    if value {
        "True"
    } else {
        "False"
    }
}
