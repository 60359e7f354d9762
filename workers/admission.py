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
    Guards the door before a challenge is sent, on three counts, checked in this order
    (the shell closes every refusal with 1013 ``try_again_later`` before any challenge):

    1. ``max_connections`` connections in any state: past it ``FULL``.
    2. ``max_pending_auth`` connections in the challenge phase (challenge sent, no
       ``auth`` answered yet), shared fairly between *sources* (network addresses, see
       :mod:`workers.sources`). While there is room anyone gets in. When it is full, a
       newcomer from source S that holds ``h`` pending connections is admitted by
       evicting the oldest pending connection of the source holding the most, ``m``, if
       ``m >= h + 2``; otherwise ``BUSY``. So one address may fill the room while nobody
       else wants it, but cannot keep anyone out: the counts converge to max-min fairness
       (a refused source already holds at least ``m - 1``), and since every eviction
       lowers the sum of squared counts, evictions never cycle. ``m >= h + 1`` would only
       swap which source holds one more. A source never evicts its own connections.
       Among equally heavy sources the one that reached that count first loses first.
       The heaviest source is found in O(1): sources are kept in buckets by count with
       the largest count tracked (counts change by one, so it moves by one).
    3. The auth rate: new connections are admitted at ``auth_rate`` per second (burst
       ``auth_burst``): each has one auth attempt, so the Ed25519 checks, the
       coordinator's ``Authed`` traffic and the joins' fan-out stay at that steady rate
       during a reconnect storm. Past it ``THROTTLED``. Fairly, too: the worker's bucket
       holds ``auth_burst * (1 + auth_reserve)``, and the part above the *reserve*
       (``auth_burst * auth_reserve``) is free for all, but a token from the reserve
       goes only to a source whose own *budget* (``source_share`` of the rate and burst)
       has one. Every admission takes up to one token from its source's budget, so a
       source that has had its share lately finds its budget empty.

       What this guarantees. A lone source sees the old door exactly: ``auth_burst`` at
       once, and never more than ``auth_burst + auth_rate * t`` (its budget is spent by
       its first admissions, long before the bucket reaches the reserve). Within any
       stretch of time in which the bucket stays in its reserve, a source takes from it
       at most its budget at the start plus ``source_share * auth_rate`` per second,
       while the reserve refills at ``auth_rate``. So ``k`` sources flooding together
       lower the reserve by at most their ``k`` budgets (``source_burst`` each, that
       is ``max(1, auth_burst * source_share)``) and, if ``k * source_share < 1``, no
       further: it refills meanwhile. In particular one source, however fast it floods,
       leaves at least ``auth_burst * auth_reserve - source_burst`` tokens (50 by
       default), so whenever that is at least one, a client from any other source whose
       budget has a token (one that has not had ``source_burst`` admissions lately) is
       admitted at its first attempt. Two sources arriving with full budgets can empty
       the default reserve for a moment (it refills at half the rate while they flood);
       four or more flooding together (``k * source_share >= 1``) can keep it empty, and
       then tokens go to whoever asks first. Against many addresses nothing better is
       possible within a fixed total: the worker never admits more than
       ``auth_burst * (1 + auth_reserve) + auth_rate * t``, and that bound, not
       fairness, is what protects it; the challenge phase stays fair regardless.

    A refusal of any kind takes no token and evicts nothing. Connections are keyed by
    id and every release is idempotent, so a connection is never counted twice and never
    leaks a slot; an evicted connection is released at once, and the shell's later
    ``closed`` changes nothing. Per-source state is bounded: a source is remembered while
    it holds a pending connection (at most ``max_pending_auth`` of them) or its budget
    is not full again (at most ``max_sources`` such idle sources; past that the longest
    idle is forgotten, so its budget starts full again).
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass
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
    """The door's answer to a new connection; every refusal is closed with 1013."""

    OK = "ok"
    FULL = "full"  # max_connections connections open, in any state
    BUSY = "busy"  # challenge phase full and the newcomer's source already has its share
    THROTTLED = "throttled"  # auths arriving faster than this source may be admitted


@dataclass(frozen=True, slots=True)
class Decision:
    """What :meth:`Admission.admit` decided: the verdict on the new connection and the
    pending connections evicted to make room for it (already released from every count;
    the shell closes them with 1013)."""

    verdict: Admit
    evict: tuple[int, ...] = ()

    @property
    def admitted(self) -> bool:
        return self.verdict is Admit.OK


def _share(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionLimits:
    """One worker's door (see :class:`Admission`)."""

    max_connections: int = option(
        50_000,
        "connections per worker in any state (then 1013): at about 18 KiB per idle "
        "connection, 50,000 stay under 1 GiB per worker, so this binds only against a "
        "flood of connections",
        check=at_least(1),
    )
    max_pending_auth: int = option(
        1000,
        "connections per worker in the challenge phase (then 1013 before the challenge, "
        "or the oldest of the heaviest source makes room): auth-rate times the auth "
        "timeout is larger, so this caps idle half-open connections",
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
        200.0,
        "connections admitted at once before --auth-rate applies, by one source or all "
        "of them together while nobody is held to a share",
        check=at_least(1),
    )
    auth_reserve: float = option(
        0.5,
        "fraction of --auth-burst kept on top of it for sources within their own budget "
        "(--source-share): the room a newcomer finds while another source floods; "
        "0 turns per-source budgets off",
        check=non_negative,
    )
    source_share: float = option(
        0.25,
        "a source's own budget as a fraction of --auth-rate and --auth-burst: what it "
        "may still take from the reserve when tokens are short (a quarter admits a "
        "NAT'd office at once even under attack)",
        check=_share,
    )
    max_sources: int = option(
        10_000,
        "sources remembered for their budget alone; past it the longest idle one is "
        "forgotten (its budget starts full again)",
        check=at_least(1),
    )

    def __post_init__(self) -> None:
        validate(self)

    @property
    def reserve_tokens(self) -> float:
        return self.auth_burst * self.auth_reserve

    @property
    def source_burst(self) -> float:
        return max(1.0, self.auth_burst * self.source_share)

    @property
    def source_rate(self) -> float:
        return self.auth_rate * self.source_share


@dataclass(slots=True)
class _Source:
    """What the door remembers about one source."""

    budget: TokenBucket
    pending: OrderedDict[int, None]  # its connections in the challenge phase, oldest first


class Admission:
    """Per-worker door: a cap on connections, a fair challenge phase, a fair auth rate.

    ``admit`` when a connection arrives, ``authenticated`` when it leaves the challenge
    phase (answered, whatever the outcome), ``closed`` when it ends. Connection ids are
    the shell's: each is counted at most once, every release is idempotent, and an id
    released (or evicted) is forgotten, so the shell must not reuse ids.
    """

    __slots__ = (
        "_bucket",
        "_by_count",
        "_heaviest",
        "_idle",
        "_open",
        "_pending",
        "_sources",
        "evicted",
        "limits",
        "refused",
    )

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits if limits is not None else AdmissionLimits()
        lim = self.limits
        self._bucket = TokenBucket(lim.auth_rate, lim.auth_burst + lim.reserve_tokens)
        self._pending: dict[int, str] = {}  # challenge phase: connection -> source
        self._open: set[int] = set()  # past the challenge phase, not closed yet
        self._sources: dict[str, _Source] = {}
        # Sources by how many pending connections they hold (> 0), and the largest count.
        self._by_count: dict[int, OrderedDict[str, None]] = {}
        self._heaviest = 0
        self._idle: OrderedDict[str, None] = OrderedDict()  # no pending, longest idle first
        self.refused: dict[Admit, int] = {}
        """Refusals by verdict, since the start (for ``/healthz`` and logs)."""
        self.evicted = 0
        """Pending connections evicted to make room for other sources, since the start."""

    # ------------------------------------------------------------------ figures

    @property
    def pending(self) -> int:
        """Connections in the challenge phase."""
        return len(self._pending)

    @property
    def connections(self) -> int:
        """Connections counted against ``max_connections`` (any state)."""
        return len(self._pending) + len(self._open)

    @property
    def sources(self) -> int:
        """Sources remembered (holding a pending connection, or a budget not yet full)."""
        return len(self._sources)

    def tokens(self, now: float) -> float:
        """Auth tokens the worker holds at ``now``, reserve included."""
        return self._bucket.level(now)

    # ------------------------------------------------------------------ events

    def admit(self, conn: int, source: str, now: float) -> Decision:
        """Admit connection ``conn`` from ``source`` into the challenge phase, or say why
        not. Checked in order: ``FULL``, the challenge phase (room, else an eviction from
        the heaviest source, else ``BUSY``), then the rate (``THROTTLED``). A refusal
        changes nothing but the refusal count: no token, no eviction, no remembered
        source. A connection already counted is ``OK`` again and costs nothing."""
        if conn in self._pending or conn in self._open:
            return Decision(Admit.OK)
        self._forget_refilled(now)
        lim = self.limits
        if self.connections >= lim.max_connections:
            return self._refuse(Admit.FULL)
        known = self._sources.get(source)
        held = len(known.pending) if known is not None else 0
        victim: int | None = None
        if len(self._pending) >= lim.max_pending_auth:
            if self._heaviest < held + 2:  # evicting would only swap who holds more
                return self._refuse(Admit.BUSY)
            heaviest = self._sources[next(iter(self._by_count[self._heaviest]))]
            victim = next(iter(heaviest.pending))
        budget = known.budget.level(now) if known is not None else lim.source_burst
        level = self._bucket.level(now)
        shared = level >= lim.reserve_tokens + 1.0 - _EPSILON
        if not (shared or (level >= 1.0 - _EPSILON and budget >= 1.0 - _EPSILON)):
            return self._refuse(Admit.THROTTLED)
        # Admitted: commit the eviction, the tokens and the count, in that order.
        if victim is not None:
            self._release(victim)
            self.evicted += 1
        self._bucket.take(now)
        entry = known  # (the victim's source keeps a pending connection: nothing forgotten)
        if entry is None:
            entry = _Source(TokenBucket(lim.source_rate, lim.source_burst), OrderedDict())
            self._sources[source] = entry
        # Every admission counts against the source's budget, down to zero at most.
        entry.budget.take(now, min(1.0, entry.budget.level(now)))
        self._idle.pop(source, None)
        self._pending[conn] = source
        entry.pending[conn] = None
        self._recount(source, len(entry.pending) - 1, len(entry.pending))
        return Decision(Admit.OK, () if victim is None else (victim,))

    def authenticated(self, conn: int) -> None:
        """``conn`` left the challenge phase (answered its challenge, whatever the
        outcome) but stays open. Idempotent; unknown or evicted ids change nothing."""
        if self._release(conn):
            self._open.add(conn)

    def closed(self, conn: int) -> None:
        """``conn`` ended (in any state). Idempotent; unknown or evicted ids change nothing."""
        self._release(conn)
        self._open.discard(conn)

    # ------------------------------------------------------------------ internals

    def _refuse(self, verdict: Admit) -> Decision:
        self.refused[verdict] = self.refused.get(verdict, 0) + 1
        return Decision(verdict)

    def _release(self, conn: int) -> bool:
        """Take ``conn`` out of the challenge phase; ``False`` if it was not there."""
        source = self._pending.pop(conn, None)
        if source is None:
            return False
        entry = self._sources[source]
        del entry.pending[conn]
        held = len(entry.pending)
        self._recount(source, held + 1, held)
        if held == 0:
            self._idle[source] = None
            while len(self._idle) > self.limits.max_sources:
                forgotten, _ = self._idle.popitem(last=False)
                del self._sources[forgotten]
        return True

    def _recount(self, source: str, before: int, after: int) -> None:
        """Move ``source`` between the count buckets; O(1). Counts change by one, so when
        the heaviest bucket empties the next heaviest is one less (or none)."""
        if before > 0:
            bucket = self._by_count[before]
            del bucket[source]
            if not bucket:
                del self._by_count[before]
                if before == self._heaviest:
                    self._heaviest = after
        if after > 0:
            self._by_count.setdefault(after, OrderedDict())[source] = None
            self._heaviest = max(self._heaviest, after)

    def _forget_refilled(self, now: float) -> None:
        """Forget idle sources whose budget is full again, longest idle first (each
        source is forgotten once per idle spell, so O(1) amortised per call)."""
        full = self.limits.source_burst - _EPSILON
        while self._idle:
            source = next(iter(self._idle))
            if self._sources[source].budget.level(now) < full:
                return
            del self._idle[source]
            del self._sources[source]
