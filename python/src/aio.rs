//! `AsyncClient`: many requests in flight on one connection, without ever
//! blocking the event loop.
//!
//! The event loop owns the connection: a non-blocking socket registered with
//! `loop.add_reader` (and `add_writer` while a write waits for room). There is
//! no thread of the package's own and no hand-off between threads; everything
//! runs in callbacks on the loop's thread, so nothing here waits.
//!
//! * A request method encodes its frame with the protocol crate's codec into the
//!   client's one output buffer, files its future and returns it. The frames
//!   queued during one turn of the loop go out with one write (`_flush`,
//!   scheduled with `call_soon`); a request made while nothing else is pending
//!   is written at once, so a lone request does not wait a turn.
//! * Each readable event reads what has arrived (one read when it is less than a
//!   buffer full), decodes every complete reply, matches each to the oldest
//!   request in flight by id (the daemon answers in request order), resolves
//!   their futures in one pass, and then schedules `_flush`: it runs right
//!   after the tasks those replies woke, in the same turn of the loop, and
//!   writes the requests they made at once. A round trip of a batch costs one
//!   `send`, one `recv` and two `epoll_wait`s, whatever its size.
//! * One timer (`call_later`), armed for the oldest pending request, enforces
//!   `timeout`; it is not re-armed per request. The timeout counts from the
//!   later of the request and the previous reply, plus the request's own
//!   `wait` (an admission waiting for a bulkhead permit is answered late on
//!   purpose, and the replies behind it, which come in request order, with it).
//!
//! An earlier design ran the connection on a tokio thread and handed results to
//! the loop through a wake-up socket; its hand-offs cost more CPU per request
//! than everything else the package does, and on a busy two-core machine held
//! 32 requests in flight to 1.6× the blocking `Client` (python/README.md has
//! the numbers).
//!
//! Connecting is non-blocking too: the socket is made with `SOCK_NONBLOCK`, the
//! `Hello` is written, and requests wait in the buffer until the `Welcome`
//! arrives. Request ids are unique per client rather than per connection, so a
//! frame that was never written can go out unchanged on the next connection.
//!
//! The client's state is borrowed mutably by each call; Python calls made under
//! that borrow (`add_reader`, `call_soon`, ...) cannot run this client's
//! callbacks synchronously, and futures are resolved after the borrow ends. A
//! call from another thread while one runs fails with a `RuntimeError` instead
//! of waiting: like asyncio itself, an `AsyncClient` is used from its loop's
//! thread.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use nix::errno::Errno;
use nix::sys::socket::{self as sock, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use automation_framework_protocol::frame::{decode, encode_frame_into, length_codec};
use automation_framework_protocol::{
    ClientFrame, Envelope, Hello, Request, Response, ServerFrame, PROTOCOL_VERSION,
};

use crate::errors::{invalid_argument, Failure};
use crate::requests::{self, CLIENT_NAME};
use crate::types::response_to_py;

/// The most read from the socket per read call. A readable event reads until
/// a read returns less than this, so replies are decoded in large batches.
const READ_CHUNK: usize = 64 * 1024;

/// A connection to the daemon for asyncio code; every request method returns an
/// awaitable.
#[pyclass(
    subclass,
    module = "automation_framework._native",
    name = "AsyncClient"
)]
pub struct AsyncClient {
    socket: PathBuf,
    agent: String,
    timeout: Option<Duration>,
    next_id: u64,
    conn: Option<Conn>,
    /// Encoded request frames not yet completely written, back to back and in
    /// the order of `queued`; the first `out_sent` bytes (part of the first
    /// frame) are written already.
    out: BytesMut,
    out_sent: usize,
    queued: VecDeque<Queued>,
    /// Written completely, waiting for the reply; oldest first, which is the
    /// order the daemon answers in.
    in_flight: VecDeque<Waiting>,
    /// The loop the connection is registered with and the futures belong to.
    event_loop: Option<Py<PyAny>>,
    flush_scheduled: bool,
    /// The `TimerHandle` of the pending `_on_timer`.
    timer: Option<Py<PyAny>>,
    /// Connections made again for requests that were never written, since the
    /// last reply: one is allowed, so a daemon that accepts and drops every
    /// connection cannot make the client spin.
    reconnects: u32,
    /// When the last reply came: a request queued behind a slow one (replies
    /// come in request order) has its timeout counted from then.
    last_reply: Option<Instant>,
    /// Counts connections made, so a callback can tell that the connection it
    /// was working on has been replaced.
    generation: u64,
    closed: bool,
}

/// A request's future and when it was made (its timeout counts from then).
struct Waiting {
    id: u64,
    future: Py<PyAny>,
    since: Instant,
    /// How much later than `timeout` its reply may come (an admission's `wait`).
    grace: Duration,
}

/// A request whose frame (`len` bytes of `out`) is not completely written.
struct Queued {
    waiting: Waiting,
    len: usize,
}

struct Conn {
    stream: UnixStream,
    phase: Phase,
    codec: LengthDelimitedCodec,
    inbox: BytesMut,
    scratch: Box<[u8]>,
    /// Registered with the loop for reading, for writing.
    reading: bool,
    writing: bool,
}

enum Phase {
    /// `connect` is in progress: waiting for the socket to be writable.
    Connecting,
    /// The `Hello` is written; waiting for the `Welcome`.
    Handshaking,
    Ready,
}

/// Futures to resolve once the client's state is no longer borrowed.
type Done = Vec<(Py<PyAny>, Result<Response, Failure>)>;

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
        Ok(AsyncClient {
            timeout: crate::timeout_arg(py, timeout)?,
            socket: socket.unwrap_or_else(automation_framework_protocol::paths::client_socket),
            agent: agent.unwrap_or_else(requests::default_agent),
            next_id: 1,
            conn: None,
            out: BytesMut::new(),
            out_sent: 0,
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            event_loop: None,
            flush_scheduled: false,
            timer: None,
            reconnects: 0,
            last_reply: None,
            generation: 0,
            closed: false,
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

    #[pyo3(signature = (service=None, *, cost=None, units=None, model=None, input_units=None, output_units=None, agent=None, payload=None, lease=None, wait=None, route=None, attempt=1))]
    #[allow(clippy::too_many_arguments)]
    fn admit<'py>(
        slf: &Bound<'py, Self>,
        service: Option<String>,
        cost: Option<f64>,
        units: Option<u32>,
        model: Option<String>,
        input_units: Option<u32>,
        output_units: Option<u32>,
        agent: Option<String>,
        payload: Option<&Bound<'py, PyAny>>,
        lease: Option<String>,
        wait: Option<f64>,
        route: Option<String>,
        attempt: u32,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
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
        submit(slf, request)
    }

    #[pyo3(signature = (route=None, *, chain=None, units=None, cost=None, model=None, agent=None))]
    #[allow(clippy::too_many_arguments)]
    fn route<'py>(
        slf: &Bound<'py, Self>,
        route: Option<String>,
        chain: Option<Vec<String>>,
        units: Option<u32>,
        cost: Option<f64>,
        model: Option<String>,
        agent: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = requests::route(slf.py(), route, chain, units, cost, model, agent)?;
        submit(slf, request)
    }

    #[pyo3(signature = (name, *, ttl=None, release=false, agent=None))]
    fn lease<'py>(
        slf: &Bound<'py, Self>,
        name: String,
        ttl: Option<f64>,
        release: bool,
        agent: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = requests::lease(slf.py(), name, ttl, release, agent)?;
        submit(slf, request)
    }

    #[pyo3(signature = (text, lang=None))]
    fn check<'py>(
        slf: &Bound<'py, Self>,
        text: String,
        lang: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let payload = requests::payload(slf.py(), text, lang)?;
        submit(slf, Request::Check(payload))
    }

    #[pyo3(signature = (reservation=None, *, success=true, service=None, units=None, latency=None, cost=None, input_units=None, output_units=None, idempotency_key=None, agent=None, retryable=false, attempt=None, retry_after=None))]
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
        retryable: bool,
        attempt: Option<u32>,
        retry_after: Option<f64>,
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
            retryable,
            attempt,
            retry_after,
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

    /// Refuses later requests (`ClientClosed`); the connection ends once the
    /// requests already made are answered.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut this = borrow(slf)?;
        this.closed = true;
        this.finish_if_closed(slf.py());
        Ok(())
    }

    /// Writes the requests queued during this turn of the event loop. Scheduled
    /// by `call_soon`; not part of the API.
    fn _flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut done = Done::new();
        let result = {
            let mut this = borrow(slf)?;
            this.flush_scheduled = false;
            this.write_out(slf.as_any(), &mut done)
        };
        resolve(slf.py(), done)?;
        result
    }

    /// Reads and dispatches what the daemon sent. Called by the event loop when
    /// the socket is readable; not part of the API.
    fn _on_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut done = Done::new();
        let result = borrow(slf)?.read_in(slf.as_any(), &mut done);
        let answered = !done.is_empty();
        resolve(slf.py(), done)?;
        result?;
        if answered {
            // The tasks just woken run in the loop's next turn and will likely
            // make requests; a flush scheduled now runs right after them, in
            // the same turn, and writes all of them at once.
            borrow(slf)?.schedule_flush(slf.as_any())?;
        }
        Ok(())
    }

    /// Finishes a connect in progress, or writes what waited for room. Called by
    /// the event loop when the socket is writable; not part of the API.
    fn _on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut done = Done::new();
        let result = {
            let mut this = borrow(slf)?;
            let connecting = matches!(
                this.conn.as_ref().map(|c| &c.phase),
                Some(Phase::Connecting)
            );
            if connecting {
                this.connect_finished(slf.as_any(), &mut done)
            } else {
                this.write_out(slf.as_any(), &mut done)
            }
        };
        resolve(slf.py(), done)?;
        result
    }

    /// Fails the pending requests when the oldest has waited `timeout`, and
    /// re-arms itself for the next. Scheduled by `call_later`; not part of the API.
    fn _on_timer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut done = Done::new();
        let result = {
            let mut this = borrow(slf)?;
            this.timer = None;
            if let (Some(after), Some(deadline)) = (this.timeout, this.deadline()) {
                if Instant::now() >= deadline {
                    this.fail_everything(slf.as_any(), Failure::Timeout(after), &mut done);
                }
            }
            this.arm_timer(slf.as_any())
        };
        resolve(slf.py(), done)?;
        result
    }
}

/// Files a future for `request`, queues its frame, and returns the future.
fn submit<'py>(slf: &Bound<'py, AsyncClient>, request: Request) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let event_loop = running_loop(slf)?;
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let obj = slf.as_any();
    let mut done = Done::new();
    let result = {
        let mut this = borrow(slf)?;
        if this.closed {
            return Err(Failure::ClientClosed.into_pyerr(py));
        }
        this.bind_loop(obj, &event_loop)?;
        let id = this.next_id;
        let grace = requests::reply_grace(&request);
        let start = this.out.len();
        let frame = ClientFrame::Request(Envelope { id, request });
        if let Err(err) = encode_frame_into(&mut this.out, &frame) {
            return Err(invalid_argument(
                py,
                format!("this request cannot be sent: {err} (is a text larger than 1 MiB?)"),
            ));
        }
        this.next_id += 1;
        let len = this.out.len() - start;
        // A request made when nothing else is pending, and no flush is coming,
        // goes out at once.
        let alone = this.queued.is_empty() && this.in_flight.is_empty() && !this.flush_scheduled;
        this.queued.push_back(Queued {
            waiting: Waiting {
                id,
                future: future.clone().unbind(),
                since: Instant::now(),
                grace,
            },
            len,
        });
        this.arm_timer(obj)?;
        match this.conn.as_ref() {
            None => this.connect(obj, &mut done),
            Some(conn) if alone && matches!(conn.phase, Phase::Ready) => {
                this.write_out(obj, &mut done)
            }
            Some(conn) if matches!(conn.phase, Phase::Ready) && !conn.writing => {
                this.schedule_flush(obj)
            }
            // Written once the handshake is done or the socket has room.
            Some(_) => Ok(()),
        }
    };
    resolve(py, done)?;
    result.map(|()| future)
}

/// The running event loop. `asyncio.get_running_loop()` makes a `getpid`
/// system call each time (it checks for a fork), a measurable part of a
/// request's cost; so when this thread is the one the client's loop runs on
/// (`loop._thread_id`, set by `run_forever`; one loop runs per thread), that
/// loop is the running one and the call is skipped.
fn running_loop<'py>(slf: &Bound<'py, AsyncClient>) -> PyResult<Bound<'py, PyAny>> {
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static GET_IDENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = slf.py();
    let bound = slf
        .try_borrow()
        .ok()
        .and_then(|this| this.event_loop.as_ref().map(|l| l.bind(py).clone()));
    if let Some(bound) = bound {
        let get_ident = GET_IDENT.get_or_try_init(py, || {
            py.import("threading")?
                .getattr("get_ident")
                .map(Bound::unbind)
        })?;
        if let Ok(thread) = bound.getattr(intern!(py, "_thread_id")) {
            if !thread.is_none() && thread.eq(get_ident.bind(py).call0()?)? {
                return Ok(bound);
            }
        }
    }
    GET_RUNNING_LOOP
        .get_or_try_init(py, || {
            py.import("asyncio")?
                .getattr("get_running_loop")
                .map(Bound::unbind)
        })?
        .bind(py)
        .call0()
}

fn borrow<'py>(slf: &Bound<'py, AsyncClient>) -> PyResult<PyRefMut<'py, AsyncClient>> {
    slf.try_borrow_mut().map_err(|_| {
        PyRuntimeError::new_err(
            "this AsyncClient is busy in another call: use it only from the thread of its \
             event loop",
        )
    })
}

/// Turns each result into its Python object or exception and resolves its
/// future. A future already done (its task was cancelled) no longer wants the
/// answer. (An admission cancelled after it was sent may still have been
/// granted: its reservation is released or orphaned when the connection ends.)
fn resolve(py: Python<'_>, done: Done) -> PyResult<()> {
    let mut first_error = None;
    for (future, result) in done {
        let future = future.bind(py);
        let outcome = match result.map(|response| response_to_py(py, response)) {
            Ok(Ok(value)) => future.call_method1(intern!(py, "set_result"), (value,)),
            Ok(Err(err)) => future.call_method1(intern!(py, "set_exception"), (err.value(py),)),
            Err(failure) => future.call_method1(
                intern!(py, "set_exception"),
                (failure.into_pyerr(py).value(py),),
            ),
        };
        if let Err(err) = outcome {
            let already_done = future
                .call_method0(intern!(py, "done"))
                .and_then(|d| d.is_truthy())
                .unwrap_or(false);
            if !already_done && first_error.is_none() {
                first_error = Some(err);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

impl AsyncClient {
    /// The event loop of this call becomes the client's (the first time, or
    /// after a move to another loop, e.g. a second `asyncio.run`).
    fn bind_loop(&mut self, obj: &Bound<'_, PyAny>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = obj.py();
        if let Some(current) = &self.event_loop {
            if current.bind(py).is(event_loop) {
                return Ok(());
            }
        }
        if self.event_loop.is_some() {
            // What is pending belongs to the old loop, which runs no more here:
            // its futures are dropped unresolved, and the connection with them
            // (replies to them would be out of step).
            if let Some(timer) = self.timer.take() {
                let _ = timer.bind(py).call_method0("cancel");
            }
            let pending = !self.queued.is_empty() || !self.in_flight.is_empty();
            self.unregister(py);
            if pending {
                self.conn = None;
                self.queued.clear();
                self.in_flight.clear();
                self.out.clear();
                self.out_sent = 0;
            }
            self.flush_scheduled = false;
        }
        self.event_loop = Some(event_loop.clone().unbind());
        if self.conn.is_some() {
            self.set_reading(obj, true)?;
        }
        Ok(())
    }

    fn event_loop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.event_loop {
            Some(event_loop) => Ok(event_loop.bind(py).clone()),
            None => Err(PyRuntimeError::new_err(
                "AsyncClient has no event loop (internal error)",
            )),
        }
    }

    /// Runs `_flush` after the callbacks already scheduled (once per turn).
    fn schedule_flush(&mut self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.flush_scheduled || self.conn.is_none() || self.event_loop.is_none() {
            return Ok(());
        }
        let py = obj.py();
        self.event_loop(py)?.call_method1(
            intern!(py, "call_soon"),
            (obj.getattr(intern!(py, "_flush"))?,),
        )?;
        self.flush_scheduled = true;
        Ok(())
    }

    fn set_reading(&mut self, obj: &Bound<'_, PyAny>, on: bool) -> PyResult<()> {
        let py = obj.py();
        let event_loop = self.event_loop(py)?;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if conn.reading == on {
            return Ok(());
        }
        let fd = conn.stream.as_raw_fd();
        if on {
            event_loop.call_method1(
                intern!(py, "add_reader"),
                (fd, obj.getattr(intern!(py, "_on_readable"))?),
            )?;
        } else {
            event_loop.call_method1(intern!(py, "remove_reader"), (fd,))?;
        }
        conn.reading = on;
        Ok(())
    }

    fn set_writing(&mut self, obj: &Bound<'_, PyAny>, on: bool) -> PyResult<()> {
        let py = obj.py();
        let event_loop = self.event_loop(py)?;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if conn.writing == on {
            return Ok(());
        }
        let fd = conn.stream.as_raw_fd();
        if on {
            event_loop.call_method1(
                intern!(py, "add_writer"),
                (fd, obj.getattr(intern!(py, "_on_writable"))?),
            )?;
        } else {
            event_loop.call_method1(intern!(py, "remove_writer"), (fd,))?;
        }
        conn.writing = on;
        Ok(())
    }

    /// Takes the connection's socket off the loop (before it is closed: a new
    /// socket may get the same fd number). The loop may be closed already;
    /// then there is nothing to undo.
    fn unregister(&mut self, py: Python<'_>) {
        let (Some(conn), Some(event_loop)) = (self.conn.as_mut(), self.event_loop.as_ref()) else {
            return;
        };
        let fd = conn.stream.as_raw_fd();
        if conn.reading {
            let _ = event_loop.bind(py).call_method1("remove_reader", (fd,));
        }
        if conn.writing {
            let _ = event_loop.bind(py).call_method1("remove_writer", (fd,));
        }
        conn.reading = false;
        conn.writing = false;
    }

    /// Starts a connection for the queued requests. A failure fails them all.
    fn connect(&mut self, obj: &Bound<'_, PyAny>, done: &mut Done) -> PyResult<()> {
        self.generation += 1;
        match connect_nonblocking(&self.socket) {
            Ok((stream, connected)) => {
                self.conn = Some(Conn {
                    stream,
                    phase: Phase::Connecting,
                    codec: length_codec(),
                    inbox: BytesMut::new(),
                    scratch: vec![0; READ_CHUNK].into_boxed_slice(),
                    reading: false,
                    writing: false,
                });
                if connected {
                    self.connect_finished(obj, done)
                } else {
                    self.set_writing(obj, true)
                }
            }
            Err(err) => {
                let failure = Failure::Connect {
                    path: self.socket.clone(),
                    message: err.to_string(),
                };
                self.fail_queued(failure, done);
                Ok(())
            }
        }
    }

    /// The socket is connected (or failed to): say `Hello` and wait for the
    /// `Welcome`.
    fn connect_finished(&mut self, obj: &Bound<'_, PyAny>, done: &mut Done) -> PyResult<()> {
        self.set_writing(obj, false)?;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let connected = match conn.stream.take_error() {
            Ok(None) => Ok(()),
            Ok(Some(err)) | Err(err) => Err(err),
        };
        let hello = ClientFrame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: CLIENT_NAME.to_owned(),
            agent: self.agent.clone(),
        });
        let mut frame = BytesMut::new();
        let sent = connected.and_then(|()| {
            encode_frame_into(&mut frame, &hello)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // A fresh socket's buffer always has room for a `Hello`.
            match send(&conn.stream, &frame)? {
                n if n == frame.len() => Ok(()),
                _ => Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the handshake did not fit the socket buffer",
                )),
            }
        });
        match sent {
            Ok(()) => {
                conn.phase = Phase::Handshaking;
                self.set_reading(obj, true)
            }
            Err(err) => {
                let failure = Failure::Connect {
                    path: self.socket.clone(),
                    message: err.to_string(),
                };
                self.broken(obj, failure, done)
            }
        }
    }

    /// Writes as much of the queued frames as the socket takes, with one write
    /// when it takes them all; waits for room (`add_writer`) when it does not.
    fn write_out(&mut self, obj: &Bound<'_, PyAny>, done: &mut Done) -> PyResult<()> {
        let Some(conn) = self.conn.as_ref() else {
            return Ok(());
        };
        if !matches!(conn.phase, Phase::Ready) {
            return Ok(());
        }
        let mut failure = None;
        while self.out_sent < self.out.len() {
            match send(&conn.stream, &self.out[self.out_sent..]) {
                Ok(0) => {
                    failure = Some(Failure::Lost("the socket accepted nothing".into()));
                    break;
                }
                Ok(n) => self.out_sent += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    failure = Some(Failure::Lost(err.to_string()));
                    break;
                }
            }
        }
        let mut written = 0;
        while let Some(front) = self.queued.front() {
            if self.out_sent - written < front.len {
                break;
            }
            written += front.len;
            if let Some(queued) = self.queued.pop_front() {
                self.in_flight.push_back(queued.waiting);
            }
        }
        self.out.advance(written);
        self.out_sent -= written;
        if let Some(failure) = failure {
            return self.broken(obj, failure, done);
        }
        self.set_writing(obj, self.out_sent < self.out.len())
    }

    /// Reads what has arrived and dispatches every complete frame.
    fn read_in(&mut self, obj: &Bound<'_, PyAny>, done: &mut Done) -> PyResult<()> {
        let generation = self.generation;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let mut ended = None;
        loop {
            match (&conn.stream).read(&mut conn.scratch) {
                Ok(0) => {
                    ended = Some(Failure::Lost("the daemon closed the connection".into()));
                    break;
                }
                Ok(n) => {
                    conn.inbox.extend_from_slice(&conn.scratch[..n]);
                    if n < conn.scratch.len() {
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    ended = Some(Failure::Lost(err.to_string()));
                    break;
                }
            }
        }
        // What came before an end is still answered. A frame may end this
        // connection (and a new one start): then the rest is not for it.
        loop {
            let Some(conn) = self.conn.as_mut().filter(|_| self.generation == generation) else {
                return Ok(());
            };
            let frame = match conn.codec.decode(&mut conn.inbox) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) => {
                    let failure = Failure::Protocol(format!("bad frame: {err}"));
                    return self.broken(obj, failure, done);
                }
            };
            match decode::<ServerFrame>(&frame) {
                Ok(frame) => self.dispatch(obj, frame, done)?,
                Err(err) => return self.broken(obj, Failure::Protocol(err.to_string()), done),
            }
        }
        if let Some(failure) = ended {
            if self.generation == generation {
                self.broken(obj, failure, done)?;
            }
        }
        self.finish_if_closed(obj.py());
        Ok(())
    }

    fn dispatch(
        &mut self,
        obj: &Bound<'_, PyAny>,
        frame: ServerFrame,
        done: &mut Done,
    ) -> PyResult<()> {
        let Some(phase) = self.conn.as_ref().map(|c| &c.phase) else {
            return Ok(());
        };
        let (handshaking, ready) = (
            matches!(phase, Phase::Handshaking),
            matches!(phase, Phase::Ready),
        );
        match frame {
            ServerFrame::Error(reply) => self.broken(obj, Failure::Closed(reply), done),
            ServerFrame::Welcome(_) if handshaking => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.phase = Phase::Ready;
                }
                self.write_out(obj, done)
            }
            ServerFrame::Reply(reply) if ready => {
                let Some(waiting) = self.in_flight.pop_front() else {
                    let failure = Failure::Protocol(format!(
                        "a reply with id {} to no request in flight",
                        reply.id
                    ));
                    return self.broken(obj, failure, done);
                };
                if reply.id != waiting.id {
                    let failure = Failure::Protocol(format!(
                        "reply id {} for request {}",
                        reply.id, waiting.id
                    ));
                    done.push((waiting.future, Err(failure.clone())));
                    return self.broken(obj, failure, done);
                }
                self.reconnects = 0;
                self.last_reply = Some(Instant::now());
                done.push((waiting.future, Ok(reply.response)));
                Ok(())
            }
            other => {
                let failure = Failure::Protocol(format!("unexpected frame {other:?}"));
                self.broken(obj, failure, done)
            }
        }
    }

    /// The connection is gone (`failure` says why). Requests in flight on it
    /// fail, as does one written in part: the daemon may have acted on them.
    /// Requests never written go out on a new connection, once, when this one
    /// had been working and merely ended (a daemon restart, an idle timeout);
    /// otherwise they fail too.
    fn broken(
        &mut self,
        obj: &Bound<'_, PyAny>,
        failure: Failure,
        done: &mut Done,
    ) -> PyResult<()> {
        let py = obj.py();
        self.unregister(py);
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        let was_ready = matches!(conn.phase, Phase::Ready);
        drop(conn);
        for waiting in self.in_flight.drain(..) {
            done.push((waiting.future, Err(failure.clone())));
        }
        if self.out_sent > 0 {
            if let Some(partial) = self.queued.pop_front() {
                self.out.advance(partial.len);
                done.push((partial.waiting.future, Err(failure.clone())));
            }
            self.out_sent = 0;
        }
        if !self.queued.is_empty() {
            let ended = matches!(failure, Failure::Lost(_) | Failure::Closed(_));
            if was_ready && ended && self.reconnects == 0 {
                self.reconnects += 1;
                self.connect(obj, done)?;
            } else {
                self.fail_queued(failure, done);
            }
        }
        self.finish_if_closed(py);
        Ok(())
    }

    fn fail_queued(&mut self, failure: Failure, done: &mut Done) {
        for queued in self.queued.drain(..) {
            done.push((queued.waiting.future, Err(failure.clone())));
        }
        self.out.clear();
        self.out_sent = 0;
    }

    /// Everything pending fails with `failure` and the connection is dropped
    /// (a timeout: the daemon is not answering on it).
    fn fail_everything(&mut self, obj: &Bound<'_, PyAny>, failure: Failure, done: &mut Done) {
        self.unregister(obj.py());
        self.conn = None;
        for waiting in self.in_flight.drain(..) {
            done.push((waiting.future, Err(failure.clone())));
        }
        self.fail_queued(failure, done);
        self.finish_if_closed(obj.py());
    }

    /// When the oldest pending request times out (see the module doc).
    fn deadline(&self) -> Option<Instant> {
        let after = self.timeout?;
        let oldest = self
            .in_flight
            .front()
            .or_else(|| self.queued.front().map(|q| &q.waiting))?;
        let start = self
            .last_reply
            .map_or(oldest.since, |last| last.max(oldest.since));
        Some(start + after + oldest.grace)
    }

    fn arm_timer(&mut self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let (Some(deadline), None) = (self.deadline(), &self.timer) else {
            return Ok(());
        };
        let py = obj.py();
        let delay = deadline.saturating_duration_since(Instant::now());
        let handle = self.event_loop(py)?.call_method1(
            intern!(py, "call_later"),
            (delay.as_secs_f64(), obj.getattr(intern!(py, "_on_timer"))?),
        )?;
        self.timer = Some(handle.unbind());
        Ok(())
    }

    /// After `close()`, once nothing is pending: the connection ends and the
    /// loop is let go.
    fn finish_if_closed(&mut self, py: Python<'_>) {
        if !self.closed || !self.queued.is_empty() || !self.in_flight.is_empty() {
            return;
        }
        self.unregister(py);
        self.conn = None;
        if let Some(timer) = self.timer.take() {
            let _ = timer.bind(py).call_method0("cancel");
        }
        self.event_loop = None;
    }
}

/// A non-blocking connection to `path`: the socket, and whether it is connected
/// already (a Unix socket usually is at once) or `connect` is in progress.
fn connect_nonblocking(path: &Path) -> io::Result<(UnixStream, bool)> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let connected = match sock::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => true,
        Err(Errno::EINPROGRESS) => false,
        Err(errno) => return Err(io::Error::from(errno)),
    };
    Ok((UnixStream::from(fd), connected))
}

/// One `send` without `SIGPIPE` (an embedding program may not ignore it, as
/// CPython does): a peer that closed is an `EPIPE` error, nothing else.
fn send(stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match sock::send(stream.as_raw_fd() as RawFd, bytes, MsgFlags::MSG_NOSIGNAL) {
            Err(Errno::EINTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}
