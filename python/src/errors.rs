//! What can go wrong under a request, and the Python exception each becomes.
//!
//! The exception classes live in `automation_framework/errors.py` (a hierarchy
//! with builtin bases, which is plain in Python and clumsy in Rust); this module
//! picks the class by the protocol's `ErrorCode` and raises it. A `Failure` is
//! built without the GIL (inside a socket wait) and turned into an exception
//! after the GIL is taken back.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

use automation_framework_client::ClientError;
use automation_framework_protocol::{ErrorCode, ErrorReply};

/// Why a request got no reply object. Cloneable, so a connection that breaks
/// under many pipelined requests can fail each of them with the same cause.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Nothing accepted the connection (or the handshake failed on the socket).
    Connect { path: PathBuf, message: String },
    /// The connection broke after the request was sent: the daemon may or may
    /// not have acted on it.
    Lost(String),
    /// The daemon refused or ended the connection with an error frame.
    Closed(ErrorReply),
    /// The request was answered with an error reply; nothing changed.
    Refused(ErrorReply),
    /// The daemon's bytes were not what the protocol allows.
    Protocol(String),
    /// No reply within the client's timeout; the connection was dropped.
    Timeout(Duration),
    /// The client was closed by its owner.
    ClientClosed,
}

impl Failure {
    /// Maps a client-crate error met while sending or receiving.
    pub fn from_client(err: ClientError) -> Failure {
        match err {
            ClientError::Connect { path, error } => Failure::Connect {
                path,
                message: format!(
                    "{error}; {}",
                    automation_framework_client::connect_hint(&error)
                ),
            },
            ClientError::Io(err) => Failure::Lost(err.to_string()),
            ClientError::Disconnected => Failure::Lost("the daemon closed the connection".into()),
            ClientError::Closed(reply) => Failure::Closed(reply),
            ClientError::Refused(reply) => Failure::Refused(reply),
            ClientError::Protocol(message) => Failure::Protocol(message),
        }
    }

    /// The exception to raise, with the daemon's own message (it says what was
    /// wrong and what to do) and a hint where the cause is on this side.
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let (class, message, code) = match self {
            Failure::Connect { path, message } => (
                "ConnectFailed",
                format!("cannot connect to {}: {message}", path.display()),
                None,
            ),
            Failure::Lost(message) => (
                "ConnectionLost",
                format!(
                    "the connection to the daemon broke before the reply came ({message}); \
                     the request may or may not have been carried out. The next request \
                     reconnects; a report can be repeated safely"
                ),
                None,
            ),
            Failure::Closed(reply) => (
                class_for(reply.code, true),
                format!("the daemon closed the connection: {}", reply.message),
                Some(code_name(reply.code)),
            ),
            Failure::Refused(reply) => (
                class_for(reply.code, false),
                reply.message,
                Some(code_name(reply.code)),
            ),
            Failure::Protocol(message) => (
                "ProtocolError",
                format!("protocol violation by the daemon: {message}; is this package the daemon's version?"),
                None,
            ),
            Failure::Timeout(after) => (
                "RequestTimeout",
                format!(
                    "no reply from the daemon within {:.3}s; the connection was dropped and the \
                     next request reconnects (raise timeout= if the daemon is just slow)",
                    after.as_secs_f64()
                ),
                None,
            ),
            Failure::ClientClosed => (
                "ClientClosed",
                "this client was closed; create a new one".to_owned(),
                None,
            ),
        };
        match raise(py, class, message, code) {
            Ok(err) | Err(err) => err,
        }
    }
}

/// The exception class for an error code. `closing`: it came as an error frame,
/// after which the daemon closes the connection.
fn class_for(code: ErrorCode, closing: bool) -> &'static str {
    match code {
        ErrorCode::InvalidArgument => "InvalidArgument",
        ErrorCode::UnknownReservation => "UnknownReservation",
        ErrorCode::UnknownService => "UnknownService",
        ErrorCode::UnknownRequest => "UnknownRequest",
        ErrorCode::NotPermitted => "NotPermitted",
        ErrorCode::Unavailable => "Unavailable",
        ErrorCode::Internal => "InternalError",
        ErrorCode::Malformed
        | ErrorCode::FrameTooLarge
        | ErrorCode::VersionMismatch
        | ErrorCode::HandshakeRequired => "ProtocolError",
        ErrorCode::TooManyConnections | ErrorCode::Timeout | ErrorCode::ShuttingDown => {
            if closing {
                "ConnectionClosed"
            } else {
                "InternalError"
            }
        }
    }
}

/// The code's JSON name (`not_permitted`), as docs/PROTOCOL.md spells it.
fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Malformed => "malformed",
        ErrorCode::FrameTooLarge => "frame_too_large",
        ErrorCode::VersionMismatch => "version_mismatch",
        ErrorCode::HandshakeRequired => "handshake_required",
        ErrorCode::UnknownRequest => "unknown_request",
        ErrorCode::InvalidArgument => "invalid_argument",
        ErrorCode::UnknownReservation => "unknown_reservation",
        ErrorCode::UnknownService => "unknown_service",
        ErrorCode::TooManyConnections => "too_many_connections",
        ErrorCode::Timeout => "timeout",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::Internal => "internal",
        ErrorCode::NotPermitted => "not_permitted",
        ErrorCode::Unavailable => "unavailable",
    }
}

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Builds `automation_framework.errors.<class>(message, code)`.
fn raise(py: Python<'_>, class: &str, message: String, code: Option<&str>) -> Result<PyErr, PyErr> {
    let module = ERRORS.get_or_try_init(py, || {
        PyModule::import(py, "automation_framework.errors").map(Bound::unbind)
    })?;
    let exc = module.bind(py).getattr(class)?.call1((message, code))?;
    Ok(PyErr::from_value(exc))
}

/// A `ValueError`-like refusal of an argument before anything is sent.
pub fn invalid_argument(py: Python<'_>, message: String) -> PyErr {
    match raise(py, "InvalidArgument", message, Some("invalid_argument")) {
        Ok(err) | Err(err) => err,
    }
}
