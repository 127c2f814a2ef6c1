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
or send. Not here yet, and added with the protocol requests they need:
``lease()``, ``route()``, and ``admit``'s ``lease`` and ``wait`` arguments.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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
    Pong,
    Quota,
    Report,
    Status,
    Violation,
    Vote,
    __version__,
)
from ._native import AsyncClient as _NativeAsyncClient
from ._native import Client as _NativeClient
from ._retry import Backoff, daemon_advice
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
    "Backoff",
    "Decision",
    "Vote",
    "Report",
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
    the daemon restarted.
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
        service: str,
        *,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: Payload | None = None,
        retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
    ) -> Call:
        """Admit on ``with``, report on leaving it (see ``Call``).

        ``cost``, ``units``, ``input_units`` and ``output_units`` are the
        estimates to admit with; set the actual values on the call object.
        ``payload`` (the text, or ``(text, lang)``) has the content guard vote
        on what the call will run or send.
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
            retry_on=retry_on,
        )

    def retrying(
        self,
        fn: Callable[[Call], T],
        *,
        service: str,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: Payload | None = None,
        backoff: Backoff | None = None,
        retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
        sleep: Callable[[float], object] = time.sleep,
    ) -> T:
        """Runs ``fn(call)`` inside ``self.call(service, ...)``, again when it is
        worth it, and returns what it returns.

        A denial with a ``retry_after`` is waited out; one without is raised at
        once. A failure is retried when retryable (see ``Call``), after the
        backoff. Attempts and the total wait are bounded by ``backoff``; the
        last ``Denied`` or exception is raised. ``sleep`` is injectable for tests.
        """
        policy = backoff or Backoff()
        waited = 0.0
        attempt = 1
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
                retry_on=retry_on,
            )
            try:
                with call:
                    return fn(call)
            except Denied as denied:
                delay = policy.after_denial(denied.retry_after)
                if delay is None or attempt >= policy.attempts or waited + delay > policy.max_wait:
                    raise
            except Exception:
                if call.decision is None or not call.retryable or attempt >= policy.attempts:
                    raise
                delay = policy.after_failure(attempt, advice=daemon_advice(call.report))
                if waited + delay > policy.max_wait:
                    raise
            sleep(delay)
            waited += delay
            attempt += 1


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
        service: str,
        *,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: Payload | None = None,
        retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
    ) -> AsyncCall:
        """Admit on ``async with``, report on leaving it (see ``Call``)."""
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
            retry_on=retry_on,
        )

    async def retrying(
        self,
        fn: Callable[[AsyncCall], Awaitable[T]],
        *,
        service: str,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: Payload | None = None,
        backoff: Backoff | None = None,
        retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> T:
        """``Client.retrying`` for a coroutine function ``fn(call)``."""
        policy = backoff or Backoff()
        waited = 0.0
        attempt = 1
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
                retry_on=retry_on,
            )
            try:
                async with call:
                    return await fn(call)
            except Denied as denied:
                delay = policy.after_denial(denied.retry_after)
                if delay is None or attempt >= policy.attempts or waited + delay > policy.max_wait:
                    raise
            except Exception:
                if call.decision is None or not call.retryable or attempt >= policy.attempts:
                    raise
                delay = policy.after_failure(attempt, advice=daemon_advice(call.report))
                if waited + delay > policy.max_wait:
                    raise
            await sleep(delay)
            waited += delay
            attempt += 1
