"""``client.call(...)`` and the retry helper: admit on enter, report on exit,
and follow the daemon's word on when to try again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import automation_framework as af
from conftest import PLAIN, Daemon

BREAKER = (
    'rate_limits = []\n[budget]\nlimit = 100.0\norphan_timeout = "1h"\n'
    '[breaker]\nfailure_threshold = 3\nopen_for = "1h"\n'
)


class UpstreamDown(Exception):
    retryable = True


def test_a_successful_call_is_reported_with_its_latency_and_cost(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(BREAKER)
    client = af.Client(daemon.socket, agent="ctx")
    with client.call("openai", cost=0.02) as call:
        assert call.decision is not None and call.decision.allowed
        assert client.status().open_reservations == 1
        call.cost = 0.013
        call.units = 420
    assert call.report is not None and call.report.ok
    assert call.report.charged == pytest.approx(0.013)
    assert call.latency is not None and call.latency >= 0
    assert call.retryable is None
    assert client.status().open_reservations == 0
    assert client.budget().spent == pytest.approx(0.013)


def test_an_exception_is_reported_as_a_failure_and_propagates(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(BREAKER)
    client = af.Client(daemon.socket, agent="ctx")
    call = client.call("openai", cost=0.02)
    with pytest.raises(UpstreamDown):
        with call:
            call.cost = 0.0  # the failed upstream call was not billed
            raise UpstreamDown("503")
    assert call.retryable is True
    assert call.report is not None and call.report.charged == 0.0
    (breaker,) = client.breakers("openai")
    assert breaker.failures == 1 and breaker.state == "closed"

    call = client.call("openai")
    with pytest.raises(KeyError):
        with call:
            raise KeyError("a bug, not worth retrying")
    assert call.retryable is False
    with pytest.raises(TimeoutError):
        with client.call("openai") as call:
            raise TimeoutError  # retryable by default
    assert call.retryable is True
    assert client.breakers("openai")[0].state == "open"
    assert client.status().open_reservations == 0


def test_a_denied_call_raises_before_its_body(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(BREAKER)
    client = af.Client(daemon.socket, agent="ctx")
    for _ in range(3):
        client.report(service="openai", success=False)
    ran = False
    with pytest.raises(af.Denied) as raised:
        with client.call("openai", cost=0.02):
            ran = True
    assert not ran
    denied = raised.value
    assert denied.guard == "breaker" and denied.rule == "openai"
    assert denied.retry_after is not None and denied.retry_after > 3000
    assert denied.decision.allowed is False
    assert client.status().open_reservations == 0
    assert client.budget().reserved == 0.0


def test_retrying_waits_out_a_denial_for_as_long_as_the_daemon_says(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(
        '[[rate_limits]]\nname = "r"\nscope = "agent"\nrate = 1\nper = "1h"\nburst = 1\n'
    )
    client = af.Client(daemon.socket, agent="retry")
    slept: list[float] = []
    assert client.retrying(lambda call: "first", service="search", sleep=slept.append) == "first"
    assert slept == []
    # The daemon's clock does not move under a fake sleep, so every retry is
    # denied again, and the helper stops after its attempts.
    with pytest.raises(af.Denied):
        client.retrying(
            lambda call: "never",
            service="search",
            attempts=3,
            max_wait=10_000,
            sleep=slept.append,
        )
    assert len(slept) == 2 and all(3000 < s <= 3600 for s in slept)
    # The total wait is bounded too: a wait beyond max_wait is not started.
    slept.clear()
    with pytest.raises(af.Denied):
        client.retrying(lambda call: "never", service="search", sleep=slept.append)
    assert slept == []


class RecordingClient(af.Client):
    """A client that keeps the keyword arguments of every report it sends."""

    reports: list[dict[str, Any]]

    def report(self, *args: Any, **kwargs: Any) -> af.Report:
        self.reports.append(kwargs)
        return super().report(*args, **kwargs)


def test_the_latency_runs_from_the_admission_to_the_end_of_the_body(daemon: Daemon) -> None:
    """``call.latency`` is measured from the admission to leaving the block, so it
    is never more than the time around the whole ``with``; the report carries it."""
    client = RecordingClient(daemon.socket, agent="timed")
    client.reports = []
    before = time.monotonic()
    with client.call("openai") as call:
        pass
    around = time.monotonic() - before
    assert call.latency is not None and 0 <= call.latency <= around
    (sent,) = client.reports
    assert sent["latency"] == call.latency and sent["success"] is True


PRICED = PLAIN + (
    "[prices.search]\nper_unit = 0.001\n"
    "[prices.llm]\nper_input_unit = 0.01\n"
    '[prices."llm/small"]\nper_input_unit = 0.000001\nper_output_unit = 0.00001\n'
)


def test_the_model_and_units_of_a_call_price_it(start_daemon: Callable[[str], Daemon]) -> None:
    """Without a cost, the admission is priced with the ``model`` and units given
    to ``call()``, and the report with the units set on the call object, each in
    its place (``units``, ``input_units``, ``output_units``)."""
    daemon = start_daemon(PRICED)
    client = af.Client(daemon.socket, agent="priced")
    with client.call("llm", model="small", input_units=100, output_units=10) as call:
        assert call.decision is not None
        assert call.decision.cost == pytest.approx(100 * 0.000001 + 10 * 0.00001)
        call.input_units = 1000
        call.output_units = 20
    assert call.report is not None
    assert call.report.charged == pytest.approx(1000 * 0.000001 + 20 * 0.00001)

    with client.call("search", units=5) as call:
        assert call.decision is not None and call.decision.cost == pytest.approx(0.005)
        call.units = 2
    assert call.report is not None and call.report.charged == pytest.approx(0.002)
    assert client.budget().spent == pytest.approx(0.0012 + 0.002)


def test_a_failing_report_is_raised_unless_the_body_raised(daemon: Daemon) -> None:
    """When the report itself fails (here the client is closed in the body), a
    call whose body succeeded raises the report's error; a body's own exception
    wins, carrying a note about the report."""
    client = af.Client(daemon.socket, agent="closer")
    with pytest.raises(af.ClientClosed):
        with client.call("openai"):
            client.close()

    client = af.Client(daemon.socket, agent="closer")
    with pytest.raises(UpstreamDown) as raised:
        with client.call("openai") as call:
            client.close()
            raise UpstreamDown("503")
    assert call.report is None
    assert any("reporting this failure failed" in note for note in raised.value.__notes__)


RATE = '[[rate_limits]]\nname = "r"\nscope = "agent"\nservices = ["search"]\nrate = 1\nper = "1h"\nburst = 1\n'


def test_retrying_makes_at_most_attempts_admissions(start_daemon: Callable[[str], Daemon]) -> None:
    """``attempts=n`` bounds the admissions of one ``retrying()``, denied ones
    included, however much ``max_wait`` would still allow."""
    daemon = start_daemon(RATE)
    client = af.Client(daemon.socket, agent="bounded")
    assert client.admit("search").allowed  # the only cell for an hour
    for attempts in (1, 2, 3):
        slept: list[float] = []
        with pytest.raises(af.Denied):
            client.retrying(
                lambda call: "never",
                service="search",
                attempts=attempts,
                max_wait=100_000,
                sleep=slept.append,
            )
        assert len(slept) == attempts - 1
        if attempts > 1:
            assert 3000 < slept[0] <= 3600


def test_retrying_rejects_bounds_that_bound_nothing(daemon: Daemon) -> None:
    """``attempts`` below 1 and a ``max_wait`` that is negative or not a number are
    refused before anything is admitted."""
    client = af.Client(daemon.socket, agent="strict")
    ran: list[int] = []

    def body(call: af.Call) -> str:
        ran.append(call.attempt)
        return "ran"

    with pytest.raises(ValueError, match="attempts"):
        client.retrying(body, service="llm", attempts=0)
    with pytest.raises(ValueError, match="max_wait"):
        client.retrying(body, service="llm", max_wait=-1.0)
    with pytest.raises(ValueError, match="max_wait"):
        client.retrying(body, service="llm", max_wait=float("nan"))
    assert ran == [] and client.status().open_reservations == 0


def test_retrying_does_not_wait_out_a_denial_raised_by_its_body(
    start_daemon: Callable[[str], Daemon],
) -> None:
    """A ``Denied`` from a call nested in the body is a failure of the outer call
    (reported; not retryable, so raised at once), not a denial of the outer
    admission to be waited out; with ``Client`` and with ``AsyncClient``."""
    daemon = start_daemon(RATE)
    client = af.Client(daemon.socket, agent="nested")
    assert client.admit("search").allowed  # the only cell for an hour
    slept: list[float] = []

    def plan(call: af.Call) -> str:
        with client.call("search"):
            return "never"

    with pytest.raises(af.Denied) as raised:
        client.retrying(plan, service="planner", max_wait=100_000, sleep=slept.append)
    assert raised.value.guard == "rate" and slept == []
    (breaker,) = client.breakers("planner")
    assert breaker.failures == 1

    async def main() -> None:
        async with af.AsyncClient(daemon.socket, agent="nested") as aclient:

            async def fake_sleep(seconds: float) -> None:
                slept.append(seconds)

            async def aplan(call: af.AsyncCall) -> str:
                async with aclient.call("search"):
                    return "never"

            with pytest.raises(af.Denied) as raised:
                await aclient.retrying(aplan, service="planner", max_wait=100_000, sleep=fake_sleep)
            assert raised.value.guard == "rate" and slept == []
            assert (await aclient.breakers("planner"))[0].failures == 2

    asyncio.run(main())
