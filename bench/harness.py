"""Timing helpers: each figure is a median of several runs, printed next to a baseline
measured in the same process, so that machine noise cancels out in the ratio."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# BENCH_QUICK=1 runs every benchmark with tiny counts: a smoke test that the benchmarks
# still work (the test suite does this), not a measurement.
QUICK = os.environ.get("BENCH_QUICK") == "1"


def scaled(full: int, quick: int) -> int:
    return quick if QUICK else full


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    value: float
    baseline_name: str
    baseline: float

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


def rate(fn: Callable[[], object], *, ops: int, repeats: int = 5) -> float:
    repeats = 1 if QUICK else repeats
    """Median operations per second of ``fn``, which performs ``ops`` operations per call."""
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(ops / (time.perf_counter() - start))
    return statistics.median(samples)


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def print_table(title: str, figures: list[Figure], notes: list[str] | None = None) -> None:
    """The figures, then ``notes`` (what a ratio alone does not say), one a line."""
    print(f"\n{title}")
    header = f"{'measure':<44}{'value':>14}  {'baseline':<34}{'value':>14}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for f in figures:
        print(
            f"{f.name:<44}{_num(f.value):>10} {f.unit:<3}  {f.baseline_name:<34}"
            f"{_num(f.baseline):>10} {f.unit:<3}{f.ratio:>7.2f}x"
        )
    for note in notes or []:
        print(f"  {note}")
