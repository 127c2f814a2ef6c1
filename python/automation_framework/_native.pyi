"""Type stubs of the native module (``src/*.rs``).

Durations are seconds (``float``), as ``time.sleep`` takes them; the wire's
exact milliseconds are beside them where a reply carries them (``*_ms``).
"""

from collections.abc import Awaitable
from os import PathLike
from pathlib import Path
from typing import final

PROTOCOL_VERSION: int
__version__: str

@final
class Vote:
    """One guard's opinion on an admission."""

    @property
    def guard(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def allow(self) -> bool: ...
    @property
    def shadow(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def retry_after(self) -> float | None: ...

@final
class Decision:
    """The verdict on one ``admit``; truthy when the call may be made."""

    @property
    def allowed(self) -> bool: ...
    @property
    def reservation(self) -> int | None:
        """Hand it back in ``report`` (present when allowed)."""
    @property
    def guard(self) -> str | None:
        """When denied: ``"content"``, ``"breaker"``, ``"retry"`` (the service's
        retry budget, on an ``attempt > 1``), ``"concurrency"`` (a bulkhead),
        ``"lease"`` (held by another session), ``"rate"``, ``"quota"`` or
        ``"budget"``."""
    @property
    def rule(self) -> str | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def retry_after(self) -> float | None:
        """When denied: seconds until the same call can be admitted; ``None`` when
        waiting cannot help."""
    @property
    def retry_after_ms(self) -> int | None: ...
    @property
    def votes(self) -> list[Vote]: ...
    @property
    def cost(self) -> float | None:
        """When allowed: the estimate reserved against the budgets (USD)."""
    @property
    def service(self) -> str | None:
        """The service a ``route`` chose (when allowed; the last one tried when
        denied); ``None`` when the admission named its service."""
    def __bool__(self) -> bool: ...

@final
class Report:
    """The daemon's acknowledgement of a ``report``."""

    @property
    def ok(self) -> bool: ...
    @property
    def duplicate(self) -> bool:
        """Already counted before; nothing was counted again."""
    @property
    def breaker(self) -> str | None: ...
    @property
    def charged(self) -> float | None: ...
    @property
    def retry(self) -> RetryAdvice | None:
        """For a failure reported ``retryable=True``: the daemon's advice.
        ``None`` otherwise, and for a duplicate."""

@final
class RetryAdvice:
    """Whether to retry a failed call, and when: the daemon's backoff (per
    ``[retry]``), the upstream's Retry-After, the breaker and the service's
    retry budget shared by every agent, combined. Truthy when it says retry."""

    @property
    def retry(self) -> bool:
        """Retry; ``False``: give up (the attempts are used up, the breaker is
        forced open, or the retry budget is spent)."""
    @property
    def after(self) -> float | None:
        """When retrying: seconds to wait first."""
    @property
    def after_ms(self) -> int | None: ...
    @property
    def attempt(self) -> int:
        """The ``attempt`` to pass to the retry's ``admit`` (and ``report``)."""
    @property
    def reason(self) -> str:
        """Why, for humans: ``retry 2 of at most 3 after exponential backoff``,
        ``attempt 3 was the last of 3: give up``, ``retry budget spent: ...``."""
    def __bool__(self) -> bool: ...

@final
class RouteSkip:
    """A service a route passed over."""

    @property
    def service(self) -> str: ...
    @property
    def guard(self) -> str:
        """The guard that ruled it out (``"breaker"``, ``"rate"``, ``"budget"``, ...)."""
    @property
    def reason(self) -> str: ...
    @property
    def retry_after(self) -> float | None:
        """Seconds until it might fit, when known."""

@final
class RouteResult:
    """Which service of a chain to call now; truthy when one fits. Nothing is
    taken: ``admit(route=...)`` (or ``admit(service)``) takes it."""

    @property
    def service(self) -> str | None:
        """The first service that would be admitted now; ``None`` when none."""
    @property
    def skipped(self) -> list[RouteSkip]:
        """The services before it (all of them when none fits), and why."""
    @property
    def retry_after(self) -> float | None:
        """When none fits: seconds until the soonest might, if known."""
    @property
    def retry_after_ms(self) -> int | None: ...
    def __bool__(self) -> bool: ...

@final
class LeaseHolder:
    """The session (one connection of one process) holding a lease."""

    @property
    def agent(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def session(self) -> int: ...
    @property
    def expires_in(self) -> float:
        """Seconds left on its lease unless renewed."""
    @property
    def expires_in_ms(self) -> int: ...

@final
class Lease:
    """A named lease after ``lease()``; truthy when this connection holds it."""

    @property
    def granted(self) -> bool:
        """This connection holds the lease now (``False`` after a release)."""
    @property
    def name(self) -> str: ...
    @property
    def expires_in(self) -> float | None:
        """When granted: seconds left on it unless renewed."""
    @property
    def expires_in_ms(self) -> int | None: ...
    @property
    def holder(self) -> LeaseHolder | None:
        """When refused: who holds it."""
    @property
    def released(self) -> bool:
        """A release found the lease held by this connection and gave it back."""
    def __bool__(self) -> bool: ...

@final
class InFlight:
    """One bulkhead key's calls in flight (``Status.in_flight``)."""

    @property
    def bulkhead(self) -> str: ...
    @property
    def key(self) -> str:
        """The service, agent or ``agent/service`` the permits are counted for."""
    @property
    def in_flight(self) -> int: ...
    @property
    def limit(self) -> int: ...
    @property
    def waiting(self) -> int:
        """Admissions waiting in line for a permit."""

@final
class Breaker:
    @property
    def service(self) -> str: ...
    @property
    def state(self) -> str:
        """``closed``, ``open``, ``half_open``, ``forced_open``, ``forced_closed`` or ``disabled``."""
    @property
    def failures(self) -> int: ...
    @property
    def window_failures(self) -> int: ...
    @property
    def window_calls(self) -> int: ...
    @property
    def trials_in_flight(self) -> int: ...
    @property
    def trial_successes(self) -> int: ...
    @property
    def open_remaining(self) -> float | None: ...
    @property
    def times_opened(self) -> int: ...

@final
class BudgetEntry:
    @property
    def name(self) -> str: ...
    @property
    def spent(self) -> float: ...
    @property
    def reserved(self) -> float: ...
    @property
    def limit(self) -> float: ...
    @property
    def remaining(self) -> float: ...
    @property
    def orphaned(self) -> int:
        """Reservations whose connection is gone, waiting to be reported or settled."""
    @property
    def reset(self) -> str: ...
    @property
    def resets_in_s(self) -> int | None: ...

@final
class Budget:
    @property
    def spent(self) -> float: ...
    @property
    def reserved(self) -> float: ...
    @property
    def limit(self) -> float: ...
    @property
    def remaining(self) -> float: ...
    @property
    def budgets(self) -> list[BudgetEntry]: ...

@final
class Quota:
    @property
    def quota(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def used(self) -> int: ...
    @property
    def limit(self) -> int: ...
    @property
    def window(self) -> str: ...
    @property
    def resets_in_s(self) -> int | None: ...

@final
class Status:
    @property
    def status(self) -> str:
        """``healthy``, ``degraded`` or ``unhealthy``."""
    @property
    def reasons(self) -> list[str]: ...
    @property
    def version(self) -> str: ...
    @property
    def uptime_s(self) -> int: ...
    @property
    def mode(self) -> str: ...
    @property
    def connections(self) -> int: ...
    @property
    def active_agents(self) -> int: ...
    @property
    def open_reservations(self) -> int: ...
    @property
    def breakers_closed(self) -> int: ...
    @property
    def breakers_open(self) -> int: ...
    @property
    def breakers_half_open(self) -> int: ...
    @property
    def store(self) -> str: ...
    @property
    def budget_spent(self) -> float: ...
    @property
    def budget_limit(self) -> float: ...
    @property
    def leases_held(self) -> int:
        """Named leases held right now, by every session."""
    @property
    def in_flight(self) -> list[InFlight]:
        """One entry per bulkhead key with calls in flight or waiting."""

@final
class Violation:
    """One thing the content scanner found."""

    @property
    def kind(self) -> str:
        """``dangerous_call``, ``secret``, ``path_traversal``, ``shell_injection``
        or ``sql_injection``."""
    @property
    def rule(self) -> str:
        """The rule's id (``py-eval``, ``aws-access-key-id``, ...)."""
    @property
    def severity(self) -> str:
        """``low``, ``medium``, ``high`` or ``critical``; an admission is denied
        at the daemon's ``content.deny_at`` (default ``high``) and above."""
    @property
    def line(self) -> int:
        """1-based line of the match."""
    @property
    def column(self) -> int:
        """1-based column of the match, in characters (not bytes)."""
    @property
    def excerpt(self) -> str:
        """The matched text on its line, at most 120 characters. A secret is
        never sent back: at most its first four characters and its length
        (``AKIA***(20 chars)``)."""
    @property
    def message(self) -> str:
        """What the rule is about and what to do instead."""

@final
class CheckResult:
    """What ``check`` found; truthy when nothing was (as a ``Decision`` is
    truthy when the call may be made). ``len()`` counts every violation found,
    omitted ones included."""

    @property
    def lang(self) -> str:
        """The language the text was scanned as (given, or guessed)."""
    @property
    def violations(self) -> list[Violation]:
        """What was found, in the order of the text; at most 500."""
    @property
    def omitted(self) -> int:
        """Violations found beyond those listed (the reply must fit a frame)."""
    @property
    def clean(self) -> bool:
        """Nothing was found."""
    def __bool__(self) -> bool: ...
    def __len__(self) -> int: ...

@final
class Pong:
    @property
    def version(self) -> str: ...
    @property
    def session(self) -> int: ...
    @property
    def agent(self) -> str: ...

class Client:
    """Blocking connection to the daemon, shared safely by threads."""

    def __init__(
        self,
        socket: str | PathLike[str] | None = None,
        agent: str | None = None,
        *,
        timeout: float | None = 30.0,
        connect: bool = True,
    ) -> None: ...
    @property
    def socket(self) -> Path: ...
    @property
    def agent(self) -> str: ...
    def admit(
        self,
        service: str | None = None,
        *,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: str | tuple[str, str | None] | None = None,
        lease: str | None = None,
        wait: float | None = None,
        route: str | None = None,
        attempt: int = 1,
    ) -> Decision:
        """May this call be made now? A denial is a falsy ``Decision``, not an error.

        ``payload`` is the code or text the call will run or send: the text, or
        ``(text, lang)``. The daemon's content guard scans it and votes first
        (``guard="content"`` and the rule's id when it denies). Refused with
        ``InvalidArgument`` when content checks are disabled, the text is too
        large or the language unknown; nothing is taken then.

        ``route``, instead of ``service``: a ``[[routes]]`` name; the first
        service of its chain that would be admitted is, and ``Decision.service``
        names it (when all deny, the denial lists why each was skipped).
        ``lease``: a named lease the call needs: denied (``guard="lease"``)
        while another session holds it, else taken and held until the report.
        ``wait``: seconds to wait for a bulkhead permit, first come first
        served, instead of a denial at once (the daemon caps it at
        ``concurrency.max_wait``; the reply, and those behind it on this
        connection, come that much later, and the client's timeout is
        extended by it). ``attempt``: 1 for a first call, ``advice.attempt``
        for a retry; a retry counts against the service's retry budget, whose
        ``"retry"`` guard may deny it.
        """
    def route(
        self,
        route: str | None = None,
        *,
        chain: list[str] | None = None,
        units: int | None = None,
        cost: float | None = None,
        model: str | None = None,
        agent: str | None = None,
    ) -> RouteResult:
        """Which service to call now: the first of a configured route (by name)
        or of ``chain`` (services in order of preference, at most 32) that
        ``admit`` would admit at this instant (breaker, retry budget, limits
        and quotas for ``units``, its price within the budgets). Takes nothing.
        ``InvalidArgument`` for an unknown route (the message lists them)."""
    def lease(
        self,
        name: str,
        *,
        ttl: float | None = None,
        release: bool = False,
        agent: str | None = None,
    ) -> Lease:
        """Takes the named lease for ``ttl`` seconds (default the daemon's
        ``leases.default_ttl``, at most ``leases.max_ttl``), or renews it when
        this connection holds it; a falsy ``Lease`` naming the ``holder`` when
        another session does. ``release=True`` gives it back. A lease ends with
        its release, its TTL, or this connection (``close()``, a lost
        connection); a daemon restart frees every lease."""
    def check(self, text: str, lang: str | None = None) -> CheckResult:
        """Scans ``text`` with the daemon's content rules (built-in and the
        operator's) for dangerous calls, hard-coded secrets and hostile
        arguments; changes nothing.

        ``lang``: ``python``, ``javascript``, ``typescript``, ``shell``,
        ``rust``, ``go`` or ``text``, or a usual alias or file extension
        (``py``, ``js``, ``sh``, ...); ``None``: guessed from the text. At most
        1 MiB of text (the daemon's ``content.max_payload`` may allow less).
        ``InvalidArgument`` when content checks are disabled, the text is too
        large or the language unknown; ``Unavailable`` when the daemon has too
        many texts waiting to be scanned (retry later).
        """
    def report(
        self,
        reservation: int | Decision | None = None,
        *,
        success: bool = True,
        service: str | None = None,
        units: int | None = None,
        latency: float | None = None,
        cost: float | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        idempotency_key: str | None = None,
        agent: str | None = None,
        retryable: bool = False,
        attempt: int | None = None,
        retry_after: float | None = None,
    ) -> Report:
        """How the call went. Give the reservation (or its ``Decision``), or
        ``service`` for a call made without admission. Idempotent per key.

        A failure with ``retryable=True`` (a timeout, a 429, a 5xx) gets the
        daemon's retry advice in ``Report.retry``. ``attempt``: which attempt
        this was (default the admission's); ``retry_after``: the upstream's
        Retry-After in seconds, so the advice is never sooner."""
    def budget(self, agent: str | None = None) -> Budget: ...
    def breakers(self, service: str | None = None) -> list[Breaker]: ...
    def quotas(self, quota: str | None = None) -> list[Quota]: ...
    def status(self) -> Status: ...
    def ping(self) -> Pong: ...
    def close(self) -> None: ...

class AsyncClient:
    """Asyncio connection to the daemon: every method returns an awaitable.

    The event loop drives its socket (``add_reader``/``add_writer``); nothing
    blocks the loop, connecting included. Call it from its loop's thread only.
    """

    def __init__(
        self,
        socket: str | PathLike[str] | None = None,
        agent: str | None = None,
        *,
        timeout: float | None = 30.0,
    ) -> None: ...
    @property
    def socket(self) -> Path: ...
    @property
    def agent(self) -> str: ...
    def admit(
        self,
        service: str | None = None,
        *,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: str | tuple[str, str | None] | None = None,
        lease: str | None = None,
        wait: float | None = None,
        route: str | None = None,
        attempt: int = 1,
    ) -> Awaitable[Decision]:
        """``Client.admit``, awaitable. An admission waiting for a bulkhead
        permit (``wait``) does not block the event loop; replies to the
        requests sent after it on this client come after it."""
    def route(
        self,
        route: str | None = None,
        *,
        chain: list[str] | None = None,
        units: int | None = None,
        cost: float | None = None,
        model: str | None = None,
        agent: str | None = None,
    ) -> Awaitable[RouteResult]:
        """``Client.route``, awaitable."""
    def lease(
        self,
        name: str,
        *,
        ttl: float | None = None,
        release: bool = False,
        agent: str | None = None,
    ) -> Awaitable[Lease]:
        """``Client.lease``, awaitable; the lease is held by this client's connection."""
    def check(self, text: str, lang: str | None = None) -> Awaitable[CheckResult]:
        """``Client.check``, awaitable. The scan runs on a daemon thread of its
        own; requests behind it on this connection are not held up by it on
        the daemon's side, and replies still come in request order."""
    def report(
        self,
        reservation: int | Decision | None = None,
        *,
        success: bool = True,
        service: str | None = None,
        units: int | None = None,
        latency: float | None = None,
        cost: float | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        idempotency_key: str | None = None,
        agent: str | None = None,
        retryable: bool = False,
        attempt: int | None = None,
        retry_after: float | None = None,
    ) -> Awaitable[Report]:
        """``Client.report``, awaitable."""
    def budget(self, agent: str | None = None) -> Awaitable[Budget]: ...
    def breakers(self, service: str | None = None) -> Awaitable[list[Breaker]]: ...
    def quotas(self, quota: str | None = None) -> Awaitable[list[Quota]]: ...
    def status(self) -> Awaitable[Status]: ...
    def ping(self) -> Awaitable[Pong]: ...
    def close(self) -> None:
        """Later requests raise ``ClientClosed``; the connection ends once the
        requests already made are answered."""
