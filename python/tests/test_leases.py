"""Leases and bulkheads against the real daemon: ``lease()``, ``lease_held()``
(a refusal names the holder; the lease ends with the block, or with the
connection), ``admit(lease=...)``, and ``admit(wait=...)`` waiting for a
bulkhead permit without blocking the event loop or timing out early."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

import automation_framework as af
from conftest import PROMPTLY, Daemon, eventually

GUARDS = (
    'rate_limits = []\n[budget]\nlimit = 100.0\norphan_timeout = "1h"\n'
    '[concurrency]\nmax_wait = "30s"\n'
    '[[bulkheads]]\nname = "pool"\nservices = ["gpu"]\nscope = "service"\nmax_in_flight = 1\n'
    '[leases]\ndefault_ttl = "30s"\nmax_ttl = "1h"\n'
)


def test_a_lease_refusal_names_its_holder_and_the_block_releases_it(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(GUARDS)
    deployer = af.Client(daemon.socket, agent="deployer")
    other = af.Client(daemon.socket, agent="other")

    with deployer.lease_held("deploy", ttl=20) as lease:
        assert lease and lease.granted and lease.name == "deploy"
        assert lease.expires_in is not None and 19 < lease.expires_in <= 20
        assert other.status().leases_held == 1

        refused = other.lease("deploy")
        assert not refused and refused.holder is not None
        holder = refused.holder
        assert holder.agent == "deployer"
        assert holder.pid == os.getpid() and holder.uid == os.getuid()
        assert holder.session == deployer.ping().session
        assert 0 < holder.expires_in <= 20

        with pytest.raises(af.LeaseHeld) as held:
            with other.lease_held("deploy"):
                pytest.fail("the block must not run without the lease")
        assert held.value.name == "deploy"
        assert held.value.holder is not None and held.value.holder.agent == "deployer"
        assert held.value.retry_after is not None and held.value.retry_after <= 20
        assert "'deployer'" in str(held.value) and f"pid {os.getpid()}" in str(held.value)

        # An admission that needs the lease is denied while another holds it.
        denied = other.admit("deploy-api", lease="deploy")
        assert not denied and denied.guard == "lease"
        with pytest.raises(af.Denied) as raised:
            with other.call("deploy-api", lease="deploy"):
                pytest.fail("must not run")
        assert raised.value.guard == "lease"

    # Left the block: released.
    assert other.status().leases_held == 0
    taken = other.lease("deploy", ttl=5)
    assert taken.granted
    assert other.lease("deploy", release=True).released
    assert not other.lease("deploy", release=True).released  # not held: nothing changes

    # Released also when the block raises.
    with pytest.raises(RuntimeError):
        with deployer.lease_held("deploy"):
            raise RuntimeError("the deployment failed")
    assert other.lease("deploy").granted

    # A call that needs a lease holds it from its admission to its report.
    with other.call("deploy-api", lease="schema") as call:
        assert call.decision is not None and call.decision.allowed
        during = deployer.lease("schema")
        assert not during and during.holder is not None and during.holder.agent == "other"
    assert deployer.lease("schema").granted

    with pytest.raises(af.InvalidArgument, match="ttl"):
        other.lease("x", ttl=-1)


def test_a_lease_ends_with_its_connection(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(GUARDS)
    observer = af.Client(daemon.socket, agent="observer")

    holder = af.Client(daemon.socket, agent="closer")
    assert holder.lease("migrate").granted
    holder.close()
    eventually(lambda: True if observer.lease("migrate").granted else None)
    assert observer.lease("migrate", release=True).released

    # A process that dies holding a lease: the kernel closes its socket.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, automation_framework as af\n"
            "c = af.Client(sys.argv[1], agent='doomed')\n"
            "assert c.lease('migrate', ttl=600).granted\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n",
            str(daemon.socket),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        refused = observer.lease("migrate")
        assert refused.holder is not None
        assert refused.holder.agent == "doomed" and refused.holder.pid == child.pid
    finally:
        child.kill()
        child.wait(PROMPTLY)
    eventually(lambda: True if observer.lease("migrate").granted else None)


def test_async_lease_held(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(GUARDS)

    async def main() -> None:
        async with af.AsyncClient(daemon.socket, agent="a") as a, af.AsyncClient(
            daemon.socket, agent="b"
        ) as b:
            async with a.lease_held("deploy", ttl=10) as lease:
                assert lease.granted
                with pytest.raises(af.LeaseHeld) as held:
                    async with b.lease_held("deploy"):
                        pytest.fail("must not run")
                assert held.value.holder is not None and held.value.holder.agent == "a"
            assert (await b.lease("deploy")).granted

    asyncio.run(main())


def test_an_async_admission_waits_for_a_permit_without_blocking_the_loop(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(GUARDS)

    async def main() -> None:
        async with af.AsyncClient(daemon.socket, agent="holder") as holder, af.AsyncClient(
            daemon.socket, agent="waiter", timeout=0.2
        ) as waiter, af.AsyncClient(daemon.socket, agent="observer") as observer:
            held = await holder.admit("gpu")
            assert held.allowed
            full = await waiter.admit("gpu")
            assert not full and full.guard == "concurrency"

            ticks = 0
            done = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not done.is_set():
                    ticks += 1
                    await asyncio.sleep(0.005)

            tick_task = asyncio.create_task(ticker())
            # The client's timeout (0.2 s) is extended by the wait.
            waiting = asyncio.ensure_future(waiter.admit("gpu", wait=10.0))
            for _ in range(int(PROMPTLY / 0.01)):
                status = await observer.status()
                if any(f.waiting == 1 for f in status.in_flight):
                    break
                await asyncio.sleep(0.01)
            (pool,) = status.in_flight
            assert (pool.bulkhead, pool.key, pool.in_flight, pool.limit) == ("pool", "gpu", 1, 1)
            assert pool.waiting == 1 and not waiting.done()
            ticks_while_waiting = ticks
            await asyncio.sleep(0.3)  # past the client's own timeout
            assert not waiting.done() and ticks > ticks_while_waiting

            await holder.report(held)  # the permit comes back: the waiter gets it
            got = await waiting
            assert got.allowed and got.reservation is not None
            done.set()
            await tick_task
            await waiter.report(got)

    asyncio.run(main())


def test_a_wait_that_runs_out_is_the_denial_it_would_have_had(
    start_daemon: Callable[[str], Daemon],
) -> None:
    daemon = start_daemon(GUARDS)
    holder = af.Client(daemon.socket, agent="holder")
    waiter = af.Client(daemon.socket, agent="waiter", timeout=0.2)
    held = holder.admit("gpu")
    assert held.allowed
    # Longer than the client's timeout: the wait extends it, no RequestTimeout.
    denied = waiter.admit("gpu", wait=0.4)
    assert not denied and denied.guard == "concurrency"
    assert denied.reason is not None and "waited" in denied.reason
    with pytest.raises(af.InvalidArgument, match="wait"):
        waiter.admit("gpu", wait=float("nan"))
    holder.report(held)
    assert waiter.admit("gpu", wait=0.4).allowed


def test_lease_held_gives_the_lease_back_however_the_block_ends(
    start_daemon: Callable[[str], Daemon],
) -> None:
    """``lease_held`` releases the lease also when the block ends with a
    ``BaseException`` (``KeyboardInterrupt``); when releasing fails (the client
    was closed in the block), the block's own exception propagates, with a note
    about the release."""
    daemon = start_daemon(GUARDS)
    deployer = af.Client(daemon.socket, agent="deployer")
    other = af.Client(daemon.socket, agent="other")

    with pytest.raises(KeyboardInterrupt):
        with deployer.lease_held("deploy"):
            raise KeyboardInterrupt
    assert other.lease("deploy").granted
    assert other.lease("deploy", release=True).released

    with pytest.raises(RuntimeError) as raised:
        with deployer.lease_held("deploy"):
            deployer.close()
            raise RuntimeError("the deployment failed")
    assert any("releasing lease 'deploy' failed" in note for note in raised.value.__notes__)
    # The lease ended with the closed connection.
    eventually(lambda: True if other.lease("deploy").granted else None)


def test_async_lease_held_takes_its_ttl_and_gives_the_lease_back_on_errors(
    start_daemon: Callable[[str], Daemon],
) -> None:
    """``AsyncClient.lease_held`` takes the lease for the ``ttl`` given, and gives
    it back when the block raises or its task is cancelled."""
    daemon = start_daemon(GUARDS)

    async def main() -> None:
        async with af.AsyncClient(daemon.socket, agent="a") as a, af.AsyncClient(
            daemon.socket, agent="b"
        ) as b:
            async with a.lease_held("deploy", ttl=20) as lease:
                assert lease.expires_in is not None and 19 < lease.expires_in <= 20

            with pytest.raises(RuntimeError):
                async with a.lease_held("deploy"):
                    raise RuntimeError("the deployment failed")
            assert (await b.lease("deploy")).granted
            assert (await b.lease("deploy", release=True)).released

            entered = asyncio.Event()

            async def hold() -> None:
                async with a.lease_held("deploy"):
                    entered.set()
                    await asyncio.Event().wait()  # until cancelled

            task = asyncio.create_task(hold())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await b.lease("deploy")).granted

    asyncio.run(main())


def test_a_call_waits_for_a_bulkhead_permit(start_daemon: Callable[[str], Daemon]) -> None:
    """``call(wait=...)`` waits in line for a permit of a full bulkhead and is
    admitted when one comes back, instead of being denied at once."""
    daemon = start_daemon(GUARDS)
    holder = af.Client(daemon.socket, agent="holder")
    waiter = af.Client(daemon.socket, agent="waiter")
    observer = af.Client(daemon.socket, agent="observer")
    held = holder.admit("gpu")
    assert held.allowed
    outcome: list[object] = []

    def wait_in_line() -> None:
        try:
            with waiter.call("gpu", wait=PROMPTLY) as call:
                outcome.append(call.decision)
        except BaseException as exc:  # reported to the test below
            outcome.append(exc)

    thread = threading.Thread(target=wait_in_line)
    thread.start()
    try:

        def waiting() -> bool | None:
            if outcome:
                raise AssertionError(f"the call did not wait: {outcome}")
            return True if any(f.waiting == 1 for f in observer.status().in_flight) else None

        eventually(waiting)
        holder.report(held)  # the permit comes back: the waiting call gets it
    finally:
        thread.join(PROMPTLY)
    (decision,) = outcome
    assert isinstance(decision, af.Decision) and decision.allowed
