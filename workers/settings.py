"""Every knob of a worker, grouped as on the command line (``python -m workers --help``)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields

from shared import endpoints, protocol


def _random_worker_id() -> str:
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    # Network
    host: str = endpoints.DEFAULT_HOST
    """Interface to listen on (default 127.0.0.1: put a proxy in front for the world)."""
    port: int = endpoints.DEFAULT_PORT
    """Public port, shared by every worker through SO_REUSEPORT (default 8765)."""
    compression: str | None = None
    """``"deflate"`` turns permessage-deflate on. Off by default: lobby frames are small
    and fanned out, so compressing each copy costs more CPU than the bytes it saves."""

    # Backbone
    events_endpoint: str
    """Coordinator ROUTER this worker's DEALER connects to."""
    updates_endpoint: str
    """Coordinator PUB this worker's SUB connects to."""
    worker_id: str = field(default_factory=_random_worker_id)
    """ZeroMQ routing id of this worker (default: random hex, fresh per start, so a
    restarted worker is never confused with its previous life)."""
    hwm: int = 100_000
    """High-water mark of each backbone socket, in messages. Past it updates are lost
    (the replica sees a gap and resyncs from a snapshot) or an event is dropped and
    logged (an auth or route then times out)."""

    curve_secret_key: str | None = None
    """This worker's CURVE certificate (``.key_secret``); with ``curve_server_key``
    turns CURVE on, as a coordinator listening beyond loopback requires."""
    curve_server_key: str | None = None
    """The coordinator's public key certificate (``.key``): the worker talks to no other."""

    # Timeouts
    auth_timeout: float = 10.0
    """Seconds from the challenge to a valid ``auth`` before 4003 (protocol: 10 s)."""
    auth_wait: float = 5.0
    """Seconds from a verified signature to ``auth_ok`` (coordinator reachable, ack,
    replica caught up) before 1013. Covers a coordinator restart."""
    ping_interval: float | None = 20.0
    """Seconds between keepalive pings (protocol default 20 s); ``None`` disables them."""
    ping_timeout: float | None = 20.0
    """Seconds to wait for a pong before dropping the connection (default 20 s)."""
    heartbeat_interval: float = 1.0
    """Seconds between ``Heartbeat`` messages to the coordinator (matches its Beats)."""
    coordinator_timeout: float = 3.0
    """Seconds without any coordinator message after which it counts as unreachable
    (three missed Beats)."""
    route_timeout: float = 5.0
    """Seconds to wait for ``RouteDone`` before answering ``rejected``/``unavailable``."""

    # Limits
    max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES
    """Largest client frame; larger ones close with 1009 (default 128 KiB)."""
    lag_bytes: int = 256 * 1024
    """Transport backlog above which a client's lobby updates are skipped until it
    drains below a quarter of it and gets a fresh snapshot (default 256 KiB)."""
    max_queue_bytes: int = 4 * 1024 * 1024
    """Transport backlog above which a direct message closes the client with 4005
    (default 4 MiB): direct messages are never dropped silently."""
    pre_auth_frame_bytes: int = 4096
    """Largest client frame before ``auth_ok``; larger ones close with 1009 (default
    4 KiB: an ``auth`` is about 250 bytes, so an unauthenticated peer cannot make the
    worker buffer and parse 128 KiB frames)."""
    msg_rate: float = 50.0
    """Client messages per second per connection after auth (default 50/s, with
    ``msg_burst``): far above any human and above a bot that answers every lobby
    update; a frame over it is answered ``rate_limited`` and not carried out."""
    msg_burst: float = 100.0
    """Messages a connection may send at once before ``msg_rate`` applies (default 100)."""
    flood_rejects: float = 100.0
    """Rate-limited frames a connection may send within ``flood_window`` before it is
    closed with 1008 (default 100): a client that slows down when told is never closed."""
    flood_window: float = 10.0
    """Seconds over which ``flood_rejects`` are counted (default 10 s; a leaky bucket,
    so sustained rejections faster than flood_rejects/flood_window per second close)."""
    max_pending_auth: int = 1000
    """Connections per worker allowed in the challenge phase at once; past it a new one
    is closed with 1013 before its challenge (default 1000: ``auth_rate`` times
    ``auth_timeout`` is larger, so this caps idle half-open connections)."""
    auth_rate: float = 200.0
    """New connections (each one auth attempt) admitted per second per worker; past it
    1013 (default 200/s, burst ``auth_burst``): a reconnect storm of 10 000 clients is
    readmitted by 4 workers in about 12 s, while signature checks, coordinator traffic
    and lobby fan-out stay at a steady rate."""
    auth_burst: float = 200.0
    """Connections admitted at once before ``auth_rate`` applies (default 200)."""

    # Logging
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        """Refuse values that would make a bound meaningless (a zero burst admits no
        one, a negative timeout fires at once), with the option's name."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "port":
                if not 0 <= value <= 65535:
                    raise ValueError(f"--port must be 0-65535, not {value}")
            elif isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                option = "--" + f.name.replace("_", "-")
                raise ValueError(f"{option} must be positive, not {value}")
