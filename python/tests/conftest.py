"""The harness: the real daemon binary on a temporary socket, one per test.

The daemon is never built here. ``$AUTOMATION_FRAMEWORKD`` names the binary
(``python/ci.sh`` sets it to the workspace's ``target/debug/automation-frameworkd``);
without it every test that needs a daemon is skipped with that instruction,
unless ``$AUTOMATION_FRAMEWORK_REQUIRE_DAEMON`` is set (CI), where it fails.
"""

from __future__ import annotations

import os
import signal
import socket as socketlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

#: How long to wait for something that should happen promptly (readiness, a
#: process ending). Generous for a loaded 2-core CI machine; never slept in full.
PROMPTLY = 10.0

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], within: float = PROMPTLY) -> T:
    """Polls ``probe`` until it returns something other than ``None``: waiting for
    an event (a settlement, a process), not letting time pass."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing within {within}s")
        time.sleep(0.01)


class Daemon:
    """``automation-frameworkd`` in a temporary directory; stopped at the end."""

    def __init__(self, binary: str, directory: Path, config: str) -> None:
        self.binary = binary
        self.dir = directory
        self.socket = directory / "agent.sock"
        self.config_path = directory / "config.toml"
        self.state = directory / "state"
        self.log_path = directory / "daemon.log"
        self.config_path.write_text(config)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "NOTIFY_SOCKET", "AUTOMATION_ALERT_WEBHOOK")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--config", str(self.config_path),
                    "--socket", str(self.socket),
                    "--state-dir", str(self.state),
                    "--http", "127.0.0.1:0",
                    "--log-level", "debug",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        def ready() -> bool | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
            try:
                probe.connect(str(self.socket))
                return True
            except OSError:
                return None
            finally:
                probe.close()

        eventually(ready)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(PROMPTLY)
        self.process = None

    def freeze(self) -> None:
        """Stops the daemon (SIGSTOP) and returns once every thread of it is
        stopped: from then on nothing it holds is read or answered."""
        assert self.process is not None
        pid = self.process.pid
        self.process.send_signal(signal.SIGSTOP)

        def stopped() -> bool | None:
            for task in Path(f"/proc/{pid}/task").iterdir():
                state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("T", "t"):
                    return None
            return True

        eventually(stopped)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def daemon_binary() -> str:
    binary = os.environ.get("AUTOMATION_FRAMEWORKD")
    if not binary:
        message = (
            "set AUTOMATION_FRAMEWORKD to the daemon binary (e.g. "
            "AUTOMATION_FRAMEWORKD=target/debug/automation-frameworkd after "
            "`cargo build -p automation-framework`); python/ci.sh does this"
        )
        if os.environ.get("AUTOMATION_FRAMEWORK_REQUIRE_DAEMON"):
            pytest.fail(message)
        pytest.skip(message)
    if not os.access(binary, os.X_OK):
        pytest.fail(f"AUTOMATION_FRAMEWORKD={binary} is not an executable file")
    return binary


@pytest.fixture
def start_daemon(daemon_binary: str, tmp_path: Path) -> Iterator[Callable[[str], Daemon]]:
    """``start_daemon(config_toml)`` starts a daemon; all are stopped afterwards."""
    started: list[Daemon] = []

    def start(config: str) -> Daemon:
        directory = tmp_path / f"daemon{len(started)}"
        directory.mkdir()
        daemon = Daemon(daemon_binary, directory, config)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop(signal.SIGKILL)


#: No rate limits and a budget with plenty of room: tests add what they test.
PLAIN = 'rate_limits = []\n[budget]\nlimit = 1000.0\norphan_timeout = "1h"\n'


@pytest.fixture
def daemon(start_daemon: Callable[[str], Daemon]) -> Daemon:
    return start_daemon(PLAIN)


def run_python(code: str, *args: str, socket: Path, agent: str) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in another Python process (a separate agent process) and
    returns its output; fails the test when it fails."""
    result = subprocess.run(
        [sys.executable, "-c", code, str(socket), agent, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr}"
    return result
