"""``python -m workers``: run one worker process (start several on the same port)."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Sequence
from typing import Final

from shared import fdlimit, logs, options
from workers.server import main as run_worker
from workers.settings import WorkerSettings

DESCRIPTION = (
    "A presence-lobby worker: terminates client WebSockets at /ws on a port shared with "
    "the other workers (SO_REUSEPORT) and talks to the coordinator over ZeroMQ. Every "
    "option can also be set by the environment variable shown."
)

GC_THRESHOLDS: Final = (50_000, 20, 20)
"""The cyclic garbage collector's thresholds in a worker (Python's: 700, 10, 10).

A worker keeps a few hundred container objects per connection and makes as many again
per handshake that reference counting frees; at Python's 700 the young generation is
collected every few handshakes, its survivors scanned again in the older ones, and a
mass join spent 17% of the worker's CPU in the collector (py-spy,
5,000 watchlist clients), 2% at 50,000. What waits longer is only cyclic garbage: at
most 50,000 young container objects' worth (megabytes), never a live object."""


def tune_gc() -> None:
    """Collect young objects less often, and leave what the start made (modules,
    settings: never garbage) out of every later full collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: Sequence[str] | None = None) -> int:
    settings, _ = options.parse_args(
        WorkerSettings,
        None if argv is None else list(argv),
        prog="python -m workers",
        description=DESCRIPTION,
    )
    logs.configure(settings.logging, role="worker", ident=settings.worker_id)
    fdlimit.raise_and_log(logging.getLogger("workers"))  # a socket per client
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_worker(settings))
    return uvloop.run(run_worker(settings))


if __name__ == "__main__":
    sys.exit(main())
