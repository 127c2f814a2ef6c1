"""How much the Python package costs over the Rust client, on one connection.

Starts a daemon (``--daemon`` or ``$AUTOMATION_FRAMEWORKD``; use a release
build) on a temporary socket, with no rate limits and no budget so that the
numbers measure the protocol and the client rather than the ledger's fsync,
then measures, for ``--seconds`` each:

* Rust: ``automation-framework bench --connections 1 --pipeline 1 --mix pairs``
  (admit, then report, one request at a time);
* Python sync: a loop of ``admit`` + ``report`` on one ``Client``;
* Python async: for each count in ``--in-flight`` (default 1, 8 and 32), that
  many tasks looping ``admit`` + ``report`` on one ``AsyncClient``.

Requests per second count admits and reports alike, as the Rust bench does.
The targets (issue 13): sync >= 0.5x Rust; async with 32 in flight >= 5x sync.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket as socketlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, Python puts this directory first on sys.path, where the source
# package (without its native module) would stand in for the installed wheel.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import automation_framework as af  # noqa: E402

CONFIG = "rate_limits = []\n[budget]\nenabled = false\n"


def start_daemon(binary: str, directory: Path, config: str) -> tuple[subprocess.Popen[bytes], Path]:
    sock = directory / "agent.sock"
    (directory / "config.toml").write_text(config)
    process = subprocess.Popen(
        [
            binary,
            "--config", str(directory / "config.toml"),
            "--socket", str(sock),
            "--state-dir", str(directory / "state"),
            "--http", "off",
            "--log-level", "warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "daemon.log", "wb"),
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = socketlib.socket(socketlib.AF_UNIX)
        try:
            probe.connect(str(sock))
            return process, sock
        except OSError:
            time.sleep(0.01)
        finally:
            probe.close()
    process.kill()
    sys.exit(f"the daemon did not start:\n{(directory / 'daemon.log').read_text()}")


def rust_rate(cli: str, sock: Path, seconds: float) -> float:
    out = subprocess.run(
        [
            cli, "--socket", str(sock), "--agent", "bench-rust", "--json",
            "bench", "--connections", "1", "--pipeline", "1", "--mix", "pairs",
            "--duration", f"{seconds}s", "--warmup", "500ms",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    if not summary["ops_per_sec"]:
        sys.exit(f"the Rust bench completed no request: {summary.get('first_error')}")
    return float(summary["ops_per_sec"])


def sync_rate(sock: Path, seconds: float) -> float:
    client = af.Client(sock, agent="bench-sync")
    admit, report = client.admit, client.report
    warm = time.monotonic() + 0.5
    while time.monotonic() < warm:
        report(admit("bench"))
    requests = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(100):
            report(admit("bench"))
        requests += 200
        now = time.perf_counter()
        if now >= end:
            break
    client.close()
    return requests / (now - start)


def async_rate(sock: Path, seconds: float, in_flight: int) -> float:
    async def main() -> float:
        client = af.AsyncClient(sock, agent="bench-async")
        requests = 0
        stop = False

        async def worker() -> None:
            nonlocal requests
            while not stop:
                await client.report(await client.admit("bench"))
                requests += 2

        async def run(duration: float) -> float:
            nonlocal stop, requests
            stop = False
            requests = 0
            workers = [asyncio.create_task(worker()) for _ in range(in_flight)]
            start = time.perf_counter()
            await asyncio.sleep(duration)
            counted, elapsed = requests, time.perf_counter() - start
            stop = True
            await asyncio.gather(*workers)
            return counted / elapsed

        await run(0.5)  # warm-up
        rate = await run(seconds)
        client.close()
        return rate

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--daemon", default=os.environ.get("AUTOMATION_FRAMEWORKD"))
    parser.add_argument("--cli", help="automation-framework CLI [default: next to the daemon]")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--in-flight",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[1, 8, 32],
        help="comma-separated task counts [default: 1,8,32]",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.daemon:
        sys.exit("give --daemon or set AUTOMATION_FRAMEWORKD (e.g. target/release/automation-frameworkd)")
    cli = args.cli or str(Path(args.daemon).with_name("automation-framework"))

    with tempfile.TemporaryDirectory() as tmp:
        process, sock = start_daemon(args.daemon, Path(tmp), CONFIG)
        try:
            rust = rust_rate(cli, sock, args.seconds)
            sync = sync_rate(sock, args.seconds)
            aio = {n: async_rate(sock, args.seconds, n) for n in args.in_flight}
        finally:
            process.terminate()
            process.wait(10)

    result = {
        "rust_pipeline_1": rust,
        "python_sync": sync,
        "sync_over_rust": sync / rust,
        **{f"python_async_{n}": rate for n, rate in aio.items()},
        **{f"async_{n}_over_sync": rate / sync for n, rate in aio.items()},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"Rust client, 1 connection, pipeline 1 : {rust:10.0f} requests/s")
    print(f"Python Client loop (admit+report)     : {sync:10.0f} requests/s  ({sync / rust:.2f}x Rust; target >= 0.5x)")
    for n, rate in aio.items():
        target = "; target >= 5x" if n == 32 else ""
        print(f"Python AsyncClient, {n:3d} in flight     : {rate:10.0f} requests/s  ({rate / sync:.2f}x sync{target})")


if __name__ == "__main__":
    main()
