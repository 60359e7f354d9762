"""The whole wire contract for Python, protocol version 1 (see docs/PROTOCOL.md).

docs/PROTOCOL.md states the contract; this module is its one implementation in code.
Everything either side can observe lives here, so a change to the contract is a change
in one place:

* the constants: message types, close codes and their reason strings, limits, the
  signed payload;
* the server encoders, one per server frame (:func:`challenge` ... :func:`error`), and
  the client encoders (:func:`auth`, :func:`get_lobby`, :func:`send`), all returning
  the frame text, compact;
* the decoders for both directions: :func:`parse_client_frame`, the server's parser of
  client frames, and :func:`parse_server_frame`, a client's parser of server frames;
* the auth check: :func:`sign_challenge` for clients, :func:`verify_auth` for servers.

The worker, the baseline server, the client library, the load generator and the tests
all use it.

The two parsers differ because the two sides must react differently. Parsing of client
frames is strict and total: :func:`parse_client_frame` never raises for any input a
client controls; it returns either a typed message or a :class:`ProtocolViolation`
naming the protocol's error code, which the server answers. Parsing of server frames is
strict too, but a client has no one to answer: :func:`parse_server_frame` returns a
typed :data:`ServerMessage` or raises :class:`ServerProtocolError`, and nothing else.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeGuard, TypeVar

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from shared.keycheck import usable_key

VERSION: Final = 1
WS_PATH: Final = "/ws"
HEALTH_PATH: Final = "/healthz"
AUTH_CONTEXT: Final = b"lobby-auth-v1:"
NONCE_BYTES: Final = 32

# Limits named by the protocol.
MAX_BODY_BYTES: Final = 65536
MAX_ID_CHARS: Final = 64
DEFAULT_MAX_FRAME_BYTES: Final = 128 * 1024
"""Default frame limit (128 KiB): holds a maximal ``send`` whose 64 KiB body needs no
JSON escaping (base64 or hex ciphertext, as end-to-end encrypting clients send); a body
full of characters JSON must escape can exceed it, and operators can raise it."""

_HEX = frozenset("0123456789abcdefABCDEF")


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses, with :data:`CLOSE_REASONS` below."""

    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013
    AUTH_FAILED = 4001
    SESSION_REPLACED = 4002
    AUTH_TIMEOUT = 4003
    SLOW_CONSUMER = 4005
    KICKED = 4006


CLOSE_REASONS: Final[dict[CloseCode, str]] = {
    CloseCode.GOING_AWAY: "going away",
    CloseCode.POLICY_VIOLATION: "policy_violation",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.TRY_AGAIN_LATER: "try_again_later",
    CloseCode.AUTH_FAILED: "auth_failed",
    CloseCode.SESSION_REPLACED: "session_replaced",
    CloseCode.AUTH_TIMEOUT: "auth_timeout",
    CloseCode.SLOW_CONSUMER: "slow_consumer",
    CloseCode.KICKED: "kicked",
}


class AuthFailure(enum.Enum):
    """``reason`` of ``auth_failed``."""

    MALFORMED = "malformed"
    INVALID_PUBLIC_KEY = "invalid_public_key"
    INVALID_SIGNATURE = "invalid_signature"
    UNEXPECTED_MESSAGE = "unexpected_message"


class ErrorCode(enum.Enum):
    """``code`` of ``error`` after authentication."""

    MALFORMED = "malformed"
    UNKNOWN_TYPE = "unknown_type"
    RATE_LIMITED = "rate_limited"


class SendStatus(enum.Enum):
    """``status`` of ``send_result``."""

    DELIVERED = "delivered"
    OFFLINE = "offline"
    REJECTED = "rejected"


class RejectReason(enum.Enum):
    """``reason`` of a ``rejected`` ``send_result``."""

    TOO_LARGE = "too_large"
    INVALID_RECIPIENT = "invalid_recipient"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


# ------------------------------------------------------------ keys and authentication


def is_hex_key(value: object, length: int = 64) -> bool:
    """True for a string of exactly ``length`` hexadecimal characters, either case."""
    return isinstance(value, str) and len(value) == length and _HEX.issuperset(value)


def normalise_key(value: str) -> str:
    """The canonical (lowercase) spelling of a hex key the server writes."""
    return value.lower()


def is_seq(value: object) -> TypeGuard[int]:
    """True for a JSON integer: a lobby ``seq`` (or the challenge's ``version``).
    ``bool`` is an ``int`` to Python but ``true`` is not an integer to JSON."""
    return isinstance(value, int) and not isinstance(value, bool)


def signed_payload(nonce_hex: str) -> bytes:
    """The exact bytes a client signs to answer the challenge ``nonce_hex``."""
    return AUTH_CONTEXT + bytes.fromhex(nonce_hex)


def sign_challenge(signing_key: SigningKey, nonce_hex: str) -> str:
    """The ``signature`` of an ``auth`` answering the challenge ``nonce_hex``: the
    detached 64-byte Ed25519 signature of :func:`signed_payload`, as 128 lowercase hex."""
    return signing_key.sign(signed_payload(nonce_hex)).signature.hex()


def verify_auth(nonce: bytes, public_key: str, signature: str) -> AuthFailure | None:
    """Why an ``auth`` with ``public_key`` and ``signature`` does not answer the
    challenge of the raw ``nonce`` bytes, or None when it proves ``public_key``.

    Hex may be in either case. The reasons are the contract's: a ``public_key`` that is
    not 64 hex or not a usable Ed25519 key (not a canonical point of the prime-order
    group) is ``invalid_public_key``; a ``signature`` that is not 128 hex or does not
    verify is ``invalid_signature``. The key is checked first, so a bad key is named as
    such whatever the signature."""
    return verify_signed(AUTH_CONTEXT + nonce, public_key, signature)


def verify_signed(payload: bytes, public_key: str, signature: str) -> AuthFailure | None:
    """Why ``signature`` is not ``public_key``'s signature of ``payload``, or None when
    it is: the check of :func:`verify_auth`, for any signed payload (protocol version 2
    signs other bytes). Never raises."""
    if not is_hex_key(public_key):
        return AuthFailure.INVALID_PUBLIC_KEY
    key_bytes = bytes.fromhex(public_key)
    # libsodium would reject a small-order or off-curve key only as a bad signature,
    # and a mixed-order one only sometimes: checking the point first gives the client
    # the precise reason, every time (see shared.keycheck).
    if not usable_key(key_bytes):
        return AuthFailure.INVALID_PUBLIC_KEY
    if not is_hex_key(signature, 128):
        return AuthFailure.INVALID_SIGNATURE
    try:
        VerifyKey(key_bytes).verify(payload, bytes.fromhex(signature))
    except BadSignatureError:
        return AuthFailure.INVALID_SIGNATURE
    except (CryptoError, ValueError, TypeError):
        return AuthFailure.INVALID_PUBLIC_KEY
    return None


# ------------------------------------------------------------ client -> server
# The server's view of a client frame: typed messages and their parser.


@dataclass(frozen=True, slots=True)
class Auth:
    public_key: str  # as sent (validated hex, either case)
    signature: str


@dataclass(frozen=True, slots=True)
class GetLobby:
    pass


@dataclass(frozen=True, slots=True)
class Send:
    to: str  # as sent: may not be a valid key; the worker answers invalid_recipient
    id: str
    body: str


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A frame the protocol rejects; ``kind`` says which rule it broke."""

    kind: ViolationKind
    detail: str


class ViolationKind(enum.Enum):
    MALFORMED = "malformed"  # not JSON / not an object / bad fields / binary
    UNKNOWN_TYPE = "unknown_type"


ClientMessage = Auth | GetLobby | Send
KNOWN_CLIENT_TYPES: Final = frozenset({"auth", "get_lobby", "send"})


def parse_client_frame(frame: str | bytes) -> ClientMessage | ProtocolViolation:
    """Decode one client frame. Never raises for any input."""
    if not isinstance(frame, str):
        return ProtocolViolation(ViolationKind.MALFORMED, "binary frames are not accepted")
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError):
        return ProtocolViolation(ViolationKind.MALFORMED, "frame is not valid JSON")
    if not isinstance(obj, dict):
        return ProtocolViolation(ViolationKind.MALFORMED, "frame is not a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return ProtocolViolation(ViolationKind.MALFORMED, "field 'type' missing or not a string")
    if kind == "auth":
        return _parse_auth(obj)
    if kind == "get_lobby":
        return GetLobby()
    if kind == "send":
        return _parse_send(obj)
    return ProtocolViolation(ViolationKind.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")


def _parse_auth(obj: dict[str, Any]) -> Auth | ProtocolViolation:
    pk, sig = obj.get("publicKey"), obj.get("signature")
    if not isinstance(pk, str) or not isinstance(sig, str):
        return ProtocolViolation(ViolationKind.MALFORMED, "publicKey and signature must be strings")
    return Auth(public_key=pk, signature=sig)


def _parse_send(obj: dict[str, Any]) -> Send | ProtocolViolation:
    to, msg_id, body = obj.get("to"), obj.get("id"), obj.get("body")
    if not isinstance(to, str) or not isinstance(msg_id, str) or not isinstance(body, str):
        return ProtocolViolation(ViolationKind.MALFORMED, "to, id and body must be strings")
    if not 1 <= len(msg_id) <= MAX_ID_CHARS:
        return ProtocolViolation(ViolationKind.MALFORMED, "id must be 1-64 characters")
    return Send(to=to, id=msg_id, body=body)


# Encoders return the frame text. ``separators`` keeps frames compact (server frames are
# fanned out); ``ensure_ascii=False`` writes text beyond ASCII as UTF-8, not as six-byte
# escapes, so a body counts against the frame limit at its own size.

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def auth(public_key: str, signature: str) -> str:
    """The ``auth`` frame (see :func:`sign_challenge` for ``signature``).

    Client encoders write what they are given, unchecked: a client library checks its
    own input, and tests build frames the server must refuse."""
    return _dumps({"type": "auth", "publicKey": public_key, "signature": signature})


_GET_LOBBY: Final = _dumps({"type": "get_lobby"})


def get_lobby() -> str:
    """The ``get_lobby`` frame: ``{"type":"get_lobby"}``."""
    return _GET_LOBBY


def send(to: str, msg_id: str, body: str) -> str:
    """The ``send`` frame of a direct message ``body`` to the key ``to``."""
    return _dumps({"type": "send", "to": to, "id": msg_id, "body": body})


# ------------------------------------------------------------ server -> client
# Encoders first: what the server writes.


def challenge(nonce_hex: str) -> str:
    return _dumps({"type": "challenge", "version": VERSION, "nonce": nonce_hex})


def auth_ok(public_key: str) -> str:
    return _dumps({"type": "auth_ok", "publicKey": public_key})


def auth_failed(reason: AuthFailure) -> str:
    return _dumps({"type": "auth_failed", "reason": reason.value})


def _users(keys: list[str]) -> list[dict[str, str]]:
    return [{"publicKey": k} for k in keys]


def lobby_snapshot(seq: int, users: list[str]) -> str:
    return _dumps({"type": "lobby_snapshot", "seq": seq, "users": _users(users)})


def user_item(key: str) -> str:
    """One element of a ``users``/``joined``/``left`` array, exactly as the encoders above
    write it, so that elements encoded once can be joined into frames later."""
    return _dumps({"publicKey": key})


def lobby_snapshot_of(seq: int, items: Iterable[str]) -> str:
    """:func:`lobby_snapshot` built from :func:`user_item` texts already in key order:
    byte-identical, without re-encoding every user for every new lobby state."""
    return f'{{"type":"lobby_snapshot","seq":{seq:d},"users":[{",".join(items)}]}}'


def lobby_update(seq: int, joined: list[str], left: list[str]) -> str:
    return _dumps(
        {"type": "lobby_update", "seq": seq, "joined": _users(joined), "left": _users(left)}
    )


def message(sender: str, msg_id: str, body: str) -> str:
    return _dumps({"type": "message", "from": sender, "id": msg_id, "body": body})


def send_result(msg_id: str, status: SendStatus, reason: RejectReason | None = None) -> str:
    obj: dict[str, str] = {"type": "send_result", "id": msg_id, "status": status.value}
    if reason is not None:
        obj["reason"] = reason.value
    return _dumps(obj)


def error(code: ErrorCode, text: str) -> str:
    return _dumps({"type": "error", "code": code.value, "message": text})


# Then the decoders: a client's view of a server frame.


@dataclass(frozen=True, slots=True)
class Challenge:
    """``challenge``: the first frame of every connection. ``nonce`` is 64 lowercase hex
    (pass it to :func:`sign_challenge`); ``version`` is whatever integer the server
    wrote, for the client to compare with :data:`VERSION`."""

    TYPE: ClassVar[str] = "challenge"
    nonce: str
    version: int


@dataclass(frozen=True, slots=True)
class AuthOk:
    """``auth_ok``: authenticated as ``public_key`` (lowercase); a snapshot follows."""

    TYPE: ClassVar[str] = "auth_ok"
    public_key: str


@dataclass(frozen=True, slots=True)
class AuthFailedFrame:
    """``auth_failed``: close 4001 follows. ``reason`` is an :class:`AuthFailure`, or the
    server's string when it is none of them (see :func:`parse_server_frame`)."""

    TYPE: ClassVar[str] = "auth_failed"
    reason: AuthFailure | str


@dataclass(frozen=True, slots=True)
class LobbySnapshot:
    """``lobby_snapshot``: exactly ``users`` (lowercase keys, in the server's order) are
    online at ``seq``."""

    TYPE: ClassVar[str] = "lobby_snapshot"
    seq: int
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LobbyUpdate:
    """``lobby_update`` number ``seq``: remove ``left``, then add ``joined`` (lowercase)."""

    TYPE: ClassVar[str] = "lobby_update"
    seq: int
    joined: tuple[str, ...]
    left: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Message:
    """``message``: a direct message from ``sender`` (the frame's ``from``, lowercase)."""

    TYPE: ClassVar[str] = "message"
    sender: str
    id: str
    body: str


@dataclass(frozen=True, slots=True)
class SendResult:
    """``send_result``: the final outcome of the ``send`` with this ``id``.

    ``reason`` is set exactly when ``status`` is ``rejected`` (constructing it otherwise
    raises :class:`ValueError`), so ``result.reason is not None`` means rejected."""

    TYPE: ClassVar[str] = "send_result"
    id: str
    status: SendStatus
    reason: RejectReason | None = None

    def __post_init__(self) -> None:
        if (self.status is SendStatus.REJECTED) != (self.reason is not None):
            raise ValueError(f"status {self.status.value} with reason {self.reason}")

    @property
    def delivered(self) -> bool:
        """Written to the recipient's open connection."""
        return self.status is SendStatus.DELIVERED

    @property
    def offline(self) -> bool:
        """The recipient has no session in the lobby."""
        return self.status is SendStatus.OFFLINE

    @property
    def rejected(self) -> bool:
        """Not delivered, now or later; ``reason`` says why."""
        return self.status is SendStatus.REJECTED

    @property
    def outcome(self) -> str:
        """``delivered``, ``offline`` or ``rejected/<reason>``, as docs/PROTOCOL.md
        writes outcomes: one string to show, count or compare."""
        if self.reason is None:
            return self.status.value
        return f"{self.status.value}/{self.reason.value}"


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """``error``: a frame of the client's the server could not act on; the connection
    stays open. ``code`` is an :class:`ErrorCode`, or the server's string when it is
    none of them; ``message`` is for humans."""

    TYPE: ClassVar[str] = "error"
    code: ErrorCode | str
    message: str


ServerMessage = (
    Challenge
    | AuthOk
    | AuthFailedFrame
    | LobbySnapshot
    | LobbyUpdate
    | Message
    | SendResult
    | ErrorFrame
)


class ServerProtocolError(ValueError):
    """A frame that is not a well-formed server frame of this contract.

    ``frame_type`` is the frame's ``type`` when it was an object with a string one
    (known or not), else None."""

    def __init__(self, message: str, frame_type: str | None = None) -> None:
        super().__init__(message)
        self.frame_type = frame_type


def parse_server_frame(frame: str | bytes) -> ServerMessage:
    """Decode one frame from the server into its typed message.

    Raises :class:`ServerProtocolError`, and nothing else, for anything that is not a
    well-formed server frame of this contract: a binary frame, text that is not JSON or
    not an object, a missing or unknown ``type``, a field missing or of the wrong JSON
    type, a key or nonce that is not 64 hex, a ``seq`` or ``version`` that is not an
    integer (``true`` is not), a ``users``/``joined``/``left`` entry that is not
    ``{"publicKey": <key>}``, a ``status`` or rejection ``reason`` the contract does not
    list, a ``reason`` missing from a ``rejected`` result or present on another one.

    What it decides, and why:

    * Hex is normalised to lowercase (keys and the nonce), so keys compare as strings.
    * Fields the contract does not name are ignored, as JSON clients usually do.
    * ``status`` and rejection ``reason`` are strict: a client acts on them (retry, slow
      down, count it delivered) and the contract lists them exhaustively, so an unknown
      one is a broken server. ``auth_failed``'s ``reason`` and ``error``'s ``code`` are
      kept as the server's string when they are not in the contract: they explain a
      frame whose consequence the contract fixes whatever they say (close 4001; the
      connection stays open), and refusing them would lose the explanation.
    * ``version`` is any integer: whether the client speaks it is the client's decision.
    * ``id`` and ``body`` are any strings: their limits bind the sender, the server
      only echoes them.
    * Each frame is checked alone. Rules that relate it to the lobby a client holds
      (the next ``seq``, a key listed twice, both lists of an update empty, a key joining
      while online) are the client's view's to check.
    """
    if not isinstance(frame, str):
        raise ServerProtocolError("a binary frame: the protocol sends text frames only")
    return decode_json_frame(frame, _SERVER_DECODERS)


def decode_json_frame(frame: str, decoders: Mapping[str, Callable[[_Fields], _T]]) -> _T:
    """The typed message a server's text frame holds, by its ``type`` and ``decoders``
    (version 1's, or version 2's); raises :class:`ServerProtocolError` and nothing else."""
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        raise ServerProtocolError(f"not JSON ({exc}): {frame[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ServerProtocolError(f"not a JSON object: {frame[:80]!r}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ServerProtocolError(f"field 'type' missing or not a string: {frame[:80]!r}")
    decode = decoders.get(kind)
    if decode is None:
        raise ServerProtocolError(f"unknown frame type {kind[:40]!r}", kind)
    return decode(_Fields(kind, obj))


class _Fields:
    """Typed access to the fields of one server frame; each getter raises
    :class:`ServerProtocolError` naming the frame type and the field."""

    __slots__ = ("kind", "obj")

    def __init__(self, kind: str, obj: dict[str, Any]) -> None:
        self.kind = kind
        self.obj = obj

    def fail(self, what: str) -> ServerProtocolError:
        return ServerProtocolError(f"{self.kind}: {what}", self.kind)

    def text(self, name: str) -> str:
        value = self.obj.get(name)
        if not isinstance(value, str):
            raise self.fail(f"field {name!r} missing or not a string")
        return value

    def integer(self, name: str) -> int:
        value = self.obj.get(name)
        if not is_seq(value):
            raise self.fail(f"field {name!r} missing or not an integer")
        return value

    def key(self, name: str) -> str:
        value = self.text(name)
        if not is_hex_key(value):
            raise self.fail(f"field {name!r} is not 64 hex characters: {value[:80]!r}")
        return normalise_key(value)

    def keys(self, name: str) -> tuple[str, ...]:
        users = self.obj.get(name)
        if not isinstance(users, list):
            raise self.fail(f"field {name!r} missing or not a list")
        keys = []
        for i, user in enumerate(users):
            if not isinstance(user, dict):
                raise self.fail(f"{name}[{i}] is not an object")
            value = user.get("publicKey")
            if not is_hex_key(value):
                raise self.fail(f"{name}[{i}].publicKey is not a 64-hex key: {_show(value)}")
            assert isinstance(value, str)
            keys.append(normalise_key(value))
        return tuple(keys)


def _show(value: object) -> str:
    """A short, safe description of a JSON value for an error message: the start of a
    string, else its type (the repr of a nested structure could be huge, or too deep)."""
    return repr(value[:80]) if isinstance(value, str) else _JSON_NAMES.get(type(value), "a value")


_JSON_NAMES: Final[dict[type, str]] = {
    dict: "an object",
    list: "an array",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}

_E = TypeVar("_E", bound=enum.Enum)
_T = TypeVar("_T")


def _members(enum_type: type[_E]) -> dict[str, _E]:
    return {member.value: member for member in enum_type}


_AUTH_FAILURES: Final = _members(AuthFailure)
_ERROR_CODES: Final = _members(ErrorCode)
_SEND_STATUSES: Final = _members(SendStatus)
_REJECT_REASONS: Final = _members(RejectReason)


def _known(members: Mapping[str, _E], value: str) -> _E | str:
    return members.get(value, value)


def _strict(fields: _Fields, members: Mapping[str, _E], name: str) -> _E:
    value = fields.text(name)
    member = members.get(value)
    if member is None:
        raise fields.fail(f"{name} {value[:40]!r} is not one of {', '.join(members)}")
    return member


def _send_result(f: _Fields) -> SendResult:
    msg_id = f.text("id")
    status = _strict(f, _SEND_STATUSES, "status")
    if status is SendStatus.REJECTED:
        if "reason" not in f.obj:
            raise f.fail("status 'rejected' without a reason")
        return SendResult(msg_id, status, _strict(f, _REJECT_REASONS, "reason"))
    if "reason" in f.obj:
        raise f.fail(f"a reason with status {status.value!r}")
    return SendResult(msg_id, status)


_SERVER_DECODERS: Final[dict[str, Callable[[_Fields], ServerMessage]]] = {
    Challenge.TYPE: lambda f: Challenge(f.key("nonce"), f.integer("version")),
    AuthOk.TYPE: lambda f: AuthOk(f.key("publicKey")),
    AuthFailedFrame.TYPE: lambda f: AuthFailedFrame(_known(_AUTH_FAILURES, f.text("reason"))),
    LobbySnapshot.TYPE: lambda f: LobbySnapshot(f.integer("seq"), f.keys("users")),
    LobbyUpdate.TYPE: lambda f: LobbyUpdate(f.integer("seq"), f.keys("joined"), f.keys("left")),
    Message.TYPE: lambda f: Message(f.key("from"), f.text("id"), f.text("body")),
    SendResult.TYPE: _send_result,
    ErrorFrame.TYPE: lambda f: ErrorFrame(_known(_ERROR_CODES, f.text("code")), f.text("message")),
}
