"""``make bench``: print every figure next to a baseline measured in the same run."""

from __future__ import annotations

import os
import platform
import sys

from bench import abuse, client, content, foundation, membership, relay, storage
from bench.harness import print_table

SECTIONS = (
    "foundation",
    "relay",
    "abuse",
    "client",
    "storage",
    "scaleout",
    "membership",
    "content",
)


def main() -> None:
    machine = platform.processor() or platform.machine()
    print(f"0k-Sync benchmarks on {machine}, {os.cpu_count()} cores")
    sections = sys.argv[1:] or list(SECTIONS)
    if "foundation" in sections:
        print_table(
            "Foundation (one process, no network; medians of 5 runs)", foundation.all_figures()
        )
    if "relay" in sections:
        print_table(
            "Relay (a relay process driven over loopback from this process)",
            relay.all_figures(),
            [relay.IDLE_NOTE],
        )
    if "abuse" in sections:
        print_table(
            "Abuse (a relay process, defaults but per-IP limits; clients that never read)",
            *abuse.abuse_figures(),
        )
    if "client" in sections:
        print_table(
            "Client (SyncClient and the low-level RelayConnection client, one relay process)",
            client.all_figures(),
        )
    if "storage" in sections:
        print_table(
            "Storage (SQLiteStorage in this process: cleanup while pushing, disk kept)",
            storage.storage_figures(),
        )
    if "scaleout" in sections:
        print_table(
            "Scale-out (two relay processes sharing one PostgreSQL, clients over loopback)",
            relay.scaleout_figures(),
        )
    if "membership" in sections:
        print_table(
            "Membership (protocol v2: revocation through a relay process, blob header, log)",
            *membership.all_figures(),
        )
    if "content" in sections:
        print_table(
            "Content (a file through a relay process, next to a bare WebSocket copy)",
            *content.all_figures(),
        )


if __name__ == "__main__":
    main()
