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
import re
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

_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters and DEL: never in a status (shown to every watcher)."""

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def status_problem(value: object) -> str | None:
    """Why ``value`` is not a status a record may hold, or None when it is one: a string
    of 1 to :data:`MAX_STATUS_BYTES` bytes of UTF-8 without control characters
    (U+0000-U+001F, U+007F-U+009F)."""
    if not isinstance(value, str):
        return "status must be a string"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "status is not valid Unicode (a lone surrogate)"
    if not 1 <= size <= MAX_STATUS_BYTES:
        return f"status must be 1-{MAX_STATUS_BYTES} bytes of UTF-8, not {size}"
    if _CONTROL.search(value):
        return "status holds a control character"
    return None


def is_status(status: str) -> bool:
    """Whether ``status`` is a status a record may hold."""
    return status_problem(status) is None


def compact_data(value: object) -> str:
    """The compact JSON encoding of a data object, as the server holds and sends it (no
    spaces, text beyond ASCII as UTF-8). Raises :class:`ValueError`, saying why, when
    ``value`` is not a JSON object within :data:`MAX_DATA_BYTES`."""
    if not isinstance(value, dict):
        raise ValueError("data must be a JSON object")
    try:
        text = _compact(value)
        size = len(text.encode("utf-8"))
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"data cannot be encoded as JSON: {exc}") from None
    # UnicodeEncodeError is a ValueError: a lone surrogate lands above.
    if size > MAX_DATA_BYTES:
        raise ValueError(f"data must encode to at most {MAX_DATA_BYTES} bytes, not {size}")
    return text


def encode_data(obj: dict[str, Any]) -> str | None:
    """:func:`compact_data`, or ``None`` when ``obj`` cannot be data."""
    try:
        return compact_data(obj)
    except ValueError:
        return None


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
