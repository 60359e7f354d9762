"""The lobby: who is online, in one order, published as numbered net-effect deltas.

Theory of operation
-------------------
The coordinator applies every worker event to one :class:`Lobby`, one at a time, so
"in what order did things happen" has exactly one answer: the order of the calls.

A session is a (worker, connection id) pair. Two maps hold the lobby:

* ``live`` - public key -> the session the key is online on *now*, after every event
  applied so far, and its inverse (session -> key, and per worker). Race resolution
  happens here: the newest :meth:`Lobby.add_user` for a key wins, and a
  :meth:`Lobby.remove_user` for a session that is no longer the key's current one
  changes nothing (it was replaced; its close must not remove the newer session,
  whichever worker reports it and whenever). A session is bound to at most one key: a
  second key claimed for the same session replaces the first binding.
* ``published`` - the lobby exactly as of the last published ``seq``. Snapshots are
  served from here and only here: serving ``live`` while changes are unpublished would
  let a client see a ``joined`` for a key its snapshot already had.

:meth:`Lobby.flush` publishes: for each key touched since the last flush it compares
``published`` with ``live`` and emits the net effect (absent -> online is *joined*,
online -> absent is *left*, one session -> another is both, no change is nothing).
If anything changed it takes the next ``seq``. In the same step it releases the
acknowledgements of sessions that authenticated since the last flush (each with the
``seq`` that shows them, so their worker can hold ``auth_ok`` until its replica has
it), acknowledgements asked for again by a re-registration, and the kicks of sessions
that lost their key to a newer one.

Batching is the caller's choice of when to call :meth:`Lobby.flush`: after every event
(no batching) or once per window; the deltas are net effects either way.

Presence records
----------------
Each live session has a record (:mod:`shared.records`; the default until it sets one),
and ``published`` holds each key's record as of ``seq`` beside its session. The record
belongs to the session: :meth:`Lobby.set_record` from a session that is not the key's
current one changes nothing, and a new session of a key starts with its own record. A
flush compares records too, so the net effect of a window is, per key: a session that
is the same before and after with another record is *updated* (with the last record;
changed and changed back is nothing); a new session is *joined* with its record, never
also updated; a session that left is *left* only.

A delta that changes only records takes the next ``seq`` but keeps ``mseq``, the number
of deltas with at least one joined or left key: protocol 1 clients are numbered by
``mseq`` and never see such a delta (see :mod:`shared.backbone`). Records equal to the
default are not stored (the maps hold the others only), so a lobby of protocol 1
sessions costs what it did before records.

Ordering sessions across coordinator restarts
---------------------------------------------
Every live session carries a *stamp*, ``(epoch, seq)``: the coordinator epoch and the
update that published it. An epoch is ``GENERATION-NONCE`` (see
:func:`shared.backbone.new_epoch`). Workers keep the stamp of each session's ack and
re-register their sessions with it (:meth:`Lobby.reconcile`) when a coordinator does not
know them: after a restart, or after it gave a worker up for dead. Of two sessions of
one key the newer stays and the other is kicked, newer by :meth:`Lobby.rank`:

1. every session this coordinator acknowledged (an epoch of its own life) is newer than
   every session an earlier coordinator acknowledged: coordinators run one at a time
   (each holds a lock), so whatever this one accepted happened after the others stopped;
2. between earlier ones, the higher generation, then the higher ``seq``, is newer.

Rule 2 needs each coordinator's generation to be above every earlier one's. The start
time is only the first guess (it is right unless a clock went back); whenever a worker
reports an epoch whose generation is at or above this coordinator's
(:meth:`Lobby.observe_epoch`), the lobby moves to a generation above it and
re-acknowledges its own sessions with the new epoch, so the workers hold stamps that the
next coordinator will rank correctly. No clock has to agree with another.

The class is pure: no sockets, no clocks, no randomness (the caller makes epochs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from shared import records
from shared.backbone import epoch_generation
from shared.records import Record


class Session(NamedTuple):
    """One authenticated connection: which worker holds it and its id there."""

    worker: str
    conn: int


Stamp = tuple[str, int]
"""``(epoch, seq)`` of a session's acknowledgement; see :meth:`Lobby.rank`."""


class Claim(NamedTuple):
    """A worker's re-registration of one connection (see :meth:`Lobby.reconcile`)."""

    conn: int
    key: str
    stamp: Stamp
    """The ack's stamp; for a session still waiting for its ack, the ``(epoch, seq)``
    the worker's replica was at when it sent ``Authed``."""
    acked: bool
    record: Record = records.DEFAULT


RecordEntry = tuple[str, str, str]
"""``(key, status, data)``."""


@dataclass(slots=True)  # not frozen: made once per publication, where frozen costs a third
class Delta:
    """One published change of the lobby: the net effect since ``seq - 1``. ``mseq``
    is the membership number: one more than the previous delta's when ``joined`` or
    ``left`` is not empty, else the same."""

    seq: int
    mseq: int
    joined: list[str]
    left: list[str]
    updated: list[RecordEntry] = field(default_factory=list)
    """The new record of each key whose session is unchanged and whose record is not."""
    records: list[RecordEntry] = field(default_factory=list)
    """The record of each ``joined`` key that has not the default one."""


@dataclass(slots=True)
class Flush:
    """What one :meth:`Lobby.flush` asks the caller to send."""

    delta: Delta | None
    acks: list[tuple[Session, Stamp]] = field(default_factory=list)
    """Sessions the lobby shows, each with the stamp to acknowledge it with: its worker
    holds ``auth_ok`` until its replica reaches that ``seq`` of that epoch."""
    kicks: list[Session] = field(default_factory=list)
    """Sessions replaced by a newer session of the same key: close with 4002."""


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What :meth:`Lobby.reconcile` did, for the log."""

    claimed: int
    removed: int
    duplicates: int


class Lobby:
    """Public key -> live session, with race resolution, batching and numbering.

    ``seq`` is the number of the last published delta (``0`` before any), ``mseq`` the
    number of the last one that changed who is online; ``epoch`` is the coordinator's
    current epoch, one of :attr:`own_epochs`.
    """

    def __init__(self, epoch: str = "", seq: int = 0) -> None:
        self.epoch = epoch
        self.seq = seq
        self.mseq = seq
        self.own_epochs: set[str] = {epoch}
        self._live: dict[str, Session] = {}
        self._keys: dict[Session, str] = {}
        self._by_worker: dict[str, set[int]] = {}
        self._stamps: dict[Session, Stamp] = {}
        self._published: dict[str, Session] = {}
        self._records: dict[str, Record] = {}  # live key -> record, if not the default
        self._published_records: dict[str, Record] = {}  # the same as of seq
        self._dirty: set[str] = set()
        self._unacked: set[Session] = set()
        self._reack: set[Session] = set()
        self._kicks: list[Session] = []
        self._replaced: set[Session] = set()  # lost their key in this life, not closed yet
        self.replacements = 0
        """Sessions that lost their key to a newer session of it (each is kicked: 4002)."""

    # ------------------------------------------------------------------ events

    def add_user(self, key: str, session: Session, record: Record = records.DEFAULT) -> None:
        """``session`` authenticated as ``key`` with ``record``: it becomes the key's
        session, and a previous session of the key is replaced (kicked at the next
        flush)."""
        if self._live.get(key) == session:
            return  # the same event twice: nothing new happened
        if session in self._replaced:
            return  # it lost its key and is being kicked: it cannot come back
        self._unbind(session)
        old = self._live.get(key)
        if old is not None:
            self._replace(old)
        self._bind(key, session, (self.epoch, self.seq + 1), record)
        self._unacked.add(session)

    def set_record(self, key: str, session: Session, record: Record) -> bool:
        """``session`` of ``key`` changed its record. Returns whether it applied: a
        session that is not the key's current one changes nothing."""
        if self._live.get(key) != session:
            return False
        if record == records.DEFAULT:
            if self._records.pop(key, None) is None:
                return True  # the record it had: nothing to publish
        elif self._records.get(key) == record:
            return True
        else:
            self._records[key] = record
        self._dirty.add(key)
        return True

    def restore_user(
        self, key: str, session: Session, stamp: Stamp, record: Record = records.DEFAULT
    ) -> None:
        """Re-register a session that was authenticated and acknowledged with ``stamp``
        (by this or an earlier coordinator). Of it and the key's current session, the
        newer by :meth:`rank` stays and the other is kicked."""
        current = self._live.get(key)
        if current == session:
            self.set_record(key, session, record)  # the worker's is the latest
            return
        if session in self._replaced:  # it lost its key in this life: kick it (again)
            self._kicks.append(session)
            return
        self._unbind(session)
        if current is not None:
            if self.rank(stamp) <= self.rank(self._stamps[current]):
                self._kicks.append(session)
                self.replacements += 1
                return
            self._replace(current)
        if stamp[0] in self.own_epochs and stamp[0] != self.epoch:
            stamp = (self.epoch, stamp[1])  # ours, from before a move: same place in line
            self._reack.add(session)
        self._bind(key, session, stamp, record)

    def remove_user(self, key: str, session: Session) -> bool:
        """``session`` of ``key`` ended. Returns whether the lobby changed: a session
        that is not the key's current one (replaced, or never added) changes nothing."""
        if self._live.get(key) != session:
            self._replaced.discard(session)
            return False
        self._unbind(session)
        return True

    def drop_worker(self, worker: str) -> int:
        """Every session on ``worker`` ended (it stopped or died). Returns how many.

        The worker is then unknown to the coordinator, which applies none of its events
        until it re-registers: the next call about ``worker`` is :meth:`reconcile`."""
        conns = self._by_worker.get(worker, set())
        sessions = [Session(worker, conn) for conn in conns]
        for session in sessions:
            self._unbind(session)
        self._kicks = [s for s in self._kicks if s.worker != worker]
        self._replaced = {s for s in self._replaced if s.worker != worker}
        return len(sessions)

    def reconcile(self, worker: str, claims: Iterable[Claim]) -> Reconciled:
        """``worker`` re-registers: ``claims`` is every session it holds, acknowledged
        or still waiting for its ack, and is the whole truth about that worker (its
        messages arrive in order, so anything it sent before is already applied).

        * A session the lobby holds for ``worker`` that is not claimed ended: removed.
        * An acknowledged claim is restored by its stamp (:meth:`restore_user`).
        * A claim waiting for its ack that the lobby holds is acknowledged again (the
          ack may have been lost).
        * A claim (acked or not) for a session that lost its key to a newer one in this
          coordinator's life is kicked again (the kick may have been lost), never
          restored.
        * Any other claim waiting for its ack never reached this coordinator (its
          ``Authed`` was lost, or went to a coordinator that died). It ranks by the
          ``(epoch, seq)`` its worker's replica had reached when it sent ``Authed``: a
          session published later than that was accepted after it, one published
          before it was not. If it stays it is acknowledged.
        * A connection claimed twice keeps its first claim (a worker never does that;
          the rest are ignored and counted)."""
        first: dict[int, Claim] = {}
        duplicates = 0
        for claim in claims:
            if claim.conn in first:
                duplicates += 1
            else:
                first[claim.conn] = claim
        removed = 0
        for conn in list(self._by_worker.get(worker, ())):
            session = Session(worker, conn)
            held = first.get(conn)
            if held is None or held.key != self._keys[session]:
                self._unbind(session)
                removed += 1
        self._replaced = {s for s in self._replaced if s.worker != worker or s.conn in first}
        for claim in first.values():
            session = Session(worker, claim.conn)
            if claim.acked:
                self.restore_user(claim.key, session, claim.stamp, claim.record)
            elif self._live.get(claim.key) == session:
                self.set_record(claim.key, session, claim.record)
                if session not in self._unacked:
                    self._reack.add(session)
            else:
                self.restore_user(claim.key, session, claim.stamp, claim.record)
                if self._live.get(claim.key) == session:
                    self._unacked.add(session)  # it never had an ack: it gets one now
        return Reconciled(len(first), removed, duplicates)

    def observe_epoch(self, epoch: str, make_epoch: Callable[[int], str]) -> bool:
        """A worker reported ``epoch``. If it is not one of ours and its generation is
        at or above ours, move to ``make_epoch(generation)`` (an epoch of a higher
        generation) and re-acknowledge every session we acknowledged, with the new
        epoch and the same ``seq``. Returns whether the epoch changed (not if no epoch
        above it can be made: a reported generation at the very end of the range is
        not one any coordinator made)."""
        generation = epoch_generation(epoch)
        if epoch in self.own_epochs or generation < epoch_generation(self.epoch):
            return False
        new = make_epoch(generation)
        if epoch_generation(new) <= generation or new in self.own_epochs:
            return False  # no epoch above it can be made: it is not a real one
        self.epoch = new
        self.own_epochs.add(new)
        for session, (old, seq) in self._stamps.items():
            if old in self.own_epochs:
                self._stamps[session] = (new, seq)
                if session not in self._unacked:
                    self._reack.add(session)
        return True

    # ------------------------------------------------------------------ queries

    def rank(self, stamp: Stamp) -> tuple[bool, int, str, int]:
        """Sort key of a stamp: larger is newer (see the module's theory of operation)."""
        epoch, seq = stamp
        return (epoch in self.own_epochs, epoch_generation(epoch), epoch, seq)

    def get_user(self, key: str) -> Session | None:
        """The key's live session, published or not."""
        return self._live.get(key)

    def stamp_of(self, session: Session) -> Stamp | None:
        """The live session's authentication stamp."""
        return self._stamps.get(session)

    def get_published(self, key: str) -> Session | None:
        """The key's session as of ``seq``: the one clients have been told about."""
        return self._published.get(key)

    def record_of(self, key: str) -> Record | None:
        """The live record of ``key`` (``None``: offline)."""
        if key not in self._live:
            return None
        return self._records.get(key, records.DEFAULT)

    def sessions_of(self, worker: str) -> dict[int, str]:
        """Connection id -> key for the live sessions on ``worker``."""
        return {conn: self._keys[Session(worker, conn)] for conn in self._by_worker.get(worker, ())}

    def __len__(self) -> int:
        return len(self._live)

    @property
    def online(self) -> int:
        """How many keys are online as of ``seq`` (what clients are shown)."""
        return len(self._published)

    @property
    def pending(self) -> bool:
        """Whether a flush would publish, acknowledge or kick anything."""
        return bool(self._dirty or self._unacked or self._reack or self._kicks)

    def snapshot(self) -> tuple[int, int, list[str], list[RecordEntry]]:
        """The lobby exactly as of ``seq``: ``seq``, ``mseq``, the online keys (sorted)
        and the ``(key, status, data)`` of those whose record is not the default."""
        pub = self._published_records
        entries = [(key, *pub[key]) for key in sorted(pub)]
        return self.seq, self.mseq, sorted(self._published), entries

    def check(self) -> None:
        """Assert the internal invariants (for tests: every map agrees with the others)."""
        assert {s: k for k, s in self._live.items()} == self._keys
        assert len(self._keys) == len(self._live) == len(self._stamps)
        assert set(self._stamps) == set(self._keys)
        by_worker = {w: conns for w, conns in self._by_worker.items() if conns}
        assert by_worker == self._by_worker, "no empty worker entries"
        assert {Session(w, c) for w, cs in self._by_worker.items() for c in cs} == set(self._keys)
        assert self._unacked <= set(self._keys) and self._reack <= set(self._keys)
        assert not self._replaced & set(self._keys)
        assert self._records.keys() <= self._live.keys()
        assert self._published_records.keys() <= self._published.keys()
        assert records.DEFAULT not in self._records.values()
        assert records.DEFAULT not in self._published_records.values()

    # ------------------------------------------------------------------ publishing

    def flush(self) -> Flush:
        """Publish the net effect of everything since the last flush."""
        joined, left, updated, entries = self._net_changes(self._dirty)
        self._dirty.clear()
        delta = None
        if joined or left:
            self.seq += 1
            self.mseq += 1
            delta = Delta(self.seq, self.mseq, joined, left, updated, entries)
        elif updated:
            self.seq += 1
            delta = Delta(self.seq, self.mseq, joined, left, updated)
        for session in self._unacked:
            self._stamps[session] = (self.epoch, self.seq)  # the seq that shows it
        acks = [(s, self._stamps[s]) for s in sorted(self._unacked | self._reack)]
        kicks = self._kicks
        self._unacked, self._reack, self._kicks = set(), set(), []
        return Flush(delta, acks, kicks)

    def _net_changes(
        self, keys: Iterable[str]
    ) -> tuple[list[str], list[str], list[RecordEntry], list[RecordEntry]]:
        """(joined, left, updated, records of joined) since the last flush."""
        joined: list[str] = []
        left: list[str] = []
        updated: list[RecordEntry] = []
        entries: list[RecordEntry] = []
        published, live = self._published, self._live
        live_records, published_records = self._records, self._published_records
        for key in sorted(keys):
            before, after = published.get(key), live.get(key)
            if before == after:
                if after is not None:
                    record = live_records.get(key)
                    if record != published_records.get(key):
                        if record is None:
                            del published_records[key]
                            record = records.DEFAULT
                        else:
                            published_records[key] = record
                        updated.append((key, *record))
                continue
            if before is not None:
                left.append(key)
                if published_records:  # (a lobby of default records skips the lookup)
                    published_records.pop(key, None)
            if after is None:
                del published[key]
            else:
                published[key] = after
                joined.append(key)
                if live_records and (record := live_records.get(key)) is not None:
                    published_records[key] = record
                    entries.append((key, *record))
        return joined, left, updated, entries

    # ------------------------------------------------------------------ internals

    def _bind(self, key: str, session: Session, stamp: Stamp, record: Record) -> None:
        self._live[key] = session
        if record is not records.DEFAULT and record != records.DEFAULT:
            self._records[key] = record
        self._keys[session] = key
        self._stamps[session] = stamp
        self._by_worker.setdefault(session.worker, set()).add(session.conn)
        self._dirty.add(key)

    def _unbind(self, session: Session) -> None:
        """Forget ``session`` (if bound): its key goes offline unless rebound."""
        key = self._keys.pop(session, None)
        if key is None:
            return
        del self._live[key]
        self._records.pop(key, None)
        del self._stamps[session]
        conns = self._by_worker[session.worker]
        conns.discard(session.conn)
        if not conns:
            del self._by_worker[session.worker]
        self._unacked.discard(session)
        self._reack.discard(session)
        self._dirty.add(key)

    def _replace(self, old: Session) -> None:
        """``old`` lost its key to a newer session: forget it, kick it at the flush."""
        self._unbind(old)
        self._kicks.append(old)
        self._replaced.add(old)
        self.replacements += 1
