"""``make bench`` keeps working: every benchmark runs once with tiny counts (BENCH_QUICK=1).

These are not measurements; they catch a benchmark that no longer runs against the code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"^(?P<name>.+?)\s{2,}[\d,.]+ \S+\s+.+?\s{2,}[\d,.]+ \S+\s+(?P<ratio>[\d.]+)x$")


def test_every_benchmark_runs_and_prints_a_ratio() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env["BENCH_QUICK"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "bench"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for section in ("Foundation", "Relay", "Abuse", "Client", "Storage", "Scale-out"):
        assert section in result.stdout
    figures = [m for line in result.stdout.splitlines() if (m := FIGURE.match(line))]
    # 6 foundation, 7 relay, 2 abuse, 2 client, 6 storage, 3 scale-out
    assert len(figures) >= 26, result.stdout
    assert all(float(m["ratio"]) > 0 for m in figures)
