"""A connection's message rate (sans-I/O: the time is the caller's).

Theory of operation
-------------------
Arithmetic on the clock the caller passes in, so it is tested exhaustively without
sleeping. The connection state machine (:mod:`workers.connection`) turns a
:class:`Verdict` into protocol behaviour.

:class:`TokenBucket`
    ``rate`` tokens per second, at most ``burst`` saved up; one message costs one
    token. A clock that goes backwards refills nothing (never a negative refill, never
    more than ``burst``).

:class:`FloodGuard` (one per authenticated connection)
    A token bucket of messages (default 50/s, burst 100: a human never gets near it, a
    bot that answers every lobby update still fits). A frame over it is answered but not
    carried out (``rate_limited``). Every such rejection also takes a token from a
    second bucket of *strikes*: ``flood_rejects`` (default 100) strikes, refilled at
    ``flood_rejects / flood_window`` per second (default 10 s, so 10 rejections per
    second on average). A client that runs out of strikes (more than 100 rejections in
    a burst, or rejections sustained faster than 10/s) is flooding: :data:`Verdict.FLOOD`,
    closed with 1008. A client that slows down when told ``rate_limited`` never is.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final

from shared.options import at_least, non_negative, option, positive, validate

EPSILON: Final = 1e-9
"""Float slack: ``0.01 * 100`` must refill one whole token."""


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; starts full."""

    rate: float
    burst: float
    tokens: float = math.nan  # nan: full at the first call
    stamp: float = math.nan

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate >= 0 and self.burst >= 1):
            raise ValueError(f"need rate >= 0 and burst >= 1, got {self.rate}, {self.burst}")

    def _refill(self, now: float) -> None:
        if math.isnan(self.stamp):
            self.tokens, self.stamp = self.burst, now
            return
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (refills first)."""
        self._refill(now)
        return self.tokens

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; ``False`` (and no change) if not."""
        self._refill(now)
        if self.tokens >= cost - EPSILON:  # a request exactly 1/rate after the last
            self.tokens = max(0.0, self.tokens - cost)
            return True
        return False


class Verdict(enum.Enum):
    """What a client's frame is allowed, by rate."""

    PASS = "pass"  # within the rate: handle it
    THROTTLE = "throttle"  # over the rate: answer rate_limited, do nothing else
    FLOOD = "flood"  # over the rate for too long: close with 1008


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """Per-connection message rate after ``auth_ok`` (see :class:`FloodGuard`)."""

    msg_rate: float = option(
        50.0,
        "client messages per second per connection (then rate_limited): far above any "
        "human, and above a bot that answers every lobby update",
        check=non_negative,
    )
    msg_burst: float = option(
        100.0, "client messages at once before --msg-rate applies", check=at_least(1)
    )
    flood_rejects: float = option(
        100.0,
        "rate-limited frames a connection may send within --flood-window before it is "
        "closed with 1008: a client that slows down when told is never closed",
        check=at_least(1),
    )
    flood_window: float = option(
        10.0,
        "seconds over which --flood-rejects are counted (a leaky bucket: rejections "
        "sustained faster than flood-rejects/flood-window per second close)",
        check=positive,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(slots=True)
class FloodGuard:
    """One connection's message budget and strikes."""

    messages: TokenBucket
    strikes: TokenBucket
    rejected: int = 0  # total THROTTLE verdicts, for logs and tests

    @classmethod
    def of(cls, limits: RateLimits) -> FloodGuard:
        refill = limits.flood_rejects / limits.flood_window
        return cls(
            TokenBucket(limits.msg_rate, limits.msg_burst),
            TokenBucket(refill, limits.flood_rejects),
        )

    def check(self, now: float) -> Verdict:
        if self.messages.take(now):
            return Verdict.PASS
        self.rejected += 1
        return Verdict.THROTTLE if self.strikes.take(now) else Verdict.FLOOD
