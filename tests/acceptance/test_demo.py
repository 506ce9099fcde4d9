"""``eventledger demo`` as the README runs it: no arguments, the embedded default database in
the working directory, twice in a row in the same directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path


def run_demo(cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLEDGER_")}
    env["COLUMNS"] = "120"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "eventledger", "demo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - start


def _count(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in output:\n{text}"
    return int(m.group(1))


def test_demo_runs_twice_in_the_same_directory(tmp_path: Path) -> None:
    for _ in range(2):
        result, elapsed = run_demo(tmp_path)
        out = result.stdout
        assert result.returncode == 0, out + result.stderr
        assert elapsed < 30, elapsed
        assert (tmp_path / "eventledger.db").exists()
        # The audit report: balanced, with every kind of trouble counted.
        total = _count(r"│ total\s+│\s+(\d+)", out)
        applied = _count(r"│ applied\s+│\s+(\d+)", out)
        duplicates = _count(r"│ duplicates\s+│\s+(\d+)", out)
        rejected = _count(r"│ rejected\s+│\s+(\d+)", out)
        assert total == applied + duplicates + rejected
        assert duplicates >= 3 and rejected >= 6
        assert re.search(r"│ balanced\s+│\s+yes", out)
        for reason in ("malformed_json", "invalid_price", "invalid_type", "missing_user_id"):
            assert reason in out
        # Two users' activity and summaries.
        assert out.count("summary: {'click'") == 2
        # Deliveries: all completed, retries visible, the receiver's view checked.
        assert _count(r"│ COMPLETED\s+│\s+(\d+)", out) == 2 * applied
        assert _count(r"(\d+) deliveries needed more than one attempt", out) >= 1
        for name in ("audit", "flaky"):
            line = next(x for x in out.splitlines() if x.strip().startswith(f"{name}:"))
            assert f"received {applied} of {applied}" in line
            assert "duplicates 0" in line and "out of order 0" in line
            assert line.rstrip().endswith("ok")
        assert "exactly once, in per-user order" in out
