"""Sharing: eight threads on one ``Client``, and a hundred asyncio tasks on one
``AsyncClient``, each over a single connection."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable

import pytest

import automation_framework as af
from conftest import Daemon


def test_eight_threads_share_one_client(daemon: Daemon) -> None:
    client = af.Client(daemon.socket, agent="threads")
    rounds = 50
    reservations: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for _ in range(rounds):
                decision = client.admit(f"svc-{n % 2}", cost=0.001)
                assert decision.allowed and decision.reservation is not None
                report = client.report(decision, cost=0.001)
                assert report.ok and not report.duplicate
                with lock:
                    reservations.append(decision.reservation)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(reservations)) == 8 * rounds
    status = client.status()
    assert status.connections == 1  # one connection for all eight threads
    assert status.open_reservations == 0
    assert client.budget().spent == pytest.approx(8 * rounds * 0.001)


def test_threads_waiting_on_the_daemon_do_not_hold_the_gil(daemon: Daemon) -> None:
    """One thread waits for a reply from a stopped daemon, another for its turn
    on the connection; meanwhile Python code runs in a third. Were the GIL held
    while waiting, the third could not run until the first timed out."""
    client = af.Client(daemon.socket, agent="gil", timeout=10.0)
    answers: list[str] = []
    entering = threading.Barrier(3)

    def ask() -> None:
        entering.wait()
        answers.append(client.ping().agent)

    daemon.freeze()
    try:
        waiters = [threading.Thread(target=ask) for _ in range(2)]
        for t in waiters:
            t.start()
        entering.wait()
        spins = sum(1 for _ in range(200_000))
        assert spins == 200_000
        assert all(t.is_alive() for t in waiters) and answers == []
    finally:
        daemon.thaw()
    for t in waiters:
        t.join()
    assert answers == ["gil", "gil"]


def test_a_hundred_tasks_share_one_async_client(daemon: Daemon) -> None:
    async def main() -> None:
        async with af.AsyncClient(daemon.socket, agent="tasks") as client:
            async def task(n: int) -> int:
                decision = await client.admit("llm", cost=0.01)
                assert decision.allowed and decision.reservation is not None
                report = await client.report(decision, cost=0.01, latency=0.001 * n)
                assert report.ok and not report.duplicate
                return decision.reservation

            reservations = await asyncio.gather(*(task(n) for n in range(100)))
            assert len(set(reservations)) == 100
            status = await client.status()
            assert status.connections == 1
            assert status.open_reservations == 0
            budget = await client.budget()
            assert budget.spent == pytest.approx(1.0)

    asyncio.run(main())


def test_the_event_loop_keeps_running_while_requests_wait(daemon: Daemon) -> None:
    """The loop is never blocked: a ticker advances while 200 requests are in flight."""

    async def main() -> int:
        client = af.AsyncClient(daemon.socket, agent="ticker")
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(client.ping() for _ in range(200)))
        done.set()
        await tick_task
        assert all(p.agent == "ticker" for p in results)
        client.close()
        return ticks

    assert asyncio.run(main()) > 1


def test_async_call_and_errors(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(
        'rate_limits = []\n[budget]\nlimit = 1.0\norphan_timeout = "1h"\n'
        '[breaker]\nfailure_threshold = 2\nopen_for = "1h"\n'
    )

    async def main() -> None:
        client = af.AsyncClient(daemon.socket, agent="async-ctx")
        async with client.call("llm", cost=0.2) as call:
            call.cost = 0.1
        assert call.report is not None and call.report.charged == pytest.approx(0.1)

        for _ in range(2):
            with pytest.raises(ConnectionResetError):
                async with client.call("llm"):
                    raise ConnectionResetError
        with pytest.raises(af.Denied) as denied:
            async with client.call("llm"):
                pytest.fail("must not run")
        assert denied.value.guard == "breaker"

        with pytest.raises(af.InvalidArgument):
            await client.admit("llm", units=0)
        with pytest.raises(af.UnknownReservation):
            await client.report(987654321)

        slept: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            slept.append(seconds)

        async def body(call: af.AsyncCall) -> str:
            return "ok"

        assert await client.retrying(body, service="other", sleep=fake_sleep) == "ok"
        client.close()
        with pytest.raises(af.ClientClosed):
            await client.ping()

    asyncio.run(main())


def test_async_client_reconnects_after_a_daemon_restart(daemon: Daemon) -> None:
    client = af.AsyncClient(daemon.socket, agent="async-restart")

    async def status() -> int:
        return (await client.status()).connections

    assert asyncio.run(status()) == 1
    daemon.restart()
    # The old connection is found closed and a new one made, on a second
    # asyncio.run: the client moves to the new event loop, too.
    assert asyncio.run(status()) == 1


def test_async_connect_failure_is_typed(tmp_path: object) -> None:
    async def main() -> None:
        client = af.AsyncClient(f"{tmp_path}/nothing.sock", agent="x")
        with pytest.raises(af.ConnectFailed):
            await client.ping()
        client.close()

    asyncio.run(main())


def test_a_cancelled_request_leaves_the_client_usable(daemon: Daemon) -> None:
    async def main() -> None:
        client = af.AsyncClient(daemon.socket, agent="canceller")
        abandoned = asyncio.ensure_future(client.ping())
        abandoned.cancel()
        waiting = [client.ping() for _ in range(10)]
        assert [p.agent for p in await asyncio.gather(*waiting)] == ["canceller"] * 10
        assert abandoned.cancelled()
        client.close()

    asyncio.run(main())


def test_async_requests_time_out_without_blocking_the_loop(daemon: Daemon) -> None:
    """A daemon that stops answering (SIGSTOP): connecting, the handshake and
    the requests all wait in the loop, which keeps running; every waiting
    request gets ``RequestTimeout``, and the client works again afterwards."""

    # Long enough that a loaded machine answers the pings before the freeze
    # and after the thaw in time; every wait during the freeze runs it out.
    timeout = 1.0

    async def main() -> None:
        client = af.AsyncClient(daemon.socket, agent="stalled", timeout=timeout)
        assert (await client.ping()).agent == "stalled"  # connected and idle
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        daemon.freeze()
        try:
            stalled = await asyncio.gather(*(client.ping() for _ in range(5)), return_exceptions=True)
            assert all(isinstance(r, af.RequestTimeout) for r in stalled), stalled
            assert isinstance(stalled[0], TimeoutError) and "timeout=" in str(stalled[0])
            # A new connection to a stopped daemon: the kernel accepts it, the
            # handshake is never answered; the loop goes on meanwhile.
            fresh = af.AsyncClient(daemon.socket, agent="fresh", timeout=timeout)
            with pytest.raises(af.RequestTimeout):
                await fresh.ping()
            assert ticks > 10
        finally:
            daemon.thaw()
        done.set()
        await tick_task
        assert (await client.ping()).agent == "stalled"  # reconnected
        assert (await fresh.ping()).agent == "fresh"
        client.close()
        fresh.close()

    asyncio.run(main())


def test_async_requests_in_flight_when_the_daemon_dies_are_lost(daemon: Daemon) -> None:
    """Written and unanswered when the connection ends: ``ConnectionLost`` (they
    may have been carried out). Requests made after the daemon is back go
    through on a new connection, in the same event loop."""

    async def main() -> None:
        client = af.AsyncClient(daemon.socket, agent="orphaned")
        assert (await client.ping()).agent == "orphaned"
        daemon.freeze()
        pending = [asyncio.ensure_future(client.ping()) for _ in range(3)]
        await asyncio.sleep(0)  # let the batch be written
        daemon.stop(signal.SIGKILL)
        lost = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, af.ConnectionLost) for r in lost), lost
        assert isinstance(lost[0], ConnectionError) and "may or may not" in str(lost[0])
        with pytest.raises(af.ConnectFailed):
            await client.ping()
        daemon.start()
        assert (await client.ping()).agent == "orphaned"
        # An idle connection the daemon ends (a restart) is noticed by the
        # loop and replaced on the next request, without an error.
        daemon.restart()
        assert [p.agent for p in await asyncio.gather(client.ping(), client.ping())] == ["orphaned"] * 2
        client.close()

    asyncio.run(main())


def test_async_large_requests_wait_for_room_in_the_socket(daemon: Daemon) -> None:
    """Texts near the 1 MiB limit do not fit the socket buffer at once: the rest
    is written when the socket has room, replies keep being read meanwhile."""
    text = ("x = 1\n" * 170_000)[: (1 << 20) - 64]

    async def main() -> None:
        async with af.AsyncClient(daemon.socket, agent="bulk") as client:
            checks = [client.check(text, "python") for _ in range(4)]
            ping = client.ping()
            assert all(r.clean for r in await asyncio.gather(*checks))
            assert (await ping).agent == "bulk"

    asyncio.run(main())
