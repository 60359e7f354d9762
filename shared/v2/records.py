"""Presence records in protocol version 2: a status and a small JSON object of data.

The rules (bounds, what a status may hold, the compact encoding of data) are
:mod:`shared.records`'s, which every process checks records by. A record is validated
once, where it enters (a client's ``auth`` or ``set_record``, or
a server's binary entry), and held in its wire form from then on: the status as text,
the data as its compact JSON encoding (``data_json``), the exact bytes a binary entry
carries, so the server never re-encodes a record to frame it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from shared import records as rules

ONLINE, AWAY, BUSY = rules.STATUS_NAMES
STATUS_CODES: Final = {name: code for code, name in enumerate(rules.STATUS_NAMES)}
"""The named statuses' codes in a binary entry's flags (bits 0-1)."""
CUSTOM_STATUS: Final = 3
"""The code of a custom status: its UTF-8 bytes follow in the entry."""
STATUS_NAMES: Final = {code: name for name, code in STATUS_CODES.items()}
MAX_STATUS_BYTES: Final = rules.MAX_STATUS_BYTES
MAX_DATA_BYTES: Final = rules.MAX_DATA_BYTES
EMPTY_DATA: Final = rules.DEFAULT_DATA

check_status = rules.status_problem
compact_data = rules.compact_data


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
