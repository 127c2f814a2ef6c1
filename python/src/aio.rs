//! `AsyncClient`: many requests in flight on one connection, without ever
//! blocking the event loop.
//!
//! The connection belongs to a task on a small tokio runtime of the package's
//! own (one worker thread, shared by every `AsyncClient` of the process). A
//! request method, called on the event loop's thread, creates an asyncio future,
//! files it under a token and queues the request; it returns at once. The
//! requests queued during one turn of the event loop go to the task together
//! (`_flush`, scheduled with `call_soon` by the first of them), and the task
//! writes them with one write (pipelining). It reads the replies, which the
//! daemon sends in request order and which are matched to their requests by id,
//! and hands every reply that has arrived to the event loop at once when it has
//! nothing more to do: one byte on a socket pair the loop watches
//! (`loop.add_reader`) wakes it, and the loop drains every finished reply in one
//! callback (`_drain`), turning each into its Python object and resolving its
//! future. So the tokio thread never takes the GIL, and a burst of requests
//! costs one hand-over each way, not one per request.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
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
    /// Hands `results` to the event loop (emptying it) and wakes the loop.
    fn publish(&self, results: &mut Vec<(u64, Result<Response, Failure>)>) {
        if results.is_empty() {
            return;
        }
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(results);
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
    jobs: Mutex<Option<mpsc::UnboundedSender<Vec<Job>>>>,
    /// Requests queued during this turn of the event loop, sent by `_flush`.
    corked: Mutex<Vec<Job>>,
    flush_scheduled: AtomicBool,
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
            corked: Mutex::new(Vec::new()),
            flush_scheduled: AtomicBool::new(false),
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
        self._flush(py);
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

    /// Hands the requests queued during this turn of the event loop to the
    /// connection task. Scheduled by `call_soon`; not part of the API.
    fn _flush(&self, py: Python<'_>) {
        self.flush_scheduled.store(false, Ordering::Release);
        let batch =
            std::mem::take(&mut *self.corked.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return;
        }
        let refused = match &*self.jobs.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(jobs) => jobs.send(batch).err().map(|e| e.0),
            None => Some(batch),
        };
        // Closed meanwhile: the futures learn it now.
        for job in refused.into_iter().flatten() {
            self.finished
                .publish(&mut vec![(job.token, Err(Failure::ClientClosed))]);
        }
        let _ = py;
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
    if this
        .jobs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_none()
    {
        return Err(Failure::ClientClosed.into_pyerr(py));
    }
    this.waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(token, future.clone().unbind());
    this.corked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Job { token, request });
    if !this.flush_scheduled.swap(true, Ordering::AcqRel) {
        event_loop.call_method1(
            intern!(py, "call_soon"),
            (slf.getattr(intern!(py, "_flush"))?,),
        )?;
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

/// Results on their way to the event loop.
type Done = Vec<(u64, Result<Response, Failure>)>;

/// Owns the connection: writes requests in bursts, reads replies, and hands
/// results to the event loop whenever it would otherwise wait. Connects on the
/// first request and again on the first after the connection broke (the same
/// rules as `Client`: a request that could not be written is sent again on a
/// fresh connection; requests in flight when it broke fail with
/// `ConnectionLost`).
async fn connection_task(
    socket: PathBuf,
    agent: String,
    timeout: Option<Duration>,
    mut jobs: mpsc::UnboundedReceiver<Vec<Job>>,
    finished: Arc<Finished>,
) {
    let mut conn: Option<RustClient> = None;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut backlog: VecDeque<Job> = VecDeque::new();
    let mut done: Done = Vec::new();
    let mut closing = false;
    let connect = || async {
        RustClient::connect(&socket, &agent, CLIENT_NAME)
            .await
            .map_err(Failure::from_client)
    };
    loop {
        // Whatever can be done without waiting: take queued requests, write
        // what fits, read the replies already here.
        loop {
            match jobs.try_recv() {
                Ok(batch) => backlog.extend(batch),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closing = true;
                    break;
                }
            }
        }
        let mut progressed =
            write_burst(&mut conn, &mut in_flight, &mut backlog, &mut done, &connect).await;
        while conn.is_some() && !in_flight.is_empty() {
            match next_reply(&mut conn, None).now_or_never() {
                Some(reply) => {
                    take_reply(reply, &mut conn, &mut in_flight, &mut done);
                    progressed = true;
                }
                None => break,
            }
        }
        if progressed {
            continue;
        }
        // About to wait: the event loop gets everything finished so far.
        finished.publish(&mut done);
        if closing && backlog.is_empty() && (in_flight.is_empty() || conn.is_none()) {
            fail_all(&mut in_flight, &mut done, &Failure::ClientClosed);
            finished.publish(&mut done);
            return;
        }
        tokio::select! {
            biased;
            reply = next_reply(&mut conn, deadline(&in_flight, timeout)), if conn.is_some() && !in_flight.is_empty() => {
                take_reply(reply, &mut conn, &mut in_flight, &mut done);
            }
            batch = jobs.recv(), if !closing => match batch {
                Some(batch) => backlog.extend(batch),
                None => closing = true,
            },
        }
    }
}

/// Files one reply (or the failure that ended the connection).
fn take_reply(
    reply: Result<ReplyEnvelope, Failure>,
    conn: &mut Option<RustClient>,
    in_flight: &mut VecDeque<InFlight>,
    done: &mut Done,
) {
    let failure = match reply {
        Ok(reply) => {
            let Some(InFlight { id, token, .. }) = in_flight.pop_front() else {
                return;
            };
            if reply.id == id {
                done.push((token, Ok(reply.response)));
                return;
            }
            let failure = Failure::Protocol(format!("reply id {} for request {id}", reply.id));
            done.push((token, Err(failure.clone())));
            failure
        }
        Err(failure) => failure,
    };
    fail_all(in_flight, done, &failure);
    *conn = None;
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
    // `recv` only awaits the next frame, so dropping it (select, now_or_never)
    // loses nothing.
    match deadline {
        None => client.recv().await.map_err(Failure::from_client),
        Some((at, after)) => match tokio::time::timeout_at(at, client.recv()).await {
            Ok(reply) => reply.map_err(Failure::from_client),
            Err(_) => Err(Failure::Timeout(after)),
        },
    }
}

/// Writes as many backlogged requests as the in-flight bound allows, with one
/// write. Returns whether it took any request off the backlog.
///
/// When nothing is in flight, the connection may have been closed by the daemon
/// since it was last used (a restart, the idle timeout), so the first request is
/// written by itself: if that fails, the daemon never saw it, and it goes out
/// again on a new connection. A failure after that loses the connection and
/// every request in flight on it.
async fn write_burst<F, Fut>(
    conn: &mut Option<RustClient>,
    in_flight: &mut VecDeque<InFlight>,
    backlog: &mut VecDeque<Job>,
    done: &mut Done,
    connect: &F,
) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<RustClient, Failure>>,
{
    let count = MAX_IN_FLIGHT
        .saturating_sub(in_flight.len())
        .min(backlog.len());
    if count == 0 {
        return false;
    }
    let mut burst: VecDeque<Job> = backlog.drain(..count).collect();
    let sent = |id, token| InFlight {
        id,
        token,
        sent: tokio::time::Instant::now(),
    };
    if conn.is_none() || in_flight.is_empty() {
        let first = burst.pop_front().expect("count > 0");
        let mut written = None;
        if let Some(client) = conn.as_mut() {
            written = client.send(first.request.clone()).await.ok();
        }
        if written.is_none() {
            *conn = None;
            match connect().await {
                Ok(mut client) => match client.send(first.request).await {
                    Ok(id) => {
                        written = Some(id);
                        *conn = Some(client);
                    }
                    Err(err) => done.push((first.token, Err(Failure::from_client(err)))),
                },
                Err(failure) => {
                    // Nothing can be sent now: every waiting request learns why.
                    for job in burst.drain(..).chain(backlog.drain(..)) {
                        done.push((job.token, Err(failure.clone())));
                    }
                    done.push((first.token, Err(failure)));
                    return true;
                }
            }
        }
        match written {
            Some(id) => in_flight.push_back(sent(id, first.token)),
            None => {
                for job in burst {
                    done.push((job.token, Err(Failure::Lost("connection failed".into()))));
                }
                return true;
            }
        }
    }
    let Some(client) = conn.as_mut() else {
        return true;
    };
    let mut failure = None;
    for job in burst.drain(..) {
        if let Some(failure) = &failure {
            done.push((job.token, Err(Failure::clone(failure))));
            continue;
        }
        match client.feed(job.request).await {
            Ok(id) => in_flight.push_back(sent(id, job.token)),
            Err(err) => {
                let lost = Failure::from_client(err);
                done.push((job.token, Err(lost.clone())));
                failure = Some(lost);
            }
        }
    }
    if failure.is_none() {
        failure = client.flush().await.err().map(Failure::from_client);
    }
    if let Some(failure) = failure {
        fail_all(in_flight, done, &failure);
        *conn = None;
    }
    true
}

fn fail_all(in_flight: &mut VecDeque<InFlight>, done: &mut Done, failure: &Failure) {
    for InFlight { token, .. } in in_flight.drain(..) {
        done.push((token, Err(failure.clone())));
    }
}
