"""``make bench``: print every figure next to a baseline measured in the same run."""

from __future__ import annotations

import os
import platform

from bench.foundation import all_figures
from bench.harness import print_table


def main() -> None:
    machine = platform.processor() or platform.machine()
    print(f"0k-Sync benchmarks on {machine}, {os.cpu_count()} cores")
    print_table("Foundation (one process, no network; medians of 5 runs)", all_figures())


if __name__ == "__main__":
    main()
