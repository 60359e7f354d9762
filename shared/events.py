"""Presence events: the one encoding of a lobby update for backends (pure, no I/O).

Theory of operation
-------------------
The coordinator numbers every change of the lobby: update ``seq`` of ``epoch`` (the
numbering that counts every update, records alone too; :mod:`shared.backbone`). A
backend that reacts to presence receives each update as one **event**, whichever way it
arrives (the event stream ``GET /v1/events`` or a webhook delivery): this module is the
only place that says what an event holds and how it is written, so both agree byte for
byte.

An event is the net effect of one update:

* ``epoch``, ``seq``: which update it is. Events of one epoch are consecutive: ``seq``
  is the previous event's plus one, so a receiver that holds ``S`` and is given
  ``S + 2`` knows it missed one. A new epoch (the coordinator restarted) starts another
  numbering: ``seq`` values of two epochs are never compared.
* ``at``: the coordinator's wall clock when it published the update (seconds since
  1970, to the millisecond), for lag figures; never for ordering.
* ``joined``: the users who came online, each ``{"publicKey", "status", "data"}`` (the
  fields of ``GET /v1/lobby``'s ``users``); ``updated``: those online before and after
  whose record is now this one (a user who reconnected within one update is here too,
  with the record of the new session); ``left``: the users who went offline, each
  ``{"publicKey"}``. A key is in at most one of the three lists; each list is sorted by
  key. An event may have all three empty (a reconnection that changed nothing seen
  here still took a number): it is sent all the same, so numbers never skip.

Applying an event to a view (a map from key to record) is: remove ``left``, then set
``joined`` and ``updated`` (:func:`apply`).

The **event id** is ``"{epoch}:{seq}"`` (:func:`event_id`): the SSE ``id`` of the event
and what a consumer sends back as ``Last-Event-ID`` to resume after it.
:func:`parse_event_id` reads one, and says precisely what is wrong with a bad one
(:class:`BadEventId`), so a server answers it with a 400 naming the problem.

Wire form: compact JSON (no spaces), UTF-8, keys in the order above, one line (every
control character inside a string is escaped), e.g.::

    {"epoch":"...","seq":42,"at":1765130000.123,"joined":[{"publicKey":"3b6a...",
    "status":"away","data":{"note":"back at 5"}}],"updated":[],"left":[{"publicKey":
    "9f00..."}]}

:func:`encode` writes it (records are spliced in as the server holds them: ``data`` is
already its compact encoding), :func:`decode` reads and checks one (for receivers and
tests).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from shared import backbone as bb
from shared import protocol, records
from shared.records import Record

Entry = tuple[str, Record]
"""``(key, (status, data))``: a user and the record they hold."""

MAX_SEQ: Final = 2**53 - 1
"""A ``seq`` is below 2^53 (a JavaScript number holds it exactly)."""
MAX_EPOCH_CHARS: Final = 255
MAX_EVENT_ID_CHARS: Final = MAX_EPOCH_CHARS + 1 + len(str(MAX_SEQ))

_EPOCH: Final = re.compile(r"[!-9;-~]{1,255}")  # visible ASCII but ":"
_SEQ: Final = re.compile(r"0|[1-9][0-9]{0,15}")


class BadEventId(ValueError):
    """An event id that is not ``"{epoch}:{seq}"`` (the message says what is wrong)."""


class EventFormatError(ValueError):
    """Bytes that are not an event of this format (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One lobby update as backends see it (see the module docstring)."""

    epoch: str
    seq: int
    at: float
    joined: tuple[Entry, ...] = ()
    updated: tuple[Entry, ...] = ()
    left: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return event_id(self.epoch, self.seq)


# ------------------------------------------------------------------ event ids


def event_id(epoch: str, seq: int) -> str:
    """The id of event ``seq`` of ``epoch``: ``"{epoch}:{seq}"``."""
    return f"{epoch}:{seq}"


def parse_event_id(text: str) -> tuple[str, int]:
    """``(epoch, seq)`` of an event id; :class:`BadEventId` saying what is wrong with
    anything else (never another exception)."""
    if not isinstance(text, str):
        raise BadEventId("an event id must be a string")
    if len(text) > MAX_EVENT_ID_CHARS:
        raise BadEventId(f"an event id is at most {MAX_EVENT_ID_CHARS} characters")
    epoch, colon, seq = text.rpartition(":")
    if not colon:
        raise BadEventId("an event id is EPOCH:SEQ (no ':' in it)")
    if not _EPOCH.fullmatch(epoch):
        raise BadEventId("the epoch of an event id must be 1-255 visible ASCII characters")
    if not _SEQ.fullmatch(seq) or int(seq) > MAX_SEQ:
        raise BadEventId("the seq of an event id must be a decimal integer below 2^53")
    return epoch, int(seq)


# ------------------------------------------------------------------ making events


def from_update(update: bb.Update) -> Event:
    """The event of one backbone update: its net effect per key (see the module
    docstring; a key that left and joined again is ``updated``)."""
    joined = set(update.joined)
    left = set(update.left)
    final: dict[str, Record] = {key: records.DEFAULT for key in joined}
    for key, status, data in update.records:
        if key in joined:
            final[key] = (status, data)
    changed: dict[str, Record] = {}
    for key, status, data in update.updated:
        if key in joined:
            final[key] = (status, data)
        elif key not in left:
            changed[key] = (status, data)
    for key in joined & left:
        changed[key] = final.pop(key)
    return Event(
        update.epoch,
        update.seq,
        update.at,
        tuple(sorted(final.items())),
        tuple(sorted(changed.items())),
        tuple(sorted(left - joined)),
    )


def apply(view: MutableMapping[str, Record], event: Event) -> None:
    """Apply ``event`` to ``view`` (key -> record): remove ``left``, set the rest."""
    for key in event.left:
        view.pop(key, None)
    view.update(event.joined)
    view.update(event.updated)


# ------------------------------------------------------------------ the wire form

_string = json.JSONEncoder(ensure_ascii=False).encode


def _entries(entries: Iterable[Entry]) -> str:
    return ",".join(
        f'{{"publicKey":"{key}","status":{_string(status)},"data":{data}}}'
        for key, (status, data) in entries
    )


def encode(event: Event) -> bytes:
    """The event's compact JSON, UTF-8, one line. Records are taken as the server
    holds them (``data`` its compact encoding, checked where it entered the server)."""
    left = ",".join(f'{{"publicKey":"{key}"}}' for key in event.left)
    return (
        f'{{"epoch":{_string(event.epoch)},"seq":{event.seq},"at":{round(event.at, 3)!r},'
        f'"joined":[{_entries(event.joined)}],"updated":[{_entries(event.updated)}],'
        f'"left":[{left}]}}'
    ).encode()


def decode(raw: bytes | str) -> Event:
    """The event ``raw`` encodes; :class:`EventFormatError` naming what is wrong with
    anything else."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise EventFormatError(f"not JSON: {exc}") from None
    return from_json(obj)


def from_json(obj: Any) -> Event:
    """The event of a decoded JSON object (one element of a batch, say)."""
    if type(obj) is not dict:
        raise EventFormatError("an event is a JSON object")
    expected = {"epoch", "seq", "at", "joined", "updated", "left"}
    if set(obj) != expected:
        raise EventFormatError(f"an event has exactly the fields {sorted(expected)}")
    epoch, seq, at = obj["epoch"], obj["seq"], obj["at"]
    if type(epoch) is not str or not _EPOCH.fullmatch(epoch):
        raise EventFormatError("epoch must be 1-255 visible ASCII characters but ':'")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise EventFormatError("seq must be an integer from 0 to 2^53 - 1")
    if type(at) not in (int, float):
        raise EventFormatError("at must be a number")
    joined = _records_of(obj["joined"], "joined")
    updated = _records_of(obj["updated"], "updated")
    left = obj["left"]
    if type(left) is not list or not all(
        type(item) is dict and set(item) == {"publicKey"} and _is_key(item["publicKey"])
        for item in left
    ):
        raise EventFormatError('left must be a list of {"publicKey": 64 lowercase hex}')
    keys = [key for key, _ in joined] + [key for key, _ in updated]
    keys += [item["publicKey"] for item in left]
    if len(set(keys)) != len(keys):
        raise EventFormatError("a key is in more than one list, or twice in one")
    return Event(epoch, seq, float(at), joined, updated, tuple(item["publicKey"] for item in left))


def _is_key(value: object) -> bool:
    return protocol.is_hex_key(value) and value == protocol.normalise_key(str(value))


def _records_of(value: object, name: str) -> tuple[Entry, ...]:
    if type(value) is not list:
        raise EventFormatError(f"{name} must be a list")
    out: list[Entry] = []
    for item in value:
        if type(item) is not dict or set(item) != {"publicKey", "status", "data"}:
            raise EventFormatError(f'each of {name} is {{"publicKey", "status", "data"}}')
        key, status, data = item["publicKey"], item["status"], item["data"]
        if not _is_key(key):
            raise EventFormatError(f"a publicKey in {name} is not 64 lowercase hex")
        problem = records.status_problem(status)
        if problem is not None:
            raise EventFormatError(f"{name}: {problem}")
        try:
            text = records.compact_data(data)
        except ValueError as exc:
            raise EventFormatError(f"{name}: {exc}") from None
        out.append((key, (status, text)))
    return tuple(out)
