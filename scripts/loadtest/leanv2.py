"""A version 2 ``update`` applied straight from its bytes, for the load clients that
are not in the sample (``--verify-sample``): what they must check, without the
library's decoded frame, its events and their tuples.

A generator process receives one distinct ``update`` per watchlist client and change:
decoding each into :class:`shared.v2.Update` (hex keys, entry objects, tuples) and
going through the session's events costs more than the network does. For a client
nobody times, :func:`apply_update` reads the frame in place and applies it to the
client's :class:`~shared.session_v2.RecordView` with the view's rules: ``prev`` equal
to the view's ``seq`` (the gap check), no key listed twice, no key left that was not
online, joined that was, or updated that was not; and the frame's own: its exact
layout, ``seq`` not below ``prev`` and below 2**53, no reserved flag bit, a custom
status that follows the status rules. The view then holds the same records the
library would have set.

Whatever it does not handle it declines (returns None, having changed nothing): a
frame that breaks a rule, one with data (whose JSON the library checks), a stale
view or one of the count scope. The caller then hands the frame to the library,
which applies it or records why it cannot, exactly as for a sampled client: a broken
rule is found the same way on either path, only its cheap case is cheaper.
"""

from __future__ import annotations

import struct
from typing import Final

from shared.session_v2 import RecordView
from shared.v2 import Record, Scope
from shared.v2.client import SEQ_LIMIT
from shared.v2.records import EMPTY_DATA, STATUS_NAMES, check_status
from shared.v2.server import DATA_FLAG, KEY_BYTES, RESERVED_FLAGS, STATUS_MASK, UPDATE

_HEAD: Final = struct.Struct(">BQQ")
_U32: Final = struct.Struct(">I")
_KNOWN: Final = {code: Record(name, EMPTY_DATA) for code, name in STATUS_NAMES.items()}
"""The record of each named status without data: one object each, shared."""
_COUNT: Final = Scope.COUNT


def apply_update(view: RecordView, frame: bytes) -> int | None:
    """Apply the binary ``update`` ``frame`` to ``view`` and return how many keys it
    changed (joined, updated and left); None, with ``view`` unchanged, when the frame
    is not one this handles (see the module docstring)."""
    seq = view.seq
    if seq is None or view.stale or view.scope is _COUNT:
        return None
    try:
        kind, new, prev = _HEAD.unpack_from(frame)
    except struct.error:
        return None
    if kind != UPDATE or prev != seq or new < prev or new >= SEQ_LIMIT:
        return None
    pos = _HEAD.size
    try:
        joined, pos = _entries(frame, pos)
        updated, pos = _entries(frame, pos)
        (n,) = _U32.unpack_from(frame, pos)
        pos += 4
        end = pos + n * KEY_BYTES
        if end != len(frame):
            return None
        left = [frame[at : at + KEY_BYTES].hex() for at in range(pos, end, KEY_BYTES)]
    except (struct.error, IndexError, ValueError):
        return None
    records = view.records
    gone = set(left)
    if len(gone) != len(left) or len(joined) + len(updated) != len(
        {k for k, _ in joined} | {k for k, _ in updated}
    ):
        return None  # a key listed twice
    if any(k not in records for k in gone) or any(k in gone for k, _ in updated):
        return None
    if any(k in records and k not in gone for k, _ in joined):
        return None
    if any(k not in records for k, _ in updated):
        return None
    for key in gone:
        del records[key]
    for key, record in joined:
        records[key] = record
    for key, record in updated:
        records[key] = record
    view.seq = new
    return len(left) + len(joined) + len(updated)


def _entries(frame: bytes, pos: int) -> tuple[list[tuple[str, Record]], int]:
    """The entries at ``pos`` and the offset after them; ValueError for one this does
    not handle (reserved bits, data, a status that breaks the rules or is cut short)."""
    (n,) = _U32.unpack_from(frame, pos)
    pos += 4
    out: list[tuple[str, Record]] = []
    for _ in range(n):
        end = pos + KEY_BYTES
        flags = frame[end]  # IndexError when cut short
        if flags & (RESERVED_FLAGS | DATA_FLAG):
            raise ValueError("not handled here")
        key = frame[pos:end].hex()
        record = _KNOWN.get(flags & STATUS_MASK)
        pos = end + 1
        if record is None:  # a custom status: its bytes follow
            size = frame[pos]
            raw = frame[pos + 1 : pos + 1 + size]
            if len(raw) != size:
                raise ValueError("cut short")
            status = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
            if check_status(status) is not None:
                raise ValueError("a status against the rules")
            record = Record(status, EMPTY_DATA)
            pos += 1 + size
        out.append((key, record))
    return out, pos
