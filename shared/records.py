"""Presence records: what a session says about itself besides its key (protocol 2).

Theory of operation
-------------------
Every session has a record, a ``status`` and ``data``:

* ``status``: ``"online"``, ``"away"``, ``"busy"``, or a custom string of 1 to
  :data:`MAX_STATUS_BYTES` bytes of UTF-8 without control characters.
* ``data``: a JSON object, held and sent as its compact encoding (:func:`encode_data`),
  at most :data:`MAX_DATA_BYTES` bytes of UTF-8. The server never interprets it.

A session that never set one has :data:`DEFAULT` (``online``, ``{}``): every protocol 1
session has it. The backbone carries a record as the pair ``(status, data)`` of strings,
``data`` already compact, and lists records only where they differ from the default, so
a lobby of protocol 1 clients costs nothing more than before (see
:mod:`shared.backbone`). Each process that takes a record from elsewhere checks it
with :func:`is_record` (the coordinator from workers); a client's record is checked
where it is parsed.
"""

from __future__ import annotations

import json
from typing import Any, Final

Record = tuple[str, str]
"""``(status, data)``: ``data`` is the compact JSON text of an object."""

DEFAULT_STATUS: Final = "online"
DEFAULT_DATA: Final = "{}"
DEFAULT: Final[Record] = (DEFAULT_STATUS, DEFAULT_DATA)
"""The record of a session that set none."""

STATUS_NAMES: Final = ("online", "away", "busy")
"""The statuses with a code of their own in binary lobby frames (0, 1, 2)."""
MAX_STATUS_BYTES: Final = 32
MAX_DATA_BYTES: Final = 255
"""Bytes of UTF-8 of a record's compact ``data`` at most (it fits a length byte)."""

_CONTROL: Final = frozenset([*map(chr, range(0x20)), "\x7f"])


def is_status(status: str) -> bool:
    """Whether ``status`` is a status a record may hold."""
    try:
        size = len(status.encode())
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8 at all
        return False
    return 0 < size <= MAX_STATUS_BYTES and _CONTROL.isdisjoint(status)


def encode_data(obj: dict[str, Any]) -> str | None:
    """The compact encoding of a JSON object (what the server stores and sends), or
    ``None`` when it cannot be data: too long, or not encodable as UTF-8 JSON."""
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode())
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return None
    return text if size <= MAX_DATA_BYTES else None


def is_data(text: str) -> bool:
    """Whether ``text`` is the compact encoding of a JSON object within the limit (as
    :func:`encode_data` makes it: received from another process, it is checked)."""
    if text == DEFAULT_DATA:
        return True
    if len(text) > MAX_DATA_BYTES:  # a character is at least one byte
        return False
    try:
        obj = json.loads(text, parse_constant=_refuse)
    except ValueError:
        return False
    return type(obj) is dict and encode_data(obj) == text


def is_record(status: str, data: str) -> bool:
    return is_status(status) and is_data(data)


def _refuse(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
