#!/usr/bin/env python3
"""Measure the failure-behaviour bounds of a local cluster with its default settings.

    python scripts/fault_timings.py [--clients 200] [--workers 2] [--json out.json]

Starts ``scripts/cluster.py`` (as ``make run`` does) on a free port, connects the
clients, then

1. SIGKILLs one worker and times how long until every surviving client's view holds
   exactly the surviving clients (the dead worker's users are gone: ghost removal);
2. SIGKILLs the coordinator and times how long until every client has received a fresh
   ``lobby_snapshot`` and its view equals the online set again (full resync).

Correctness is checked, not only time: any sequence error seen by a client fails the
run. Timings are results, not test assertions; the bounds in docs/operating.md come from here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.loadtest.target import Server, start_cluster
from scripts.procfs import cmdline, free_port
from shared.client import LobbyClient


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` holds (polled every 5 ms), or fail after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"FAILED: no {what} within {timeout}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


def settled(clients: list[LobbyClient]) -> bool:
    alive = [c for c in clients if not c.closed]
    keys = {c.public_key for c in alive}
    return all(c.view.online == keys for c in alive)


async def connect(url: str, n: int) -> list[LobbyClient]:
    clients: list[LobbyClient] = []
    for start in range(0, n, 50):  # within the default admission rate
        batch = range(start, min(n, start + 50))
        clients += await asyncio.gather(*(LobbyClient.connect(url) for _ in batch))
    return clients


def pid_of(server: Server, needle: bytes) -> int:
    for pid in server.pids():
        if needle in cmdline(pid):
            return pid
    raise SystemExit(f"no process matching {needle!r}")


async def measure(server: Server, n: int) -> dict[str, float]:
    clients = await connect(server.url, n)
    await until(lambda: settled(clients), 30, "settled lobby after connecting")
    results: dict[str, float] = {}

    os.kill(pid_of(server, b"-m\0workers"), signal.SIGKILL)
    start = time.monotonic()
    await until(lambda: any(c.closed for c in clients), 10, "dropped connection")
    await until(lambda: settled(clients), 30, "ghost removal")
    results["ghost_removal_after_worker_kill_s"] = time.monotonic() - start
    results["ghosts_removed"] = sum(c.closed for c in clients)
    clients = [c for c in clients if not c.closed]

    before = {id(c): c.snapshots_received for c in clients}
    keys = {c.public_key for c in clients}
    os.kill(pid_of(server, b"-m\0coordinator"), signal.SIGKILL)

    def resynced() -> bool:
        fresh = all(c.snapshots_received > before[id(c)] for c in clients)
        return fresh and all(c.view.online == keys for c in clients)

    results["full_resync_after_coordinator_kill_s"] = await until(resynced, 30, "resync")
    errors = sum(len(c.errors) for c in clients)
    if errors or any(c.closed for c in clients):
        raise SystemExit(f"FAILED: {errors} sequence errors, clients dropped by the restart")
    for c in clients:
        await c.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="default %(default)s")
    parser.add_argument("--workers", type=int, default=2, help="default %(default)s")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    server = start_cluster(args.workers, free_port())
    try:
        results = asyncio.run(measure(server, args.clients))
    finally:
        server.stop()
    for name, value in results.items():
        print(f"{name:40} {value:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
