"""Ask the host's automation-framework daemon before each outgoing call.

    from automation_framework import Client
    with Client().call("openai", cost=0.02) as call:
        reply = upstream()

``Client`` is blocking and may be shared by threads; ``AsyncClient`` has the
same methods as coroutines for asyncio, with many requests in flight on one
connection. Both speak the daemon's protocol through the workspace's Rust
protocol and client crates (the native module ``_native``); this module adds
``call()`` (admit, then report) and ``retrying()`` on top.

``check()`` scans a text with the daemon's content rules; ``admit(...,
payload=...)`` has the content guard vote on the code or text a call will run
or send. ``route()`` says which service of a chain to call now (``admit(...,
route=...)`` admits it); ``lease()`` and ``lease_held()`` take named exclusive
leases; ``admit(..., wait=...)`` waits for a bulkhead permit; ``report(...,
retryable=True)`` gets the daemon's retry advice, which ``retrying()`` follows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import TypeVar

from . import errors
from ._call import DEFAULT_RETRY_ON, AsyncCall, Call, Payload
from ._native import (
    PROTOCOL_VERSION,
    Breaker,
    Budget,
    BudgetEntry,
    CheckResult,
    Decision,
    InFlight,
    Lease,
    LeaseHolder,
    Pong,
    Quota,
    Report,
    RetryAdvice,
    RouteResult,
    RouteSkip,
    Status,
    Violation,
    Vote,
    __version__,
)
from ._native import AsyncClient as _NativeAsyncClient
from ._native import Client as _NativeClient
from ._retry import RetryState
from .errors import (
    AutomationFrameworkError,
    ClientClosed,
    ConnectFailed,
    ConnectionClosed,
    ConnectionError,
    ConnectionLost,
    DaemonError,
    Denied,
    InternalError,
    InvalidArgument,
    LeaseHeld,
    NotPermitted,
    ProtocolError,
    RequestTimeout,
    Unavailable,
    UnknownRequest,
    UnknownReservation,
    UnknownService,
)

__all__ = [
    "Client",
    "AsyncClient",
    "Call",
    "AsyncCall",
    "Decision",
    "Vote",
    "Report",
    "RetryAdvice",
    "RouteResult",
    "RouteSkip",
    "Lease",
    "LeaseHolder",
    "InFlight",
    "Breaker",
    "Budget",
    "BudgetEntry",
    "Quota",
    "Status",
    "Pong",
    "CheckResult",
    "Violation",
    "Payload",
    "PROTOCOL_VERSION",
    "__version__",
    "errors",
    "AutomationFrameworkError",
    "Denied",
    "LeaseHeld",
    "DaemonError",
    "InvalidArgument",
    "UnknownService",
    "UnknownReservation",
    "UnknownRequest",
    "NotPermitted",
    "Unavailable",
    "InternalError",
    "ProtocolError",
    "ConnectionError",
    "ConnectFailed",
    "ConnectionLost",
    "ConnectionClosed",
    "RequestTimeout",
    "ClientClosed",
]

T = TypeVar("T")


class Client(_NativeClient):
    """A connection to the daemon; safe to share between threads.

    ``Client(socket=None, agent=None, *, timeout=30.0, connect=True)``: the
    socket is found as the CLI finds it (the argument, then
    ``$AUTOMATION_FRAMEWORK_SOCKET``, then the systemd path if it exists, then
    the per-user path); the agent defaults to ``$AUTOMATION_FRAMEWORK_AGENT``,
    else ``"python"``. It connects at once (``connect=False``: at the first
    request) and again whenever the connection was found broken, e.g. after
    the daemon restarted. Leases are held by the connection: closing the
    client (or losing the connection) releases them.
    """

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(
        self,
        service: str | None = None,
        *,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: Payload | None = None,
        lease: str | None = None,
        wait: float | None = None,
        route: str | None = None,
        attempt: int = 1,
        retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
    ) -> Call:
        """Admit on ``with``, report on leaving it (see ``Call``).

        ``cost``, ``units``, ``input_units`` and ``output_units`` are the
        estimates to admit with; set the actual values on the call object.
        ``payload`` (the text, or ``(text, lang)``) has the content guard vote
        on what the call will run or send. ``route`` instead of ``service``
        lets the daemon choose the service (``call.service`` names it);
        ``lease`` is a lease the call needs, held until the report; ``wait``
        (seconds) waits for a bulkhead permit; ``attempt`` says which attempt
        this is. A failure raised with ``retryable = True`` (or one of
        ``retry_on``) is reported retryable, with the exception's
        ``retry_after`` (seconds) if it has one; ``call.advice`` is then the
        daemon's retry advice.
        """
        return Call(
            self,
            service,
            estimate=cost,
            units=units,
            model=model,
            input_units=input_units,
            output_units=output_units,
            agent=agent,
            payload=payload,
            lease=lease,
            wait=wait,
            route=route,
            attempt=attempt,
            retry_on=retry_on,
        )

    @contextmanager
    def lease_held(self, name: str, *, ttl: float | None = None) -> Iterator[Lease]:
        """``with client.lease_held("deploy", ttl=30):`` takes the lease for the
        block and gives it back after it (also when it raises).

        Raises ``LeaseHeld`` (with ``.holder``) when another session holds it.
        ``ttl`` (seconds; default the daemon's ``leases.default_ttl``) must
        cover the block, or the lease expires under it: renew it with
        ``client.lease(name, ttl=...)`` from inside.
        """
        lease = self.lease(name, ttl=ttl)
        if not lease.granted:
            raise LeaseHeld(lease)
        try:
            yield lease
        except BaseException as exc:
            try:
                self.lease(name, release=True)
            except Exception as release_error:
                exc.add_note(
                    f"automation_framework: releasing lease {name!r} failed: {release_error!r}"
                )
            raise
        self.lease(name, release=True)

    def retrying(
        self,
        fn: Callable[[Call], T],
        *,
        service: str | None = None,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: Payload | None = None,
        lease: str | None = None,
        wait: float | None = None,
        route: str | None = None,
        attempts: int | None = None,
        max_wait: float = 60.0,
        retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
        sleep: Callable[[float], object] = time.sleep,
    ) -> T:
        """Runs ``fn(call)`` inside ``self.call(...)``, again as the daemon
        advises, and returns what it returns.

        A retryable failure is reported with its attempt number; when the
        daemon's advice says retry, the helper sleeps ``advice.after`` and
        admits again with ``attempt=advice.attempt``; when it says give up, the
        exception is raised with ``retry_advice`` set and its reason in a note.
        A denial with a ``retry_after`` is waited out; one without, or a
        ``Retry`` denial (the service's retry budget is spent), is raised at
        once. ``max_wait`` bounds the total sleep, ``attempts`` (optional) the
        admissions. ``sleep`` is injectable for tests.
        """
        state = RetryState(attempts=attempts, max_wait=max_wait)
        while True:
            call = self.call(
                service,
                cost=cost,
                units=units,
                model=model,
                input_units=input_units,
                output_units=output_units,
                agent=agent,
                payload=payload,
                lease=lease,
                wait=wait,
                route=route,
                attempt=state.admitting(),
                retry_on=retry_on,
            )
            try:
                with call:
                    return fn(call)
            except Exception as exc:
                # A Denied from the admission is waited out; one raised by the
                # body (a nested call) is a failure of this call like any other.
                if isinstance(exc, Denied) and call.decision is None:
                    delay = state.after_denial(exc)
                else:
                    delay = state.after_failure(exc, call)
                if delay is None:
                    raise
            sleep(delay)


class AsyncClient(_NativeAsyncClient):
    """``Client`` for asyncio: the same methods, as awaitables, never blocking the
    event loop. Any number of requests may be in flight at once; they share one
    connection (pipelined, replies matched by id). Use one per event loop.
    """

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(
        self,
        service: str | None = None,
        *,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: Payload | None = None,
        lease: str | None = None,
        wait: float | None = None,
        route: str | None = None,
        attempt: int = 1,
        retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
    ) -> AsyncCall:
        """Admit on ``async with``, report on leaving it (see ``Client.call``)."""
        return AsyncCall(
            self,
            service,
            estimate=cost,
            units=units,
            model=model,
            input_units=input_units,
            output_units=output_units,
            agent=agent,
            payload=payload,
            lease=lease,
            wait=wait,
            route=route,
            attempt=attempt,
            retry_on=retry_on,
        )

    @asynccontextmanager
    async def lease_held(self, name: str, *, ttl: float | None = None) -> AsyncIterator[Lease]:
        """``async with client.lease_held("deploy", ttl=30):`` (see
        ``Client.lease_held``)."""
        lease = await self.lease(name, ttl=ttl)
        if not lease.granted:
            raise LeaseHeld(lease)
        try:
            yield lease
        except BaseException as exc:
            try:
                await self.lease(name, release=True)
            except Exception as release_error:
                exc.add_note(
                    f"automation_framework: releasing lease {name!r} failed: {release_error!r}"
                )
            raise
        await self.lease(name, release=True)

    async def retrying(
        self,
        fn: Callable[[AsyncCall], Awaitable[T]],
        *,
        service: str | None = None,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: Payload | None = None,
        lease: str | None = None,
        wait: float | None = None,
        route: str | None = None,
        attempts: int | None = None,
        max_wait: float = 60.0,
        retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> T:
        """``Client.retrying`` for a coroutine function ``fn(call)``; sleeps with
        ``asyncio.sleep``."""
        state = RetryState(attempts=attempts, max_wait=max_wait)
        while True:
            call = self.call(
                service,
                cost=cost,
                units=units,
                model=model,
                input_units=input_units,
                output_units=output_units,
                agent=agent,
                payload=payload,
                lease=lease,
                wait=wait,
                route=route,
                attempt=state.admitting(),
                retry_on=retry_on,
            )
            try:
                async with call:
                    return await fn(call)
            except Exception as exc:
                # A Denied from the admission is waited out; one raised by the
                # body (a nested call) is a failure of this call like any other.
                if isinstance(exc, Denied) and call.decision is None:
                    delay = state.after_denial(exc)
                else:
                    delay = state.after_failure(exc, call)
                if delay is None:
                    raise
            await sleep(delay)
