//! `AsyncClient`: many requests in flight on one connection, without ever
//! blocking the event loop.
//!
//! The connection belongs to a task on a small tokio runtime of the package's
//! own (one worker thread, shared by every `AsyncClient` of the process). A
//! request method, called on the event loop's thread, creates an asyncio future,
//! files it under a token and hands the request to the task through a channel;
//! it returns at once. The task writes requests as they come (pipelining) and
//! reads replies, which the daemon sends in request order and which are matched
//! to their requests by id. Finished replies are queued for the event loop, and
//! one byte on a socket pair the loop watches (`loop.add_reader`) wakes it: the
//! loop then drains every finished reply in one callback, turning each into its
//! Python object and resolving its future. So the tokio thread never takes the
//! GIL, and a burst of replies costs the loop one wake-up, not one per reply.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio::sync::mpsc;

use automation_framework_client::Client as RustClient;
use automation_framework_protocol::{ReplyEnvelope, Request, Response};

use crate::errors::Failure;
use crate::requests::{self, CLIENT_NAME};
use crate::types::response_to_py;

/// Requests written and not yet answered, per connection. The daemon answers at
/// most 256 at once and stops reading beyond that; staying at that depth keeps
/// this side reading its replies while it writes.
const MAX_IN_FLIGHT: usize = 256;

/// The runtime every `AsyncClient` of the process runs its connection task on.
fn runtime() -> Result<&'static tokio::runtime::Runtime, Failure> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("automation-framework-io")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Failure::Lost(format!("cannot start the I/O runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// A request for the connection task: the token its result is filed under.
struct Job {
    token: u64,
    request: Request,
}

/// Results waiting for the event loop, and the wake-up that tells it.
struct Finished {
    queue: Mutex<Vec<(u64, Result<Response, Failure>)>>,
    /// A wake byte is written and not yet consumed: no need for another.
    woken: AtomicBool,
    wake_tx: StdUnixStream,
}

impl Finished {
    fn push(&self, token: u64, result: Result<Response, Failure>) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((token, result));
        if !self.woken.swap(true, Ordering::AcqRel) {
            // Non-blocking: a full socket buffer already holds wake bytes.
            let _ = (&self.wake_tx).write(&[1]);
        }
    }
}

/// A connection to the daemon for asyncio code; every request method returns an
/// awaitable.
#[pyclass(
    frozen,
    subclass,
    module = "automation_framework._native",
    name = "AsyncClient"
)]
pub struct AsyncClient {
    socket: PathBuf,
    agent: String,
    jobs: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    finished: Arc<Finished>,
    wake_rx: StdUnixStream,
    next_token: AtomicU64,
    /// Futures waiting for their replies, by token. Touched only on the event
    /// loop's thread, with the GIL.
    waiting: Mutex<HashMap<u64, Py<PyAny>>>,
    /// The event loop the wake socket is registered with.
    event_loop: Mutex<Option<Py<PyAny>>>,
}

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

#[pymethods]
impl AsyncClient {
    #[new]
    #[pyo3(signature = (socket=None, agent=None, *, timeout=Some(30.0)))]
    fn new(
        py: Python<'_>,
        socket: Option<PathBuf>,
        agent: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<AsyncClient> {
        let timeout = crate::timeout_arg(py, timeout)?;
        let socket = socket.unwrap_or_else(automation_framework_protocol::paths::client_socket);
        let agent = agent.unwrap_or_else(requests::default_agent);
        let (wake_tx, wake_rx) = StdUnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let finished = Arc::new(Finished {
            queue: Mutex::new(Vec::new()),
            woken: AtomicBool::new(false),
            wake_tx,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = runtime().map_err(|f| f.into_pyerr(py))?;
        rt.spawn(connection_task(
            socket.clone(),
            agent.clone(),
            timeout,
            rx,
            finished.clone(),
        ));
        Ok(AsyncClient {
            socket,
            agent,
            jobs: Mutex::new(Some(tx)),
            finished,
            wake_rx,
            next_token: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            event_loop: Mutex::new(None),
        })
    }

    #[getter]
    fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    #[getter]
    fn agent(&self) -> &str {
        &self.agent
    }

    #[pyo3(signature = (service, *, cost=None, units=None, model=None, input_units=None, output_units=None, agent=None))]
    #[allow(clippy::too_many_arguments)]
    fn admit<'py>(
        slf: &Bound<'py, Self>,
        service: String,
        cost: Option<f64>,
        units: Option<u32>,
        model: Option<String>,
        input_units: Option<u32>,
        output_units: Option<u32>,
        agent: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        submit(
            slf,
            requests::admit(
                service,
                cost,
                units,
                model,
                input_units,
                output_units,
                agent,
            ),
        )
    }

    #[pyo3(signature = (reservation=None, *, success=true, service=None, units=None, latency=None, cost=None, input_units=None, output_units=None, idempotency_key=None, agent=None))]
    #[allow(clippy::too_many_arguments)]
    fn report<'py>(
        slf: &Bound<'py, Self>,
        reservation: Option<&Bound<'py, PyAny>>,
        success: bool,
        service: Option<String>,
        units: Option<u32>,
        latency: Option<f64>,
        cost: Option<f64>,
        input_units: Option<u32>,
        output_units: Option<u32>,
        idempotency_key: Option<String>,
        agent: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = requests::report(
            slf.py(),
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
        )?;
        submit(slf, request)
    }

    #[pyo3(signature = (agent=None))]
    fn budget<'py>(slf: &Bound<'py, Self>, agent: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        submit(slf, requests::budget(agent))
    }

    #[pyo3(signature = (service=None))]
    fn breakers<'py>(
        slf: &Bound<'py, Self>,
        service: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        submit(slf, requests::breakers(service))
    }

    #[pyo3(signature = (quota=None))]
    fn quotas<'py>(slf: &Bound<'py, Self>, quota: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        submit(slf, requests::quotas(quota))
    }

    fn status<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        submit(slf, Request::Status)
    }

    fn ping<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        submit(slf, Request::Ping)
    }

    /// Ends the connection task once the requests already sent are answered,
    /// and stops watching the wake socket; later requests raise `ClientClosed`.
    fn close(&self, py: Python<'_>) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let registered = self
            .event_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(event_loop) = registered {
            let _ = event_loop
                .bind(py)
                .call_method1("remove_reader", (self.wake_rx.as_raw_fd(),));
        }
    }

    /// Resolves the futures of every finished request. Called by the event loop
    /// when the wake socket is readable; not part of the API.
    fn _drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut sink = [0u8; 256];
        while matches!((&self.wake_rx).read(&mut sink), Ok(n) if n > 0) {}
        self.finished.woken.store(false, Ordering::Release);
        let done = std::mem::take(
            &mut *self
                .finished
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (token, result) in done {
            let future = self
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&token);
            let Some(future) = future else { continue };
            let future = future.bind(py);
            // A cancelled caller no longer wants the answer. (An admission
            // cancelled after it was sent may still have been granted: its
            // reservation is released or orphaned when this client closes.)
            if future.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
                continue;
            }
            match result.and_then_py(py) {
                Ok(value) => future.call_method1(intern!(py, "set_result"), (value,))?,
                Err(err) => future.call_method1(intern!(py, "set_exception"), (err.value(py),))?,
            };
        }
        Ok(())
    }
}

trait IntoPy {
    fn and_then_py(self, py: Python<'_>) -> PyResult<Py<PyAny>>;
}

impl IntoPy for Result<Response, Failure> {
    fn and_then_py(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            Ok(response) => response_to_py(py, response),
            Err(failure) => Err(failure.into_pyerr(py)),
        }
    }
}

/// Files a future for `request`, hands the request to the connection task and
/// returns the future.
fn submit<'py>(slf: &Bound<'py, AsyncClient>, request: Request) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let this = slf.get();
    let event_loop = GET_RUNNING_LOOP
        .get_or_try_init(py, || {
            py.import("asyncio")?
                .getattr("get_running_loop")
                .map(Bound::unbind)
        })?
        .bind(py)
        .call0()?;
    this.watch(slf, &event_loop)?;
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let token = this.next_token.fetch_add(1, Ordering::Relaxed);
    // Filed before it is sent, so the result can never arrive before its future.
    this.waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(token, future.clone().unbind());
    let sent = match &*this.jobs.lock().unwrap_or_else(PoisonError::into_inner) {
        Some(jobs) => jobs.send(Job { token, request }).is_ok(),
        None => false,
    };
    if !sent {
        this.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token);
        return Err(Failure::ClientClosed.into_pyerr(py));
    }
    Ok(future)
}

impl AsyncClient {
    /// Registers the wake socket with `event_loop` (the first time, or when the
    /// client moves to another loop, e.g. a second `asyncio.run`).
    fn watch(&self, slf: &Bound<'_, AsyncClient>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let mut registered = self
            .event_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = &*registered {
            if current.bind(py).is(event_loop) {
                return Ok(());
            }
            // The old loop may be closed already; then there is nothing to undo.
            let _ = current
                .bind(py)
                .call_method1("remove_reader", (self.wake_rx.as_raw_fd(),));
        }
        event_loop.call_method1(
            "add_reader",
            (
                self.wake_rx.as_raw_fd(),
                slf.getattr(intern!(py, "_drain"))?,
            ),
        )?;
        *registered = Some(event_loop.clone().unbind());
        Ok(())
    }
}

/// Owns the connection: writes jobs as they arrive, reads replies, files each
/// result under its job's token. Connects on the first job and again on the
/// first job after the connection broke (the same rules as `Client`: a request
/// that could not be written is sent again on a fresh connection; requests in
/// flight when it broke fail with `ConnectionLost`).
async fn connection_task(
    socket: PathBuf,
    agent: String,
    timeout: Option<Duration>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    finished: Arc<Finished>,
) {
    let mut conn: Option<RustClient> = None;
    // (request id, token) of each request written and not yet answered, in order.
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let connect = || async {
        RustClient::connect(&socket, &agent, CLIENT_NAME)
            .await
            .map_err(Failure::from_client)
    };
    loop {
        tokio::select! {
            biased;
            reply = next_reply(&mut conn, deadline(&in_flight, timeout)), if conn.is_some() && !in_flight.is_empty() => {
                match reply {
                    Ok(reply) => {
                        let InFlight { id, token, .. } = in_flight.pop_front().expect("guarded by !in_flight.is_empty()");
                        if reply.id == id {
                            finished.push(token, Ok(reply.response));
                        } else {
                            let failure = Failure::Protocol(format!("reply id {} for request {id}", reply.id));
                            finished.push(token, Err(failure.clone()));
                            fail_all(&mut in_flight, &finished, &failure);
                            conn = None;
                        }
                    }
                    Err(failure) => {
                        fail_all(&mut in_flight, &finished, &failure);
                        conn = None;
                    }
                }
            }
            job = jobs.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(mut job) = job else { break };
                loop {
                    // Room for the next job; take whatever else is already queued
                    // without going around the select.
                    write_job(&mut conn, &mut in_flight, job, &connect, &finished).await;
                    if in_flight.len() >= MAX_IN_FLIGHT {
                        break;
                    }
                    match jobs.try_recv() {
                        Ok(next) => job = next,
                        Err(_) => break,
                    }
                }
            }
        }
    }
    // Every handle is gone: answer what was sent, then close.
    while !in_flight.is_empty() {
        let reply = next_reply(&mut conn, deadline(&in_flight, timeout)).await;
        let InFlight { id, token, .. } = in_flight.pop_front().expect("checked by the loop");
        match reply {
            Ok(reply) if reply.id == id => finished.push(token, Ok(reply.response)),
            Ok(reply) => finished.push(
                token,
                Err(Failure::Protocol(format!(
                    "reply id {} for request {id}",
                    reply.id
                ))),
            ),
            Err(failure) => finished.push(token, Err(failure)),
        }
    }
}

/// A request written and not yet answered.
struct InFlight {
    id: u64,
    token: u64,
    sent: tokio::time::Instant,
}

/// When the oldest request in flight times out.
fn deadline(
    in_flight: &VecDeque<InFlight>,
    timeout: Option<Duration>,
) -> Option<(tokio::time::Instant, Duration)> {
    let after = timeout?;
    in_flight.front().map(|oldest| (oldest.sent + after, after))
}

async fn next_reply(
    conn: &mut Option<RustClient>,
    deadline: Option<(tokio::time::Instant, Duration)>,
) -> Result<ReplyEnvelope, Failure> {
    let Some(client) = conn.as_mut() else {
        return Err(Failure::Lost("not connected".into()));
    };
    // `recv` only awaits the next frame, so dropping it in the select loses nothing.
    match deadline {
        None => client.recv().await.map_err(Failure::from_client),
        Some((at, after)) => match tokio::time::timeout_at(at, client.recv()).await {
            Ok(reply) => reply.map_err(Failure::from_client),
            Err(_) => Err(Failure::Timeout(after)),
        },
    }
}

/// Writes one job, connecting first if needed; on failure the job's own result
/// is filed (and those of the requests lost with the connection).
async fn write_job<F, Fut>(
    conn: &mut Option<RustClient>,
    in_flight: &mut VecDeque<InFlight>,
    job: Job,
    connect: &F,
    finished: &Finished,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<RustClient, Failure>>,
{
    let fresh = conn.is_none();
    if fresh {
        match connect().await {
            Ok(client) => *conn = Some(client),
            Err(failure) => {
                finished.push(job.token, Err(failure));
                return;
            }
        }
    }
    let client = conn.as_mut().expect("connected just above");
    match client.send(job.request.clone()).await {
        Ok(id) => in_flight.push_back(InFlight {
            id,
            token: job.token,
            sent: tokio::time::Instant::now(),
        }),
        Err(err) => {
            let failure = Failure::from_client(err);
            *conn = None;
            // The requests written before are lost with the connection; this one
            // was never seen by the daemon and goes out again on a new connection.
            fail_all(in_flight, finished, &failure);
            if fresh {
                finished.push(job.token, Err(failure));
                return;
            }
            match connect().await {
                Ok(mut client) => match client.send(job.request).await {
                    Ok(id) => {
                        in_flight.push_back(InFlight {
                            id,
                            token: job.token,
                            sent: tokio::time::Instant::now(),
                        });
                        *conn = Some(client);
                    }
                    Err(err) => finished.push(job.token, Err(Failure::from_client(err))),
                },
                Err(failure) => finished.push(job.token, Err(failure)),
            }
        }
    }
}

fn fail_all(in_flight: &mut VecDeque<InFlight>, finished: &Finished, failure: &Failure) {
    for InFlight { token, .. } in in_flight.drain(..) {
        finished.push(token, Err(failure.clone()));
    }
}
