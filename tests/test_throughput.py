"""The throughput benchmark runs end to end and ends with a ratio a script can read."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from conftest import REPO

# The benchmark trains with both trainers.
pytestmark = pytest.mark.slow


def test_quick_bench_prints_a_ratio(demo_dir):
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "throughput.py"), "--device", "cpu", "--quick",
         "--threads", "1", "--data", str(demo_dir)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1].startswith("ratio="), r.stdout
    ratio = float(lines[-1].removeprefix("ratio="))
    assert math.isfinite(ratio) and ratio > 0
    assert any(ln.startswith("HF Trainer (group_by_length") for ln in lines), r.stdout
