"""Running a check in a fresh interpreter, for tests of what a process imports at start-up: the test process has
long since imported everything. Shared by tests/run/test_deferred.py and tests/run/test_quiet_libraries.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    """`code` (dedented) in a new interpreter with `env` (default: this process's); its stripped stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()
