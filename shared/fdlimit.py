"""The open-file limit of a server process.

Every client connection is a file descriptor in a worker, and the common soft default
(1024) would refuse clients long before memory runs out; the hard limit is what the
administrator allows. A server process therefore raises its soft limit to the hard
limit once at start (:func:`raise_to_hard`) and logs what it has, so that a limit too
low for the expected load is visible in the first lines of the log.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
from typing import Final, NamedTuple

from shared import logs

Limits = tuple[int, int]


class FdLimit(NamedTuple):
    """The open-file limits before and after :func:`raise_to_hard`."""

    before: int
    soft: int
    hard: int
    error: str | None = None


def raise_to_hard(
    get: Callable[[int], Limits] = resource.getrlimit,
    put: Callable[[int, Limits], None] = resource.setrlimit,
) -> FdLimit:
    """Raise ``RLIMIT_NOFILE``'s soft limit to its hard limit (an unlimited hard limit
    leaves the soft one alone: the kernel refuses an infinite file limit). Never raises:
    a refusal is reported in :attr:`FdLimit.error` and the process runs with what it has."""
    before, hard = get(resource.RLIMIT_NOFILE)
    error = None
    if hard != resource.RLIM_INFINITY and before != resource.RLIM_INFINITY and before < hard:
        try:
            put(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            error = str(exc)
    soft, hard = get(resource.RLIMIT_NOFILE)
    return FdLimit(before, soft, hard, error)


def raise_and_log(log: logging.Logger) -> FdLimit:
    """:func:`raise_to_hard`, logged (a warning when it could not be raised)."""
    limit = raise_to_hard()
    fields = logs.event("fd_limit", before=limit.before, soft=limit.soft, hard=limit.hard)
    if limit.error is not None:
        log.warning(
            "cannot raise the open-file limit from %d to %d: %s",
            limit.before,
            limit.hard,
            limit.error,
            extra=fields,
        )
    else:
        log.info("open-file limit %d (hard %d)", limit.soft, limit.hard, extra=fields)
    return limit


SPARE: Final = 512
"""Open files a worker keeps for everything but client connections: the backend API's
connections (at most 256 read at once, and the event-stream consumers), ZeroMQ's sockets
and pipes, the logs, and one to accept a connection it then refuses as full. 512 leaves
room for all of them with the defaults."""


def connections_allowed(soft: int, wanted: int, spare: int = SPARE) -> int:
    """How many client connections a process whose soft open-file limit is ``soft`` may
    admit when ``wanted`` are asked for: ``wanted``, or fewer when the files would run out
    first (at least 1). Past its open-file limit a process cannot even accept a connection
    to refuse it, so the limit, not ``wanted``, must be what turns clients away."""
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - spare))
