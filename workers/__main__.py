"""``python -m workers``: run one worker process (start several on the same port)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from shared import fdlimit, logs, options
from workers.gctune import tune_gc
from workers.server import main as run_worker
from workers.settings import WorkerSettings

DESCRIPTION = (
    "A presence-lobby worker: terminates client WebSockets at /ws on a port shared with "
    "the other workers (SO_REUSEPORT) and talks to the coordinator over ZeroMQ. Every "
    "option can also be set by the environment variable shown."
)


def main(argv: Sequence[str] | None = None) -> int:
    settings, _ = options.parse_args(
        WorkerSettings,
        None if argv is None else list(argv),
        prog="python -m workers",
        description=DESCRIPTION,
    )
    logs.configure(settings.logging, role="worker", ident=settings.worker_id)
    fdlimit.raise_and_log(logging.getLogger("workers"))  # a socket per client
    tune_gc()  # after the start's objects are made
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_worker(settings))
    return uvloop.run(run_worker(settings))


if __name__ == "__main__":
    sys.exit(main())
