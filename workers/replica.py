"""The worker's read-only replica of the lobby (sans-I/O).

Theory of operation
-------------------
The coordinator owns the lobby. It answers a worker's ``SnapshotRequest`` with a
``Snapshot(epoch, seq, users)`` on the ROUTER and publishes every change as a numbered
``Update(epoch, seq, ...)`` plus a periodic ``Beat(epoch, seq)`` on PUB. The two
streams are independent, so the replica follows the Clone pattern's rules:

* While not ``LIVE`` it buffers updates (bounded); when a snapshot arrives it drops the
  buffered updates at or below the snapshot's ``seq`` (slow-joiner rule) and applies the
  rest, which must follow on without a gap.
* While ``LIVE`` an update must be ``seq + 1``. A later one, or a ``Beat`` naming a
  higher ``seq``, means updates were lost (PUB drops at its high-water mark): the
  replica asks for a snapshot and goes back to ``SYNCING``. Stale and duplicate
  updates are ignored.
* An ``epoch`` other than the replica's means the coordinator restarted: the worker
  must announce its sessions again (``Hello``) before asking for a snapshot, and only
  a snapshot that follows the ``Welcome`` answering that ``Hello`` counts (replies on
  the ROUTER come in order, so earlier snapshots may predate the announcement).

Clients see a clean stream: the replica forwards an update only when it applied it
while ``LIVE`` in order; after any resync it reports :class:`Resynced` and the core
sends every client a fresh snapshot instead (continuity is broken, never gapped).

The replica holds each online key's presence record too (only those that are not the
default, as the backbone sends them), and both numbers of the state: ``seq`` (every
update: gaps, acknowledgements and stamps use it) and ``mseq`` (updates that changed who
is online). Protocol 1 frames are numbered by ``mseq``: an update that changes only
records is forwarded without a protocol 1 frame (``Forward.frame`` is empty), so those
clients see what they always saw, consecutive and never empty.

The class never raises for any message order; it returns the outputs the core must
carry out.
"""

from __future__ import annotations

import bisect
import enum
from collections import deque
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Final, Protocol

from shared import backbone as bb
from shared import protocol, records
from shared.records import Record

MAX_BUFFERED_UPDATES: Final = 10_000
"""Updates kept while waiting for a snapshot. Past it the buffer is dropped: the next
update or Beat then shows a gap and the replica simply asks for another snapshot."""


class ResyncReason(enum.Enum):
    """Why the replica synced from a snapshot."""

    START = "start"  # the first sync, or a re-announcement (asked for, or a silent coordinator)
    GAP = "gap"  # updates were lost (PUB drops at its high-water mark)
    NEW_EPOCH = "new_epoch"  # another coordinator (a restart)


class SyncState(enum.Enum):
    AWAITING_WELCOME = "awaiting_welcome"  # Hello sent; snapshots before Welcome are stale
    SYNCING = "syncing"  # waiting for a snapshot of the expected epoch
    LIVE = "live"  # in step with the coordinator's PUB stream


USER_BYTES: Final = len(protocol.user_item("0" * 64)) + 1
"""Bytes one user adds to a ``lobby_snapshot`` frame (its element and a comma)."""


class ReplicaView(Protocol):
    """What connections may read of the replica."""

    @property
    def epoch(self) -> str | None: ...
    @property
    def seq(self) -> int: ...
    @property
    def mseq(self) -> int: ...
    @property
    def sync(self) -> SyncState: ...
    @property
    def users(self) -> AbstractSet[str]: ...
    @property
    def snapshot_bytes(self) -> int: ...
    def record_of(self, key: str) -> Record: ...


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Announce:
    """Send ``Hello`` with every recorded session, then ``SnapshotRequest``."""


@dataclass(frozen=True, slots=True)
class RequestSnapshot:
    """Send ``SnapshotRequest``."""


@dataclass(frozen=True, slots=True)
class Forward:
    """Update ``seq`` was applied in order while live: fan ``frame`` out (the protocol 1
    ``lobby_update``; empty when the update changed only records, which protocol 1
    clients are not shown: the core still learns that the replica moved on). ``at`` is
    the coordinator's wall clock when it published the update; ``update`` is the update
    itself, from which protocol version 2's frame is built (:mod:`workers.lobby_v2`)
    when a version 2 client is there to get it. ``was`` holds the record each key in
    its ``left`` or ``updated`` had just before it (the resume ring's need)."""

    seq: int
    frame: str
    at: float
    update: bb.Update | None = None
    was: Mapping[str, Record] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Resynced:
    """The replica is live again from a snapshot; continuity towards clients is broken.
    ``previous_epoch`` tells the core whether the coordinator changed, ``reason`` why
    it synced."""

    previous_epoch: str | None
    reason: ResyncReason


Output = Announce | RequestSnapshot | Forward | Resynced


class EncodedUsers:
    """The online keys in sorted order, each with its encoded ``users`` element.

    A joiner needs a snapshot of a state that is new almost every update; re-encoding the
    whole lobby for it costs O(lobby) Python work per state. Here a change costs a binary
    search and a list insert/delete (a C ``memmove``), and a frame one C ``join``, so
    :meth:`frame` is always ``protocol.lobby_snapshot(seq, sorted(keys))``.
    """

    __slots__ = ("_items", "_keys")

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = sorted(set(keys))
        self._items = [protocol.user_item(k) for k in self._keys]

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        at = bisect.bisect_left(self._keys, key)
        if at == len(self._keys) or self._keys[at] != key:
            self._keys.insert(at, key)
            self._items.insert(at, protocol.user_item(key))

    def discard(self, key: str) -> None:
        at = bisect.bisect_left(self._keys, key)
        if at < len(self._keys) and self._keys[at] == key:
            del self._keys[at]
            del self._items[at]

    def frame(self, seq: int) -> str:
        return protocol.lobby_snapshot_of(seq, self._items)


class Replica:
    """Epoch, seq, mseq, online keys and their records as of the last applied
    coordinator state."""

    def __init__(self) -> None:
        self._epoch: str | None = None
        self._seq = 0
        self._mseq = 0
        self._users: set[str] = set()
        self._records: dict[str, Record] = {}  # online keys whose record is not the default
        self._encoded: EncodedUsers | None = None
        """Mirrors ``_users`` once a protocol 1 snapshot was asked for (until then no
        join or leave pays its O(lobby) list insert or delete: version 2 clients never
        read it)."""
        self._sync = SyncState.AWAITING_WELCOME
        self._expected: str | None = None  # epoch the next snapshot must carry
        self._buffer: deque[bb.Update] = deque()
        self._lost_updates = False  # syncing because of a gap (see Resynced.reason)
        self._cache_key: tuple[str | None, int] | None = None
        self._cache_frame = ""

    # ------------------------------------------------------------------ view

    @property
    def epoch(self) -> str | None:
        return self._epoch

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def mseq(self) -> int:
        """The number of the last update that changed who is online: protocol 1's seq."""
        return self._mseq

    @property
    def sync(self) -> SyncState:
        return self._sync

    @property
    def users(self) -> AbstractSet[str]:
        return self._users

    @property
    def snapshot_bytes(self) -> int:
        """About how many bytes a ``lobby_snapshot`` of the current state takes."""
        return 64 + USER_BYTES * len(self._users)

    def record_of(self, key: str) -> Record:
        """The record of an online ``key`` (the default for one that is not online)."""
        return self._records.get(key, records.DEFAULT)

    def snapshot_frame(self) -> str:
        """The ``lobby_snapshot`` frame of the current state, encoded once per state
        (per ``mseq``: a change of records alone leaves it as it is)."""
        key = (self._epoch, self._mseq)
        if key != self._cache_key:
            if self._encoded is None:
                self._encoded = EncodedUsers(self._users)
            self._cache_frame = self._encoded.frame(self._mseq)
            self._cache_key = key
        return self._cache_frame

    # ------------------------------------------------------------------ inputs

    def start(self) -> list[Output]:
        """(Re)announce: used at start-up, on a new epoch and when the coordinator was
        silent (it may have dropped our sessions)."""
        self._sync = SyncState.AWAITING_WELCOME
        self._expected = None
        self._lost_updates = False
        return [Announce()]

    def reannounce(self) -> list[Output]:
        """The coordinator asks for our sessions (``Reannounce``). One ``Hello`` answers
        every request made before its ``Welcome``: while it is in flight, further
        requests (queued while either side stalled) are the same request, and announcing
        again for each would cost the coordinator a whole registration each. Should the
        ``Hello`` be lost, :meth:`retry` announces again."""
        return [] if self._sync is SyncState.AWAITING_WELCOME else self.start()

    def retry(self) -> list[Output]:
        """Called when not live for a while: the request or its answer may be lost."""
        if self._sync is SyncState.AWAITING_WELCOME:
            return self.start()
        if self._sync is SyncState.SYNCING:
            return [RequestSnapshot()]
        return []

    def on_welcome(self, msg: bb.Welcome) -> list[Output]:
        if self._sync is SyncState.AWAITING_WELCOME:
            self._sync = SyncState.SYNCING
            self._expected = msg.epoch
        return []

    def on_snapshot(self, msg: bb.Snapshot) -> list[Output]:
        if self._sync is SyncState.AWAITING_WELCOME:
            return []  # answers a request sent before our Hello
        if self._sync is SyncState.LIVE:
            # Same epoch: a late answer to an earlier request; the PUB stream has (or will
            # have) the same changes in order, so keep following it.
            return [] if msg.epoch == self._epoch else self.start()
        if msg.epoch != self._expected:
            return [] if msg.epoch == self._epoch else self.start()
        if msg.epoch == self._epoch and msg.seq < self._seq:
            return []  # older than what we already applied: a late answer
        return self._apply_snapshot(msg)

    def on_update(self, msg: bb.Update) -> list[Output]:
        if self._sync is not SyncState.LIVE:
            self._buffer_update(msg)
            return self._check_foreign_epoch(msg.epoch)
        if msg.epoch != self._epoch:
            return self.start()
        if msg.seq <= self._seq:
            return []  # duplicate or stale
        if msg.seq != self._seq + 1:
            return self._lost(msg)
        record_of = self.record_of
        was = {key: record_of(key) for key in (*msg.left, *(k for k, _, _ in msg.updated))}
        self._apply(msg)
        if msg.joined or msg.left:
            frame = protocol.lobby_update(msg.mseq, msg.joined, msg.left)
        else:
            frame = ""  # records only: nothing for protocol 1 clients
        return [Forward(msg.seq, frame, msg.at, msg, was)]

    def on_beat(self, msg: bb.Beat) -> list[Output]:
        if self._sync is not SyncState.LIVE:
            return self._check_foreign_epoch(msg.epoch)
        if msg.epoch != self._epoch:
            return self.start()
        if msg.seq > self._seq:
            return self._lost(None)
        return []

    def observe_epoch(self, epoch: str) -> list[Output]:
        """An epoch seen elsewhere (``AuthAck``): a new one means a restart."""
        if self._sync is SyncState.LIVE and epoch != self._epoch:
            return self.start()
        if self._sync is SyncState.SYNCING:
            return self._check_foreign_epoch(epoch)
        return []

    # ------------------------------------------------------------------ internals

    def _check_foreign_epoch(self, epoch: str) -> list[Output]:
        """While syncing, an epoch that is neither the old nor the expected one means yet
        another coordinator: announce to it. (Old-epoch messages may still be queued.)"""
        if self._sync is SyncState.SYNCING and epoch not in (self._epoch, self._expected):
            return self.start()
        return []

    def _lost(self, update: bb.Update | None) -> list[Output]:
        self._sync = SyncState.SYNCING
        self._lost_updates = True
        self._expected = self._epoch
        self._buffer.clear()
        if update is not None:
            self._buffer.append(update)
        return [RequestSnapshot()]

    def _buffer_update(self, msg: bb.Update) -> None:
        if len(self._buffer) >= MAX_BUFFERED_UPDATES:
            self._buffer.clear()  # designed loss: shows up as a gap, healed by a snapshot
        self._buffer.append(msg)

    def _apply_snapshot(self, msg: bb.Snapshot) -> list[Output]:
        previous = self._epoch
        self._epoch, self._seq, self._mseq = msg.epoch, msg.seq, msg.mseq
        self._users = set(msg.users)
        users = self._users
        self._records = {key: (status, data) for key, status, data in msg.records if key in users}
        self._encoded = None  # built again when a protocol 1 snapshot is asked for
        pending, self._buffer = self._buffer, deque()
        for update in pending:
            if update.epoch != msg.epoch or update.seq <= self._seq:
                continue
            if update.seq != self._seq + 1:
                self._expected = msg.epoch
                return [RequestSnapshot()]  # lost while syncing: still SYNCING
            self._apply(update)
        self._sync = SyncState.LIVE
        self._expected = None
        if previous is None:
            reason = ResyncReason.START
        elif previous != msg.epoch:
            reason = ResyncReason.NEW_EPOCH
        else:
            reason = ResyncReason.GAP if self._lost_updates else ResyncReason.START
        return [Resynced(previous, reason)]

    def _apply(self, msg: bb.Update) -> None:
        kept = self._records
        self._users.difference_update(msg.left)
        self._users.update(msg.joined)
        encoded = self._encoded
        for key in msg.left:
            if encoded is not None:
                encoded.discard(key)
            kept.pop(key, None)
        for key in msg.joined:
            if encoded is not None:
                encoded.add(key)
            kept.pop(key, None)  # a new session: the default unless listed below
        for key, status, data in msg.records:
            kept[key] = (status, data)
        for key, status, data in msg.updated:
            if (status, data) == records.DEFAULT:
                kept.pop(key, None)
            else:
                kept[key] = (status, data)
        self._seq, self._mseq = msg.seq, msg.mseq
