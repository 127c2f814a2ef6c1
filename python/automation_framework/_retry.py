"""When to try a call again: the retry policy behind ``Client.retrying``.

A denial says itself when the same call can be admitted (``retry_after``), and
the helper waits exactly that long. A failed call is retried only when its
exception says it is retryable, after an exponential backoff with jitter
(100 ms, x2, capped at 30 s, +/-20 %: the defaults the daemon's own retry advice
will use).

The daemon does not advise retries yet. Issue 11 adds ``retryable`` and
``attempt`` to ``report`` and a ``retry`` field to its reply, with a retry
budget shared by every agent on the host. That advice plugs in at
``daemon_advice``: when it returns a delay, the policy follows it instead of its
own backoff, and when the daemon says "do not retry", the helper stops.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from ._native import Report

__all__ = ["Backoff", "daemon_advice"]


def daemon_advice(report: Report | None) -> float | None:
    """The daemon's advice on retrying a reported failure, in seconds.

    Always ``None`` today: the report reply carries no advice until issue 11
    lands (then: its ``retry`` field, which may also say not to retry at all).
    """
    del report
    return None


@dataclass
class Backoff:
    """Exponential backoff with jitter, bounded in attempts and in total wait.

    ``rand`` returns a float in [0, 1); tests pass a fixed one.
    """

    attempts: int = 3
    initial: float = 0.1
    multiplier: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2
    max_wait: float = 60.0
    rand: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    def after_failure(self, attempt: int, *, advice: float | None = None) -> float:
        """The wait before attempt ``attempt + 1`` after attempt ``attempt`` failed."""
        if advice is not None:
            return advice
        base = min(self.cap, self.initial * self.multiplier ** (attempt - 1))
        spread = base * self.jitter * (2.0 * self.rand() - 1.0)
        return max(0.0, base + spread)

    def after_denial(self, retry_after: float | None) -> float | None:
        """The wait after a denial: what the daemon said, or ``None`` (give up)."""
        return retry_after
