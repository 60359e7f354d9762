"""Rate limits and admission control (sans-I/O: every call takes ``now``).

Theory of operation
-------------------
Everything here is arithmetic on a clock the caller passes in, so it is tested
exhaustively without sleeping. Nothing here writes a frame or closes a socket: the
connection state machine (:mod:`workers.connection`) turns a :class:`Verdict` into
protocol behaviour and the shell (:mod:`workers.server`) turns an :class:`Admit` into a
close code.

:class:`TokenBucket`
    ``rate`` tokens per second, at most ``burst`` saved up; one message or one auth
    costs one token. A clock that goes backwards refills nothing (never a negative
    refill, never more than ``burst``).

:class:`FloodGuard` (one per authenticated connection)
    A token bucket of messages (default 50/s, burst 100: a human never gets near it, a
    bot that answers every lobby update still fits). A frame over it is answered but not
    carried out (``rate_limited``). Every such rejection also takes a token from a
    second bucket of *strikes*: ``flood_rejects`` (default 100) strikes, refilled at
    ``flood_rejects / flood_window`` per second (default 10 s, so 10 rejections per
    second on average). A client that runs out of strikes (more than 100 rejections in
    a burst, or rejections sustained faster than 10/s) is flooding: :data:`Verdict.FLOOD`,
    closed with 1008. A client that slows down when told ``rate_limited`` never is.

:class:`Admission` (one per worker)
    Guards the door before a challenge is sent. At most ``max_pending`` connections may
    be in the challenge phase (challenge sent, no ``auth`` answered yet) and new
    connections are admitted at ``auth_rate`` per second (burst ``auth_burst``): each
    admitted connection has one auth attempt, so the Ed25519 checks, the coordinator's
    ``Authed`` traffic and the lobby fan-out of the joins all run at that steady rate
    during a reconnect storm. Past either bound the connection is refused (the shell
    closes it with 1013 ``try_again_later`` before any challenge). The pending set is
    keyed by connection id and every release is idempotent, so a connection can never be
    counted twice or leak a slot.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Final

from shared.options import at_least, non_negative, option, positive, validate

_EPSILON: Final = 1e-9
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
        if self.tokens >= cost - _EPSILON:  # a request exactly 1/rate after the last
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


class Admit(enum.Enum):
    """The door's answer to a new connection."""

    OK = "ok"
    BUSY = "busy"  # too many connections in the challenge phase -> 1013
    THROTTLED = "throttled"  # auths arriving faster than auth_rate -> 1013


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionLimits:
    """The door of one worker (see :class:`Admission`)."""

    max_pending_auth: int = option(
        1000,
        "connections per worker allowed in the challenge phase at once (then 1013 before "
        "the challenge): auth-rate times the auth timeout is larger, so this caps idle "
        "half-open connections",
        check=at_least(1),
    )
    auth_rate: float = option(
        200.0,
        "new connections (each one auth attempt) admitted per second per worker (then "
        "1013): a storm of 10,000 reconnects is readmitted by 4 workers in about 12 s "
        "while signature checks and lobby fan-out stay at a steady rate",
        check=non_negative,
    )
    auth_burst: float = option(
        200.0, "new connections admitted at once before --auth-rate applies", check=at_least(1)
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(slots=True)
class Admission:
    """Per-worker door: a cap on the challenge phase and a rate of admitted auths."""

    limits: AdmissionLimits
    bucket: TokenBucket = field(init=False)
    pending: set[int] = field(default_factory=set)
    refused: dict[Admit, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.limits.auth_rate, self.limits.auth_burst)

    def admit(self, conn: int, now: float) -> Admit:
        """Admit connection ``conn`` into the challenge phase, or say why not. A
        refusal by the cap takes no token, so the rate is not spent on refusals."""
        verdict = Admit.OK
        if conn in self.pending:
            return verdict
        if len(self.pending) >= self.limits.max_pending_auth:
            verdict = Admit.BUSY
        elif not self.bucket.take(now):
            verdict = Admit.THROTTLED
        if verdict is Admit.OK:
            self.pending.add(conn)
        else:
            self.refused[verdict] = self.refused.get(verdict, 0) + 1
        return verdict

    def release(self, conn: int) -> None:
        """``conn`` left the challenge phase (answered, closed or timed out). Idempotent."""
        self.pending.discard(conn)
