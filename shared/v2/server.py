"""Server frames of protocol version 2: the server's encoders and the clients' decoder.

The lobby frames ``snapshot`` and ``update`` are binary (the layouts of the protocol's
section "Binary lobby frames"); everything else is a JSON text frame. The server frames
a lobby change once per window for all its whole-lobby clients, so the binary encoders
come in two layers: :func:`encode_entry` encodes one (key, record) once, and
:func:`snapshot_of` / :func:`update_of` join pre-encoded entries into a frame;
:func:`encode_snapshot` / :func:`encode_update` do both for callers that hold records.

:func:`decode_server_frame_v2` is a client's decoder: a typed message, or
:class:`shared.protocol.ServerProtocolError` and nothing else, for any input.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from shared.protocol import (
    Challenge,
    ErrorCode,
    Message,
    SendResult,
    ServerProtocolError,
    _Fields,
    _known,
    _members,
    _send_result,
    decode_json_frame,
)
from shared.v2.client import SEQ_LIMIT, Scope, check_epoch, check_seq
from shared.v2.identity import AuthFailureV2
from shared.v2.records import (
    CUSTOM_STATUS,
    EMPTY_DATA,
    STATUS_CODES,
    STATUS_NAMES,
    Record,
    check_status,
)

VERSION_2: Final = 2
SNAPSHOT: Final = 0x01
UPDATE: Final = 0x02
SCOPE_CODES: Final = {Scope.LOBBY: 0, Scope.WATCH: 1}
SCOPES_BY_CODE: Final = {code: scope for scope, code in SCOPE_CODES.items()}
STATUS_MASK: Final = 0x03
DATA_FLAG: Final = 0x80
RESERVED_FLAGS: Final = 0x7C
KEY_BYTES: Final = 32

_U64: Final = struct.Struct(">Q")
_U32: Final = struct.Struct(">I")
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class ErrorCodeV2(enum.Enum):
    """``code`` of ``error`` in version 2: version 1's and four more."""

    MALFORMED = ErrorCode.MALFORMED.value
    UNKNOWN_TYPE = ErrorCode.UNKNOWN_TYPE.value
    RATE_LIMITED = ErrorCode.RATE_LIMITED.value
    BAD_RECORD = "bad_record"
    BAD_FOLLOW = "bad_follow"
    WATCHLIST_FULL = "watchlist_full"
    NOT_WATCHING = "not_watching"


# ------------------------------------------------------------ JSON encoders


def challenge_v2(nonce_hex: str) -> str:
    return _dumps({"type": "challenge", "version": VERSION_2, "nonce": nonce_hex})


def auth_ok_v2(public_key: str, epoch: str, seq: int, resumed: bool) -> str:
    return _dumps(
        {"type": "auth_ok", "publicKey": public_key, "epoch": epoch, "seq": seq, "resumed": resumed}
    )


def auth_failed_v2(reason: AuthFailureV2) -> str:
    return _dumps({"type": "auth_failed", "reason": reason.value})


def count(epoch: str, seq: int, online: int, applied: int = 0) -> str:
    return _dumps(
        {"type": "count", "epoch": epoch, "seq": seq, "online": online, "applied": applied}
    )


def error_v2(code: ErrorCodeV2, text: str, applied: int | None = None) -> str:
    """``error``; ``applied`` for one refusing a scope request (``follow``, ``watch``,
    ``unwatch``): the scope requests applied on the connection before it."""
    if applied is None:
        return _dumps({"type": "error", "code": code.value, "message": text})
    return _dumps({"type": "error", "code": code.value, "message": text, "applied": applied})


# ------------------------------------------------------------ binary encoders

Key = bytes | str
"""A public key: 32 raw bytes, or 64 hex characters of either case."""


def key_bytes(key: Key) -> bytes:
    raw = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
    if len(raw) != KEY_BYTES:
        raise ValueError(f"a key is {KEY_BYTES} bytes, not {len(raw)}")
    return raw


def encode_entry(key: Key, record: Record) -> bytes:
    """One entry of a ``snapshot`` or ``update``: the key, the flags, then the custom
    status and the data when there are any. ``record`` must be valid (see
    shared.v2.records); a status or data too long raises :class:`ValueError`."""
    code = STATUS_CODES.get(record.status, CUSTOM_STATUS)
    flags = code
    parts = [key_bytes(key), b""]
    if code == CUSTOM_STATUS:
        status = record.status.encode("utf-8")
        parts += (bytes((len(status),)), status)
    if record.data_json != EMPTY_DATA:
        flags |= DATA_FLAG
        data = record.data_json.encode("utf-8")
        parts += (bytes((len(data),)), data)
    parts[1] = bytes((flags,))
    return b"".join(parts)


def snapshot_of(
    epoch: str, seq: int, scope: Scope, entries: Sequence[bytes], applied: int = 0
) -> bytes:
    """A binary ``snapshot`` from entries encoded by :func:`encode_entry`; ``applied``:
    the scope requests applied on the connection it goes to."""
    raw_epoch = epoch.encode("ascii")
    head = bytes((SNAPSHOT, len(raw_epoch))) + raw_epoch + _U64.pack(seq)
    tail = bytes((SCOPE_CODES[scope],)) + _U32.pack(applied) + _U32.pack(len(entries))
    return head + tail + b"".join(entries)


def with_applied(snapshot: bytes, applied: int) -> bytes:
    """``snapshot`` (of :func:`snapshot_of`) for a connection that had ``applied`` scope
    requests applied: one snapshot's bytes serve every connection, patched for few."""
    at = 2 + snapshot[1] + 8 + 1  # type, epochLen, epoch, seq, scope
    return snapshot[:at] + _U32.pack(applied) + snapshot[at + 4 :]


def update_of(
    seq: int, prev: int, joined: Sequence[bytes], updated: Sequence[bytes], left: Sequence[bytes]
) -> bytes:
    """A binary ``update`` from entries encoded by :func:`encode_entry` and raw keys."""
    return b"".join(
        (
            bytes((UPDATE,)),
            _U64.pack(seq),
            _U64.pack(prev),
            _U32.pack(len(joined)),
            *joined,
            _U32.pack(len(updated)),
            *updated,
            _U32.pack(len(left)),
            *left,
        )
    )


def encode_snapshot(
    epoch: str,
    seq: int,
    scope: Scope,
    entries: Iterable[tuple[Key, Record]],
    applied: int = 0,
) -> bytes:
    return snapshot_of(epoch, seq, scope, [encode_entry(k, r) for k, r in entries], applied)


def encode_update(
    seq: int,
    prev: int,
    joined: Iterable[tuple[Key, Record]],
    updated: Iterable[tuple[Key, Record]],
    left: Iterable[Key],
) -> bytes:
    return update_of(
        seq,
        prev,
        [encode_entry(k, r) for k, r in joined],
        [encode_entry(k, r) for k, r in updated],
        [key_bytes(k) for k in left],
    )


# ------------------------------------------------------------ decoded messages


@dataclass(frozen=True, slots=True)
class Entry:
    """A user in a lobby frame: ``key`` in lowercase hex, and its record."""

    key: str
    record: Record


@dataclass(frozen=True, slots=True)
class Snapshot:
    """``snapshot``: exactly ``entries`` are online (in the scope) at ``seq``, with
    ``applied`` scope requests of the connection applied."""

    TYPE: ClassVar[str] = "snapshot"
    epoch: str
    seq: int
    scope: Scope
    entries: tuple[Entry, ...]
    applied: int = 0


@dataclass(frozen=True, slots=True)
class Update:
    """``update`` from ``prev`` to ``seq``: remove ``left``, then set ``joined`` and
    ``updated``."""

    TYPE: ClassVar[str] = "update"
    seq: int
    prev: int
    joined: tuple[Entry, ...]
    updated: tuple[Entry, ...]
    left: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthOkV2:
    TYPE: ClassVar[str] = "auth_ok"
    public_key: str
    epoch: str
    seq: int
    resumed: bool


@dataclass(frozen=True, slots=True)
class Count:
    TYPE: ClassVar[str] = "count"
    epoch: str
    seq: int
    online: int
    applied: int = 0


@dataclass(frozen=True, slots=True)
class AuthFailedV2:
    """``auth_failed``; ``reason`` is the server's string when the contract lacks it."""

    TYPE: ClassVar[str] = "auth_failed"
    reason: AuthFailureV2 | str


@dataclass(frozen=True, slots=True)
class ErrorV2:
    """``error``; ``code`` is the server's string when the contract lacks it;
    ``applied`` when it refuses a scope request (else ``None``)."""

    TYPE: ClassVar[str] = "error"
    code: ErrorCodeV2 | str
    message: str
    applied: int | None = None


ServerMessageV2 = (
    Challenge | AuthOkV2 | AuthFailedV2 | Count | ErrorV2 | Message | SendResult | Snapshot | Update
)


# ------------------------------------------------------------ the decoder


def decode_server_frame_v2(frame: str | bytes | bytearray | memoryview) -> ServerMessageV2:
    """Decode one v2 server frame: binary for ``snapshot`` and ``update``, text (JSON)
    for the others. Raises :class:`ServerProtocolError`, and nothing else, for anything
    that is not a well-formed v2 server frame.

    Frames are checked alone, as in version 1: rules relating a frame to the view a
    client holds (``prev``, keys listed twice) are the view's. Beyond the layouts: the
    epoch is printable ASCII; every ``seq`` is below 2**53 and an update's ``seq`` is
    not below its ``prev``; a custom status follows the status rules (a custom status
    spelling a named one is that name); data is a JSON object in UTF-8."""
    if isinstance(frame, str):
        return _decode_json(frame)
    try:
        return _Binary(bytes(frame)).frame()
    except (IndexError, struct.error) as exc:
        raise ServerProtocolError(f"a binary frame cut short ({exc})") from None


class _Binary:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ServerProtocolError(
                f"a binary frame cut short: {n} bytes wanted at offset {self.pos}"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def seq(self, name: str) -> int:
        value: int = _U64.unpack(self.take(8))[0]
        if value >= SEQ_LIMIT:
            raise ServerProtocolError(f"{name} {value} is not below 2**53")
        return value

    def frame(self) -> Snapshot | Update:
        kind = self.u8()
        if kind == SNAPSHOT:
            message: Snapshot | Update = self.snapshot()
        elif kind == UPDATE:
            message = self.update()
        else:
            raise ServerProtocolError(f"unknown binary frame type {kind:#04x}")
        if self.pos != len(self.data):
            raise ServerProtocolError(
                f"{message.TYPE}: {len(self.data) - self.pos} bytes after the frame's end"
            )
        return message

    def snapshot(self) -> Snapshot:
        raw_epoch = self.take(self.u8())
        epoch = raw_epoch.decode("latin-1")
        if not check_epoch(epoch):
            raise ServerProtocolError(f"snapshot: epoch {raw_epoch[:40]!r} is not printable ASCII")
        seq = self.seq("snapshot: seq")
        scope = SCOPES_BY_CODE.get(self.u8())
        if scope is None:
            raise ServerProtocolError("snapshot: unknown scope code", Snapshot.TYPE)
        applied = self.u32()
        return Snapshot(epoch, seq, scope, self.entries(), applied)

    def update(self) -> Update:
        seq, prev = self.seq("update: seq"), self.seq("update: prev")
        if seq < prev:
            raise ServerProtocolError(f"update: seq {seq} below prev {prev}", Update.TYPE)
        joined, updated = self.entries(), self.entries()
        left = tuple(self.take(KEY_BYTES).hex() for _ in range(self.u32()))
        return Update(seq, prev, joined, updated, left)

    def entries(self) -> tuple[Entry, ...]:
        return tuple(self.entry() for _ in range(self.u32()))

    def entry(self) -> Entry:
        key = self.take(KEY_BYTES).hex()
        flags = self.u8()
        if flags & RESERVED_FLAGS:
            raise ServerProtocolError(f"entry {key[:8]}: reserved flag bits set ({flags:#04x})")
        code = flags & STATUS_MASK
        status = STATUS_NAMES.get(code)
        if status is None:
            raw = self.take(self.u8())
            try:
                status = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ServerProtocolError(f"entry {key[:8]}: status is not UTF-8") from None
            problem = check_status(status)
            if problem is not None:
                raise ServerProtocolError(f"entry {key[:8]}: {problem}")
        data_json = EMPTY_DATA
        if flags & DATA_FLAG:
            try:
                data_json = self.take(self.u8()).decode("utf-8")
            except UnicodeDecodeError:
                raise ServerProtocolError(f"entry {key[:8]}: data is not UTF-8") from None
            if not _is_json_object(data_json):
                raise ServerProtocolError(f"entry {key[:8]}: data is not a JSON object")
        return Entry(key, Record(status, data_json))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text, parse_constant=_reject_constant), dict)
    except (ValueError, RecursionError):
        return False


def _decode_json(frame: str) -> ServerMessageV2:
    return decode_json_frame(frame, _JSON_DECODERS)


def _epoch(f: _Fields) -> str:
    value = f.text("epoch")
    if not check_epoch(value):
        raise f.fail(f"epoch {value[:40]!r} is not 1-255 characters of printable ASCII")
    return value


def _seq(f: _Fields, name: str = "seq") -> int:
    value = f.integer(name)
    if not check_seq(value):
        raise f.fail(f"{name} {value} is not in [0, 2**53)")
    return value


def _auth_ok(f: _Fields) -> AuthOkV2:
    resumed = f.obj.get("resumed")
    if not isinstance(resumed, bool):
        raise f.fail("field 'resumed' missing or not a boolean")
    return AuthOkV2(f.key("publicKey"), _epoch(f), _seq(f), resumed)


def _applied(f: _Fields) -> int:
    value = f.integer("applied")
    if not 0 <= value < 2**32:
        raise f.fail(f"applied {value} is not in [0, 2**32)")
    return value


def _error(f: _Fields) -> ErrorV2:
    code, text = _known(_ERROR_CODES, f.text("code")), f.text("message")
    return ErrorV2(code, text, None if "applied" not in f.obj else _applied(f))


def _challenge(f: _Fields) -> Challenge:
    return Challenge(f.key("nonce"), f.integer("version"))


_AUTH_FAILURES: Final = _members(AuthFailureV2)
_ERROR_CODES: Final = _members(ErrorCodeV2)

_JSON_DECODERS: Final[dict[str, Callable[[_Fields], ServerMessageV2]]] = {
    Challenge.TYPE: _challenge,
    AuthOkV2.TYPE: _auth_ok,
    AuthFailedV2.TYPE: lambda f: AuthFailedV2(_known(_AUTH_FAILURES, f.text("reason"))),
    Count.TYPE: lambda f: Count(_epoch(f), _seq(f), _seq(f, "online"), _applied(f)),
    ErrorV2.TYPE: _error,
    Message.TYPE: lambda f: Message(f.key("from"), f.text("id"), f.text("body")),
    SendResult.TYPE: _send_result,
}
