"""Type stubs of the native module (``src/*.rs``).

Room is left, clearly, for what other issues add to the protocol: ``lease()``,
``route()``, and ``admit``'s ``lease`` and ``wait`` keywords. They appear here
when the daemon understands them, not before.
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
        """When denied: ``"content"``, ``"rate"``, ``"breaker"``, ``"budget"`` or ``"quota"``."""
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
        service: str,
        *,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: str | tuple[str, str | None] | None = None,
    ) -> Decision:
        """May this call be made now? A denial is a falsy ``Decision``, not an error.

        ``payload`` is the code or text the call will run or send: the text, or
        ``(text, lang)``. The daemon's content guard scans it and votes first
        (``guard="content"`` and the rule's id when it denies). Refused with
        ``InvalidArgument`` when content checks are disabled, the text is too
        large or the language unknown; nothing is taken then.
        """
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
    ) -> Report:
        """How the call went. Give the reservation (or its ``Decision``), or
        ``service`` for a call made without admission. Idempotent per key."""
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
        service: str,
        *,
        cost: float | None = None,
        units: int | None = None,
        model: str | None = None,
        input_units: int | None = None,
        output_units: int | None = None,
        agent: str | None = None,
        payload: str | tuple[str, str | None] | None = None,
    ) -> Awaitable[Decision]:
        """``Client.admit``, awaitable."""
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
    ) -> Awaitable[Report]: ...
    def budget(self, agent: str | None = None) -> Awaitable[Budget]: ...
    def breakers(self, service: str | None = None) -> Awaitable[list[Breaker]]: ...
    def quotas(self, quota: str | None = None) -> Awaitable[list[Quota]]: ...
    def status(self) -> Awaitable[Status]: ...
    def ping(self) -> Awaitable[Pong]: ...
    def close(self) -> None:
        """Later requests raise ``ClientClosed``; the connection ends once the
        requests already made are answered."""
