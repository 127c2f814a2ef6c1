"""``client.call(...)``: admit on enter, report on exit.

The call is admitted when the ``with`` block is entered (``Denied`` when a guard
says no, so the body does not run) and reported when it is left: a success
with the measured latency, or, when the body raised, a failure. The body may set
what the call actually cost and used (``call.cost``, ``call.units``,
``call.input_units``, ``call.output_units``); what it leaves unset the daemon
prices from its price table or charges the reserved estimate.

Every exception that leaves the body counts as a failure of the upstream call,
``KeyboardInterrupt`` and task cancellation included (the reservation must be
closed, and a failure is the answer that never under-charges). A failure is
retryable when the exception says so: an attribute ``retryable = True``, or an
instance of ``retry_on`` (default: ``ConnectionError``, ``TimeoutError``).
A retryable failure is reported ``retryable=True``, with the exception's
``retry_after`` (seconds, the upstream's Retry-After; an ``int`` or ``float``
attribute, when it has one) so the daemon never advises retrying sooner; the
daemon's advice is then ``call.advice``. If the report itself fails while the
body's exception is propagating, the body's exception wins and carries a note
about the report.

With ``route=`` instead of a service, the daemon admits the first service of
the configured route that it would admit; ``call.service`` names it once the
block is entered. ``lease=`` makes the admission need (and hold, until the
report) a named lease; ``wait=`` lets it wait that many seconds for a
bulkhead permit; ``attempt=`` says which attempt this is (``retrying()`` sets
it from the daemon's advice).
"""

from __future__ import annotations

import builtins
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

from ._native import Decision, Report, RetryAdvice
from .errors import Denied

if TYPE_CHECKING:
    from . import AsyncClient, Client

__all__ = ["Call", "AsyncCall", "DEFAULT_RETRY_ON", "Payload"]

#: What ``admit(payload=...)`` takes: the text, or ``(text, lang)`` where
#: ``lang`` is ``"python"``, ``"javascript"``, ``"typescript"``, ``"shell"``,
#: ``"rust"``, ``"go"``, ``"text"`` or a usual alias (``None``: guessed).
Payload: TypeAlias = str | tuple[str, str | None]

#: Exceptions of an upstream call that are worth retrying unless they say otherwise.
DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (
    builtins.ConnectionError,
    builtins.TimeoutError,
)


C = TypeVar("C")


class _CallBase(Generic[C]):
    #: The service admitted: the one given, or the one the route chose (``None``
    #: until then).
    service: str | None
    decision: Decision | None
    #: What the call actually cost (USD); ``None``: priced by the daemon.
    cost: float | None
    units: int | None
    input_units: int | None
    output_units: int | None
    #: Seconds from admission to the end of the body.
    latency: float | None
    #: After a failure: whether it is worth retrying (see the module doc).
    retryable: bool | None
    #: The daemon's acknowledgement of the report, after the block.
    report: Report | None
    #: Which attempt this call is: 1, or the ``attempt`` of the retry advice.
    attempt: int

    def __init__(
        self,
        client: C,
        service: str | None,
        *,
        estimate: float | None,
        units: int | None,
        model: str | None,
        input_units: int | None,
        output_units: int | None,
        agent: str | None,
        payload: Payload | None,
        lease: str | None,
        wait: float | None,
        route: str | None,
        attempt: int,
        retry_on: tuple[type[BaseException], ...],
    ) -> None:
        self._client = client
        self.service = service
        self.estimate = estimate
        self._admit_units = units
        self._model = model
        self._admit_input = input_units
        self._admit_output = output_units
        self._agent = agent
        self._payload = payload
        self._lease = lease
        self._wait = wait
        self._route = route
        self.attempt = attempt
        self._retry_on = retry_on
        self._upstream_retry_after: float | None = None
        self.decision = None
        self.cost = None
        self.units = None
        self.input_units = None
        self.output_units = None
        self.latency = None
        self.retryable = None
        self.report = None
        self._started = 0.0

    def _admitted(self, decision: Decision) -> None:
        if not decision.allowed:
            raise Denied(decision)
        self.decision = decision
        if decision.service is not None:
            self.service = decision.service
        self._started = time.monotonic()

    def _finish(self, exc: BaseException | None) -> bool:
        """Measures the call; returns whether it succeeded."""
        self.latency = time.monotonic() - self._started
        if exc is None:
            return True
        flag = getattr(exc, "retryable", None)
        self.retryable = flag if isinstance(flag, bool) else isinstance(exc, self._retry_on)
        after = getattr(exc, "retry_after", None) if self.retryable else None
        if isinstance(after, (int, float)) and not isinstance(after, bool) and after >= 0:
            self._upstream_retry_after = float(after)
        return False

    @property
    def advice(self) -> RetryAdvice | None:
        """After a retryable failure: the daemon's advice (retry or give up, when,
        with which ``attempt``)."""
        return self.report.retry if self.report is not None else None

    def _admit_kwargs(self) -> dict[str, Any]:
        return {
            "cost": self.estimate,
            "units": self._admit_units,
            "model": self._model,
            "input_units": self._admit_input,
            "output_units": self._admit_output,
            "agent": self._agent,
            "payload": self._payload,
            "lease": self._lease,
            "wait": self._wait,
            "route": self._route,
            "attempt": self.attempt,
        }

    def _report_kwargs(self, success: bool) -> dict[str, Any]:
        return {
            "success": success,
            "latency": self.latency,
            "cost": self.cost,
            "units": self.units,
            "input_units": self.input_units,
            "output_units": self.output_units,
            "retryable": bool(self.retryable) and not success,
            "retry_after": self._upstream_retry_after,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(service={self.service!r}, decision={self.decision!r}, "
            f"report={self.report!r})"
        )


class Call(_CallBase["Client"]):
    """One admitted call, reported when the ``with`` block ends."""

    def __enter__(self) -> Call:
        self._admitted(self._client.admit(self.service, **self._admit_kwargs()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        success = self._finish(exc)
        assert self.decision is not None
        try:
            self.report = self._client.report(self.decision, **self._report_kwargs(success))
        except Exception as report_error:
            if exc is None:
                raise
            exc.add_note(f"automation_framework: reporting this failure failed: {report_error!r}")


class AsyncCall(_CallBase["AsyncClient"]):
    """One admitted call, reported when the ``async with`` block ends."""

    async def __aenter__(self) -> AsyncCall:
        self._admitted(await self._client.admit(self.service, **self._admit_kwargs()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        success = self._finish(exc)
        assert self.decision is not None
        try:
            self.report = await self._client.report(self.decision, **self._report_kwargs(success))
        except Exception as report_error:
            if exc is None:
                raise
            exc.add_note(f"automation_framework: reporting this failure failed: {report_error!r}")
