"""The examples (the README's code) run against a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Daemon

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["quickstart.py", "llm_with_budget.py", "async_agents.py"])
def test_example_runs(daemon: Daemon, name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env={**os.environ, "AUTOMATION_FRAMEWORK_SOCKET": str(daemon.socket)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLES.parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
