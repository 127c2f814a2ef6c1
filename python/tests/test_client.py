"""The blocking client against the real daemon: admit/report, the read-only
requests, denials, budgets, typed errors and reconnecting."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

import automation_framework as af
from conftest import PLAIN, Daemon, eventually


def test_admit_then_report(daemon: Daemon) -> None:
    client = af.Client(daemon.socket, agent="planner")
    decision = client.admit("openai", cost=0.02)
    assert decision.allowed and decision
    assert decision.reservation is not None
    assert decision.cost == pytest.approx(0.02)
    assert decision.guard is None and decision.retry_after is None
    assert [v.guard for v in decision.votes] == ["breaker", "budget"]

    report = client.report(decision, latency=0.120, cost=0.015)
    assert report.ok and not report.duplicate
    assert report.charged == pytest.approx(0.015)
    assert report.breaker == "closed"

    assert client.ping().agent == "planner"
    status = client.status()
    assert status.status == "healthy" and status.connections == 1
    assert status.open_reservations == 0
    assert status.budget_spent == pytest.approx(0.015)
    (breaker,) = client.breakers("openai")
    assert breaker.service == "openai" and breaker.state == "closed"
    assert client.quotas() == []


def test_a_denial_says_when_to_retry(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(
        '[[rate_limits]]\nname = "slow"\nscope = "agent"\nrate = 1\nper = "1h"\nburst = 1\n'
    )
    client = af.Client(daemon.socket, agent="a")
    first = client.admit("search")
    assert first.allowed
    denied = client.admit("search")
    assert not denied.allowed and not denied
    assert denied.reservation is None
    assert denied.guard == "rate" and denied.rule == "slow"
    assert denied.reason and "rate limit" in denied.reason
    # One cell per hour: the next is about an hour away.
    assert denied.retry_after is not None and 3000 < denied.retry_after <= 3600
    assert denied.retry_after_ms == pytest.approx(denied.retry_after * 1000)
    assert denied.votes[-1].allow is False

    with pytest.raises(af.Denied) as raised:
        with client.call("search"):
            pytest.fail("the body of a denied call must not run")
    assert raised.value.guard == "rate"
    assert raised.value.retry_after == pytest.approx(denied.retry_after, abs=5)
    assert "retry after" in str(raised.value)


def test_budget_reservation_and_idempotent_report(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon('rate_limits = []\n[budget]\nlimit = 1.0\norphan_timeout = "1h"\n')
    client = af.Client(daemon.socket, agent="spender")
    decision = client.admit("anthropic", cost=0.40)
    assert decision.allowed
    budget = client.budget()
    assert budget.reserved == pytest.approx(0.40) and budget.spent == 0.0
    assert budget.remaining == pytest.approx(0.60)
    assert [b.name for b in budget.budgets] == ["global"]

    # The reservation holds: 0.40 + 0.70 would overrun the limit.
    over = client.admit("anthropic", cost=0.70)
    assert not over.allowed and over.guard == "budget" and over.rule == "global"
    assert over.retry_after is None  # a budget that never resets: waiting cannot help

    first = client.report(decision.reservation, cost=0.30)
    assert first.charged == pytest.approx(0.30) and not first.duplicate
    again = client.report(decision.reservation, cost=0.30)
    assert again.duplicate and again.charged is None
    budget = client.budget()
    assert budget.spent == pytest.approx(0.30) and budget.reserved == 0.0

    # A charge without reservation is idempotent by its key.
    keyed = client.report(service="anthropic", cost=0.10, idempotency_key="batch-7")
    assert keyed.charged == pytest.approx(0.10)
    assert client.report(service="anthropic", cost=0.10, idempotency_key="batch-7").duplicate
    assert client.budget().spent == pytest.approx(0.40)


def test_errors_are_typed(start_daemon: Callable[[str], Daemon], tmp_path: Path) -> None:
    daemon = start_daemon(PLAIN + '[[agents]]\nname = "payroll"\nuids = [4242424]\n')
    client = af.Client(daemon.socket, agent="typed")

    with pytest.raises(af.InvalidArgument) as bad:
        client.admit("openai", units=0)
    assert bad.value.code == "invalid_argument" and isinstance(bad.value, ValueError)
    assert "units" in str(bad.value)

    with pytest.raises(af.UnknownReservation) as unknown:
        client.report(123456789)
    assert unknown.value.code == "unknown_reservation"

    held = client.admit("openai", cost=600.0)
    with pytest.raises(af.InvalidArgument, match="denial"):
        client.report(client.admit("openai", cost=600.0))  # 1200 > the $1000 budget
    client.report(held, cost=0.0)

    with pytest.raises(af.NotPermitted) as refused:
        af.Client(daemon.socket, agent="payroll")
    assert refused.value.code == "not_permitted"
    assert isinstance(refused.value, PermissionError)

    with pytest.raises(af.ConnectFailed) as missing:
        af.Client(tmp_path / "nothing.sock")
    assert isinstance(missing.value, ConnectionError)
    assert "is automation-frameworkd running" in str(missing.value)

    # The connection survives per-request errors.
    assert client.admit("openai").allowed

    client.close()
    with pytest.raises(af.ClientClosed):
        client.status()


def test_socket_is_found_as_the_cli_finds_it(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMATION_FRAMEWORK_SOCKET", str(daemon.socket))
    monkeypatch.setenv("AUTOMATION_FRAMEWORK_AGENT", "from-env")
    client = af.Client()
    assert str(client.socket) == str(daemon.socket)
    assert client.ping().agent == "from-env"


def test_reconnects_after_a_daemon_restart(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon('rate_limits = []\n[budget]\nlimit = 10.0\norphan_timeout = "1h"\n')
    client = af.Client(daemon.socket, agent="survivor")
    held = client.admit("openai", cost=0.25)
    assert held.allowed
    old_daemon = daemon.process.pid if daemon.process else None

    daemon.restart()
    assert daemon.process is not None and daemon.process.pid != old_daemon

    # The first request after the restart finds the old connection closed,
    # reconnects and goes through: no error reaches the caller.
    assert client.ping().agent == "survivor"
    budget = client.budget()
    assert budget.reserved == pytest.approx(0.25)
    assert budget.budgets[0].orphaned == 1
    # The reservation survived the restart as an orphan and is still reportable.
    report = client.report(held, cost=0.20)
    assert report.charged == pytest.approx(0.20)
    assert client.budget().reserved == 0.0


def test_a_request_times_out_instead_of_hanging(daemon: Daemon) -> None:
    with pytest.raises(af.InvalidArgument, match="timeout"):
        af.Client(daemon.socket, timeout=0)
    client = af.Client(daemon.socket, agent="patient", timeout=None)
    assert client.ping().agent == "patient"


def test_leaving_a_client_block_closes_it(daemon: Daemon) -> None:
    """``with Client(...) as client:`` closes the client on leaving the block: it
    raises ``ClientClosed`` afterwards and the leases it held end."""
    observer = af.Client(daemon.socket, agent="observer")
    with af.Client(daemon.socket, agent="scoped") as client:
        assert client.lease("tidy").granted
    with pytest.raises(af.ClientClosed):
        client.ping()
    eventually(lambda: True if observer.lease("tidy").granted else None)


def test_a_denial_survives_pickling(start_daemon: Callable[[str], Daemon]) -> None:
    """A ``Denied`` (e.g. sent back from a ``multiprocessing`` worker) pickles as
    an ``AutomationFrameworkError`` with the same message, not an error about its
    native ``Decision``."""
    daemon = start_daemon(
        '[[rate_limits]]\nname = "slow"\nscope = "agent"\nrate = 1\nper = "1h"\nburst = 1\n'
    )
    client = af.Client(daemon.socket, agent="pickled")
    assert client.admit("search").allowed
    with pytest.raises(af.Denied) as raised:
        with client.call("search"):
            pytest.fail("must not run")
    copy = pickle.loads(pickle.dumps(raised.value))
    assert isinstance(copy, af.AutomationFrameworkError)
    assert str(copy) == str(raised.value) and "retry after" in str(copy)
