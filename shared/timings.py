"""The timings that two processes must agree on, related to each other in one place.

Each process has its own options for these (``--heartbeat-interval`` on both sides,
``--worker-timeout`` on the coordinator, ``--coordinator-timeout`` and
``--cutoff-grace`` on workers), and their defaults are the constants below. They only
make sense together:

* Both sides send a liveness message every :data:`HEARTBEAT_INTERVAL` (1 s).
* The coordinator presumes a worker dead after :data:`WORKER_TIMEOUT` (2.5 beats) of
  silence and its users leave: one late beat never makes users flap, and a dead
  worker's users are gone within 3 s (the coordinator checks at least every 0.2 s).
* A worker counts its coordinator unreachable after :data:`COORDINATOR_TIMEOUT`
  (3 beats): it then answers new auths 1013 and sends ``rejected``/``unavailable``, and
  re-announces its sessions (the coordinator may have expired it meanwhile).
* A worker cut off for :data:`CUTOFF_GRACE` (10 s, protocol 1.1) closes its clients with
  1013 so they reconnect where the lobby is visible. It is much longer than a
  coordinator restart (about 1 s), so a restart changes nothing for clients.
* :data:`AUTH_WAIT` (5 s) bounds the wait for ``auth_ok`` and must cover a coordinator
  restart too.
* A direct message is answered ``rejected``/``unavailable`` after :data:`ROUTE_TIMEOUT`
  (5 s) without a result. It is dropped wherever it is once :data:`RESULT_ALLOWANCE`
  (1 s) before that deadline has passed, so a result produced by the recipient's
  worker has that long to reach the sender's worker before the sender is told otherwise.

:func:`check` states the relations; the processes check their own options against them
at start.
"""

from __future__ import annotations

from typing import Final

from shared import defaults

HEARTBEAT_INTERVAL: Final = 1.0
WORKER_TIMEOUT: Final = 2.5 * HEARTBEAT_INTERVAL
COORDINATOR_TIMEOUT: Final = 3.0 * HEARTBEAT_INTERVAL
CUTOFF_GRACE: Final = defaults.CUTOFF_GRACE
AUTH_WAIT: Final = 5.0
ROUTE_TIMEOUT: Final = 5.0
RESULT_ALLOWANCE: Final = 1.0
EXPIRY_CHECK: Final = 0.2
"""The coordinator's loop checks for silent workers at least this often (seconds)."""
STALL_TIMEOUT: Final = defaults.STALL_TIMEOUT
"""Protocol 1.1: a client with pending outgoing bytes that made no reading progress for
this long is closed with 4005 ``slow_consumer`` (whatever others send it)."""


def route_ttl(route_timeout: float) -> float:
    """How long a direct message may travel before it is dropped wherever it is: the
    sender's deadline less the allowance for the result's way back (at least half)."""
    return max(route_timeout / 2, route_timeout - RESULT_ALLOWANCE)


def check() -> None:
    """The defaults keep their promises (run by the tests)."""
    assert HEARTBEAT_INTERVAL < WORKER_TIMEOUT  # one late beat is not a death
    assert WORKER_TIMEOUT + EXPIRY_CHECK <= 3.0  # a dead worker's users leave within 3 s
    assert HEARTBEAT_INTERVAL < COORDINATOR_TIMEOUT < CUTOFF_GRACE  # a restart is no cut-off
    assert ROUTE_TIMEOUT - route_ttl(ROUTE_TIMEOUT) == RESULT_ALLOWANCE  # time for a result
