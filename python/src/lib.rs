//! The native half of the `automation_framework` Python package: `Client`
//! (blocking, shared by threads) and `AsyncClient` (asyncio, pipelined), on the
//! workspace's protocol and client crates, so Python speaks the daemon's wire
//! format through the same codec as the daemon and the CLI. The pure-Python
//! half (`automation_framework/`) adds the exception classes, `call()` and the
//! retry helper on top.

mod aio;
mod errors;
mod requests;
mod sync;
mod types;

use std::time::Duration;

use pyo3::prelude::*;

/// `timeout=` in seconds (`None`: wait forever) as a `Duration`.
fn timeout_arg(py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(errors::invalid_argument(
            py,
            format!("timeout must be a positive number of seconds or None, got {s}"),
        )),
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<sync::SyncClient>()?;
    m.add_class::<aio::AsyncClient>()?;
    m.add_class::<types::Decision>()?;
    m.add_class::<types::Vote>()?;
    m.add_class::<types::Report>()?;
    m.add_class::<types::Breaker>()?;
    m.add_class::<types::Budget>()?;
    m.add_class::<types::BudgetEntry>()?;
    m.add_class::<types::Quota>()?;
    m.add_class::<types::Status>()?;
    m.add_class::<types::PongReply>()?;
    m.add_class::<types::CheckResult>()?;
    m.add_class::<types::Violation>()?;
    m.add_class::<types::RetryAdvice>()?;
    m.add_class::<types::RouteResult>()?;
    m.add_class::<types::RouteSkip>()?;
    m.add_class::<types::Lease>()?;
    m.add_class::<types::LeaseHolder>()?;
    m.add_class::<types::InFlight>()?;
    m.add(
        "PROTOCOL_VERSION",
        automation_framework_protocol::PROTOCOL_VERSION,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
