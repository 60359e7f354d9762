"""Presence records in protocol version 2: a status and a small JSON object of data.

A record is validated once, where it enters (a client's ``auth`` or ``set_record``, or
a server's binary entry), and held in its wire form from then on: the status as text,
the data as its compact JSON encoding (``data_json``), the exact bytes a binary entry
carries, so the server never re-encodes a record to frame it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

ONLINE: Final = "online"
AWAY: Final = "away"
BUSY: Final = "busy"
STATUS_CODES: Final = {ONLINE: 0, AWAY: 1, BUSY: 2}
"""The named statuses' codes in a binary entry's flags (bits 0-1)."""
CUSTOM_STATUS: Final = 3
"""The code of a custom status: its UTF-8 bytes follow in the entry."""
STATUS_NAMES: Final = {code: name for name, code in STATUS_CODES.items()}
MAX_STATUS_BYTES: Final = 32
MAX_DATA_BYTES: Final = 255
EMPTY_DATA: Final = "{}"
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


@dataclass(frozen=True, slots=True)
class Record:
    """A session's presence record: ``status`` and ``data_json``, the compact JSON
    encoding of its data object (see :func:`compact_data`). Build one from client input
    only through :func:`check_status` and :func:`compact_data`."""

    status: str = ONLINE
    data_json: str = EMPTY_DATA

    @property
    def data(self) -> dict[str, Any]:
        """The data object, decoded."""
        value: dict[str, Any] = json.loads(self.data_json)
        return value


DEFAULT_RECORD: Final = Record()


@dataclass(frozen=True, slots=True)
class RecordChange:
    """The fields a ``record`` (in ``auth``) or ``set_record`` gives: None keeps the
    value the record had."""

    status: str | None = None
    data_json: str | None = None

    def apply(self, record: Record = DEFAULT_RECORD) -> Record:
        return Record(
            record.status if self.status is None else self.status,
            record.data_json if self.data_json is None else self.data_json,
        )


def check_status(value: object) -> str | None:
    """Why ``value`` is not a status, or None when it is one: a string of 1-32 bytes of
    UTF-8 with no control characters (U+0000-U+001F, U+007F-U+009F)."""
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


def compact_data(value: object) -> str:
    """The compact JSON encoding of a data object, as the server re-encodes it (no
    spaces, text beyond ASCII as UTF-8). Raises :class:`ValueError` when ``value`` is
    not a JSON object within the limit of :data:`MAX_DATA_BYTES`."""
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


def parse_record_change(obj: object, *, require_one: bool) -> RecordChange | str:
    """The :class:`RecordChange` in ``obj`` (an object with optional ``status`` and
    ``data``), or why it is not one. With ``require_one``, at least one must be there
    (``set_record``). Never raises."""
    if not isinstance(obj, dict):
        return "record must be a JSON object"
    status: str | None = None
    data_json: str | None = None
    if "status" in obj:
        problem = check_status(obj["status"])
        if problem is not None:
            return problem
        status = obj["status"]
    if "data" in obj:
        try:
            data_json = compact_data(obj["data"])
        except ValueError as exc:
            return str(exc)
    if require_one and status is None and data_json is None:
        return "set_record needs status or data"
    return RecordChange(status, data_json)


def parse_record(obj: object) -> Record | str:
    """The :class:`Record` an ``auth``'s ``record`` sets (absent fields take their
    defaults), or why ``obj`` is not one. Never raises."""
    change = parse_record_change(obj, require_one=False)
    return change if isinstance(change, str) else change.apply()
