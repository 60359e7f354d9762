"""The load generator's lobby views: one parse per update text, views shared between
clients that hold equal ones, and updates applied later for unsampled clients.

The checks are the core's (:func:`shared.session.check_update` and
:func:`shared.session.snapshot_keys`); what this module adds is where the sets live
and when an update is applied. :mod:`scripts.loadtest.client` explains why that is
sound (sampled checking) and uses it.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Final

from shared import protocol
from shared.session import check_update, snapshot_keys

if TYPE_CHECKING:
    from scripts.loadtest.client import LoadClient


class Update:
    """A well-formed ``lobby_update``, parsed once (:meth:`of`): what every client of the
    process checks against its own view. ``clean``: neither list repeats a key and not
    both are empty (the checks that depend on the frame alone)."""

    __slots__ = (
        "clean",
        "growth",
        "joined",
        "joined_set",
        "left",
        "left_set",
        "memo",
        "new",
        "seq",
        "size",
    )

    def __init__(self, seq: int, joined: tuple[str, ...], left: tuple[str, ...]) -> None:
        self.seq = seq
        self.joined = joined
        self.left = left
        self.size = len(joined) + len(left)
        self.memo: Any = None
        """Scratch space for the lobby hook, shared by every client of the process."""
        self.joined_set = frozenset(joined)
        self.left_set = frozenset(left)
        self.new = self.joined_set - self.left_set
        self.clean = bool(joined or left) and (
            len(self.joined_set) == len(joined) and len(self.left_set) == len(left)
        )
        self.growth = len(self.joined_set) - len(self.left_set)
        """How many more keys a view holds once it applied this (clean, consistent)
        update: ``left`` goes first, and every ``left`` key was online."""

    @classmethod
    def of(cls, msg: protocol.LobbyUpdate) -> Update:
        """``msg``'s update, its keys interned (the fast path's already are; those the
        library decoded are not)."""
        return cls(msg.seq, _interned(msg.joined), _interned(msg.left))


def _interned(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple([sys.intern(key) for key in keys])


class UpdateCache:
    """Parsed updates by frame text, the oldest forgotten past ``max_chars`` of text."""

    def __init__(self, max_chars: int = 32 * 2**20, max_frame: int = 2**20) -> None:
        self.max_chars = max_chars
        self.max_frame = max_frame
        self.chars = 0
        self.hits = 0
        self.misses = 0
        self._by_text: dict[str, Update] = {}
        self._order: deque[str] = deque()

    def get(self, text: str) -> Update | None:
        update = self._by_text.get(text)
        if update is None:
            self.misses += 1
        else:
            self.hits += 1
        return update

    def put(self, text: str, update: Update) -> None:
        if len(text) > self.max_frame or text in self._by_text:
            return
        self._by_text[text] = update
        self._order.append(text)
        self.chars += len(text)
        while self.chars > self.max_chars:
            old = self._order.popleft()
            del self._by_text[old]
            self.chars -= len(old)

    def clear(self) -> None:
        self._by_text.clear()
        self._order.clear()
        self.chars = 0


UPDATES: Final = UpdateCache()
"""This process's cache: all its clients share it."""


BEHIND_MAX: Final = 2048
"""An unsampled client applies what it noted once it is this many updates behind, or
at a bound drawn from [BEHIND_MAX / 2, BEHIND_MAX) (so catch-ups spread out). In a run
shorter than that (2,000 watchers at 200 changes/s make about 55 updates a second),
all of it happens after the measured phase."""


class Ledger:
    """The updates this process's unsampled clients received and have not applied yet.

    An unsampled client that receives the next ``seq`` only notes it (its "behind"
    mark advances); the update itself is kept once per process here, by ``seq``, as the
    first client to receive that ``seq`` got it. A client whose update for a ``seq`` is
    not that very object (another text, e.g. after a server-side break restarted the
    numbering) does not defer it: it catches up and applies it itself. So what a
    client later applies from here is exactly what it received.

    :meth:`catch_up_all` applies every client's backlog (with the library's checks)
    and empties the ledger; the agent calls it before anything reads a view.
    :meth:`trim` forgets the updates that no client has left to apply, which bounds
    the ledger's memory to about ``keep`` updates (no client is further behind than
    :data:`BEHIND_MAX`)."""

    def __init__(self, keep: int = 2 * BEHIND_MAX) -> None:
        self.keep = keep
        self.by_seq: dict[int, Update] = {}
        self.behind: set[LoadClient] = set()
        self.trim_at = keep
        self.noted = 0
        """Updates noted instead of applied on arrival, over the process's life."""

    def catch_up_all(self) -> None:
        for client in list(self.behind):
            client.catch_up()
        self.behind.clear()
        self.by_seq.clear()
        SHARED.forget_catch_ups()
        self.trim_at = self.keep

    def trim(self) -> None:
        """Forget the updates every client behind has applied already."""
        bases = [client.load_view.seq for client in self.behind]
        low = min((seq for seq in bases if seq is not None), default=None)
        if low is None:
            self.by_seq.clear()
        else:
            for seq in [seq for seq in self.by_seq if seq <= low]:
                del self.by_seq[seq]
        SHARED.forget_catch_ups()
        self.trim_at = len(self.by_seq) + self.keep


LEDGER: Final = Ledger()
"""This process's ledger: all its clients share it."""


class SharedViews:
    """Views that many clients of this process hold alike, kept once.

    Every client receives a ``lobby_snapshot`` of the whole lobby, so N clients joining
    one by one hold N²/2 keys between them: 20,000 idle clients would need some 18 GiB
    of sets in the generator. But the snapshots sent at one ``seq`` are equal, and an
    unsampled client applies its noted updates only later, all from :data:`LEDGER`. So
    a snapshot's keys are kept once per distinct set (:meth:`snapshot`, an equal
    frozenset is looked up, not copied), and a client that catches up from a shared
    set to the same ``seq`` as another one that started from the same set at the same
    ``seq`` gets that one's result (:meth:`caught_up`), which it would have computed
    key for key. A view is thawed into a set of its own the first time it is changed
    in place (an update applied on arrival). Both tables are bounded, and the catch-up
    table is cleared whenever the ledger forgets updates (a ``seq`` may then come back
    with another meaning)."""

    def __init__(self, keep: int = 1024) -> None:
        self.keep = keep
        self.snapshots: dict[frozenset[str], frozenset[str]] = {}
        self.catch_ups: dict[tuple[int, int, int], tuple[frozenset[str], frozenset[str]]] = {}

    def snapshot(self, keys: frozenset[str]) -> frozenset[str]:
        shared = self.snapshots.get(keys)
        if shared is None:
            if len(self.snapshots) >= self.keep:
                self.snapshots.clear()
            shared = self.snapshots[keys] = keys
        return shared

    def caught_up(self, base: frozenset[str], seq: int, last: int) -> frozenset[str] | None:
        """The view that catching up from ``base`` at ``seq`` to ``last`` gave before."""
        hit = self.catch_ups.get((id(base), seq, last))
        return hit[1] if hit is not None and hit[0] is base else None

    def remember(self, base: frozenset[str], seq: int, last: int, result: frozenset[str]) -> None:
        if len(self.catch_ups) >= self.keep:
            self.catch_ups.clear()
        self.catch_ups[id(base), seq, last] = (base, result)  # holding base keeps its id

    def forget_catch_ups(self) -> None:
        self.catch_ups.clear()


SHARED: Final = SharedViews()
"""This process's shared views."""

# --------------------------------------------------------------------------- the view


class LoadView:
    """A lobby view (:class:`shared.session.View`) that stores each key string once per
    process (interned), shares equal snapshots (:class:`SharedViews`) and applies a
    pre-parsed :class:`Update` cheaply.

    Every client parses its own copy of every key (about 110 bytes each); with
    thousands of clients each holding thousands of keys, sharing them is what keeps a
    generator process in memory. The checks are the core's: the fast path takes only
    an update :func:`~shared.session.check_update` would accept (the next ``seq``, a
    clean delta, every ``left`` key online, no new ``joined`` key online), with the
    same effect; anything else goes through that function, which raises its error."""

    __slots__ = ("_online", "seq")

    def __init__(self) -> None:
        self.seq: int | None = None
        # A frozenset while shared with other clients; thawed into a set of its own the
        # first time it is changed in place.
        self._online: set[str] | frozenset[str] = frozenset()

    @property
    def online(self) -> frozenset[str]:
        """A copy of the online keys (O(n); use ``in`` and ``len`` for cheap checks)."""
        return frozenset(self._online)

    def __contains__(self, key: object) -> bool:
        return key in self._online

    def __len__(self) -> int:
        return len(self._online)

    def __repr__(self) -> str:
        return f"LoadView(seq={self.seq}, online={len(self._online)})"

    def matches(self, keys: AbstractSet[str]) -> bool:
        """True when exactly ``keys`` are online."""
        return self._online == keys

    def apply_snapshot(self, seq: int, keys: Iterable[str]) -> None:
        """The core's snapshot, its keys shared with equal snapshots."""
        self._online = SHARED.snapshot(snapshot_keys(seq, map(sys.intern, keys)))
        self.seq = seq

    def apply_update(self, seq: int, joined: Iterable[str], left: Iterable[str]) -> None:
        """The core's update (checks and errors of :func:`~shared.session.check_update`)."""
        left_set, joined_set = check_update(
            self._online, self.seq, seq, map(sys.intern, joined), left
        )
        online = self._thaw()
        online.difference_update(left_set)
        online.update(joined_set)
        self.seq = seq

    def _thaw(self) -> set[str]:
        """The view as a set of its own, to change in place."""
        online = self._online
        if isinstance(online, frozenset):
            online = self._online = set(online)
        return online

    def apply_parsed(self, update: Update) -> None:
        online = self._online
        current = self.seq
        if (
            current is not None
            and update.seq == current + 1
            and update.clean
            and update.left_set <= online
            and online.isdisjoint(update.new)
        ):
            online = self._thaw()
            online.difference_update(update.left_set)
            online.update(update.joined_set)
            self.seq = update.seq
        else:
            self.apply_update(update.seq, update.joined, update.left)

    def catch_up(self, last: int, by_seq: dict[int, Update]) -> None:
        """Apply ``by_seq``'s updates after ``seq`` up to ``last`` (raising the first
        :class:`~shared.session.ViewError`, as on arrival); from a shared view, share
        the result with the clients that catch up from it alike (:class:`SharedViews`)."""
        base, start = self._online, self.seq
        assert start is not None  # noted only after a snapshot
        if isinstance(base, frozenset):
            result = SHARED.caught_up(base, start, last)
            if result is not None:
                self._online, self.seq = result, last
                return
        for seq in range(start + 1, last + 1):
            self.apply_parsed(by_seq[seq])
        if isinstance(base, frozenset):
            result = frozenset(self._online)
            SHARED.remember(base, start, last, result)
            self._online = result
