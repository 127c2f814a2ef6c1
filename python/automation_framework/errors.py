"""The exceptions this package raises, one class per kind of trouble.

Every exception is an ``AutomationFrameworkError`` with ``message`` and, when
the daemon sent one, ``code`` (the protocol's error code as docs/PROTOCOL.md
spells it, e.g. ``"not_permitted"``). The classes also derive from the builtin
a caller would catch for the same trouble (``ValueError``, ``PermissionError``,
``ConnectionError``, ``TimeoutError``), so generic handlers keep working.

The native module raises these by code (``src/errors.rs``); ``Denied`` is
raised by ``Client.call`` and the retry helper, never by ``admit`` (a denial is
an answer, not an error: ``admit`` returns a falsy ``Decision``).
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._native import Decision, Lease, LeaseHolder

__all__ = [
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


class AutomationFrameworkError(Exception):
    """Base class of every exception this package raises."""

    message: str
    code: str | None

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        # OSError-derived subclasses would otherwise print "[Errno message] code".
        return self.message


class Denied(AutomationFrameworkError):
    """The daemon said no: a guard denied the call (raised by ``call()`` and
    ``retrying()``, never by ``admit``).

    ``retry_after`` is how long (seconds) until the same call can be admitted,
    or ``None`` when waiting cannot help (a budget spent for good, a breaker
    forced open, a weight above a limit's burst).
    """

    decision: Decision
    guard: str | None
    rule: str | None
    reason: str | None
    retry_after: float | None

    def __init__(self, decision: Decision) -> None:
        wait = (
            f"; retry after {decision.retry_after:.3f}s"
            if decision.retry_after is not None
            else "; waiting will not help"
        )
        super().__init__(
            f"denied by the {decision.guard} guard ({decision.rule}): {decision.reason}{wait}",
            None,
        )
        self.decision = decision
        self.guard = decision.guard
        self.rule = decision.rule
        self.reason = decision.reason
        self.retry_after = decision.retry_after

    def __reduce__(self) -> tuple[object, ...]:
        # Decision is a native object; pickle (multiprocessing) carries the text.
        return (AutomationFrameworkError, (self.message, self.code))


class LeaseHeld(AutomationFrameworkError):
    """``lease_held()`` could not take the lease: another session holds it.

    ``holder`` names that session (``agent``, ``pid``, ``uid``, ``session``,
    ``expires_in``); ``retry_after`` is when its lease runs out unless renewed
    (seconds). ``lease`` is the daemon's whole answer.
    """

    lease: Lease
    name: str
    holder: LeaseHolder | None
    retry_after: float | None

    def __init__(self, lease: Lease) -> None:
        holder = lease.holder
        who = (
            f"agent {holder.agent!r} (pid {holder.pid}, uid {holder.uid}, session "
            f"{holder.session}) for {holder.expires_in:.3f}s more unless renewed"
            if holder is not None
            else "another session"
        )
        super().__init__(
            f"lease {lease.name!r} is held by {who}; wait for it to be released or to "
            "expire, or ask its holder",
            None,
        )
        self.lease = lease
        self.name = lease.name
        self.holder = holder
        self.retry_after = holder.expires_in if holder is not None else None

    def __reduce__(self) -> tuple[object, ...]:
        # Lease is a native object; pickle (multiprocessing) carries the text.
        return (AutomationFrameworkError, (self.message, self.code))


class DaemonError(AutomationFrameworkError):
    """The daemon answered a request with an error; the request changed nothing."""


class InvalidArgument(DaemonError, ValueError):
    """A field had an invalid value; the message says which and why."""


class UnknownService(DaemonError):
    """The service is not declared and the daemon accepts no undeclared ones."""


class UnknownReservation(DaemonError):
    """``report`` named a reservation the daemon never issued, released when its
    connection ended, or closed too long ago."""


class UnknownRequest(DaemonError):
    """The daemon is older than this package and does not know the request."""


class NotPermitted(DaemonError, PermissionError):
    """The peer's credentials do not allow this (connecting, the agent name, an
    admin operation); the message names the uid and the rule."""


class Unavailable(DaemonError):
    """Temporarily impossible (the ledger failed, or the same reservation is being
    committed right now); nothing changed. Retry later."""


class InternalError(DaemonError):
    """An unexpected failure inside the daemon (a bug)."""


class ProtocolError(AutomationFrameworkError):
    """The daemon's bytes were not what this package's protocol allows: a version
    mismatch between package and daemon, or a bug."""


class ConnectionError(AutomationFrameworkError, builtins.ConnectionError):
    """The connection to the daemon failed. The next request reconnects."""


class ConnectFailed(ConnectionError):
    """Nothing accepts connections at the socket: is the daemon running, and is
    this the right socket?"""


class ConnectionLost(ConnectionError):
    """The connection broke after the request was sent: the daemon may or may not
    have carried it out. A report can be repeated safely (it is idempotent)."""


class ConnectionClosed(ConnectionError):
    """The daemon closed the connection with a reason (``code``): shutting down,
    idle timeout, or too many connections."""


class RequestTimeout(ConnectionError, builtins.TimeoutError):
    """No reply within the client's ``timeout``; the connection was dropped."""


class ClientClosed(ConnectionError):
    """The client was closed by ``close()``; create a new one."""
