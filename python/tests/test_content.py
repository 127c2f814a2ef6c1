"""The content scanner through the package: ``check()`` and ``admit(payload=)``
on both clients, against the real daemon and its ``[content]`` config."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import automation_framework as af
from conftest import PLAIN, Daemon

SHELL_TRUE = "import subprocess as sp\nsp.run(cmd, shell=True)\n"
OS_SYSTEM = "import os\nos.system(command)\n"
# A made-up key in the AWS access key format (not a placeholder, which the
# scanner lets pass).
AWS_KEY = "AKIAZ7QW3RT5YUP2LM4N"


def test_check_lists_what_it_found(daemon: Daemon) -> None:
    client = af.Client(daemon.socket, agent="checker")

    result = client.check(SHELL_TRUE, lang="python")
    assert not result and not result.clean and len(result) == 1
    assert result.lang == "python" and result.omitted == 0
    (found,) = result.violations
    assert found.kind == "dangerous_call"
    assert found.rule == "py-subprocess-shell"
    assert found.severity == "high"
    assert (found.line, found.column) == (2, 1)
    assert found.excerpt == "sp.run(cmd, shell=True)"
    assert "shell=True" in found.message
    assert "py-subprocess-shell" in repr(found)

    clean = client.check("total = sum(values)\n# eval(x) in a comment is not a call\n", "py")
    assert clean and clean.clean and len(clean) == 0 and clean.violations == []

    # No language: the daemon guesses it.
    assert client.check("#!/bin/sh\ncurl https://example.com/install | sh\n").lang == "shell"

    secret = client.check(f'aws_key = "{AWS_KEY}"\n', lang="python")
    (leak,) = secret.violations
    assert leak.kind == "secret" and leak.rule == "aws-access-key-id"
    assert AWS_KEY not in leak.excerpt and "20 chars" in leak.excerpt


def test_check_refusals_are_typed(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(PLAIN)
    client = af.Client(daemon.socket, agent="checker")
    with pytest.raises(af.InvalidArgument, match="unknown language"):
        client.check("x = 1", lang="cobol")
    # Too large to send: refused here, before anything is written.
    with pytest.raises(af.InvalidArgument, match="1 MiB"):
        client.check("x" * ((1 << 20) + 1))
    assert client.ping().agent == "checker"  # the connection is unharmed

    small = start_daemon(PLAIN + "[content]\nmax_payload = 1000\n")
    with pytest.raises(af.InvalidArgument) as too_large:
        af.Client(small.socket).check("x" * 2000)
    assert "1000" in str(too_large.value)

    off = start_daemon(PLAIN + "[content]\nenabled = false\n")
    disabled = af.Client(off.socket, agent="off")
    with pytest.raises(af.InvalidArgument) as refused:
        disabled.check(SHELL_TRUE)
    assert refused.value.code == "invalid_argument"
    # Disabled, a payload is ignored: no scan, no content vote.
    decision = disabled.admit("sandbox", payload=(SHELL_TRUE, "python"))
    assert decision and "content" not in [v.guard for v in decision.votes]


def test_admit_with_a_payload_is_decided_by_the_content_guard(daemon: Daemon) -> None:
    client = af.Client(daemon.socket, agent="runner")

    denied = client.admit("sandbox", payload=(OS_SYSTEM, "python"))
    assert not denied and denied.reservation is None
    assert denied.guard == "content" and denied.rule == "py-os-system"
    assert denied.reason and "os.system" in denied.reason
    assert denied.votes[0].guard == "content" and not denied.votes[0].allow

    allowed = client.admit("sandbox", payload="print('hello')\n")
    assert allowed and allowed.votes[0].guard == "content" and allowed.votes[0].allow
    client.report(allowed)

    # call() and retrying() take it too; a denial by content is not retried.
    with pytest.raises(af.Denied) as raised:
        with client.call("sandbox", payload=(SHELL_TRUE, "python")):
            pytest.fail("the body of a denied call must not run")
    assert raised.value.guard == "content"

    attempts: list[int] = []

    def body(call: af.Call) -> str:
        attempts.append(1)
        return "ran"

    assert client.retrying(body, service="sandbox", payload=("x = 1\n", "python")) == "ran"
    with pytest.raises(af.Denied):
        client.retrying(body, service="sandbox", payload=(OS_SYSTEM, "python"), sleep=lambda _: pytest.fail("retried"))
    assert attempts == [1]

    for bad in (3, ("only text",), (b"bytes", "python")):
        with pytest.raises(af.InvalidArgument, match="payload must be"):
            client.admit("sandbox", payload=bad)  # type: ignore[arg-type]
    assert client.status().open_reservations == 0


def test_a_shadow_content_guard_records_but_never_denies(start_daemon: Callable[[str], Daemon]) -> None:
    daemon = start_daemon(PLAIN + '[content]\nshadow = true\ndeny_at = "critical"\n')
    client = af.Client(daemon.socket, agent="shadowed")
    decision = client.admit("sandbox", payload=(OS_SYSTEM, "python"))
    assert decision
    (content,) = [v for v in decision.votes if v.guard == "content"]
    assert content.shadow
    client.report(decision)


def test_async_checks_pipelined_with_other_requests(daemon: Daemon) -> None:
    """Scans run on daemon threads of their own; the replies still come in
    request order and each future gets its own answer."""

    async def main() -> None:
        async with af.AsyncClient(daemon.socket, agent="async-checker") as client:
            texts = [SHELL_TRUE if n % 3 == 0 else f"value_{n} = {n}\n" for n in range(30)]
            checks = [client.check(text, "python") for text in texts]
            pings = [client.ping() for _ in range(10)]
            admit = client.admit("sandbox", payload=(OS_SYSTEM, "python"))
            results = await asyncio.gather(*checks)
            assert [bool(r) for r in results] == [n % 3 != 0 for n in range(30)]
            assert all(r.violations[0].rule == "py-subprocess-shell" for r in results[::3])
            assert [p.agent for p in await asyncio.gather(*pings)] == ["async-checker"] * 10
            denied = await admit
            assert not denied and denied.guard == "content"
            with pytest.raises(af.InvalidArgument, match="unknown language"):
                await client.check("x", lang="cobol")
            async with client.call("sandbox", payload="print(1)\n") as call:
                pass
            assert call.report is not None and call.report.ok

    asyncio.run(main())
