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
its record), once per state however many clients get it (the shell keeps the last).

Records travel as the backbone holds them, ``(status, data)`` with ``data`` already its
compact JSON text, which is what a binary entry carries.
"""

from __future__ import annotations

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


def snapshot_frame(replica: ReplicaView) -> bytes:
    """The binary ``snapshot`` of the whole lobby as the replica holds it now."""
    entries = [encode_entry(key, Record(*replica.record_of(key))) for key in replica.users]
    return snapshot_of(replica.epoch or "", replica.seq, Scope.LOBBY, entries)


_DEFAULT = Record()
