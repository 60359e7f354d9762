"""shared/protocol.py: the encoders (byte-exact), the server-frame decoder (every frame
type, every way a frame can be malformed, totality, round trips through the server
encoders) and the auth check, against docs/PROTOCOL.md's own examples and test vector."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from shared import protocol
from shared.protocol import (
    AuthFailedFrame,
    AuthFailure,
    AuthOk,
    Challenge,
    ErrorCode,
    ErrorFrame,
    LobbySnapshot,
    LobbyUpdate,
    Message,
    RejectReason,
    SendResult,
    SendStatus,
    ServerMessage,
    ServerProtocolError,
    parse_server_frame,
)

# The test vector of docs/PROTOCOL.md ("Test vector", under Authentication).
SEED = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
PK = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
NONCE = "f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff"
SIGNATURE = (
    "bf097020b5fecefb08050a4c33a58a9e4bebf11a68cb87de81940197beeea72e"
    "fb3a04ba3b758169ba8efa235b1f614cb0b595e47113e6fc4722c4517eb54b03"
)
OTHER = "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7"
SMALL_ORDER = "00" * 32  # y = 0: a point of order 4, not a usable key
PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def encode(msg: ServerMessage) -> str:
    """``msg`` through the server encoder of its type."""
    match msg:
        case Challenge(nonce, _version):
            return protocol.challenge(nonce)
        case AuthOk(key):
            return protocol.auth_ok(key)
        case AuthFailedFrame(AuthFailure() as reason):
            return protocol.auth_failed(reason)
        case LobbySnapshot(seq, users):
            return protocol.lobby_snapshot(seq, list(users))
        case LobbyUpdate(seq, joined, left):
            return protocol.lobby_update(seq, list(joined), list(left))
        case Message(sender, msg_id, body):
            return protocol.message(sender, msg_id, body)
        case SendResult(msg_id, status, reason):
            return protocol.send_result(msg_id, status, reason)
        case ErrorFrame(ErrorCode() as code, text):
            return protocol.error(code, text)
    raise AssertionError(f"no server encoder writes {msg!r}")


# --------------------------------------------------------------------------- client encoders


def test_sign_challenge_reproduces_the_contracts_test_vector() -> None:
    assert protocol.signed_payload(NONCE).hex() == (
        "6c6f6262792d617574682d76313a" + NONCE  # "lobby-auth-v1:" + the 32 nonce bytes
    )
    assert protocol.sign_challenge(SigningKey(SEED), NONCE) == SIGNATURE
    assert protocol.sign_challenge(SigningKey(SEED), NONCE.upper()) == SIGNATURE


def test_client_encoders_are_byte_exact() -> None:
    assert protocol.auth(PK, SIGNATURE) == (
        f'{{"type":"auth","publicKey":"{PK}","signature":"{SIGNATURE}"}}'
    )
    assert protocol.get_lobby() == '{"type":"get_lobby"}'
    assert protocol.send(OTHER, "m-0001", "q83vEjRWeJA=") == (
        f'{{"type":"send","to":"{OTHER}","id":"m-0001","body":"q83vEjRWeJA="}}'
    )
    # JSON escapes only what it must; text beyond ASCII is written as UTF-8.
    assert protocol.send("t", "\u00e9", 'a"b\\c\n\u20ac') == (
        '{"type":"send","to":"t","id":"\u00e9","body":"a\\"b\\\\c\\n\u20ac"}'
    )


def test_client_encoders_write_what_they_are_given() -> None:
    # Unchecked on purpose: tests build frames the server must refuse with them.
    assert protocol.send("nope", "", "") == '{"type":"send","to":"nope","id":"","body":""}'
    assert protocol.auth("", "") == '{"type":"auth","publicKey":"","signature":""}'


@settings(max_examples=200, deadline=None)
@given(to=st.text(), msg_id=st.text(min_size=1, max_size=64), body=st.text())
def test_client_encoders_round_trip_through_the_servers_parser(
    to: str, msg_id: str, body: str
) -> None:
    assert protocol.parse_client_frame(protocol.send(to, msg_id, body)) == protocol.Send(
        to, msg_id, body
    )
    assert protocol.parse_client_frame(protocol.auth(to, body)) == protocol.Auth(to, body)
    assert protocol.parse_client_frame(protocol.get_lobby()) == protocol.GetLobby()


# --------------------------------------------------------------------------- the examples


def _frame_reference_examples() -> list[str]:
    """Every JSON example of the "Frame reference" section of docs/PROTOCOL.md."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text[text.index("## Frame reference") : text.index("## Authentication")]
    return re.findall(r"```json\n(.*?)\n```", section, flags=re.DOTALL)


def test_the_contracts_examples_decode_and_the_server_encoders_write_them() -> None:
    examples = _frame_reference_examples()
    kinds = {json.loads(e)["type"] for e in examples}
    assert kinds == {
        "challenge",
        "auth",
        "auth_ok",
        "auth_failed",
        "get_lobby",
        "lobby_snapshot",
        "lobby_update",
        "send",
        "message",
        "send_result",
        "error",
    }
    for example in examples:
        if json.loads(example)["type"] in protocol.KNOWN_CLIENT_TYPES:
            parsed = protocol.parse_client_frame(example)
            assert not isinstance(parsed, protocol.ProtocolViolation), example
        else:
            # The examples are written the way this server writes: byte for byte.
            assert encode(parse_server_frame(example)) == example


# --------------------------------------------------------------------------- decoding each type


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            f'{{"type":"challenge","version":1,"nonce":"{NONCE.upper()}"}}',
            Challenge(NONCE, 1),
        ),
        ('{"type":"challenge","version":2,"nonce":"' + "ab" * 32 + '"}', Challenge("ab" * 32, 2)),
        (f'{{"type":"auth_ok","publicKey":"{PK.upper()}"}}', AuthOk(PK)),
        (
            '{"type":"auth_failed","reason":"invalid_signature"}',
            AuthFailedFrame(AuthFailure.INVALID_SIGNATURE),
        ),
        ('{"type":"auth_failed","reason":"banned"}', AuthFailedFrame("banned")),
        (
            f'{{"type":"lobby_snapshot","seq":-3,"users":[{{"publicKey":"{PK}"}},'
            f'{{"publicKey":"{OTHER.upper()}","extra":1}}]}}',
            LobbySnapshot(-3, (PK, OTHER)),
        ),
        ('{"type":"lobby_snapshot","seq":0,"users":[]}', LobbySnapshot(0, ())),
        (
            f'{{"type":"lobby_update","seq":{2**70},"joined":[],'
            f'"left":[{{"publicKey":"{PK}"}},{{"publicKey":"{PK}"}}]}}',
            LobbyUpdate(2**70, (), (PK, PK)),  # repeats are the view's to judge
        ),
        ('{"type":"lobby_update","seq":1,"joined":[],"left":[]}', LobbyUpdate(1, (), ())),
        (
            f'{{"type":"message","from":"{PK.upper()}","id":"","body":"\\u00e9"}}',
            Message(PK, "", "\u00e9"),
        ),
        (
            '{"type":"send_result","id":"m","status":"delivered"}',
            SendResult("m", SendStatus.DELIVERED),
        ),
        ('{"type":"send_result","id":"m","status":"offline"}', SendResult("m", SendStatus.OFFLINE)),
        (
            '{"type":"send_result","id":"m","status":"rejected","reason":"unavailable"}',
            SendResult("m", SendStatus.REJECTED, RejectReason.UNAVAILABLE),
        ),
        (
            '{"type":"error","code":"rate_limited","message":"slow down"}',
            ErrorFrame(ErrorCode.RATE_LIMITED, "slow down"),
        ),
        ('{"type":"error","code":"teapot","message":""}', ErrorFrame("teapot", "")),
        (
            '{"message":"x","type":"error","code":"malformed","more":[1]}',
            ErrorFrame(ErrorCode.MALFORMED, "x"),
        ),
    ],
)
def test_each_server_frame_decodes_to_its_typed_message(
    frame: str, expected: ServerMessage
) -> None:
    assert parse_server_frame(frame) == expected


_GOOD = {
    "challenge": {"type": "challenge", "version": 1, "nonce": NONCE},
    "auth_ok": {"type": "auth_ok", "publicKey": PK},
    "auth_failed": {"type": "auth_failed", "reason": "malformed"},
    "lobby_snapshot": {"type": "lobby_snapshot", "seq": 1, "users": [{"publicKey": PK}]},
    "lobby_update": {"type": "lobby_update", "seq": 1, "joined": [{"publicKey": PK}], "left": []},
    "message": {"type": "message", "from": PK, "id": "m", "body": "b"},
    "send_result": {"type": "send_result", "id": "m", "status": "delivered"},
    "error": {"type": "error", "code": "malformed", "message": "m"},
}


def _with(kind: str, **fields: Any) -> str:
    obj = {**_GOOD[kind], **fields}
    return json.dumps({k: v for k, v in obj.items() if v is not _MISSING})


_MISSING: Any = object()

MALFORMED: list[tuple[str, str | bytes, str]] = [
    # (id, frame, a fragment of the message)
    ("binary", json.dumps(_GOOD["auth_ok"]).encode(), "binary frame"),
    ("not-json", "{", "not JSON"),
    ("empty", "", "not JSON"),
    ("too-deep", "[" * 100_000, "not JSON"),
    ("huge-int", '{"type":"lobby_update","seq":' + "9" * 5000 + "}", "not JSON"),
    ("array", "[]", "not a JSON object"),
    ("string", '"auth_ok"', "not a JSON object"),
    ("no-type", '{"publicKey":"' + PK + '"}', "'type' missing"),
    ("type-not-string", '{"type":["auth_ok"]}', "'type' missing"),
    ("unknown-type", '{"type":"welcome"}', "unknown frame type 'welcome'"),
    ("client-type", json.dumps({"type": "get_lobby"}), "unknown frame type 'get_lobby'"),
    ("challenge-no-nonce", _with("challenge", nonce=_MISSING), "'nonce' missing"),
    ("challenge-short-nonce", _with("challenge", nonce=NONCE[:62]), "'nonce' is not 64 hex"),
    ("challenge-nonce-not-hex", _with("challenge", nonce="g" * 64), "'nonce' is not 64 hex"),
    ("challenge-version-str", _with("challenge", version="1"), "'version' missing or not an"),
    ("challenge-version-bool", _with("challenge", version=True), "'version' missing or not an"),
    ("challenge-version-float", _with("challenge", version=1.0), "'version' missing or not an"),
    ("auth-ok-no-key", _with("auth_ok", publicKey=_MISSING), "'publicKey' missing"),
    ("auth-ok-key-int", _with("auth_ok", publicKey=1), "'publicKey' missing or not a string"),
    ("auth-ok-key-65", _with("auth_ok", publicKey=PK + "a"), "'publicKey' is not 64 hex"),
    ("auth-failed-no-reason", _with("auth_failed", reason=_MISSING), "'reason' missing"),
    ("auth-failed-reason-null", _with("auth_failed", reason=None), "'reason' missing"),
    ("snapshot-seq-bool", _with("lobby_snapshot", seq=False), "'seq' missing or not an integer"),
    ("snapshot-seq-float", _with("lobby_snapshot", seq=1.5), "'seq' missing or not an integer"),
    ("snapshot-seq-missing", _with("lobby_snapshot", seq=_MISSING), "'seq' missing"),
    ("snapshot-users-dict", _with("lobby_snapshot", users={"publicKey": PK}), "not a list"),
    ("snapshot-users-missing", _with("lobby_snapshot", users=_MISSING), "'users' missing"),
    ("snapshot-user-string", _with("lobby_snapshot", users=[PK]), "users[0] is not an object"),
    ("snapshot-user-no-key", _with("lobby_snapshot", users=[{"key": PK}]), "users[0].publicKey"),
    (
        "snapshot-user-bad-key",
        _with("lobby_snapshot", users=[{"publicKey": PK}, {"publicKey": "zz" * 32}]),
        "users[1].publicKey is not a 64-hex key: 'zzzz",
    ),
    (
        "snapshot-user-key-nested",
        _with("lobby_snapshot", users=[{"publicKey": [[PK]]}]),
        "users[0].publicKey is not a 64-hex key: an array",
    ),
    ("update-no-joined", _with("lobby_update", joined=_MISSING), "'joined' missing"),
    ("update-no-left", _with("lobby_update", left=_MISSING), "'left' missing"),
    ("update-left-null", _with("lobby_update", left=None), "'left' missing or not a list"),
    ("update-joined-bad", _with("lobby_update", joined=[{"publicKey": 7}]), "joined[0].publicKey"),
    ("update-seq-string", _with("lobby_update", seq="2"), "'seq' missing or not an integer"),
    ("message-no-from", _with("message", **{"from": _MISSING}), "'from' missing"),
    ("message-from-not-key", _with("message", **{"from": "x"}), "'from' is not 64 hex"),
    ("message-id-int", _with("message", id=1), "'id' missing or not a string"),
    ("message-no-body", _with("message", body=_MISSING), "'body' missing"),
    ("result-no-id", _with("send_result", id=_MISSING), "'id' missing"),
    ("result-no-status", _with("send_result", status=_MISSING), "'status' missing"),
    ("result-status-unknown", _with("send_result", status="sent"), "status 'sent' is not one of"),
    ("result-status-case", _with("send_result", status="DELIVERED"), "is not one of"),
    (
        "result-rejected-no-reason",
        _with("send_result", status="rejected"),
        "status 'rejected' without a reason",
    ),
    (
        "result-rejected-reason-null",
        _with("send_result", status="rejected", reason=None),
        "'reason' missing or not a string",
    ),
    (
        "result-rejected-reason-unknown",
        _with("send_result", status="rejected", reason="busy"),
        "reason 'busy' is not one of too_large, invalid_recipient, rate_limited, unavailable",
    ),
    (
        "result-delivered-with-reason",
        _with("send_result", reason="rate_limited"),
        "a reason with status 'delivered'",
    ),
    (
        "result-offline-reason-null",
        _with("send_result", status="offline", reason=None),
        "a reason with status 'offline'",
    ),
    ("error-no-code", _with("error", code=_MISSING), "'code' missing"),
    ("error-code-int", _with("error", code=400), "'code' missing or not a string"),
    ("error-no-message", _with("error", message=_MISSING), "'message' missing"),
]


@pytest.mark.parametrize(
    ("frame", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_every_malformed_frame_raises_server_protocol_error(
    frame: str | bytes, fragment: str
) -> None:
    with pytest.raises(ServerProtocolError) as info:
        parse_server_frame(frame)
    assert fragment in str(info.value)
    if isinstance(frame, str) and frame.startswith('{"type": "'):
        # A frame with a string type names it, in the attribute and (when the type is
        # known and a field is wrong) at the start of the message.
        kind = json.loads(frame)["type"]
        assert info.value.frame_type == kind
        assert kind not in _GOOD or str(info.value).startswith(f"{kind}: ")


def test_the_good_frames_of_the_malformed_table_are_good() -> None:
    for obj in _GOOD.values():
        parse_server_frame(json.dumps(obj))


def test_the_frame_type_of_an_error_is_none_without_a_string_type() -> None:
    for frame in ("{", "[]", '{"type":1}'):
        with pytest.raises(ServerProtocolError) as info:
            parse_server_frame(frame)
        assert info.value.frame_type is None
    with pytest.raises(ServerProtocolError) as info:
        parse_server_frame('{"type":"mystery"}')
    assert info.value.frame_type == "mystery"


# --------------------------------------------------------------------------- SendResult


def test_send_result_has_a_reason_exactly_when_rejected() -> None:
    with pytest.raises(ValueError):
        SendResult("m", SendStatus.REJECTED)
    with pytest.raises(ValueError):
        SendResult("m", SendStatus.DELIVERED, RejectReason.TOO_LARGE)
    delivered = SendResult("m", SendStatus.DELIVERED)
    offline = SendResult("m", SendStatus.OFFLINE)
    rejected = SendResult("m", SendStatus.REJECTED, RejectReason.RATE_LIMITED)
    assert (delivered.delivered, delivered.offline, delivered.rejected) == (True, False, False)
    assert (offline.delivered, offline.offline, offline.rejected) == (False, True, False)
    assert (rejected.delivered, rejected.offline, rejected.rejected) == (False, False, True)
    assert [r.outcome for r in (delivered, offline, rejected)] == [
        "delivered",
        "offline",
        "rejected/rate_limited",
    ]


# --------------------------------------------------------------------------- properties

keys = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
key_lists = st.lists(keys, max_size=5)
texts = st.text(max_size=100)

server_messages: st.SearchStrategy[ServerMessage] = st.one_of(
    st.builds(Challenge, keys, st.just(protocol.VERSION)),
    st.builds(AuthOk, keys),
    st.builds(AuthFailedFrame, st.sampled_from(AuthFailure)),
    st.builds(LobbySnapshot, st.integers(), key_lists.map(tuple)),
    st.builds(LobbyUpdate, st.integers(), key_lists.map(tuple), key_lists.map(tuple)),
    st.builds(Message, keys, texts, texts),
    st.builds(SendResult, texts, st.sampled_from([SendStatus.DELIVERED, SendStatus.OFFLINE])),
    st.builds(SendResult, texts, st.just(SendStatus.REJECTED), st.sampled_from(RejectReason)),
    st.builds(ErrorFrame, st.sampled_from(ErrorCode), texts),
)


def _lowercase(msg: ServerMessage) -> ServerMessage:
    """What the decoder returns for ``msg``: hex in lowercase."""
    match msg:
        case Challenge(nonce, version):
            return Challenge(nonce.lower(), version)
        case AuthOk(key):
            return AuthOk(key.lower())
        case LobbySnapshot(seq, users):
            return LobbySnapshot(seq, tuple(k.lower() for k in users))
        case LobbyUpdate(seq, joined, left):
            return LobbyUpdate(
                seq, tuple(k.lower() for k in joined), tuple(k.lower() for k in left)
            )
        case Message(sender, msg_id, body):
            return Message(sender.lower(), msg_id, body)
    return msg


@settings(max_examples=500, deadline=None)
@given(server_messages)
def test_every_server_encoders_output_decodes_back_to_the_same_values(msg: ServerMessage) -> None:
    assert parse_server_frame(encode(msg)) == _lowercase(msg)


def test_the_snapshot_built_from_items_decodes_like_the_plain_one() -> None:
    items = [protocol.user_item(k) for k in (PK, OTHER)]
    assert parse_server_frame(protocol.lobby_snapshot_of(9, items)) == LobbySnapshot(9, (PK, OTHER))
    assert parse_server_frame(protocol.lobby_snapshot_of(9, [])) == LobbySnapshot(9, ())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70) | keys,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["publicKey", "x"]), children, max_size=2)
    ),
    max_leaves=12,
)
_FIELDS = ["type", "nonce", "version", "publicKey", "reason", "seq", "users", "joined", "left"]
_FIELDS += ["from", "id", "body", "status", "code", "message"]
frame_like = st.dictionaries(
    st.sampled_from(_FIELDS),
    st.one_of(st.sampled_from([*_GOOD, "rejected", *SendStatus, *RejectReason]), json_values),
).map(lambda d: json.dumps({k: v.value if hasattr(v, "value") else v for k, v in d.items()}))


def _total(parse: Callable[[str | bytes], object], frame: str | bytes) -> None:
    with contextlib.suppress(ServerProtocolError):
        parse(frame)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(), st.binary(max_size=50), frame_like))
def test_parse_server_frame_raises_nothing_but_server_protocol_error(frame: str | bytes) -> None:
    _total(parse_server_frame, frame)  # anything else propagates and fails the test


@settings(max_examples=300, deadline=None)
@given(server_messages, st.sampled_from(_FIELDS), json_values)
def test_a_good_frame_with_one_field_changed_decodes_or_is_refused(
    msg: ServerMessage, name: str, value: Any
) -> None:
    obj = json.loads(encode(msg))
    obj[name] = value
    _total(parse_server_frame, json.dumps(obj))


# --------------------------------------------------------------------------- the auth check


def test_verify_auth_accepts_the_contracts_test_vector_in_either_case() -> None:
    nonce = bytes.fromhex(NONCE)
    assert protocol.verify_auth(nonce, PK, SIGNATURE) is None
    assert protocol.verify_auth(nonce, PK.upper(), SIGNATURE.upper()) is None


@pytest.mark.parametrize(
    ("public_key", "signature", "reason"),
    [
        ("zz" * 32, SIGNATURE, AuthFailure.INVALID_PUBLIC_KEY),
        (PK[:62], SIGNATURE, AuthFailure.INVALID_PUBLIC_KEY),
        ("", "", AuthFailure.INVALID_PUBLIC_KEY),
        (SMALL_ORDER, SIGNATURE, AuthFailure.INVALID_PUBLIC_KEY),
        (SMALL_ORDER, "not hex", AuthFailure.INVALID_PUBLIC_KEY),  # the key is named first
        ("ff" * 32, SIGNATURE, AuthFailure.INVALID_PUBLIC_KEY),  # not on the curve
        (PK, SIGNATURE[:126], AuthFailure.INVALID_SIGNATURE),
        (PK, "g" * 128, AuthFailure.INVALID_SIGNATURE),
        (PK, "00" * 64, AuthFailure.INVALID_SIGNATURE),
        (OTHER, SIGNATURE, AuthFailure.INVALID_SIGNATURE),  # a real key, not the signer
    ],
)
def test_verify_auth_names_the_contracts_reason(
    public_key: str, signature: str, reason: AuthFailure
) -> None:
    assert protocol.verify_auth(bytes.fromhex(NONCE), public_key, signature) is reason


def test_verify_auth_binds_the_signature_to_the_nonce() -> None:
    assert protocol.verify_auth(bytes(32), PK, SIGNATURE) is AuthFailure.INVALID_SIGNATURE


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_what_sign_challenge_signs_verify_auth_accepts(seed: bytes, nonce: bytes) -> None:
    key = SigningKey(seed)
    public_key = bytes(key.verify_key).hex()
    assert (
        protocol.verify_auth(nonce, public_key, protocol.sign_challenge(key, nonce.hex())) is None
    )
