"""``python -m workers``: run one worker process (start several on the same port)."""

from __future__ import annotations

import asyncio
import dataclasses
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
    log = logging.getLogger("workers")
    limit = fdlimit.raise_and_log(log)  # a socket per client
    settings = within_files(settings, limit.soft, log)
    tune_gc()  # after the start's objects are made
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_worker(settings))
    return uvloop.run(run_worker(settings))


def within_files(settings: WorkerSettings, soft: int, log: logging.Logger) -> WorkerSettings:
    """``settings`` with ``--max-connections`` lowered to what ``soft`` open files allow
    (see :func:`shared.fdlimit.connections_allowed`), logged as a warning naming the limit
    to raise when it is lowered."""
    wanted = settings.admission.max_connections
    allowed = fdlimit.connections_allowed(soft, wanted)
    if allowed >= wanted:
        return settings
    log.warning(
        "--max-connections lowered from %d to %d by the open-file limit (%d, of which %d "
        "are kept for other files): raise the limit (ulimit -n, or LimitNOFILE= in a "
        "systemd unit) to admit more",
        wanted,
        allowed,
        soft,
        fdlimit.SPARE,
        extra=logs.event("connections_capped", wanted=wanted, allowed=allowed, soft=soft),
    )
    admission = dataclasses.replace(settings.admission, max_connections=allowed)
    return dataclasses.replace(settings, admission=admission)


if __name__ == "__main__":
    sys.exit(main())
