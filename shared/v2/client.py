"""Client frames of protocol version 2: the server's parser and the clients' encoders.

:func:`parse_client_frame_v2` is total, like version 1's parser: for any frame it
returns a typed message or a :class:`Violation` whose ``kind`` is the code the server
answers with (in ``auth_failed`` before authentication, in ``error`` after). It checks
shapes only: whether ``server`` names this server (``wrong_server``), whether a
signature verifies, whether a watch change fits the watchlist the session holds are
the server's to decide.
"""

from __future__ import annotations

import enum
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Final

from shared.protocol import GetLobby, ProtocolViolation, Send, is_hex_key, is_seq, normalise_key
from shared.protocol import _parse_send as parse_send
from shared.v2.identity import MAX_IDENTITY_CHARS
from shared.v2.records import DEFAULT_RECORD, Record, RecordChange, parse_record_change

MAX_WATCH_KEYS: Final = 1000
"""The most keys a watchlist holds (distinct keys; duplicates are ignored)."""
SEQ_LIMIT: Final = 2**53
"""Every ``seq`` is below it, so a JavaScript number holds it exactly."""
MAX_EPOCH_BYTES: Final = 255


def check_epoch(value: object) -> bool:
    """True for an epoch: 1-255 characters of printable ASCII (it travels as the bytes
    of a binary snapshot and as a JSON string, and clients compare it)."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= MAX_EPOCH_BYTES
        and all(" " < c <= "~" for c in value)
    )


def check_seq(value: object) -> bool:
    """True for a ``seq``: a JSON integer in [0, 2**53)."""
    return is_seq(value) and 0 <= value < SEQ_LIMIT


class Scope(enum.Enum):
    """What a client follows."""

    LOBBY = "lobby"
    WATCH = "watch"
    COUNT = "count"


@dataclass(frozen=True, slots=True)
class Follow:
    """A scope; ``keys`` (lowercase, distinct, in the client's order) for ``watch``."""

    scope: Scope = Scope.LOBBY
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Resume:
    """The view a reconnecting client holds: an epoch and the seq it reached."""

    epoch: str
    seq: int


class ViolationV2(enum.Enum):
    """The code a refused client frame is answered with."""

    MALFORMED = "malformed"
    UNKNOWN_TYPE = "unknown_type"
    BAD_RECORD = "bad_record"
    BAD_FOLLOW = "bad_follow"
    BAD_RESUME = "bad_resume"
    WATCHLIST_FULL = "watchlist_full"


@dataclass(frozen=True, slots=True)
class Violation:
    """A client frame the protocol refuses: ``kind`` is the answer's code."""

    kind: ViolationV2
    detail: str


@dataclass(frozen=True, slots=True)
class AuthV2:
    """``auth`` in version 2. ``server`` is as sent (printable ASCII, at most 1,024
    characters); ``record`` has the defaults filled in."""

    public_key: str
    signature: str
    server: str
    record: Record = DEFAULT_RECORD
    follow: Follow = field(default_factory=Follow)
    resume: Resume | None = None


@dataclass(frozen=True, slots=True)
class SetRecord:
    change: RecordChange


@dataclass(frozen=True, slots=True)
class FollowFrame:
    follow: Follow


@dataclass(frozen=True, slots=True)
class Watch:
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unwatch:
    keys: tuple[str, ...]


ClientMessageV2 = AuthV2 | SetRecord | FollowFrame | Watch | Unwatch | GetLobby | Send


def parse_client_frame_v2(frame: str | bytes) -> ClientMessageV2 | Violation:
    """Decode one v2 client frame. Never raises for any input."""
    if not isinstance(frame, str):
        return Violation(ViolationV2.MALFORMED, "binary frames are not accepted")
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError):
        return Violation(ViolationV2.MALFORMED, "frame is not valid JSON")
    if not isinstance(obj, dict):
        return Violation(ViolationV2.MALFORMED, "frame is not a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return Violation(ViolationV2.MALFORMED, "field 'type' missing or not a string")
    if kind == "auth":
        return _auth(obj)
    if kind == "set_record":
        change = parse_record_change(obj, require_one=True)
        if isinstance(change, str):
            return Violation(ViolationV2.BAD_RECORD, change)
        return SetRecord(change)
    if kind == "follow":
        follow = _follow(obj, ViolationV2.WATCHLIST_FULL)
        return follow if isinstance(follow, Violation) else FollowFrame(follow)
    if kind in ("watch", "unwatch"):
        keys = _keys(obj, ViolationV2.WATCHLIST_FULL)
        if isinstance(keys, Violation):
            return keys
        return Watch(keys) if kind == "watch" else Unwatch(keys)
    if kind == "get_lobby":
        return GetLobby()
    if kind == "send":
        return _send(obj)
    return Violation(ViolationV2.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")


def _auth(obj: dict[str, Any]) -> AuthV2 | Violation:
    pk, sig, server = obj.get("publicKey"), obj.get("signature"), obj.get("server")
    if not isinstance(pk, str) or not isinstance(sig, str) or not isinstance(server, str):
        return Violation(ViolationV2.MALFORMED, "publicKey, signature and server must be strings")
    if not 1 <= len(server) <= MAX_IDENTITY_CHARS or not all(" " < c <= "~" for c in server):
        return Violation(
            ViolationV2.MALFORMED,
            f"server must be 1-{MAX_IDENTITY_CHARS} characters of printable ASCII",
        )
    record = DEFAULT_RECORD
    if "record" in obj:
        change = parse_record_change(obj["record"], require_one=False)
        if isinstance(change, str):
            return Violation(ViolationV2.BAD_RECORD, change)
        record = change.apply()
    follow = Follow()
    if "follow" in obj:
        got = _follow(obj["follow"], ViolationV2.BAD_FOLLOW)
        if isinstance(got, Violation):
            return got
        follow = got
    resume = None
    if "resume" in obj:
        value = obj["resume"]
        if not (
            isinstance(value, dict)
            and check_epoch(value.get("epoch"))
            and check_seq(value.get("seq"))
        ):
            return Violation(
                ViolationV2.BAD_RESUME,
                "resume must be {epoch: 1-255 printable ASCII, seq: integer in [0, 2**53)}",
            )
        resume = Resume(value["epoch"], value["seq"])
    return AuthV2(pk, sig, server, record, follow, resume)


def _follow(obj: object, too_many: ViolationV2) -> Follow | Violation:
    if not isinstance(obj, dict):
        return Violation(ViolationV2.BAD_FOLLOW, "follow must be a JSON object")
    scope = obj.get("scope")
    if scope == Scope.WATCH.value:
        keys = _keys(obj, too_many)
        return keys if isinstance(keys, Violation) else Follow(Scope.WATCH, keys)
    if scope in (Scope.LOBBY.value, Scope.COUNT.value):
        return Follow(Scope(scope))
    return Violation(ViolationV2.BAD_FOLLOW, "scope must be lobby, watch or count")


def _keys(obj: dict[str, Any], too_many: ViolationV2) -> tuple[str, ...] | Violation:
    keys = obj.get("keys")
    if not isinstance(keys, list):
        return Violation(ViolationV2.BAD_FOLLOW, "keys must be a list")
    seen: dict[str, None] = {}
    for key in keys:
        if not is_hex_key(key):
            return Violation(ViolationV2.BAD_FOLLOW, "keys must be 64-hex public keys")
        seen[sys.intern(normalise_key(key))] = None  # one string however many watch it
        if len(seen) > MAX_WATCH_KEYS:
            return Violation(too_many, f"a watchlist holds at most {MAX_WATCH_KEYS} keys")
    return tuple(seen)


def _send(obj: dict[str, Any]) -> Send | Violation:
    got = parse_send(obj)  # version 1's rule, unchanged
    if isinstance(got, ProtocolViolation):
        return Violation(ViolationV2.MALFORMED, got.detail)
    return got


# ------------------------------------------------------------ encoders (for clients)
# Like version 1's, they write what they are given, unchecked.

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _follow_obj(follow: Follow) -> dict[str, Any]:
    if follow.scope is Scope.WATCH:
        return {"scope": follow.scope.value, "keys": list(follow.keys)}
    return {"scope": follow.scope.value}


def _record_obj(record: Record | RecordChange) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if record.status is not None:
        obj["status"] = record.status
    if record.data_json is not None:
        obj["data"] = json.loads(record.data_json)
    return obj


def auth_v2(
    public_key: str,
    signature: str,
    server: str,
    record: Record | RecordChange | None = None,
    follow: Follow | None = None,
    resume: Resume | None = None,
) -> str:
    """The v2 ``auth`` frame (see :func:`shared.v2.sign_challenge_v2`)."""
    obj: dict[str, Any] = {
        "type": "auth",
        "publicKey": public_key,
        "signature": signature,
        "server": server,
    }
    if record is not None:
        obj["record"] = _record_obj(record)
    if follow is not None:
        obj["follow"] = _follow_obj(follow)
    if resume is not None:
        obj["resume"] = {"epoch": resume.epoch, "seq": resume.seq}
    return _dumps(obj)


def set_record(status: str | None = None, data: dict[str, Any] | None = None) -> str:
    """``set_record``: the fields given change, the others keep their value."""
    obj: dict[str, Any] = {"type": "set_record"}
    if status is not None:
        obj["status"] = status
    if data is not None:
        obj["data"] = data
    return _dumps(obj)


def follow(scope: Follow) -> str:
    """``follow``: change what this connection follows."""
    return _dumps({"type": "follow", **_follow_obj(scope)})


def watch(keys: list[str]) -> str:
    return _dumps({"type": "watch", "keys": keys})


def unwatch(keys: list[str]) -> str:
    return _dumps({"type": "unwatch", "keys": keys})
