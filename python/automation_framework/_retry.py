"""When to try a call again: the daemon decides, ``retrying()`` follows.

A failed call whose exception is retryable (see ``_call``) is reported with
``retryable=True`` and its attempt number, and the daemon answers with retry
advice (``Report.retry``): its own exponential backoff with jitter, raised to
the upstream's Retry-After and to the time until an open breaker half-opens,
within the service's ``retry.attempts`` and its retry budget, which every agent
on the host shares. So the helper keeps no backoff of its own: it sleeps
``advice.after`` and admits again with ``attempt=advice.attempt``, or, when
the advice says give up, raises the call's exception with the advice attached
(``exc.retry_advice`` and a note carrying its reason).

A denial says when the same call can be admitted (``retry_after``); the
helper waits exactly that long and admits again with the same attempt number
(a denied admission made no upstream call). Two denials are not waited out: a
``Retry`` denial (the retry budget is spent: more retries now are what it
exists to stop) and one without ``retry_after`` (a budget spent for good, a
breaker forced open). Locally, ``max_wait`` bounds the total sleep and
``attempts`` (optional) the number of admissions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import Denied

if TYPE_CHECKING:
    from ._call import _CallBase
    from ._native import RetryAdvice

__all__ = ["RetryState"]


def _attach(exc: BaseException, note: str, advice: RetryAdvice | None = None) -> None:
    exc.add_note(f"automation_framework: not retried: {note}")
    if advice is not None:
        try:
            setattr(exc, "retry_advice", advice)
        except AttributeError:  # an exception class with __slots__
            pass


class RetryState:
    """One ``retrying()`` run: the attempt to admit with next, and what was
    waited so far. ``after_*`` return the seconds to sleep before admitting
    again, or ``None`` when the exception should be raised (annotated)."""

    def __init__(self, *, attempts: int | None, max_wait: float) -> None:
        if attempts is not None and attempts < 1:
            raise ValueError(f"attempts must be at least 1 (or None), got {attempts}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be a number of seconds >= 0, got {max_wait}")
        self.attempts = attempts
        self.max_wait = max_wait
        #: The ``attempt`` of the next admission: 1, then what the advice says.
        self.attempt = 1
        #: Admissions made so far, denied ones included.
        self.admissions = 0
        self.waited = 0.0

    def admitting(self) -> int:
        """Counts an admission about to be made; returns its ``attempt``."""
        self.admissions += 1
        return self.attempt

    def after_denial(self, denied: Denied) -> float | None:
        if denied.guard == "retry":
            _attach(denied, "the retry budget of the service is spent (shared by every agent)")
            return None
        if denied.retry_after is None:
            return None
        return self._wait(denied, denied.retry_after)

    def after_failure(self, exc: BaseException, call: _CallBase[Any]) -> float | None:
        if call.decision is None or not call.retryable:
            return None
        advice = call.advice
        if advice is None:
            # The report failed (its error is a note on exc) or was a duplicate:
            # without the daemon's word, do not retry.
            _attach(exc, "the daemon gave no retry advice")
            return None
        if not advice.retry:
            _attach(exc, advice.reason, advice)
            return None
        delay = self._wait(exc, advice.after or 0.0, advice)
        if delay is not None:
            self.attempt = advice.attempt
        return delay

    def _wait(
        self, exc: BaseException, delay: float, advice: RetryAdvice | None = None
    ) -> float | None:
        if self.attempts is not None and self.admissions >= self.attempts:
            _attach(exc, f"{self.admissions} attempts made, attempts={self.attempts}", advice)
            return None
        if self.waited + delay > self.max_wait:
            _attach(
                exc,
                f"waiting {delay:.3f}s more would exceed max_wait={self.max_wait}s "
                f"({self.waited:.3f}s waited)",
                advice,
            )
            return None
        self.waited += delay
        return delay
