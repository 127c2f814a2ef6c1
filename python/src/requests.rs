//! Python arguments to protocol requests, shared by `Client` and `AsyncClient`
//! so both take exactly the same keywords and refuse the same mistakes.

use pyo3::prelude::*;

use automation_framework_protocol::frame::MAX_PAYLOAD_LEN;
use automation_framework_protocol::{
    AdmitRequest, BreakersRequest, BudgetRequest, LeaseRequest, Outcome, Payload, QuotasRequest,
    ReportRequest, Request, RouteRequest,
};

use crate::errors::invalid_argument;
use crate::types::Decision;

/// The name a `Hello` carries for this package, in the daemon's logs.
pub const CLIENT_NAME: &str = concat!("automation-framework-python/", env!("CARGO_PKG_VERSION"));

/// `admit` (see `_native.pyi` for the meaning of each argument). `wait` is
/// in seconds, as everywhere in the Python API; the wire counts milliseconds.
#[allow(clippy::too_many_arguments)]
pub fn admit(
    py: Python<'_>,
    service: Option<String>,
    cost: Option<f64>,
    units: Option<u32>,
    model: Option<String>,
    input_units: Option<u32>,
    output_units: Option<u32>,
    agent: Option<String>,
    payload: Option<Payload>,
    lease: Option<String>,
    wait: Option<f64>,
    route: Option<String>,
    attempt: u32,
) -> PyResult<Request> {
    let service = match (service, &route) {
        (Some(service), None) => service,
        (None, Some(_)) => String::new(),
        (Some(service), Some(route)) => {
            return Err(invalid_argument(
                py,
                format!(
                    "give the service ({service:?}) or a route ({route:?}), not both: a route \
                     chooses the service itself"
                ),
            ))
        }
        (None, None) => {
            return Err(invalid_argument(
                py,
                "give the service to admit, or route= to let a configured route choose it".into(),
            ))
        }
    };
    Ok(Request::Admit(AdmitRequest {
        agent: agent.map(Into::into),
        service: service.into(),
        units: units.unwrap_or(1),
        cost,
        model: model.map(Into::into),
        input_units: input_units.unwrap_or(0),
        output_units: output_units.unwrap_or(0),
        payload,
        attempt,
        wait_ms: millis(py, "wait", wait)?,
        lease: lease.map(Into::into),
        route: route.map(Into::into),
    }))
}

/// How much longer than the client's timeout a reply may take: an admission
/// that waits for a bulkhead permit is answered when it gets one (or gives up).
pub fn reply_grace(request: &Request) -> std::time::Duration {
    match request {
        Request::Admit(AdmitRequest {
            wait_ms: Some(ms), ..
        }) => std::time::Duration::from_millis(*ms),
        _ => std::time::Duration::ZERO,
    }
}

/// Seconds (as Python gives durations) to whole milliseconds, rounded up so a
/// wait or a Retry-After is never made shorter than asked.
pub fn millis(py: Python<'_>, name: &str, seconds: Option<f64>) -> PyResult<Option<u64>> {
    match seconds {
        None => Ok(None),
        Some(s) if (0.0..=1e12).contains(&s) => Ok(Some((s * 1000.0).ceil() as u64)),
        Some(s) => Err(invalid_argument(
            py,
            format!("{name} must be a finite number of seconds >= 0, got {s}"),
        )),
    }
}

/// `route`: a configured route by name, or a chain of services given here.
pub fn route(
    py: Python<'_>,
    route: Option<String>,
    chain: Option<Vec<String>>,
    units: Option<u32>,
    cost: Option<f64>,
    model: Option<String>,
    agent: Option<String>,
) -> PyResult<Request> {
    if route.is_some() == chain.is_some() {
        return Err(invalid_argument(
            py,
            "give a configured route's name, or chain= (services in order of preference), \
             exactly one of them"
                .into(),
        ));
    }
    Ok(Request::Route(RouteRequest {
        route,
        chain: chain.unwrap_or_default(),
        agent,
        units: units.unwrap_or(1),
        cost,
        model,
    }))
}

/// `lease`: take or renew (`ttl` in seconds), or give back.
pub fn lease(
    py: Python<'_>,
    name: String,
    ttl: Option<f64>,
    release: bool,
    agent: Option<String>,
) -> PyResult<Request> {
    Ok(Request::Lease(LeaseRequest {
        name,
        ttl_ms: millis(py, "ttl", ttl)?,
        release,
        agent,
    }))
}

/// `admit`'s `payload=`: the text, or `(text, lang)` with `lang` possibly `None`
/// (guessed by the daemon).
pub fn payload_arg(py: Python<'_>, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Payload>> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.is_none() {
        return Ok(None);
    }
    let (text, lang) = if let Ok(text) = value.extract::<String>() {
        (text, None)
    } else if let Ok(pair) = value.extract::<(String, Option<String>)>() {
        pair
    } else {
        return Err(invalid_argument(
            py,
            format!(
                "payload must be the text (a str) or a (text, lang) tuple such as \
                 (code, \"python\"), got {}",
                value.get_type().name()?
            ),
        ));
    };
    payload(py, text, lang).map(Some)
}

/// The scanner's input for `check` and `admit`, refused here when it could not
/// fit a frame (the daemon's own `content.max_payload` may be lower; it says so).
pub fn payload(py: Python<'_>, text: String, lang: Option<String>) -> PyResult<Payload> {
    if text.len() > MAX_PAYLOAD_LEN {
        return Err(invalid_argument(
            py,
            format!(
                "the text to scan is {} bytes; at most {MAX_PAYLOAD_LEN} bytes (1 MiB) can be sent: \
                 scan it in parts",
                text.len()
            ),
        ));
    }
    Ok(Payload { lang, text })
}

/// `report`: `reservation` is an int or the `Decision` that holds it.
#[allow(clippy::too_many_arguments)]
pub fn report(
    py: Python<'_>,
    reservation: Option<&Bound<'_, PyAny>>,
    success: bool,
    service: Option<String>,
    units: Option<u32>,
    latency: Option<f64>,
    cost: Option<f64>,
    input_units: Option<u32>,
    output_units: Option<u32>,
    idempotency_key: Option<String>,
    agent: Option<String>,
    retryable: bool,
    attempt: Option<u32>,
    retry_after: Option<f64>,
) -> PyResult<Request> {
    let reservation = match reservation {
        None => None,
        Some(value) => match value.cast::<Decision>() {
            Ok(decision) => match decision.get().reservation() {
                Some(id) => Some(id),
                None => {
                    return Err(invalid_argument(
                        py,
                        "this Decision was a denial: it holds no reservation to report \
                         (report only admitted calls, or pass service= for a call made \
                         without admission)"
                            .into(),
                    ))
                }
            },
            Err(_) => Some(value.extract::<u64>()?),
        },
    };
    let latency_ms = match latency {
        None => None,
        Some(s) if s.is_finite() && s >= 0.0 => Some((s * 1000.0).round() as u64),
        Some(s) => {
            return Err(invalid_argument(
                py,
                format!("latency must be a finite number of seconds >= 0, got {s}"),
            ))
        }
    };
    Ok(Request::Report(ReportRequest {
        reservation,
        service: service.map(Into::into),
        outcome: if success {
            Outcome::Success
        } else {
            Outcome::Failure
        },
        units,
        latency_ms,
        cost,
        input_units,
        output_units,
        idempotency_key: idempotency_key.map(Into::into),
        agent: agent.map(Into::into),
        retryable,
        attempt,
        retry_after_ms: millis(py, "retry_after", retry_after)?,
    }))
}

pub fn budget(agent: Option<String>) -> Request {
    Request::Budget(BudgetRequest { agent })
}

pub fn breakers(service: Option<String>) -> Request {
    Request::Breakers(BreakersRequest { service })
}

pub fn quotas(quota: Option<String>) -> Request {
    Request::Quotas(QuotasRequest { quota })
}

/// The agent name when none is given: `$AUTOMATION_FRAMEWORK_AGENT`, as the CLI
/// reads it, else `python`.
pub fn default_agent() -> String {
    std::env::var("AUTOMATION_FRAMEWORK_AGENT")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "python".to_owned())
}
