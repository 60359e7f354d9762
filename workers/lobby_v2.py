"""Protocol version 2's lobby frames, from the replica and its updates (pure).

Theory of operation
-------------------
A whole-lobby client's binary ``update`` is the same bytes for every such client: built
once per update from the backbone's ``Update`` (its ``joined`` keys with the records it
lists for them, the default for the others; its ``updated`` entries; its ``left``
keys), with ``prev`` = ``seq - 1``, and only when a version 2 client is there to get it
(the shell asks). Every update goes to version 2 clients, record changes alone too:
their ``seq`` counts every update (protocol 1's ``mseq`` only those that changed who is
online). A ``snapshot`` is built from the replica's state (``seq``, every online key and
its record), once per state however many clients get it (the shell keeps the last),
from entries encoded once per key and record (:class:`Entries`).

Records travel as the backbone holds them, ``(status, data)`` with ``data`` already its
compact JSON text, which is what a binary entry carries.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared import backbone as bb
from shared.v2 import Record, Scope, encode_entry, snapshot_of, update_of
from shared.v2.server import key_bytes
from workers.replica import ReplicaView


def update_frame(update: bb.Update) -> bytes:
    """The binary ``update`` of a backbone ``Update``, for whole-lobby clients."""
    listed = {key: Record(status, data) for key, status, data in update.records}
    joined = [encode_entry(key, listed.get(key, _DEFAULT)) for key in update.joined]
    updated = [encode_entry(key, Record(status, data)) for key, status, data in update.updated]
    left = [key_bytes(key) for key in update.left]
    return update_of(update.seq, update.seq - 1, joined, updated, left)


class Entries:
    """The encoded entry of each key, kept from one snapshot to the next: a joiner needs
    a snapshot of a state that is new almost every update, and encoding every entry
    again costs about 1 µs a user (10 ms for 10,000); looking them up costs a fifth."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[tuple[str, str], bytes]] = {}

    def snapshot(self, replica: ReplicaView) -> bytes:
        """The binary ``snapshot`` of the whole lobby as the replica holds it now."""
        by_key, users = self._by_key, replica.users
        if len(by_key) > 2 * len(users) + 1024:
            by_key.clear()  # keys that left: forget them now and then
        entries = []
        for key in users:
            record = replica.record_of(key)
            known = by_key.get(key)
            if known is None or known[0] != record:
                known = by_key[key] = (record, encode_entry(key, Record(*record)))
            entries.append(known[1])
        return snapshot_of(replica.epoch or "", replica.seq, Scope.LOBBY, entries)

    def watched(self, replica: ReplicaView, keys: Iterable[str], applied: int = 0) -> bytes:
        """The binary ``snapshot`` of a watchlist: those of ``keys`` online now, for a
        connection with ``applied`` scope requests applied."""
        by_key, users, entries = self._by_key, replica.users, []
        if len(by_key) > 2 * len(users) + 1024:
            by_key.clear()  # keys that left: forget them now and then
        for key in keys:
            if key in users:
                record = replica.record_of(key)
                known = by_key.get(key)
                if known is None or known[0] != record:
                    known = by_key[key] = (record, encode_entry(key, Record(*record)))
                entries.append(known[1])
        return snapshot_of(replica.epoch or "", replica.seq, Scope.WATCH, entries, applied)


def snapshot_frame(replica: ReplicaView) -> bytes:
    """The binary ``snapshot`` of the whole lobby as the replica holds it now."""
    return Entries().snapshot(replica)


_DEFAULT = Record()
