"""``client.call(...)`` and the retry helper: admit on enter, report on exit,
and follow the daemon's word on when to try again."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import automation_framework as af
from conftest import Daemon

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
