"""``make bench`` keeps working: every benchmark runs once with tiny counts (BENCH_QUICK=1).

These are not measurements; they catch a benchmark that no longer runs against the code.
The sections run as two processes at once (the machine has two cores, the rest of the
suite uses one).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bench.__main__ import SECTIONS

ROOT = Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"^(?P<name>.+?)\s{2,}[\d,.]+ \S+\s+.+?\s{2,}[\d,.]+ \S+\s+(?P<ratio>[\d.]+)x$")
# Every section of ``python -m bench``, in two halves of about the same running time.
HALVES = (
    ("foundation", "relay", "storage", "membership"),
    ("abuse", "client", "scaleout", "content"),
)
TITLES = ("Foundation", "Relay", "Abuse", "Client", "Storage", "Scale-out", "Membership", "Content")


def test_every_benchmark_runs_and_prints_a_ratio() -> None:
    assert sorted(s for half in HALVES for s in half) == sorted(SECTIONS), "a section is missed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env["BENCH_QUICK"] = "1"
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench", *half],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for half in HALVES
    ]
    stdout = ""
    try:
        for run in runs:
            out, err = run.communicate(timeout=240)
            assert run.returncode == 0, err[-3000:]
            stdout += out
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait(5)
    for section in TITLES:
        assert section in stdout
    figures = {m["name"].strip(): m for line in stdout.splitlines() if (m := FIGURE.match(line))}
    # 6 foundation, 7 relay, 2 abuse, 2 client, 6 storage, 3 scale-out, 13 membership
    assert len(figures) >= 39, stdout
    assert all(float(m["ratio"]) > 0 for m in figures.values())
    # Issue 12's goal for the version-2 blob header: at most 64 bytes more than version 1.
    assert float(figures["v2 header: bytes added to every blob"]["ratio"]) <= 1.0, stdout
