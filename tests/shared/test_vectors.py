"""The shared test vectors (tests/vectors/*.json) against the Python side: the core's
view and session, and the load generator's view. tests/js/vectors.test.js runs the
same files against lobby.js, so the two languages cannot disagree on them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from scripts.loadtest.client import decode
from scripts.loadtest.views import LoadView
from shared import protocol
from shared.session import (
    ConnectionClosedError,
    ConnectionRefusedByServer,
    LobbyClientError,
    LobbyView,
    Session,
    State,
    backoff_delay,
    http_refusal,
    parse_frame,
    retryable,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
VIEW = json.loads((VECTORS / "view.json").read_text())["cases"]
AUTH = json.loads((VECTORS / "auth.json").read_text())["cases"]
RECONNECT = json.loads((VECTORS / "reconnect.json").read_text())
ERRORS = {
    "ProtocolError",
    "SequenceGap",
    "DuplicateUpdate",
    "InconsistentUpdate",
    "InconsistentSnapshot",
}

Apply = Callable[[str], None]


def _on_view(view: Any, decoder: Callable[[str | bytes], protocol.ServerMessage]) -> Apply:
    def apply(text: str) -> None:
        msg = decoder(text)
        if isinstance(msg, protocol.LobbySnapshot):
            view.apply_snapshot(msg.seq, msg.users)
        else:
            assert isinstance(msg, protocol.LobbyUpdate)
            view.apply_update(msg.seq, msg.joined, msg.left)

    return apply


def _implementations() -> dict[str, tuple[Any, Apply]]:
    core, load = LobbyView(), LoadView()
    session = Session(SigningKey(b"\x07" * 32), state=State.OPEN, resync_on_error=False)

    def receive(text: str) -> None:
        session.receive(text)

    return {
        "core view": (core, _on_view(core, parse_frame)),
        "load generator view": (load, _on_view(load, decode)),
        "session": (session.view, receive),
    }


def test_the_view_vectors_cover_every_outcome() -> None:
    outcomes = {result for case in VIEW for result in case["results"]}
    assert outcomes == ERRORS | {"ok"}


@pytest.mark.parametrize("implementation", ["core view", "load generator view", "session"])
@pytest.mark.parametrize("case", VIEW, ids=[case["name"] for case in VIEW])
def test_view_vectors(case: dict[str, Any], implementation: str) -> None:
    view, apply = _implementations()[implementation]
    results = []
    for frame in case["frames"]:
        before = (view.seq, view.online)
        try:
            apply(json.dumps(frame))
        except LobbyClientError as exc:
            results.append(type(exc).__name__)
            assert (view.seq, view.online) == before, "a refused frame changed the view"
        else:
            results.append("ok")
    assert results == case["results"]
    assert {"seq": view.seq, "online": sorted(view.online)} == case["view"]


@pytest.mark.parametrize("case", AUTH, ids=[case["publicKey"][:8] for case in AUTH])
def test_auth_vectors(case: dict[str, Any]) -> None:
    key = SigningKey(bytes.fromhex(case["seed"]))
    assert bytes(key.verify_key).hex() == case["publicKey"]
    nonce = case["challenge"]["nonce"]
    assert protocol.signed_payload(nonce).hex() == case["payload"]
    session = Session(key)
    assert session.receive(json.dumps(case["challenge"])) == []
    (frame,) = session.data_to_send()
    assert json.loads(frame) == case["auth"]
    assert session.state is State.AUTH


@pytest.mark.parametrize(("code", "expected"), sorted(RECONNECT["close_codes"].items()))
def test_reconnect_vectors_close_codes(code: str, expected: bool) -> None:
    assert retryable(ConnectionClosedError(int(code), "")) is expected  # once online
    assert retryable(ConnectionRefusedByServer(int(code), "")) is expected  # before


@pytest.mark.parametrize(("status", "expected"), sorted(RECONNECT["http_statuses"].items()))
def test_reconnect_vectors_http_statuses(status: str, expected: bool) -> None:
    assert retryable(http_refusal(int(status))) is expected


@pytest.mark.parametrize("case", RECONNECT["backoff"])
def test_reconnect_vectors_backoff(case: dict[str, Any]) -> None:
    delay = backoff_delay(case["attempt"], case["jitter"], case["initial"], case["maximum"])
    assert delay == pytest.approx(case["delay"], abs=1e-12)
