//! `Client`: one connection, used from any number of threads.
//!
//! Threads take turns on the connection under a mutex; each turn is one request
//! and its reply, with the GIL released for the whole of it (waiting for the
//! mutex included), so other Python threads run while one waits on the socket.
//! The I/O runs on the calling thread, on a current-thread tokio runtime the
//! client owns: no hop to another thread, which is what keeps a sequential loop
//! of requests close to the Rust client's speed. Callers that want many
//! requests in flight at once use `AsyncClient`, which pipelines.
//!
//! The connection is made again when it is found broken: a request whose frame
//! could not be written was certainly not seen by the daemon, so it is sent
//! again on a fresh connection (this is the path after a daemon restart); a
//! request whose reply did not come raises `ConnectionLost`, because the daemon
//! may have acted on it (an admission may hold a reservation, which survives as
//! an orphan and stays reportable).

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;

use automation_framework_client::Client as RustClient;
use automation_framework_protocol::{Request, Response};

use crate::errors::Failure;
use crate::requests::{self, CLIENT_NAME};
use crate::types::response_to_py;

/// The connection and the runtime that drives it, owned by one process.
struct Conn {
    runtime: tokio::runtime::Runtime,
    client: Option<RustClient>,
    /// The process that made the runtime. After `fork` the child must not touch
    /// the parent's epoll instance or socket (dropping them would deregister the
    /// parent's socket from the shared epoll), so the child leaks them and starts
    /// over.
    pid: u32,
    closed: bool,
}

impl Conn {
    fn new() -> Result<Conn, Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Failure::Lost(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Conn {
            runtime,
            client: None,
            pid: std::process::id(),
            closed: false,
        })
    }
}

/// A connection to the daemon, safe to share between threads (they take turns).
#[pyclass(
    frozen,
    subclass,
    module = "automation_framework._native",
    name = "Client"
)]
pub struct SyncClient {
    socket: PathBuf,
    agent: String,
    timeout: Option<Duration>,
    conn: Mutex<Conn>,
}

#[pymethods]
impl SyncClient {
    #[new]
    #[pyo3(signature = (socket=None, agent=None, *, timeout=Some(30.0), connect=true))]
    fn new(
        py: Python<'_>,
        socket: Option<PathBuf>,
        agent: Option<String>,
        timeout: Option<f64>,
        connect: bool,
    ) -> PyResult<SyncClient> {
        let timeout = crate::timeout_arg(py, timeout)?;
        let client = SyncClient {
            socket: socket.unwrap_or_else(automation_framework_protocol::paths::client_socket),
            agent: agent.unwrap_or_else(requests::default_agent),
            timeout,
            conn: Mutex::new(Conn::new().map_err(|f| f.into_pyerr(py))?),
        };
        if connect {
            py.detach(|| client.ensure_connected())
                .map_err(|f| f.into_pyerr(py))?;
        }
        Ok(client)
    }

    /// The socket path this client connects to.
    #[getter]
    fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// The agent name this client's connection acts as.
    #[getter]
    fn agent(&self) -> &str {
        &self.agent
    }

    #[pyo3(signature = (service=None, *, cost=None, units=None, model=None, input_units=None, output_units=None, agent=None, payload=None, lease=None, wait=None, route=None, attempt=1))]
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        py: Python<'_>,
        service: Option<String>,
        cost: Option<f64>,
        units: Option<u32>,
        model: Option<String>,
        input_units: Option<u32>,
        output_units: Option<u32>,
        agent: Option<String>,
        payload: Option<&Bound<'_, PyAny>>,
        lease: Option<String>,
        wait: Option<f64>,
        route: Option<String>,
        attempt: u32,
    ) -> PyResult<Py<PyAny>> {
        let payload = requests::payload_arg(py, payload)?;
        let request = requests::admit(
            py,
            service,
            cost,
            units,
            model,
            input_units,
            output_units,
            agent,
            payload,
            lease,
            wait,
            route,
            attempt,
        )?;
        self.request(py, request)
    }

    #[pyo3(signature = (route=None, *, chain=None, units=None, cost=None, model=None, agent=None))]
    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        py: Python<'_>,
        route: Option<String>,
        chain: Option<Vec<String>>,
        units: Option<u32>,
        cost: Option<f64>,
        model: Option<String>,
        agent: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let request = requests::route(py, route, chain, units, cost, model, agent)?;
        self.request(py, request)
    }

    #[pyo3(signature = (name, *, ttl=None, release=false, agent=None))]
    fn lease(
        &self,
        py: Python<'_>,
        name: String,
        ttl: Option<f64>,
        release: bool,
        agent: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let request = requests::lease(py, name, ttl, release, agent)?;
        self.request(py, request)
    }

    #[pyo3(signature = (text, lang=None))]
    fn check(&self, py: Python<'_>, text: String, lang: Option<String>) -> PyResult<Py<PyAny>> {
        let payload = requests::payload(py, text, lang)?;
        self.request(py, Request::Check(payload))
    }

    #[pyo3(signature = (reservation=None, *, success=true, service=None, units=None, latency=None, cost=None, input_units=None, output_units=None, idempotency_key=None, agent=None, retryable=false, attempt=None, retry_after=None))]
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
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
    ) -> PyResult<Py<PyAny>> {
        let request = requests::report(
            py,
            reservation,
            success,
            service,
            units,
            latency,
            cost,
            input_units,
            output_units,
            idempotency_key,
            agent,
            retryable,
            attempt,
            retry_after,
        )?;
        self.request(py, request)
    }

    #[pyo3(signature = (agent=None))]
    fn budget(&self, py: Python<'_>, agent: Option<String>) -> PyResult<Py<PyAny>> {
        self.request(py, requests::budget(agent))
    }

    #[pyo3(signature = (service=None))]
    fn breakers(&self, py: Python<'_>, service: Option<String>) -> PyResult<Py<PyAny>> {
        self.request(py, requests::breakers(service))
    }

    #[pyo3(signature = (quota=None))]
    fn quotas(&self, py: Python<'_>, quota: Option<String>) -> PyResult<Py<PyAny>> {
        self.request(py, requests::quotas(quota))
    }

    fn status(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.request(py, Request::Status)
    }

    fn ping(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.request(py, Request::Ping)
    }

    /// Closes the connection; later requests raise `ClientClosed`.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
            conn.closed = true;
            conn.client = None;
        });
    }
}

impl SyncClient {
    fn request(&self, py: Python<'_>, request: Request) -> PyResult<Py<PyAny>> {
        match py.detach(|| self.roundtrip(request)) {
            Ok(response) => response_to_py(py, response),
            Err(failure) => Err(failure.into_pyerr(py)),
        }
    }

    fn ensure_connected(&self) -> Result<(), Failure> {
        let mut conn = self.lock();
        if conn.closed {
            return Err(Failure::ClientClosed);
        }
        let Conn {
            runtime, client, ..
        } = &mut *conn;
        if client.is_none() {
            *client = Some(runtime.block_on(self.connect())?);
        }
        Ok(())
    }

    /// The connection, made anew in a forked child.
    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if conn.pid != std::process::id() {
            if let Ok(fresh) = Conn::new() {
                let inherited = std::mem::replace(&mut *conn, fresh);
                std::mem::forget(inherited);
            }
        }
        conn
    }

    async fn connect(&self) -> Result<RustClient, Failure> {
        RustClient::connect(&self.socket, &self.agent, CLIENT_NAME)
            .await
            .map_err(Failure::from_client)
    }

    /// One request and its reply, reconnecting as the module doc describes.
    fn roundtrip(&self, request: Request) -> Result<Response, Failure> {
        let mut conn = self.lock();
        if conn.closed {
            return Err(Failure::ClientClosed);
        }
        let Conn {
            runtime, client, ..
        } = &mut *conn;
        // An admission waiting for a bulkhead permit is answered late on purpose.
        let timeout = self
            .timeout
            .map(|after| after + requests::reply_grace(&request));
        runtime.block_on(async {
            let exchange = self.exchange(client, request);
            let result = match timeout {
                None => exchange.await,
                Some(after) => tokio::time::timeout(after, exchange)
                    .await
                    .unwrap_or(Err(Failure::Timeout(after))),
            };
            if matches!(
                result,
                Err(Failure::Lost(_)
                    | Failure::Closed(_)
                    | Failure::Protocol(_)
                    | Failure::Timeout(_))
            ) {
                // A reply may still be on its way; the connection is out of step.
                *client = None;
            }
            result
        })
    }

    async fn exchange(
        &self,
        client: &mut Option<RustClient>,
        request: Request,
    ) -> Result<Response, Failure> {
        let fresh = client.is_none();
        let conn = match client {
            Some(conn) => conn,
            None => client.insert(self.connect().await?),
        };
        let id = match conn.send(request.clone()).await {
            Ok(id) => id,
            // Not written: the daemon never saw it. A connection that had been
            // idle is typically one the daemon closed (restart, idle timeout).
            Err(_) if !fresh => {
                *client = None;
                let conn = client.insert(self.connect().await?);
                conn.send(request).await.map_err(Failure::from_client)?
            }
            Err(err) => return Err(Failure::from_client(err)),
        };
        let conn = client
            .as_mut()
            .ok_or_else(|| Failure::Lost("connection dropped".into()))?;
        let reply = conn.recv().await.map_err(Failure::from_client)?;
        if reply.id != id {
            return Err(Failure::Protocol(format!(
                "reply id {} for request {id}",
                reply.id
            )));
        }
        Ok(reply.response)
    }
}
