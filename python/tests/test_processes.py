"""What one agent process does is seen by every other: a breaker opened by one
process's failures, and a reservation left behind by a process killed with
SIGKILL, which the daemon keeps as an orphan and settles."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

import automation_framework as af
from conftest import PROMPTLY, Daemon, eventually, run_python

FAIL_THREE_TIMES = """
import sys
import automation_framework as af

client = af.Client(sys.argv[1], agent=sys.argv[2])
for _ in range(3):
    try:
        with client.call("vendor-api"):
            raise ConnectionResetError("upstream reset the connection")
    except ConnectionResetError:
        pass
print(client.breakers("vendor-api")[0].state)
"""

HOLD_A_RESERVATION = """
import sys
import automation_framework as af

client = af.Client(sys.argv[1], agent=sys.argv[2])
decision = client.admit("llm", cost=0.25)
assert decision.allowed, decision
print(decision.reservation, flush=True)
sys.stdin.read()  # hold it until killed
"""


def test_a_breaker_opened_by_one_process_denies_another(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(
        'rate_limits = []\n[budget]\nenabled = false\n'
        '[breaker]\nfailure_threshold = 3\nopen_for = "1h"\n'
    )
    child = run_python(FAIL_THREE_TIMES, socket=daemon.socket, agent="crawler")
    assert child.stdout.strip() == "open"

    other = af.Client(daemon.socket, agent="summarizer")
    decision = other.admit("vendor-api")
    assert not decision.allowed
    assert decision.guard == "breaker" and decision.rule == "vendor-api"
    assert decision.reason is not None and "3 consecutive failures" in decision.reason
    assert decision.retry_after is not None and decision.retry_after > 3000
    with pytest.raises(af.Denied):
        with other.call("vendor-api"):
            pass


def hold_and_kill(daemon: Daemon, agent: str) -> int:
    """Starts a process that admits $0.25 and holds it, kills it with SIGKILL, and
    returns its reservation."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_RESERVATION, str(daemon.socket), agent],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    reservation = int(holder.stdout.readline())
    holder.send_signal(signal.SIGKILL)
    holder.wait(PROMPTLY)
    assert holder.returncode == -signal.SIGKILL
    return reservation


def test_a_killed_process_leaves_an_orphan_the_daemon_settles(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(
        'rate_limits = []\n[budget]\nlimit = 10.0\n'
        'orphan_timeout = "1s"\norphan_policy = "charge_estimate"\n'
    )
    observer = af.Client(daemon.socket, agent="observer")
    hold_and_kill(daemon, "doomed")

    # The connection's end turns the reservation into an orphan: still reserved.
    def orphaned() -> af.Budget | None:
        budget = observer.budget()
        return budget if budget.budgets[0].orphaned == 1 else None

    budget = eventually(orphaned)
    assert budget.reserved == pytest.approx(0.25)
    # After orphan_timeout the policy settles it: the estimate is charged.
    def settled() -> af.Budget | None:
        budget = observer.budget()
        return budget if budget.budgets[0].orphaned == 0 else None

    budget = eventually(settled)
    assert budget.reserved == 0.0
    assert budget.spent == pytest.approx(0.25)
    assert observer.status().open_reservations == 0


def test_the_orphan_of_a_killed_process_can_be_reported_by_its_successor(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon('rate_limits = []\n[budget]\nlimit = 10.0\norphan_timeout = "1h"\n')
    reservation = hold_and_kill(daemon, "worker-1")
    successor = af.Client(daemon.socket, agent="worker-1")
    eventually(lambda: True if successor.budget().budgets[0].orphaned == 1 else None)
    report = successor.report(reservation, cost=0.10)
    assert report.charged == pytest.approx(0.10)
    assert successor.report(reservation, cost=0.10).duplicate
    budget = successor.budget()
    assert budget.spent == pytest.approx(0.10) and budget.reserved == 0.0
