"""The v2 codec (shared.v2) on generated input: every frame round-trips, the parsers
never raise on anything a client sends, the decoder never raises anything but
ServerProtocolError on anything a server sends, and the record bounds hold exactly."""

from __future__ import annotations

import contextlib
import json
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from shared import v2
from shared.protocol import Challenge

keys = st.binary(min_size=32, max_size=32).map(bytes.hex)
seqs = st.integers(min_value=0, max_value=2**53 - 1)
epochs = st.text(alphabet=string.printable[:94], min_size=1, max_size=255)
_status_chars = st.characters(blacklist_categories=["Cs"]).filter(
    lambda c: c >= " " and not "\x7f" <= c <= "\x9f"
)
custom_statuses = st.text(_status_chars, min_size=1, max_size=32).filter(
    lambda s: len(s.encode()) <= 32
)
statuses = st.one_of(st.sampled_from(list(v2.STATUS_CODES)), custom_statuses)
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
data_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


@st.composite
def records(draw: st.DrawFn) -> v2.Record:
    data = draw(data_objects)
    try:
        data_json = v2.compact_data(data)
    except ValueError:
        data_json = "{}"
    return v2.Record(draw(statuses), data_json)


entries = st.lists(st.tuples(keys, records()), max_size=6)


# ------------------------------------------------------------ round trips


@settings(max_examples=100, deadline=None)
@given(epochs, seqs, st.sampled_from([v2.Scope.LOBBY, v2.Scope.WATCH]), entries)
def test_snapshot_round_trip(epoch: str, seq: int, scope: v2.Scope, items: list[Any]) -> None:
    frame = v2.encode_snapshot(epoch, seq, scope, items)
    assert frame == v2.snapshot_of(epoch, seq, scope, [v2.encode_entry(k, r) for k, r in items])
    got = v2.decode_server_frame_v2(frame)
    assert got == v2.Snapshot(epoch, seq, scope, tuple(v2.Entry(k, r) for k, r in items))


@settings(max_examples=100, deadline=None)
@given(seqs, seqs, entries, entries, st.lists(keys, max_size=6))
def test_update_round_trip(a: int, b: int, joined: Any, updated: Any, left: list[str]) -> None:
    prev, seq = min(a, b), max(a, b)
    frame = v2.encode_update(seq, prev, joined, updated, [bytes.fromhex(k) for k in left])
    got = v2.decode_server_frame_v2(bytearray(frame))
    assert got == v2.Update(
        seq,
        prev,
        tuple(v2.Entry(k, r) for k, r in joined),
        tuple(v2.Entry(k, r) for k, r in updated),
        tuple(left),
    )


def test_an_entry_without_custom_status_or_data_is_33_bytes() -> None:
    for status in v2.STATUS_CODES:
        assert len(v2.encode_entry(b"\x01" * 32, v2.Record(status))) == 33


@settings(max_examples=100, deadline=None)
@given(keys, epochs, seqs, st.booleans(), st.integers(0, 2**53 - 1))
def test_json_server_frames_round_trip(
    key: str, epoch: str, seq: int, resumed: bool, online: int
) -> None:
    assert v2.decode_server_frame_v2(v2.challenge_v2(key)) == Challenge(key, 2)
    assert v2.decode_server_frame_v2(v2.auth_ok_v2(key, epoch, seq, resumed)) == v2.AuthOkV2(
        key, epoch, seq, resumed
    )
    assert v2.decode_server_frame_v2(v2.count(epoch, seq, online)) == v2.Count(epoch, seq, online)
    for reason in v2.AuthFailureV2:
        assert v2.decode_server_frame_v2(v2.auth_failed_v2(reason)) == v2.AuthFailedV2(reason)
    for code in v2.ErrorCodeV2:
        assert v2.decode_server_frame_v2(v2.error_v2(code, epoch)) == v2.ErrorV2(code, epoch)


follows = st.one_of(
    st.sampled_from([v2.Follow(v2.Scope.LOBBY), v2.Follow(v2.Scope.COUNT)]),
    st.lists(keys, max_size=5, unique=True).map(lambda k: v2.Follow(v2.Scope.WATCH, tuple(k))),
)
resumes = st.builds(v2.Resume, epochs, seqs)


@settings(max_examples=100, deadline=None)
@given(keys, st.text(string.printable[:94], min_size=1), records(), follows, st.none() | resumes)
def test_auth_round_trip(
    key: str, server: str, record: v2.Record, follow: v2.Follow, resume: v2.Resume | None
) -> None:
    signature = key + key
    got = v2.parse_client_frame_v2(v2.auth_v2(key, signature, server, record, follow, resume))
    assert got == v2.AuthV2(key, signature, server, record, follow, resume)
    minimal = v2.parse_client_frame_v2(v2.auth_v2(key, signature, server))
    assert minimal == v2.AuthV2(key, signature, server)


@settings(max_examples=100, deadline=None)
@given(st.none() | statuses, st.none() | data_objects, follows, st.lists(keys, max_size=5))
def test_other_client_frames_round_trip(
    status: str | None, data: dict[str, Any] | None, follow: v2.Follow, watched: list[str]
) -> None:
    got = v2.parse_client_frame_v2(v2.set_record(status, data))
    if status is None and data is None:
        assert got == v2.Violation(v2.ViolationV2.BAD_RECORD, "set_record needs status or data")
    elif isinstance(got, v2.SetRecord):
        assert got.change.status == status
        assert got.change.data_json == (None if data is None else v2.compact_data(data))
    else:  # data over the limit
        assert got == v2.Violation(v2.ViolationV2.BAD_RECORD, got.detail)
        with pytest.raises(ValueError):
            v2.compact_data(data)
    assert v2.parse_client_frame_v2(v2.follow(follow)) == v2.FollowFrame(follow)
    distinct = tuple(dict.fromkeys(watched))
    assert v2.parse_client_frame_v2(v2.watch(watched)) == v2.Watch(distinct)
    assert v2.parse_client_frame_v2(v2.unwatch(watched)) == v2.Unwatch(distinct)


# ------------------------------------------------------------ totality


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_the_decoder_raises_only_its_error_on_any_bytes(frame: bytes) -> None:
    with contextlib.suppress(v2.ServerProtocolError):
        v2.decode_server_frame_v2(frame)


@settings(max_examples=150, deadline=None)
@given(epochs, seqs, entries, st.data())
def test_the_decoder_raises_only_its_error_on_damaged_frames(
    epoch: str, seq: int, items: Any, data: st.DataObject
) -> None:
    frame = bytearray(v2.encode_snapshot(epoch, seq, v2.Scope.LOBBY, items))
    if data.draw(st.booleans()):
        del frame[data.draw(st.integers(0, len(frame))) :]
    else:
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    with contextlib.suppress(v2.ServerProtocolError):
        v2.decode_server_frame_v2(frame)


frame_like = st.dictionaries(
    st.sampled_from(
        [
            "type",
            "publicKey",
            "signature",
            "server",
            "record",
            "follow",
            "resume",
            "status",
            "data",
            "scope",
            "keys",
            "epoch",
            "seq",
            "online",
            "resumed",
            "nonce",
            "version",
            "reason",
            "code",
            "message",
            "from",
            "id",
            "body",
            "to",
        ]
    ),
    json_values
    | st.sampled_from(
        [
            "auth",
            "set_record",
            "follow",
            "watch",
            "unwatch",
            "get_lobby",
            "send",
            "count",
            "auth_ok",
            "challenge",
            "error",
            "auth_failed",
            "watch",
            "lobby",
            "a" * 64,
        ]
    ),
).map(json.dumps)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), frame_like))
def test_the_decoder_raises_only_its_error_on_any_text(frame: str) -> None:
    with contextlib.suppress(v2.ServerProtocolError):
        v2.decode_server_frame_v2(frame)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.binary(max_size=50), frame_like))
def test_parse_client_frame_never_raises(frame: str | bytes) -> None:
    v2.parse_client_frame_v2(frame)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60) | st.from_regex(r"\A[wW][sS][sS]?://[^/]{0,20}(/.{0,10})?\Z"))
def test_server_identity_raises_only_value_error_and_is_a_fixed_point(url: str) -> None:
    try:
        identity = v2.server_identity(url)
    except ValueError:
        return
    assert v2.server_identity(identity) == identity
    assert identity.isascii()


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.text(max_size=70), st.text(max_size=130), st.text())
def test_verify_auth_v2_never_raises(nonce: bytes, key: str, signature: str, server: str) -> None:
    assert v2.verify_auth_v2(nonce, key, signature, server) is not None


# ------------------------------------------------------------ record bounds


@pytest.mark.parametrize(
    ("status", "valid"),
    [
        ("x" * 32, True),
        ("x" * 33, False),
        ("é" * 16, True),  # 32 bytes
        ("é" * 16 + "x", False),  # 33 bytes
        ("", False),
        ("a\x1fb", False),
        ("a\x7fb", False),
        ("a\x80b", False),  # C1 controls too
        ("a\x9fb", False),
        ("a\xa0b", True),
        ("a\tb", False),
        ("\ud800", False),
        ("away", True),
    ],
)
def test_status_bounds(status: str, valid: bool) -> None:
    assert (v2.check_status(status) is None) is valid
    assert isinstance(v2.parse_record({"status": status}), v2.Record) is valid


@pytest.mark.parametrize(
    ("data", "valid"),
    [
        ({"d": "x" * 247}, True),  # 255 bytes compact
        ({"d": "x" * 248}, False),
        ({"d": "é" * 123 + "x"}, True),
        ({"d": "é" * 124}, False),
        ({"d": float("nan")}, False),
        ({"d": "\udc00"}, False),
        ([], False),
        ({}, True),
    ],
)
def test_data_bounds(data: Any, valid: bool) -> None:
    assert isinstance(v2.parse_record({"data": data}), v2.Record) is valid


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_status_rule(status: str) -> None:
    try:
        size = len(status.encode())
    except UnicodeEncodeError:
        size = -1
    expected = 1 <= size <= 32 and not any(c < " " or "\x7f" <= c <= "\x9f" for c in status)
    assert (v2.check_status(status) is None) is expected


def test_a_watchlist_holds_at_most_1000_distinct_keys() -> None:
    many = [f"{i:064x}" for i in range(1000)]
    frame = v2.follow(v2.Follow(v2.Scope.WATCH, tuple([*many, many[0].upper()])))
    got = v2.parse_client_frame_v2(frame)
    assert isinstance(got, v2.FollowFrame) and len(got.follow.keys) == 1000
    over = v2.Follow(v2.Scope.WATCH, (*many, "f" * 64))
    full = v2.parse_client_frame_v2(v2.follow(over))
    assert isinstance(full, v2.Violation) and full.kind is v2.ViolationV2.WATCHLIST_FULL
    in_auth = v2.parse_client_frame_v2(v2.auth_v2("a" * 64, "b" * 128, "ws://h:1/ws", follow=over))
    assert isinstance(in_auth, v2.Violation) and in_auth.kind is v2.ViolationV2.BAD_FOLLOW


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ({"record": {"status": ""}}, v2.ViolationV2.BAD_RECORD),
        ({"record": None}, v2.ViolationV2.BAD_RECORD),
        ({"follow": {"scope": "everything"}}, v2.ViolationV2.BAD_FOLLOW),
        ({"follow": {"scope": "watch", "keys": ["nothex"]}}, v2.ViolationV2.BAD_FOLLOW),
        ({"resume": {"epoch": "e", "seq": -1}}, v2.ViolationV2.BAD_RESUME),
        ({"resume": {"epoch": "e", "seq": 2**53}}, v2.ViolationV2.BAD_RESUME),
        ({"resume": {"epoch": "", "seq": 1}}, v2.ViolationV2.BAD_RESUME),
        ({"resume": {"epoch": "e", "seq": True}}, v2.ViolationV2.BAD_RESUME),
        ({"server": 1}, v2.ViolationV2.MALFORMED),
        ({"server": "ws://ünï/ws"}, v2.ViolationV2.MALFORMED),
        ({"server": "x" * 1025}, v2.ViolationV2.MALFORMED),
    ],
)
def test_auth_refusals_name_their_reason(extra: dict[str, Any], kind: v2.ViolationV2) -> None:
    frame = {"type": "auth", "publicKey": "a" * 64, "signature": "b" * 128, "server": "ws://h:1/ws"}
    got = v2.parse_client_frame_v2(json.dumps({**frame, **extra}))
    assert isinstance(got, v2.Violation) and got.kind is kind, got


def test_a_signature_is_bound_to_the_server() -> None:
    key = SigningKey(b"\x05" * 32)
    nonce = "ab" * 32
    identity = v2.server_identity("wss://lobby.example/ws")
    signature = v2.sign_challenge_v2(key, identity, nonce)
    public = bytes(key.verify_key).hex()
    assert v2.verify_auth_v2(bytes.fromhex(nonce), public, signature, identity) is None
    relayed = v2.server_identity("wss://evil.example/ws")
    got = v2.verify_auth_v2(bytes.fromhex(nonce), public, signature, relayed)
    assert got is v2.AuthFailureV2.INVALID_SIGNATURE
    assert v2.verify_auth_v2(bytes.fromhex(nonce), "00" * 32, signature, identity) is (
        v2.AuthFailureV2.INVALID_PUBLIC_KEY
    )


def test_a_watched_key_is_one_string_however_many_watchlists_name_it() -> None:
    key = "ab" * 32
    first = v2.parse_client_frame_v2(v2.watch([key.upper()]))
    second = v2.parse_client_frame_v2(v2.watch([key]))
    assert isinstance(first, v2.Watch) and isinstance(second, v2.Watch)
    assert first.keys == second.keys == (key,)
    assert first.keys[0] is second.keys[0]  # interned: a 64-character key is 113 bytes
