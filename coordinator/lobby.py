"""The lobby: who is online, in one order, published as numbered net-effect deltas.

Theory of operation
-------------------
The coordinator applies every worker event to one :class:`Lobby`, one at a time, so
"in what order did things happen" has exactly one answer: the order of the calls.

A session is a (worker, connection id) pair. Two maps hold the lobby:

* ``live`` - public key -> the session the key is online on *now*, after every event
  applied so far. Race resolution happens here: the newest :meth:`Lobby.add_user` for a
  key wins, and a :meth:`Lobby.remove_user` for a session that is no longer the key's
  current one changes nothing (it was replaced; its close must not remove the newer
  session, whichever worker reports it and whenever).
* ``published`` - the lobby exactly as of the last published ``seq``. Snapshots are
  served from here and only here: serving ``live`` while changes are unpublished would
  let a client see a ``joined`` for a key its snapshot already had.

:meth:`Lobby.flush` publishes: for each key touched since the last flush it compares
``published`` with ``live`` and emits the net effect (absent -> online is *joined*,
online -> absent is *left*, one session -> another is both, no change is nothing).
If anything changed it takes the next ``seq``. In the same step it releases the
acknowledgements of sessions that authenticated since the last flush (each with the
``seq`` that first shows them, so their worker can hold ``auth_ok`` until its replica
has it) and the kicks of sessions that lost their key to a newer one.

Batching is the caller's choice of when to call :meth:`Lobby.flush`: after every event
(no batching) or once per window; the deltas are net effects either way.

Every live session carries a *stamp*, ``(epoch, seq)``: the coordinator epoch and the
update that first published it (for a session not yet published, the next ``seq``).
Epochs sort by start time, so stamps order authentications across coordinator restarts.
:meth:`Lobby.restore_user` uses them when workers re-register sessions (after a
restart, or after a worker that was given up for dead comes back): of two sessions of
one key, the one with the newer stamp stays and the other is kicked.

The class is pure: no sockets, no clocks, no randomness.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple


class Session(NamedTuple):
    """One authenticated connection: which worker holds it and its id there."""

    worker: str
    conn: int


Stamp = tuple[str, int]
"""``(epoch, seq)`` of a session's authentication; larger is newer."""


@dataclass(frozen=True, slots=True)
class Delta:
    """One published change of the lobby: the net effect since ``seq - 1``."""

    seq: int
    joined: list[str]
    left: list[str]


@dataclass(slots=True)
class Flush:
    """What one :meth:`Lobby.flush` asks the caller to send."""

    delta: Delta | None
    acks: list[tuple[Session, int]] = field(default_factory=list)
    """Sessions now published, each with the ``seq`` that first shows it."""
    kicks: list[Session] = field(default_factory=list)
    """Sessions replaced by a newer session of the same key: close with 4002."""


class Lobby:
    """Public key -> live session, with race resolution, batching and numbering.

    ``seq`` is the number of the last published delta (``0`` before any) within
    ``epoch``, the coordinator's epoch (see :func:`shared.backbone.new_epoch`).
    """

    def __init__(self, epoch: str = "", seq: int = 0) -> None:
        self.epoch = epoch
        self.seq = seq
        self._live: dict[str, Session] = {}
        self._stamps: dict[Session, Stamp] = {}
        self._published: dict[str, Session] = {}
        self._by_worker: dict[str, dict[int, str]] = {}
        self._dirty: set[str] = set()
        self._unacked: dict[Session, str] = {}
        self._kicks: list[Session] = []

    # ------------------------------------------------------------------ events

    def add_user(self, key: str, session: Session) -> None:
        """``session`` authenticated as ``key``: it becomes the key's session, and a
        previous session of the key is replaced (kicked at the next flush)."""
        old = self._live.get(key)
        if old == session:
            return  # the same event twice: nothing new happened
        if old is not None:
            self._replace(old)
        self._add(key, session, (self.epoch, self.seq + 1))
        self._unacked[session] = key

    def restore_user(self, key: str, session: Session, stamp: Stamp) -> None:
        """Re-register a session that was authenticated and acknowledged with ``stamp``
        (by this or an earlier coordinator). Of it and the key's current session, the
        newer stamp stays and the other is kicked; it is acknowledged by nobody."""
        current = self._live.get(key)
        if current == session:
            return
        if current is not None:
            if stamp <= self._stamps[current]:
                self._kicks.append(session)
                return
            self._replace(current)
        self._add(key, session, stamp)

    def _add(self, key: str, session: Session, stamp: Stamp) -> None:
        self._live[key] = session
        self._stamps[session] = stamp
        self._by_worker.setdefault(session.worker, {})[session.conn] = key
        self._dirty.add(key)

    def _replace(self, old: Session) -> None:
        """``old`` lost its key to a newer session: forget it, kick it at the flush."""
        self._forget(old)
        self._unacked.pop(old, None)
        self._kicks.append(old)

    def remove_user(self, key: str, session: Session) -> bool:
        """``session`` of ``key`` ended. Returns whether the lobby changed: a session
        that is not the key's current one (replaced, or never added) changes nothing."""
        if self._live.get(key) != session:
            return False
        del self._live[key]
        self._forget(session)
        self._unacked.pop(session, None)
        self._dirty.add(key)
        return True

    def drop_worker(self, worker: str) -> int:
        """Every session on ``worker`` ended (it stopped or died). Returns how many."""
        conns = self._by_worker.pop(worker, {})
        for conn, key in conns.items():
            session = Session(worker, conn)
            del self._live[key]
            del self._stamps[session]
            self._unacked.pop(session, None)
            self._dirty.add(key)
        self._kicks = [s for s in self._kicks if s.worker != worker]
        return len(conns)

    # ------------------------------------------------------------------ queries

    def get_user(self, key: str) -> Session | None:
        """The key's live session, published or not."""
        return self._live.get(key)

    def stamp_of(self, session: Session) -> Stamp | None:
        """The live session's authentication stamp."""
        return self._stamps.get(session)

    def get_published(self, key: str) -> Session | None:
        """The key's session as of ``seq``: the one clients have been told about."""
        return self._published.get(key)

    def sessions_of(self, worker: str) -> dict[int, str]:
        """Connection id -> key for the live sessions on ``worker``."""
        return dict(self._by_worker.get(worker, {}))

    def __len__(self) -> int:
        return len(self._live)

    @property
    def pending(self) -> bool:
        """Whether a flush would publish, acknowledge or kick anything."""
        return bool(self._dirty or self._unacked or self._kicks)

    def snapshot(self) -> tuple[int, list[str]]:
        """The online keys exactly as of ``seq`` (sorted), with ``seq``."""
        return self.seq, sorted(self._published)

    # ------------------------------------------------------------------ publishing

    def flush(self) -> Flush:
        """Publish the net effect of everything since the last flush."""
        joined, left = self._net_changes(self._dirty)
        self._dirty.clear()
        delta = None
        if joined or left:
            self.seq += 1
            delta = Delta(self.seq, joined, left)
        acks = [(session, self.seq) for session in self._unacked]
        kicks = self._kicks
        self._unacked = {}
        self._kicks = []
        return Flush(delta, acks, kicks)

    def _net_changes(self, keys: Iterable[str]) -> tuple[list[str], list[str]]:
        joined: list[str] = []
        left: list[str] = []
        for key in sorted(keys):
            before, after = self._published.get(key), self._live.get(key)
            if before == after:
                continue
            if before is not None:
                left.append(key)
            if after is None:
                del self._published[key]
            else:
                self._published[key] = after
                joined.append(key)
        return joined, left

    def _forget(self, session: Session) -> None:
        self._stamps.pop(session, None)
        conns = self._by_worker.get(session.worker)
        if conns is not None:
            conns.pop(session.conn, None)
            if not conns:
                del self._by_worker[session.worker]
