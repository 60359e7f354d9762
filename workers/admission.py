"""Admission control: who may open a connection (sans-I/O: time and lag are the caller's).

Theory of operation
-------------------
Everything here is arithmetic on what the caller passes in (a clock, the event loop's
lag), so it is tested exhaustively without sleeping. Nothing here writes a frame or
closes a socket: the core (:mod:`workers.core`) turns an :class:`Admit` into an HTTP
503 or a close code. A connection's own message rate is :mod:`workers.ratelimit`'s.

:class:`Admission` (one per worker)
    Guards the door before a challenge is sent, on three counts, checked in this order
    (the shell refuses before the WebSocket handshake with HTTP 503 when it can tell in
    advance, and otherwise closes with 1013 ``try_again_later`` before any challenge):

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

       Otherwise the *waiting rule*: the newcomer takes the place of the connection that
       has waited longest, if it has waited ``challenge_grace`` (default 0.5 s) and its
       source holds more pending connections than the newcomer's (``m >= h + 1``: at
       worst a swap, never a less fair room), unless the newcomer's source is *marked*:
       one of its connections was replaced by this rule, or left without a valid answer
       (closed, answered wrongly, silent to its deadline), within :data:`SUSPECT_FOR`. A
       marked source may not take the top :data:`CHALLENGE_RESERVE` of the challenge
       phase but by the count rule. Counting cannot help against many sources holding
       one silent connection each (nobody is heavier by two); time can, since a real
       client answers within a round trip and leaves the challenge phase long before the
       grace is out. The marks keep an attacker's reopened connections from sweeping
       away, one after the other, every connection old enough to give way before a
       newcomer gets to one, and keep an attacker that closes its connections young and
       reopens them out of the reserve; they are bounded (:data:`SUSPECTS_PER_SLOT` per
       slot, oldest forgotten first). What this guarantees, whatever the number of
       sources: a newcomer from a source that holds nothing and is not marked is refused
       only while every pending connection arrived within the last ``challenge_grace``,
       and the reserve can only be renewed by sources not marked, each marked once its
       connection is replaced or leaves without a valid answer. So keeping newcomers out
       takes fresh sources, a reserve's worth every grace; holding connections, or
       churning them, does not. Only the oldest connection is looked at: O(1).
    3. The *auth window*: at most ``window`` connections *in flight*, that is admitted
       and not yet settled (challenged, verified, or waiting for the coordinator's
       ack; a connection settles when it is acknowledged, fails or closes). Past it
       ``THROTTLED``. Each admission is one auth attempt, so the window bounds the
       signature checks, ``Authed`` messages and snapshots outstanding at any moment,
       and the rate follows from how fast the worker gets through them: a storm is
       admitted as fast as the machine settles auths, not at a fixed rate.

       The window follows capacity, as TCP's congestion window does. Once a tick the
       shell reports the event loop's *lag* (how late its timers fire: what every
       online client waits on for its lobby updates and pongs). Lag above
       ``lag_target`` multiplies the window by :data:`DECREASE` (at most once a tick)
       and remembers the result as the *threshold*; lag within it, in a tick in which
       the window turned someone away, grows the window: doubling it
       (:data:`SLOW_START`) while it is below the threshold, which starts at the
       ceiling, so a first storm finds the machine's capacity in a few ticks rather
       than seconds, and adding :data:`INCREASE` at or above it. It never leaves
       ``[min(MIN_WINDOW, max_pending_auth), max_pending_auth]``, where it starts at
       ``auth_window``. Past the first cut, additive increase and multiplicative
       decrease converge rather than oscillate; a window that is not full never grows
       (idle time proves nothing), and a window full of connections that cost nothing
       (an attacker's silent ones) grows while the loop keeps up, so they cannot hold
       the door shut.

       Fairly: the top ``auth_reserve`` of the window (the *reserve*,
       ``floor(window * auth_reserve)`` slots) goes only to a source holding fewer than
       its *share*, ``max(1, floor(window * source_share))`` connections in flight.
       What this guarantees, for the window at the moment of each admission: a source
       gains a connection in flight only while fewer than ``window - reserve`` are in
       flight or while it holds fewer than its share, so one source, however fast it
       floods, holds at most ``max(share, window - reserve)``: a lone source gets the
       window less the reserve, which grows with the window while the loop keeps up.
       With the defaults that leaves a quarter of the window (the reserve, larger than
       a share) to everyone else: a client from any other source that holds less than
       its share is admitted at its first attempt whenever fewer than ``window`` are in
       flight. ``k`` sources flooding together take at most ``k`` shares of the
       reserve. Against many addresses nothing better is possible within a fixed total:
       the worker never admits while ``window`` (at most ``max_pending_auth``) auths are
       in flight, and that bound, which follows the lag, not fairness, is what protects
       it; the challenge phase stays fair regardless. A window full of connections that
       have not answered gives way by the waiting rule, as the challenge phase does (one
       eviction frees a place in both); connections that answered never give way.

    A refusal of any kind changes nothing but the refusal count, and :meth:`check`
    answers what :meth:`admit` would, committing nothing when it is ``OK`` (the shell's
    refusal before the handshake). Connections are keyed by id and every release is idempotent,
    so a connection is never counted twice and never leaks a slot; an evicted
    connection is released at once, and the shell's later ``closed`` changes nothing.
    Per-source state is bounded: a source is remembered only while it holds a connection
    in flight (at most ``max_pending_auth`` of them).
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from shared.options import at_least, option, positive, validate
from workers.ratelimit import EPSILON


class Admit(enum.Enum):
    """The door's answer to a new connection; every refusal is try-again-later (HTTP 503
    before the handshake, or 1013 after it)."""

    OK = "ok"
    FULL = "full"  # max_connections connections open, in any state
    BUSY = "busy"  # challenge phase full and the newcomer's source already has its share
    THROTTLED = "throttled"  # auth window full (for this source, or for everyone)


@dataclass(frozen=True, slots=True)
class Decision:
    """What :meth:`Admission.admit` decided: the verdict on the new connection and the
    pending connections evicted to make room for it (already released from every count;
    the shell closes them with 1013)."""

    verdict: Admit
    evict: tuple[int, ...] = ()
    waited: bool = False
    """The eviction is by the waiting rule (the oldest waiting connection, past
    ``challenge_grace``), not by the heavier-source rule."""

    @property
    def admitted(self) -> bool:
        return self.verdict is Admit.OK


MIN_WINDOW: Final = 16.0
"""The auth window never shrinks below this: however loaded, a worker keeps a few auths
going. Most of a storm's lag comes from elsewhere (fan-out of the joins to the clients
already online, a neighbour on the machine), which a smaller window would not remove,
only prolong: fan-out costs per update, and updates keep coming at the coordinator's
batching rate as long as anyone joins. 16 auths in flight cost the loop about a
millisecond of signature checks."""

DECREASE: Final = 0.75
"""The window's factor for a tick whose lag is over the target. Gentler than halving: a
fan-out spike is one late tick, and a sustained overload still shrinks the window
tenfold in eight ticks (under a second)."""

SLOW_START: Final = 2.0
"""The window's factor for a tick within the lag target in which it turned someone
away, while it is below the threshold (the ceiling until the lag first passes the
target): a worker that starts at ``auth_window`` reaches a thousand auths in flight in
four ticks of demand, and the first late tick ends it."""

INCREASE: Final = 8.0
"""Slots added to the window for a tick within the lag target in which the window turned
someone away: 80 more auths in flight per second of demand, so a window that was cut
in half regrows within a second or two rather than overshooting."""


SUSPECT_FOR: Final = 30.0
"""Seconds a source is *marked* after one of its connections left the challenge phase
without a valid answer: replaced under the waiting rule (it waited past
``challenge_grace`` while the door was full), closed by its client, answered wrongly,
or silent to its deadline (:meth:`Admission.closed`, :meth:`Admission.unanswered`). A marked source
may not replace anyone by the waiting rule, nor take the top of the challenge phase
(:data:`CHALLENGE_RESERVE`): a silent address evicted once cannot come back and evict in turn,
so an attacker's reopened connections do not sweep the room of everything that became
old enough, and what became old enough waits for a newcomer."""

CHALLENGE_RESERVE: Final = 0.25
"""The top of the challenge phase that a marked source (see :data:`SUSPECT_FOR`) may
enter only by the count rule (from a source holding two more), as if the room were
full: a quarter of ``max_pending_auth``, rounded down. An attacker that
closes its own silent connections before they have waited ``challenge_grace`` and
reopens them (so that none is ever old enough to give way) is marked at its first such
close, and then keeps at most the rest of the room young: the reserve stays for
sources that have not left a connection silent, or is renewed with fresh addresses."""

SUSPECTS_PER_SLOT: Final = 32
"""Sources remembered that way, per slot of the challenge phase (32,000 at the defaults,
a few MiB); past it the oldest mark is forgotten first."""


def _fraction(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _share(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionLimits:
    """One worker's door (see :class:`Admission`)."""

    max_connections: int = option(
        50_000,
        "connections per worker in any state (then 503, or 1013 after the handshake): "
        "each idle connection costs about 13 KiB of the worker's objects, so 50,000 are "
        "about 650 MiB; their buffers are bounded by --memory-budget, which also admits "
        "only as many connections as half of it can reserve kernel send buffers for",
        check=at_least(1),
    )
    max_pending_auth: int = option(
        1000,
        "connections per worker in the challenge phase (then 1013 before the challenge, "
        "or the oldest of the heaviest source makes room), and the auth window's ceiling: "
        "caps idle half-open connections",
        check=at_least(1),
    )
    challenge_grace: float = option(
        0.5,
        "seconds a connection in the challenge phase is safe from being replaced: once "
        "the challenge phase or the auth window is full, a newcomer from an address "
        "holding fewer waiting connections takes the place of the connection that has "
        "waited longest, if it has waited this long without answering (1013); a real "
        "client answers within one round trip",
        check=positive,
    )
    lag_target: float = option(
        0.25,
        "event-loop lag in seconds over which the worker admits fewer new connections "
        "(the auth window shrinks; within it, it grows while there is demand): a quarter "
        "of a second late is unnoticeable to online clients, whose pings time out after "
        "many seconds, and leaves room for the fan-out spikes a storm brings on a small "
        "machine",
        check=positive,
    )
    auth_window: int = option(
        64,
        "auths in flight per worker (admitted, not yet acknowledged) at the start, "
        "before the lag adjusts it: enough for several hundred auths per second at the "
        "round trip of a loaded loopback, few enough that verifying them all at once "
        "takes a few milliseconds",
        check=at_least(1),
    )
    auth_reserve: float = option(
        0.25,
        "fraction of the auth window kept for sources holding less than their share "
        "(--source-share): the room a newcomer finds while another source floods; 0 "
        "turns it off",
        check=_fraction,
    )
    source_share: float = option(
        0.1,
        "a source's share of the auth window (at least one): what it may still take from "
        "the reserve; less than the reserve, so one flooding source leaves others room",
        check=_share,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(slots=True)
class _Source:
    """What the door remembers about one source while it has connections in flight."""

    pending: OrderedDict[int, None]  # its connections in the challenge phase, oldest first
    flying: int = 0  # its connections in flight (challenge phase included)


class Admission:
    """Per-worker door: a cap on connections, a fair challenge phase, a fair auth window
    that follows the event loop's lag.

    ``admit`` when a connection arrives (``check`` first, to refuse before the
    handshake), ``authenticated`` when it leaves the challenge phase with a valid answer
    (whatever the coordinator then says), ``unanswered`` when it leaves it without one
    (a bad frame, its deadline), ``settled`` when it is acknowledged or fails,
    ``closed`` when it ends, and ``observe`` once a tick with the lag. Times are the
    caller's monotonic clock. Connection ids are the caller's: each is counted at most
    once, every release is idempotent, and an id released (or evicted) is forgotten, so
    the caller must not reuse ids.
    """

    __slots__ = (
        "_by_count",
        "_ceiling",
        "_floor",
        "_flying",
        "_heaviest",
        "_held_back",
        "_open",
        "_pending",
        "_since",
        "_sources",
        "_suspects",
        "_threshold",
        "_turned_away",
        "evicted",
        "limits",
        "refused",
        "replaced",
        "window",
    )

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits if limits is not None else AdmissionLimits()
        lim = self.limits
        self._ceiling = float(lim.max_pending_auth)
        self._floor = min(MIN_WINDOW, self._ceiling)
        self.window = min(max(float(lim.auth_window), self._floor), self._ceiling)
        """Auths allowed in flight now (see :meth:`observe`)."""
        self._threshold = self._ceiling  # where doubling gives way to adding
        self._held_back = math.floor(lim.max_pending_auth * CHALLENGE_RESERVE)
        self._pending: dict[int, str] = {}  # challenge phase: connection -> source, oldest first
        self._since: dict[int, float] = {}  # challenge phase: connection -> admitted at
        # Sources replaced under the waiting rule -> until when they may not replace by it.
        self._suspects: OrderedDict[str, float] = OrderedDict()
        self._flying: dict[int, str] = {}  # in flight (challenge phase included)
        self._open: set[int] = set()  # past the challenge phase, not closed yet
        self._sources: dict[str, _Source] = {}
        # Sources by how many pending connections they hold (> 0), and the largest count.
        self._by_count: dict[int, OrderedDict[str, None]] = {}
        self._heaviest = 0
        self._turned_away = False  # the window refused someone since the last observe
        self.refused: dict[Admit, int] = {}
        """Refusals by verdict, since the start (for ``/healthz`` and logs)."""
        self.evicted = 0
        """Pending connections evicted to make room for other sources, since the start."""
        self.replaced = 0
        """Of those, the ones evicted by the waiting rule (past ``challenge_grace``)."""

    # ------------------------------------------------------------------ figures

    @property
    def pending(self) -> int:
        """Connections in the challenge phase."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """Connections admitted and not yet settled (challenge phase included)."""
        return len(self._flying)

    @property
    def connections(self) -> int:
        """Connections counted against ``max_connections`` (any state)."""
        return len(self._pending) + len(self._open)

    @property
    def sources(self) -> int:
        """Sources remembered (holding a connection in flight)."""
        return len(self._sources)

    @property
    def suspects(self) -> int:
        """Sources remembered as replaced under the waiting rule (expired ones included
        until they are next looked at)."""
        return len(self._suspects)

    @property
    def reserve(self) -> int:
        """Slots at the top of the window kept for sources under their share."""
        return math.floor(self.window * self.limits.auth_reserve)

    @property
    def share(self) -> int:
        """Connections in flight a source may hold and still take from the reserve."""
        return max(1, math.floor(self.window * self.limits.source_share))

    def flying(self, source: str) -> int:
        """``source``'s connections in flight."""
        known = self._sources.get(source)
        return 0 if known is None else known.flying

    # ------------------------------------------------------------------ events

    def observe(self, lag: float) -> None:
        """Once a tick: the event loop's lag (seconds its timers fired late). Over the
        target the window shrinks by :data:`DECREASE`, and that is the threshold from
        then on; within it, if the window turned someone away since the last call, it
        doubles up to the threshold (:data:`SLOW_START`), and past it grows by
        :data:`INCREASE`. A lag that is not a number counts as over the target."""
        if not lag <= self.limits.lag_target:  # (nan too)
            self.window = self._threshold = max(self._floor, self.window * DECREASE)
        elif self._turned_away:
            window = self.window
            if window < self._threshold:
                grown = min(self._threshold, window * SLOW_START)
            else:
                grown = window + INCREASE
            self.window = min(self._ceiling, grown)
        self._turned_away = False

    def check(self, source: str, now: float = 0.0) -> Admit:
        """What :meth:`admit` would answer a connection from ``source`` at ``now``, for
        the shell to refuse before the handshake. ``OK`` changes nothing (:meth:`admit`
        commits it, and may still refuse if the room went to another in between); a
        refusal is counted as :meth:`admit` counts it, since the shell carries it out."""
        verdict, _, _ = self._decide(source, now)
        if verdict is not Admit.OK:
            self._refuse(verdict)
        return verdict

    def admit(self, conn: int, source: str, now: float = 0.0) -> Decision:
        """Admit connection ``conn`` from ``source`` into the challenge phase at ``now``
        (the caller's clock, which must not go backwards), or say why not. Checked in
        order: ``FULL``, the challenge phase (room, else an eviction from the heaviest
        source, else one by the waiting rule, else ``BUSY``), then the window (room, else
        an eviction by the waiting rule, else ``THROTTLED``). A refusal changes nothing
        but the refusal count: no eviction, no remembered source. A connection already
        counted is ``OK`` again and costs nothing."""
        if conn in self._pending or conn in self._open:
            return Decision(Admit.OK)
        verdict, victim, waited = self._decide(source, now)
        if verdict is not Admit.OK:
            self._refuse(verdict)
            return Decision(verdict)
        if victim is not None:
            if waited:
                self._suspect(self._pending[victim], now)
                self.replaced += 1
            self._release(victim)
            self._settle(victim)
            self.evicted += 1
        entry = self._sources.get(source)
        if entry is None:
            entry = self._sources[source] = _Source(OrderedDict())
        self._pending[conn] = source
        self._since[conn] = now
        self._flying[conn] = source
        entry.flying += 1
        entry.pending[conn] = None
        self._recount(source, len(entry.pending) - 1, len(entry.pending))
        return Decision(Admit.OK, () if victim is None else (victim,), waited)

    def authenticated(self, conn: int) -> None:
        """``conn`` left the challenge phase (answered its challenge; without a valid
        answer it is :meth:`unanswered`) but stays open, and in flight until
        :meth:`settled`. Idempotent; unknown or evicted ids change nothing."""
        if self._release(conn):
            self._open.add(conn)

    def settled(self, conn: int) -> None:
        """``conn`` is no longer in flight (acknowledged, or failed). Implies
        :meth:`authenticated`. Idempotent; unknown or evicted ids change nothing."""
        self.authenticated(conn)
        self._settle(conn)

    def unanswered(self, conn: int, now: float) -> bool:
        """``conn`` leaves the challenge phase at ``now`` without a valid answer (a bad
        frame, or its deadline): its source is marked, as for a connection closed while
        waiting, and it is released as by :meth:`settled`. Otherwise a client could keep
        its connections young by sending garbage just before the grace, unmarked.
        Idempotent; unknown or evicted ids change nothing. Whether it marked."""
        source = self._pending.get(conn)
        if source is not None:
            self._suspect(source, now)
        self.settled(conn)
        return source is not None

    def closed(self, conn: int, now: float | None = None) -> bool:
        """``conn`` ended (in any state) at ``now``. One that ends in the challenge phase
        left without answering: its source is marked (:data:`SUSPECT_FOR`), unless
        ``now`` is not given. Idempotent; unknown or evicted ids change nothing. Whether
        it marked."""
        source = self._pending.get(conn)
        if source is not None and now is not None:
            self._suspect(source, now)
        else:
            source = None
        self._release(conn)
        self._settle(conn)
        self._open.discard(conn)
        return source is not None

    # ------------------------------------------------------------------ internals

    def _refuse(self, verdict: Admit) -> None:
        self.refused[verdict] = self.refused.get(verdict, 0) + 1
        if verdict is Admit.THROTTLED:
            self._turned_away = True

    def _decide(self, source: str, now: float) -> tuple[Admit, int | None, bool]:
        """The verdict, the connection to evict for it, and whether by the waiting rule."""
        lim = self.limits
        if self.connections >= lim.max_connections:
            return Admit.FULL, None, False
        known = self._sources.get(source)
        held = len(known.pending) if known is not None else 0
        victim: int | None = None
        waited = False
        pending = len(self._pending)
        full = pending >= lim.max_pending_auth
        if not full and pending >= lim.max_pending_auth - self._held_back:
            full = self._suspected(source, now)  # for it the reserve is full: by count only
        if full:
            if self._heaviest >= held + 2:
                heaviest = self._sources[next(iter(self._by_count[self._heaviest]))]
                victim = next(iter(heaviest.pending))
            else:  # evicting by count would only swap who holds more: by time, then
                victim = self._waited(source, held, now)
                if victim is None:
                    return Admit.BUSY, None, False
                waited = True
        mine = known.flying if known is not None else 0
        if self._fits(len(self._flying) - (victim is not None), mine):  # (not ours)
            return Admit.OK, victim, waited
        if victim is None and (victim := self._waited(source, held, now)) is not None:
            self._turned_away = True  # the window was full: demand, as for a refusal
            if self._fits(len(self._flying) - 1, mine):
                return Admit.OK, victim, True
        return Admit.THROTTLED, None, False

    def _fits(self, flying: int, mine: int) -> bool:
        """Whether one more fits in the window with ``flying`` in flight, ``mine`` of
        them the newcomer's source's."""
        if flying + 1 <= self.window - self.reserve + EPSILON:
            return True
        return flying + 1 <= self.window + EPSILON and mine < self.share

    def _waited(self, source: str, held: int, now: float) -> int | None:
        """The waiting rule: the connection that has waited longest in the challenge
        phase, if it has waited ``challenge_grace`` and its source holds more waiting
        connections than ``source`` (``held``), and ``source`` was not itself replaced
        by this rule within :data:`SUSPECT_FOR`. O(1): only the oldest is looked at."""
        oldest = next(iter(self._pending), None)
        if oldest is None or now - self._since[oldest] < self.limits.challenge_grace:
            return None
        if len(self._sources[self._pending[oldest]].pending) <= held:
            return None
        if self._suspected(source, now):
            return None
        return oldest

    def _suspect(self, source: str, now: float) -> None:
        """Remember ``source`` as replaced under the waiting rule until ``SUSPECT_FOR``
        from ``now``; the oldest mark goes first past the bound."""
        self._forget(now)
        suspects = self._suspects
        suspects[source] = now + SUSPECT_FOR
        suspects.move_to_end(source)
        bound = SUSPECTS_PER_SLOT * self.limits.max_pending_auth
        while len(suspects) > bound:
            suspects.popitem(last=False)

    def _suspected(self, source: str, now: float) -> bool:
        self._forget(now)
        until = self._suspects.get(source)
        return until is not None and until > now

    def _forget(self, now: float) -> None:
        """Forget the marks expired at ``now``: they are kept in the order they expire,
        so this costs one look plus one per mark forgotten."""
        suspects = self._suspects
        while suspects:
            first, until = next(iter(suspects.items()))
            if until > now:
                break
            del suspects[first]

    def _release(self, conn: int) -> bool:
        """Take ``conn`` out of the challenge phase; ``False`` if it was not there."""
        source = self._pending.pop(conn, None)
        if source is None:
            return False
        del self._since[conn]
        entry = self._sources[source]
        del entry.pending[conn]
        held = len(entry.pending)
        self._recount(source, held + 1, held)
        return True

    def _settle(self, conn: int) -> None:
        """Take ``conn`` out of flight (after :meth:`_release`); forget an empty source."""
        source = self._flying.pop(conn, None)
        if source is None:
            return
        entry = self._sources[source]
        entry.flying -= 1
        if entry.flying == 0:
            del self._sources[source]

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
