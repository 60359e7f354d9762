"""One worker's memory budget for what its connections buffer (pure).

Theory of operation
-------------------
What a worker's memory grows with under load is what its connections buffer: the
bytes written to a client and not yet sent (the transport's backlog, in user space)
and the kernel's send buffer of each socket. The rest of a connection (its objects,
about 13 KiB while idle) is fixed per connection and bounded by ``--max-connections``.
:class:`MemoryBudget` holds both buffers under one ceiling, ``memory_budget`` bytes,
and says who gets what at the bound. It is exact about what it charges:

* **Kernel send buffers.** The shell asks the kernel for a fixed ``send_buffer_bytes``
  per socket (``SO_SNDBUF``; Linux grants twice the asked size, for its bookkeeping,
  and that granted size is what is charged). A fixed buffer also keeps the backlog the
  worker cannot see small, so the lag limit means what it says. Each connection
  *reserves* its granted buffer when it is accepted (:meth:`reserve`) and frees it
  when it ends (:meth:`release`). Reservations may take at most
  :data:`CONNECTION_SHARE` of the budget: past that, or while the backlogs are past
  half the pool (below), a new connection is refused (HTTP 503 at the door, 1013 if it
  got past the door meanwhile), so the rest is always there for backlogs, and a flood
  of newcomers (each gets a snapshot at once) cannot take it from those served.
* **Backlogs.** The shell tells the budget a connection's backlog after every write to
  it and, once a tick, for every connection that still has one (:meth:`observe`), so
  a byte is charged when it is written and released when the tick sees the transport
  drained, or when the connection ends. Between two ticks a charge can only be too
  high, never too low.

Past the bound the budget refuses new work, heaviest first: the *pool* is what the
reservations leave. While backlogs take at most half of the pool, a connection may
grow its backlog by whatever the pool has left. Past half (*pressure*), the
connections of one *source* (a client address, as the door's admission sees it) may
hold at most an equal share of half the pool (``pool / 2 / sources with a
backlog``), so the heaviest are refused first and a light client is still served
until the pool is full. Sources, not connections: keys are free, so one address with
a thousand keys must count as one user of the pool, not a thousand. :meth:`allowance`
is that figure, which the connection's machine compares with what it is about to
write: a direct message over it is refused to its sender (``rate_limited``), a lobby
update or a snapshot over it is skipped, so the view collapses to a later snapshot.

Memory coming back: the C allocator keeps freed memory mapped (the buffers, and what
parsing a load's frames took), so when the backlogs fall from above a 64th of the
budget to almost nothing the budget says so once (:meth:`drained`), and the shell
gives the free memory back to the system (measured: 200 keys filling their backlogs
left 120 MiB of RSS; given back, 52 MiB, from 38 before).

Not charged: what a connection receives. websockets holds at most
:data:`~workers.server.INCOMING_FRAMES` frames of ``--max-frame-bytes`` per
connection before it stops reading, and the handler takes each at once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from shared.options import at_least, option, validate

H = TypeVar("H", bound=Hashable)

CONNECTION_SHARE: Final = 0.5
"""The share of the budget that connections' reserved kernel send buffers may take."""
TRIM_ABOVE: Final = 1 / 64
"""Backlogs above this share of the budget, and then almost none: give memory back."""
TRIM_BELOW: Final = 1 / 256


def _nothing() -> int:
    return 0


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryLimits:
    """The worker's memory budget (part of :class:`~workers.settings.WorkerSettings`)."""

    memory_budget: int = option(
        512 * 1024 * 1024,
        "bytes per worker for every connection's buffers: the backlogs written and not "
        "yet sent, and the kernel send buffers reserved per connection (at most half of "
        "it; then new connections get 503). Past it messages are refused rate_limited "
        "and lagging views wait for a later snapshot, heaviest connections first",
        check=at_least(1024 * 1024),
    )
    send_buffer_bytes: int = option(
        8 * 1024,
        "kernel send buffer asked for each client socket (SO_SNDBUF; Linux grants "
        "twice this, which the memory budget reserves per connection): small, so the "
        "backlog the worker cannot see stays small and a slow reader's view stays fresh",
        check=at_least(4096),
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True)
class Figures:
    """The budget's state, for ``/healthz`` and the metrics."""

    limit: int
    reserved: int
    backlog: int
    connections: int
    backlogged: int
    indexes: int = 0

    @property
    def used(self) -> int:
        return self.reserved + self.backlog + self.indexes


class MemoryBudget(Generic[H]):
    """The worker-wide ledger of buffered bytes (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._reserved: dict[H, int] = {}
        self._backlog: dict[H, int] = {}  # only connections with a backlog
        self._sources: dict[H, object] = {}  # a connection's source (else itself)
        self._by_source: dict[object, int] = {}  # only sources with a backlog
        self._reserved_total = 0
        self._backlog_total = 0
        self._peaked = False
        self.refused_connections = 0
        self.indexes: Callable[[], int] = _nothing
        """The bytes the worker's version 2 indexes hold (watchlists, the resume ring):
        charged before any backlog (:mod:`workers.scopes`)."""

    def admits_index(self, extra: int) -> bool:
        """Whether the indexes may grow by ``extra`` bytes: not while the backlogs are
        past half the pool (pressure), nor past the pool."""
        pool = self.limit - self._reserved_total - self.indexes() - extra
        return self._backlog_total <= pool // 2

    # ------------------------------------------------------------------ connections

    def admits(self, reserve: int, source: object = None) -> bool:
        """Whether a new connection from ``source`` reserving ``reserve`` bytes fits,
        and, while the backlogs are past half the pool, whether its source holds less
        than its share: a newcomer gets a snapshot at once, which under pressure must
        not come out of the share of those already served, nor let a heavy source in."""
        reserved = self._reserved_total + reserve
        if reserved > self.limit * CONNECTION_SHARE:
            return False
        return self._source_room(object() if source is None else source) > 0

    def reserve(self, handle: H, reserve: int, source: object = None) -> bool:
        """Reserve ``handle``'s kernel send buffer; ``False`` (nothing reserved) if it
        does not fit. ``source`` is the client's address (as admission sees it): the
        budget is shared fairly between sources, not connections, so that many keys
        from one address count as one (without one, the connection is its own)."""
        if handle in self._reserved:
            return True
        if not self.admits(reserve, source):
            self.refused_connections += 1
            return False
        self._reserved[handle] = reserve
        self._reserved_total += reserve
        if source is not None:
            self._sources[handle] = source
        return True

    def release(self, handle: H) -> None:
        """``handle`` ended: its reservation and backlog are free."""
        self._reserved_total -= self._reserved.pop(handle, 0)
        self.observe(handle, 0)
        self._sources.pop(handle, None)

    # ------------------------------------------------------------------ backlogs

    def observe(self, handle: H, buffered: int) -> None:
        """``handle``'s transport holds ``buffered`` bytes now."""
        was = self._backlog.get(handle, 0)
        if buffered == was:
            return
        if buffered > 0:
            self._backlog[handle] = buffered
        else:
            del self._backlog[handle]
        self._backlog_total += buffered - was
        source = self._sources.get(handle, handle)
        held = self._by_source.get(source, 0) + buffered - was
        if held > 0:
            self._by_source[source] = held
        else:
            del self._by_source[source]
        if self._backlog_total > self.limit * TRIM_ABOVE:
            self._peaked = True

    def backlogged(self) -> Iterable[H]:
        """The connections with a backlog charged (a copy: observe them freely)."""
        return list(self._backlog)

    def allowance(self, handle: H) -> int:
        """How many more bytes ``handle``'s backlog may take now (may be negative)."""
        return self._source_room(self._sources.get(handle, handle))

    def _source_room(self, source: object) -> int:
        """What the backlogs of ``source`` may still grow by: the pool's free bytes,
        and past half the pool no more than an equal share of that half per source
        holding a backlog, less what it holds."""
        pool = self.limit - self._reserved_total - self.indexes()
        free = pool - self._backlog_total
        if self._backlog_total <= pool // 2:
            return free
        own = self._by_source.get(source, 0)
        holders = len(self._by_source) + (source not in self._by_source)
        return min(free, pool // 2 // holders - own)

    def drained(self) -> bool:
        """``True`` once each time the backlogs fall back to almost nothing after they
        took more than :data:`TRIM_ABOVE` of the budget: the moment to give freed
        memory back to the system."""
        if self._peaked and self._backlog_total <= self.limit * TRIM_BELOW:
            self._peaked = False
            return True
        return False

    def figures(self) -> Figures:
        return Figures(
            limit=self.limit,
            reserved=self._reserved_total,
            backlog=self._backlog_total,
            connections=len(self._reserved),
            backlogged=len(self._backlog),
            indexes=self.indexes(),
        )

    def check(self) -> None:
        """Raise ``AssertionError`` unless the totals agree with the ledger (tests)."""
        assert self._reserved_total == sum(self._reserved.values())
        assert self._backlog_total == sum(self._backlog.values())
        assert all(v > 0 for v in self._backlog.values())
        by_source: dict[object, int] = {}
        for handle, held in self._backlog.items():
            source = self._sources.get(handle, handle)
            by_source[source] = by_source.get(source, 0) + held
        assert by_source == self._by_source
        assert self._reserved_total <= self.limit * CONNECTION_SHARE
