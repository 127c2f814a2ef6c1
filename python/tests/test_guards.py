"""The guards of protocol version 3 against the real daemon: retry advice and
the shared retry budget (through ``report``, ``call()`` and ``retrying()``),
and routes (``route()``, ``admit(route=...)``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import automation_framework as af
from conftest import Daemon

#: Breakers that do not open under the few failures a test reports; retry
#: advice with the shipped defaults, written out (the bounds below follow them).
RETRY = (
    'rate_limits = []\n[budget]\nlimit = 100.0\norphan_timeout = "1h"\n'
    "[breaker]\nfailure_threshold = 50\n"
    '[retry]\nattempts = 3\ninitial = "100ms"\nmultiplier = 2.0\nmax = "30s"\njitter = 20\n'
)

#: A retry budget with room for one retry at once, and none by percentage.
TINY_BUDGET = RETRY + "budget_percent = 0\nbudget_min_retries = 1\n"


class UpstreamBusy(Exception):
    """A vendor's 429 with its Retry-After, as an SDK would raise it."""

    retryable = True

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("429 Too Many Requests")
        self.retry_after = retry_after


def test_a_retryable_failure_gets_advice_within_the_backoff_bounds(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(RETRY)
    client = af.Client(daemon.socket, agent="advised")

    first = client.report(service="llm", success=False, retryable=True)
    advice = first.retry
    assert advice is not None and advice and advice.retry
    assert advice.attempt == 2
    assert advice.after is not None and 0.08 <= advice.after <= 0.12  # 100 ms ± 20 %
    assert advice.after_ms == pytest.approx(advice.after * 1000)

    second = client.report(service="llm", success=False, retryable=True, attempt=2).retry
    assert second is not None and second.retry and second.attempt == 3
    assert second.after is not None and 0.16 <= second.after <= 0.24  # 200 ms ± 20 %

    last = client.report(service="llm", success=False, retryable=True, attempt=3).retry
    assert last is not None and not last and last.after is None
    assert "give up" in last.reason

    # The upstream's Retry-After is a floor, also beyond the backoff.
    floored = client.report(service="llm", success=False, retryable=True, retry_after=7.5).retry
    assert floored is not None and floored.retry and floored.after == pytest.approx(7.5, abs=0.01)

    # Only retryable failures are advised on.
    assert client.report(service="llm", success=False).retry is None
    assert client.report(service="llm").retry is None
    with pytest.raises(af.InvalidArgument, match="retry_after"):
        client.report(service="llm", success=False, retryable=True, retry_after=-1.0)


def test_call_reports_retryable_failures_with_the_exceptions_retry_after(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(RETRY)
    client = af.Client(daemon.socket, agent="advised")
    call = client.call("llm", cost=0.01)
    with pytest.raises(UpstreamBusy):
        with call:
            raise UpstreamBusy(retry_after=4.0)
    assert call.retryable is True
    assert call.advice is not None and call.advice.retry
    assert call.advice.after == pytest.approx(4.0, abs=0.01) and call.advice.attempt == 2

    # The admission's attempt is the report's: a third attempt is the last.
    call = client.call("llm", attempt=3)
    with pytest.raises(TimeoutError):
        with call:
            raise TimeoutError
    assert call.advice is not None and not call.advice.retry

    call = client.call("llm")
    with pytest.raises(KeyError):
        with call:
            raise KeyError("a bug: not retryable, so no advice")
    assert call.retryable is False and call.advice is None


def test_retrying_sleeps_as_advised_and_gives_up_when_told(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(RETRY)
    client = af.Client(daemon.socket, agent="retrier")
    slept: list[float] = []
    attempts: list[int] = []

    def flaky(call: af.Call) -> str:
        attempts.append(call.attempt)
        if len(attempts) < 3:
            raise UpstreamBusy()
        return "answer"

    assert client.retrying(flaky, service="llm", sleep=slept.append) == "answer"
    assert attempts == [1, 2, 3]
    assert len(slept) == 2
    assert 0.08 <= slept[0] <= 0.12 and 0.16 <= slept[1] <= 0.24

    attempts.clear()
    slept.clear()

    def down(call: af.Call) -> str:
        attempts.append(call.attempt)
        raise UpstreamBusy()

    with pytest.raises(UpstreamBusy) as raised:
        client.retrying(down, service="llm", sleep=slept.append)
    assert attempts == [1, 2, 3] and len(slept) == 2
    advice = getattr(raised.value, "retry_advice")
    assert isinstance(advice, af.RetryAdvice) and not advice.retry
    assert any("give up" in note for note in raised.value.__notes__)

    # Not retryable: raised at once, no advice asked for.
    slept.clear()
    def bug(call: af.Call) -> str:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        client.retrying(bug, service="llm", sleep=slept.append)
    assert slept == []


def test_retrying_honours_the_shared_retry_budget(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(TINY_BUDGET)
    client = af.Client(daemon.socket, agent="fleet-1")
    other = af.Client(daemon.socket, agent="fleet-2")

    # Another agent's failure takes the budget's one retry (advised, promised).
    promised = other.report(service="llm", success=False, retryable=True).retry
    assert promised is not None and promised.retry

    calls: list[int] = []

    def down(call: af.Call) -> str:
        calls.append(call.attempt)
        raise UpstreamBusy()

    slept: list[float] = []
    with pytest.raises(UpstreamBusy) as raised:
        client.retrying(down, service="llm", sleep=slept.append)
    assert calls == [1] and slept == []
    advice = getattr(raised.value, "retry_advice")
    assert not advice.retry and "retry budget" in advice.reason
    assert any("retry budget" in note for note in raised.value.__notes__)


def test_retrying_raises_a_retry_denial_at_once(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(TINY_BUDGET)
    client = af.Client(daemon.socket, agent="fleet-1")
    other = af.Client(daemon.socket, agent="fleet-2")
    held: list[af.Decision] = []
    slept: list[float] = []

    def meanwhile(seconds: float) -> None:
        # While this agent waits out its advice, another agent's retry is
        # admitted and holds the budget's one retry: this agent's retry is then
        # denied by the retry guard, and not waited out.
        slept.append(seconds)
        decision = other.admit("llm", attempt=2)
        assert decision.allowed
        held.append(decision)

    def down(call: af.Call) -> str:
        raise UpstreamBusy()

    with pytest.raises(af.Denied) as raised:
        client.retrying(down, service="llm", sleep=meanwhile)
    assert len(slept) == 1 and len(held) == 1
    assert raised.value.guard == "retry" and raised.value.rule == "llm"
    assert "retry budget" in (raised.value.reason or "")
    assert any("retry budget" in note for note in raised.value.__notes__)

    # The admission itself: a retry beyond the budget is denied, a first call is not.
    denied = client.admit("llm", attempt=2)
    assert not denied and denied.guard == "retry"
    assert client.admit("llm").allowed
    with pytest.raises(af.InvalidArgument, match="attempt"):
        client.admit("llm", attempt=0)


def test_async_retrying_follows_the_advice(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(RETRY)

    async def main() -> None:
        async with af.AsyncClient(daemon.socket, agent="async-retrier") as client:
            slept: list[float] = []

            async def fake_sleep(seconds: float) -> None:
                slept.append(seconds)

            attempts: list[int] = []

            async def flaky(call: af.AsyncCall) -> str:
                attempts.append(call.attempt)
                if len(attempts) < 2:
                    raise UpstreamBusy(retry_after=0.5)
                return "ok"

            assert await client.retrying(flaky, service="llm", sleep=fake_sleep) == "ok"
            assert attempts == [1, 2] and slept == [pytest.approx(0.5, abs=0.01)]

            report = await client.report(service="llm", success=False, retryable=True, attempt=3)
            assert report.retry is not None and not report.retry.retry

            # max_wait bounds what is slept, locally.
            async def down(call: af.AsyncCall) -> str:
                raise UpstreamBusy(retry_after=30.0)

            slept.clear()
            with pytest.raises(UpstreamBusy) as raised:
                await client.retrying(down, service="llm", max_wait=10.0, sleep=fake_sleep)
            assert slept == []
            assert any("max_wait" in note for note in raised.value.__notes__)

    asyncio.run(main())


ROUTES = (
    'rate_limits = []\n[budget]\nlimit = 100.0\norphan_timeout = "1h"\n'
    '[breaker]\nfailure_threshold = 2\nopen_for = "1h"\n'
    '[[routes]]\nname = "chat"\nchain = ["primary", "fallback"]\n'
)


def test_a_route_falls_back_when_the_primarys_breaker_is_open(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(ROUTES)
    client = af.Client(daemon.socket, agent="router")

    chosen = client.route("chat")
    assert chosen and chosen.service == "primary" and chosen.skipped == []

    for _ in range(2):
        client.report(service="primary", success=False)
    assert client.breakers("primary")[0].state == "open"

    chosen = client.route("chat")
    assert chosen.service == "fallback" and chosen.retry_after is None
    (skip,) = chosen.skipped
    assert skip.service == "primary" and skip.guard == "breaker"
    assert skip.retry_after is not None and 3000 < skip.retry_after <= 3600
    assert client.route(chain=["primary", "fallback"]).service == "fallback"

    # The admission chooses the same way, in one step, and names its choice.
    decision = client.admit(route="chat", cost=0.01)
    assert decision.allowed and decision.service == "fallback"
    client.report(decision)
    with client.call(route="chat") as call:
        assert call.service == "fallback"
    assert call.report is not None and call.report.ok

    # Nothing fits: no service, and when the soonest might.
    for _ in range(2):
        client.report(service="fallback", success=False)
    none = client.route("chat")
    assert not none and none.service is None
    assert [s.service for s in none.skipped] == ["primary", "fallback"]
    assert none.retry_after is not None and none.retry_after > 3000
    with pytest.raises(af.Denied) as raised:
        with client.call(route="chat"):
            pytest.fail("must not run")
    assert raised.value.guard == "breaker"

    with pytest.raises(af.InvalidArgument, match="chat"):
        client.route("no-such-route")
    with pytest.raises(af.InvalidArgument, match="exactly one"):
        client.route("chat", chain=["primary"])
    with pytest.raises(af.InvalidArgument, match="not both"):
        client.admit("primary", route="chat")
    with pytest.raises(af.InvalidArgument, match="route="):
        client.admit()


def test_async_route(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(ROUTES)

    async def main() -> None:
        async with af.AsyncClient(daemon.socket, agent="async-router") as client:
            for _ in range(2):
                await client.report(service="primary", success=False)
            chosen = await client.route("chat")
            assert chosen.service == "fallback"
            async with client.call(route="chat", cost=0.01) as call:
                assert call.service == "fallback"
                assert call.decision is not None and call.decision.service == "fallback"

    asyncio.run(main())


class PermanentReset(ConnectionResetError):
    """A connection error its SDK knows is not worth retrying."""

    retryable = False


class OddRetryAfter(Exception):
    retryable = True

    def __init__(self, retry_after: object) -> None:
        super().__init__("503")
        self.retry_after = retry_after


def test_what_an_exception_says_about_retrying_is_reported(
    start_daemon: Callable[[str], Daemon],
) -> None:
    """An exception's own ``retryable = False`` wins over ``retry_on``;
    ``retry_on=`` replaces the default classes; a ``retry_after`` that is not a
    number of seconds >= 0 is left out of the report, which is still made (the
    reservation closed, the advice the daemon's own backoff)."""
    daemon = start_daemon(RETRY + "budget_min_retries = 100\n")  # every failure advised
    client = af.Client(daemon.socket, agent="told")

    with pytest.raises(PermanentReset):
        with client.call("llm") as call:
            raise PermanentReset
    assert call.retryable is False and call.advice is None

    with pytest.raises(KeyError):
        with client.call("llm", retry_on=(LookupError,)) as call:
            raise KeyError("a cache miss worth retrying")
    assert call.retryable is True and call.advice is not None and call.advice.retry
    with pytest.raises(TimeoutError):
        with client.call("llm", retry_on=(LookupError,)) as call:
            raise TimeoutError
    assert call.retryable is False and call.advice is None

    for odd in (-1.0, True, "7"):
        with pytest.raises(OddRetryAfter):
            with client.call("llm") as call:
                raise OddRetryAfter(odd)
        assert call.report is not None and call.advice is not None and call.advice.retry
        assert call.advice.after is not None and call.advice.after <= 0.12  # 100 ms + 20 %
    assert client.status().open_reservations == 0


#: RETRY with a quota per agent, which shows whom each admission was for.
COUNTED = RETRY + '[[quotas]]\nname = "calls"\nwindow = "day"\nscope = "agent"\nlimit = 1000\n'


def test_retrying_admits_with_its_arguments(start_daemon: Callable[[str], Daemon]) -> None:
    """``retrying()`` admits each attempt with the estimate, the agent and the
    ``retry_on`` it was given (``Client`` and ``AsyncClient``), and raises a
    failure that is not retryable as it is, without notes."""
    daemon = start_daemon(COUNTED)
    client = af.Client(daemon.socket, agent="retrier")
    slept: list[float] = []
    attempts: list[int] = []

    def priced(call: af.Call) -> float | None:
        assert call.decision is not None
        return call.decision.cost

    assert client.retrying(priced, service="llm", cost=0.25) == pytest.approx(0.25)
    assert client.budget().spent == pytest.approx(0.25)  # charged the estimate

    def missing_once(call: af.Call) -> str:
        attempts.append(call.attempt)
        if len(attempts) == 1:
            raise KeyError("not there yet")
        return "found"

    assert client.retrying(missing_once, service="llm", retry_on=(LookupError,), sleep=slept.append) == "found"
    assert attempts == [1, 2] and len(slept) == 1

    def bug(call: af.Call) -> str:
        raise ValueError("a bug")

    with pytest.raises(ValueError) as raised:
        client.retrying(bug, service="llm", sleep=slept.append)
    assert getattr(raised.value, "__notes__", []) == [] and len(slept) == 1

    async def main() -> None:
        async with af.AsyncClient(daemon.socket, agent="retrier") as aclient:

            async def ok(call: af.AsyncCall) -> str:
                return "ok"

            assert await aclient.retrying(ok, service="llm", agent="delegate") == "ok"

    asyncio.run(main())
    counted = {q.key: q.used for q in client.quotas("calls")}
    assert counted == {"retrier": 4, "delegate": 1}


def test_max_wait_bounds_the_sleeps_together(start_daemon: Callable[[str], Daemon]) -> None:
    """``max_wait`` bounds the total of one ``retrying()``'s sleeps, not each one."""
    daemon = start_daemon(RETRY)
    client = af.Client(daemon.socket, agent="patient")
    slept: list[float] = []

    def busy(call: af.Call) -> str:
        raise UpstreamBusy(retry_after=4.0)

    with pytest.raises(UpstreamBusy) as raised:
        client.retrying(busy, service="llm", max_wait=6.0, sleep=slept.append)
    assert slept == [pytest.approx(4.0, abs=0.01)]
    assert any("max_wait=6.0" in note for note in raised.value.__notes__)


def test_retrying_does_not_retry_without_the_daemons_advice(
    start_daemon: Callable[[str], Daemon],
) -> None:
    """When the report of a retryable failure fails (here the client is closed in
    the body), no advice came: the failure is raised at once, with notes saying
    why."""
    daemon = start_daemon(RETRY)
    client = af.Client(daemon.socket, agent="cut-off")
    slept: list[float] = []

    def closes(call: af.Call) -> str:
        client.close()
        raise UpstreamBusy()

    with pytest.raises(UpstreamBusy) as raised:
        client.retrying(closes, service="llm", sleep=slept.append)
    assert slept == []
    notes = raised.value.__notes__
    assert any("reporting this failure failed" in note for note in notes)
    assert any("no retry advice" in note for note in notes)
