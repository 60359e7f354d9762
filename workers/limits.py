"""What one client connection may cost and how long each phase may take (the options of
:class:`Limits`, part of :class:`~workers.settings.WorkerSettings`)."""

from __future__ import annotations

from dataclasses import dataclass

from shared import defaults, protocol, timings
from shared.options import at_least, group, option, positive, validate
from workers.ratelimit import RateLimits


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one connection may cost and how long each phase may take."""

    auth_timeout: float = option(
        defaults.AUTH_TIMEOUT,
        "seconds from the challenge to a valid auth (then 4003; the protocol's default)",
        check=positive,
    )
    auth_wait: float = option(
        timings.AUTH_WAIT,
        "seconds from a verified signature to auth_ok: coordinator reachable, ack, replica "
        "caught up (then 1013); long enough for a coordinator restart",
        check=positive,
    )
    lag_bytes: int = option(
        256 * 1024,
        "client backlog in bytes above which lobby updates are skipped until it drains "
        "below a quarter of it and gets a fresh snapshot",
        check=at_least(1),
    )
    max_queue_bytes: int = option(
        128 * 1024,
        "client backlog in bytes that a direct message may not take it past, and at most "
        "half the lag limit (the other half is the lobby's): one that would is refused "
        "to its sender (rejected/rate_limited), and the recipient stays connected",
        check=at_least(1),
    )
    stall_timeout: float = option(
        timings.STALL_TIMEOUT,
        "seconds a client with a backlog may make no reading progress (its peer "
        "acknowledges no bytes) before it is closed with 4005; a phone in a tunnel for a "
        "few seconds stays connected",
        check=positive,
    )
    max_pipelined: int = option(
        32,
        "frames a client may send after its auth before auth_ok (held, then answered in "
        "order); one more closes it with 1008 (the protocol asks for at least 16)",
        check=at_least(16),
    )
    max_pipelined_bytes: int = option(
        1024 * 1024,
        "bytes of frames held that way (then 1008)",
        check=at_least(64 * 1024),
    )
    pre_auth_frame_bytes: int = option(
        4096,
        "largest client frame before auth (then 1009): an auth is about 250 bytes, so an "
        "unauthenticated peer cannot make the worker buffer and parse large frames",
        check=at_least(256),
    )
    max_frame_bytes: int = option(
        protocol.DEFAULT_MAX_FRAME_BYTES,
        "largest client frame after auth in bytes (then 1009); the default holds a maximal "
        "send whose body needs no JSON escaping",
        check=at_least(1024),
    )
    rate: RateLimits = group(RateLimits, "Message rate")

    def __post_init__(self) -> None:
        validate(self)
