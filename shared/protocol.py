"""The client wire contract, protocol version 1 (see docs/PROTOCOL.md).

Everything a client can observe lives here: message types, close codes and their
reason strings, limits, the signed payload, and one encoder per server message. The
worker, the client library and the tests all use this module, so a change to the
contract is a change in one place.

Parsing of client frames is strict and total: :func:`parse_client_frame` never raises
for any input a client controls; it returns either a typed message or a
:class:`ProtocolViolation` naming the protocol's error code.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

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


CLOSE_REASONS: Final[dict[CloseCode, str]] = {
    CloseCode.GOING_AWAY: "going away",
    CloseCode.POLICY_VIOLATION: "policy_violation",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.TRY_AGAIN_LATER: "try_again_later",
    CloseCode.AUTH_FAILED: "auth_failed",
    CloseCode.SESSION_REPLACED: "session_replaced",
    CloseCode.AUTH_TIMEOUT: "auth_timeout",
    CloseCode.SLOW_CONSUMER: "slow_consumer",
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


# ------------------------------------------------------------ keys


def is_hex_key(value: object, length: int = 64) -> bool:
    """True for a string of exactly ``length`` hexadecimal characters, either case."""
    return isinstance(value, str) and len(value) == length and _HEX.issuperset(value)


def normalise_key(value: str) -> str:
    """The canonical (lowercase) spelling of a hex key the server writes."""
    return value.lower()


def signed_payload(nonce_hex: str) -> bytes:
    """The exact bytes a client signs to answer the challenge ``nonce_hex``."""
    return AUTH_CONTEXT + bytes.fromhex(nonce_hex)


# ------------------------------------------------------------ client -> server


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


# ------------------------------------------------------------ server -> client
# Encoders return the frame text. ``separators`` keeps frames compact: they are fanned out.

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


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
