"""The defaults that docs/PROTOCOL.md states, each written once: the public port and the
protocol's timers.

Every process, script and client that needs one of these imports it from here (the
worker's and coordinator's settings, the baseline servers, the client library, the
launcher and the load generator), and docs/PROTOCOL.md quotes them (tests/test_docs.py
checks that the documents agree with the settings built on them). A server may be run
with other values; these are what a client can expect when the operator changed
nothing.

The module imports nothing, so a script can read it without loading the project (the
launcher reads the port here and nothing else). The contract's size limits (body, id,
frame) are in :mod:`shared.protocol`, beside the frames they bound; the timings the
backbone's two sides must agree on are related in :mod:`shared.timings`, which takes the
cut-off grace and the stall timeout from here.
"""

from __future__ import annotations

from typing import Final

HOST: Final = "127.0.0.1"
"""The interface a server listens on, and clients look, when told nothing else."""
PORT: Final = 8765
"""The public port: WebSocket upgrades at ``/ws``, ``/healthz``, the lobby page."""

AUTH_TIMEOUT: Final = 10.0
"""Seconds from the challenge to a valid ``auth``; then the server closes with 4003."""
PING_INTERVAL: Final = 20.0
"""Seconds between the server's keepalive pings."""
PING_TIMEOUT: Final = 20.0
"""Seconds the server waits for a pong before it drops the connection."""
CUTOFF_GRACE: Final = 10.0
"""Protocol 1.1: seconds a worker may be cut off from its coordinator before it closes
its clients with 1013 (far longer than a coordinator restart takes)."""
STALL_TIMEOUT: Final = 30.0
"""Protocol 1.1: a client with pending outgoing bytes that made no reading progress for
this long is closed with 4005 ``slow_consumer`` (whatever others send it)."""

COUNT_INTERVAL: Final = 1.0
"""Protocol 2: seconds between two ``count`` frames to one client, at least."""
RESUME_RING_AGE: Final = 60.0
"""Protocol 2: seconds of updates a worker keeps to resume a client from."""
RESUME_RING_BYTES: Final = 8 * 1024 * 1024
"""Protocol 2: bytes of updates a worker keeps to resume a client from, at most."""
