"""The shared test vectors of protocol version 2 (tests/vectors/auth_v2.json and
frames_v2.json) against the Python codec. tests/js/protocol_v2.test.js runs the same
files against protocol_v2.js, so the two languages cannot disagree on them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from shared import v2
from shared.protocol import Challenge

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
AUTH = json.loads((VECTORS / "auth_v2.json").read_text(encoding="utf-8"))
FRAMES = json.loads((VECTORS / "frames_v2.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", AUTH["identities"], ids=lambda c: c["url"])
def test_identity_vectors(case: dict[str, str]) -> None:
    assert v2.server_identity(case["url"]) == case["identity"]
    # Canonical is a fixed point: the identity of an identity is itself.
    assert v2.server_identity(case["identity"]) == case["identity"]


@pytest.mark.parametrize("url", AUTH["refused"])
def test_refused_identity_vectors(url: str) -> None:
    with pytest.raises(ValueError, match="server URL"):
        v2.server_identity(url)


@pytest.mark.parametrize("case", AUTH["cases"], ids=lambda c: c["publicKey"][:8])
def test_auth_vectors(case: dict[str, Any]) -> None:
    key = SigningKey(bytes.fromhex(case["seed"]))
    assert bytes(key.verify_key).hex() == case["publicKey"]
    identity = v2.server_identity(case["url"])
    assert identity == case["identity"]
    challenge = v2.decode_server_frame_v2(json.dumps(case["challenge"]))
    assert isinstance(challenge, Challenge)
    assert challenge.version == 2
    assert v2.signed_payload_v2(identity, challenge.nonce).hex() == case["payload"]
    signature = v2.sign_challenge_v2(key, identity, challenge.nonce)
    assert signature == case["signature"]
    # The server's side: the frame parses and the signature proves the key for this
    # server only.
    frame = json.dumps(case["auth"])
    auth = v2.parse_client_frame_v2(frame)
    assert isinstance(auth, v2.AuthV2)
    key_hex = case["publicKey"]
    assert (auth.public_key, auth.signature, auth.server) == (key_hex, signature, identity)
    nonce = bytes.fromhex(challenge.nonce)
    assert v2.verify_auth_v2(nonce, key_hex, signature, auth.server) is None
    other = identity.replace(":443/", ":8443/").replace(":8765/", ":8766/")
    assert other != identity
    assert v2.verify_auth_v2(nonce, key_hex, signature, other) is v2.AuthFailureV2.INVALID_SIGNATURE
    # And a client's encoder writes this very frame.
    sent = case["auth"]
    record = None
    if "record" in sent:
        record = v2.parse_record_change(sent["record"], require_one=False)
        assert isinstance(record, v2.RecordChange)
    follow = None
    if "follow" in sent:
        follow = v2.Follow(v2.Scope(sent["follow"]["scope"]), tuple(sent["follow"].get("keys", ())))
    assert auth.follow == (follow or v2.Follow())
    again = v2.auth_v2(key_hex, signature, identity, record, follow, auth.resume)
    assert json.loads(again) == sent


def _meaning(message: v2.ServerMessageV2) -> dict[str, Any]:
    """A decoded lobby frame in the vectors' terms."""

    def entries(items: tuple[v2.Entry, ...]) -> list[dict[str, Any]]:
        return [{"key": e.key, "status": e.record.status, "data": e.record.data} for e in items]

    if isinstance(message, v2.Snapshot):
        return {
            "type": "snapshot",
            "epoch": message.epoch,
            "seq": message.seq,
            "scope": message.scope.value,
            "entries": entries(message.entries),
            "applied": message.applied,
        }
    assert isinstance(message, v2.Update)
    return {
        "type": "update",
        "seq": message.seq,
        "prev": message.prev,
        "joined": entries(message.joined),
        "updated": entries(message.updated),
        "left": list(message.left),
    }


def _records(items: list[dict[str, Any]]) -> list[tuple[str, v2.Record]]:
    return [(e["key"], v2.Record(e["status"], v2.compact_data(e["data"]))) for e in items]


BINARY = [case for case in FRAMES["frames"] if "hex" in case]
TEXT = [case for case in FRAMES["frames"] if "text" in case]


@pytest.mark.parametrize("case", BINARY, ids=lambda c: c["name"])
def test_binary_frame_vectors(case: dict[str, Any]) -> None:
    raw = bytes.fromhex(case["hex"])
    assert _meaning(v2.decode_server_frame_v2(raw)) == case["frame"]
    if not case.get("canonical", True):
        return
    meaning = case["frame"]
    if meaning["type"] == "snapshot":
        encoded = v2.encode_snapshot(
            meaning["epoch"],
            meaning["seq"],
            v2.Scope(meaning["scope"]),
            _records(meaning["entries"]),
            meaning["applied"],
        )
    else:
        encoded = v2.encode_update(
            meaning["seq"],
            meaning["prev"],
            _records(meaning["joined"]),
            _records(meaning["updated"]),
            meaning["left"],
        )
    assert encoded.hex() == case["hex"]


@pytest.mark.parametrize("case", TEXT, ids=lambda c: c["name"])
def test_text_frame_vectors(case: dict[str, Any]) -> None:
    message = v2.decode_server_frame_v2(case["text"])
    fields = {"type": message.TYPE}
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        fields[_WIRE_NAMES.get(field.name, field.name)] = getattr(value, "value", value)
    assert fields == case["frame"]


_WIRE_NAMES = {"public_key": "publicKey"}


@pytest.mark.parametrize("case", FRAMES["malformed"], ids=lambda c: c["name"])
def test_malformed_binary_vectors(case: dict[str, Any]) -> None:
    with pytest.raises(v2.ServerProtocolError):
        v2.decode_server_frame_v2(bytes.fromhex(case["hex"]))


@pytest.mark.parametrize("case", FRAMES["malformed_text"], ids=lambda c: c["name"])
def test_malformed_text_vectors(case: dict[str, Any]) -> None:
    with pytest.raises(v2.ServerProtocolError):
        v2.decode_server_frame_v2(case["text"])


@pytest.mark.parametrize("case", FRAMES["records"], ids=lambda c: c["name"])
def test_record_vectors(case: dict[str, Any]) -> None:
    got = v2.parse_record(case["record"])
    assert isinstance(got, v2.Record) is case["valid"], got
    if isinstance(got, v2.Record):
        assert (got.status, got.data_json) == (case["status"], case["compact"])
    # The same rule in set_record (which needs at least one field).
    if isinstance(case["record"], dict) and case["record"]:
        parsed = v2.parse_client_frame_v2(json.dumps({"type": "set_record", **case["record"]}))
        assert isinstance(parsed, v2.SetRecord) is case["valid"], parsed
