"""Hypothesis throws random and mutated frames at a real worker in a real cluster.

One cluster, one watcher and one authenticated "rude" connection live for the whole
module on an event loop in a background thread, so every example reuses them: each
example opens its own connection (before auth) or uses the rude one (after auth), sends
one frame and checks the protocol's answer. At the end the watcher's view and sequence
number are unchanged, it saw no error, and no process logged a traceback.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shared import protocol
from shared.client import LobbyClient, public_key_hex
from tests.support import Cluster

pytestmark = pytest.mark.process

T = TypeVar("T")
PRE_AUTH_LIMIT = 4096
SK = SigningKey(bytes(range(40, 72)))
PK = public_key_hex(SK)
OTHER = SigningKey(bytes(range(80, 112)))


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class World:
    cluster: Cluster
    loop: LoopThread
    watcher: LobbyClient
    rude: ClientConnection
    rude_key: str
    before: tuple[int | None, frozenset[str]]
    old_signature: str  # from an earlier challenge of SK


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fuzz")
    cluster = Cluster(
        tmp, workers=1, worker_args=("--msg-rate", "100000", "--msg-burst", "100000")
    ).start()
    loop = LoopThread()

    async def setup() -> World:
        watcher = await LobbyClient.connect(cluster.url)
        rude_sk = SigningKey.generate()
        rude = await connect(cluster.url, max_size=None)
        nonce = json.loads(await rude.recv())["nonce"]
        sig = rude_sk.sign(protocol.signed_payload(nonce)).signature.hex()
        auth = {"type": "auth", "publicKey": public_key_hex(rude_sk), "signature": sig}
        await rude.send(json.dumps(auth))
        assert json.loads(await rude.recv())["type"] == "auth_ok"
        assert json.loads(await rude.recv())["type"] == "lobby_snapshot"
        both = {watcher.public_key, public_key_hex(rude_sk)}
        await watcher.wait_for_view(both)
        async with connect(cluster.url) as ws:  # a signature to replay later
            nonce = json.loads(await ws.recv())["nonce"]
        old = SK.sign(protocol.signed_payload(nonce)).signature.hex()
        before = (watcher.view.seq, watcher.view.online)
        return World(cluster, loop, watcher, rude, public_key_hex(rude_sk), before, old)

    w = loop.run(setup())
    yield w

    async def teardown() -> None:
        assert (w.watcher.view.seq, w.watcher.view.online) == w.before
        assert w.watcher.errors == [] and w.watcher.error_frames == []
        assert w.watcher.messages_received == 0
        await w.rude.close()
        await w.watcher.close()

    try:
        loop.run(teardown())
    finally:
        loop.stop()
        cluster.stop()  # asserts no traceback in any process


# --------------------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
hex128 = st.text("0123456789abcdef", min_size=128, max_size=128)


def _not_an_object(text: str) -> bool:
    try:
        return not isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return True


# A pre-auth case is (frame builder from the nonce, expected answer): an auth_failed
# reason, or a close code when the WebSocket layer answers (1009 size, 1007 bad UTF-8).
Case = tuple[Any, str | int]

garbage: st.SearchStrategy[Case] = st.one_of(
    st.text(max_size=300).filter(_not_an_object).map(lambda t: (t, "malformed")),
    st.binary(max_size=300).map(lambda b: (b, "malformed")),
    st.integers(1, 1500).map(lambda d: ("[" * d + "]" * d, "malformed")),  # deep nesting
    st.integers(1, 1300).map(lambda d: ('{"a":' * d + "1" + "}" * d, "malformed")),
    st.integers(400, 4000).map(
        lambda n: ('{"type":"auth","publicKey":' + "9" * n + "}", "malformed")
    ),
    st.just(('{"type":"auth","publicKey":1e999999,"signature":"x"}', "malformed")),
    st.integers(PRE_AUTH_LIMIT + 1, 3 * PRE_AUTH_LIMIT).map(lambda n: ("x" * n, 1009)),
    st.just((b"\xff\xfe{}", 1007)),  # invalid UTF-8 in a text frame
    json_values.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: (json.dumps(v), "malformed")
    ),
    st.dictionaries(st.sampled_from(["publicKey", "signature", "x"]), json_values)
    .map(
        lambda d: (
            (json.dumps({**d, "type": "auth"}), "malformed")
            if not (isinstance(d.get("publicKey"), str) and isinstance(d.get("signature"), str))
            else None
        )
    )
    .filter(lambda c: c is not None),
    st.one_of(json_values.filter(lambda v: not isinstance(v, str)), st.text(max_size=20)).map(
        lambda t: (
            json.dumps({"type": t}),
            "malformed" if t not in ("get_lobby", "send") else "unexpected_message",
        )
    ),
    st.sampled_from(["get_lobby", "send"]).map(
        lambda t: (json.dumps({"type": t, "to": PK, "id": "1", "body": ""}), "unexpected_message")
    ),
)


def _claim(pk: object, sig: object) -> str:
    return json.dumps({"type": "auth", "publicKey": pk, "signature": sig})


def _key_reason(pk: str) -> str:
    """Oracle: libsodium's point check, independent of the worker's code path."""
    if not protocol.is_hex_key(pk) or not crypto_core_ed25519_is_valid_point(bytes.fromhex(pk)):
        return "invalid_public_key"
    return "invalid_signature"


@st.composite
def signatures(draw: st.DrawFn) -> Case:
    """Well-formed auth frames that must fail: mutated, replayed, foreign, random."""
    kind = draw(st.sampled_from(["flip-sig", "flip-key", "replay", "other-key", "random", "text"]))
    if kind == "flip-sig":
        i, c = draw(st.integers(0, 127)), draw(st.sampled_from("0123456789abcdefg"))

        def build(nonce: str) -> str:
            sig = SK.sign(protocol.signed_payload(nonce)).signature.hex()
            flipped = c if sig[i] != c else ("1" if c == "0" else "0")
            return _claim(PK, sig[:i] + flipped + sig[i + 1 :])

        return build, "invalid_signature"
    if kind == "flip-key":
        i, c = draw(st.integers(0, 63)), draw(st.sampled_from("0123456789abcdef"))
        c = c if PK[i] != c else ("1" if c == "0" else "0")
        pk = PK[:i] + c + PK[i + 1 :]
        return (
            lambda nonce: _claim(pk, SK.sign(protocol.signed_payload(nonce)).signature.hex())
        ), _key_reason(pk)
    if kind == "replay":
        return "REPLAY", "invalid_signature"
    if kind == "other-key":
        return (
            lambda nonce: _claim(PK, OTHER.sign(protocol.signed_payload(nonce)).signature.hex())
        ), "invalid_signature"
    if kind == "random":
        pk, sig = draw(hex64), draw(hex128)
        return _claim(pk, sig), _key_reason(pk)
    pk, sig = draw(st.text(max_size=70)), draw(st.text(max_size=140))
    reason = _key_reason(pk)
    return _claim(pk, sig), reason


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=st.one_of(garbage, signatures()))
def test_hostile_frames_before_auth(world: World, case: Case) -> None:
    build, expected = case

    async def attempt() -> None:
        async with connect(world.cluster.url, max_size=None) as ws:
            nonce = json.loads(await ws.recv())["nonce"]
            if build == "REPLAY":
                frame: str | bytes = _claim(PK, world.old_signature)
            elif callable(build):
                frame = build(nonce)
            else:
                frame = build
            size = len(frame if isinstance(frame, bytes) else frame.encode("utf-8", "replace"))
            want = 1009 if size > PRE_AUTH_LIMIT else expected  # size is checked first
            if isinstance(frame, bytes) and expected == 1007:
                await ws.send(frame, text=True)
            else:
                await ws.send(frame)
            frames = []
            async with asyncio.timeout(10):
                try:
                    while True:
                        frames.append(json.loads(await ws.recv()))
                except ConnectionClosed:
                    pass
            if isinstance(want, int):
                assert (ws.close_code, frames) == (want, []), frame
            else:
                assert frames == [{"type": "auth_failed", "reason": want}], frame
                assert (ws.close_code, ws.close_reason) == (4001, "auth_failed")

    world.loop.run(attempt())


# --------------------------------------------------------------------------- after auth

NOBODY = "0" * 63 + "1"  # a well-formed key nobody uses

after_auth: st.SearchStrategy[tuple[str | bytes, dict[str, Any]]] = st.one_of(
    st.text(max_size=300).filter(_not_an_object).map(lambda t: (t, {"code": "malformed"})),
    st.binary(max_size=300).map(lambda b: (b, {"code": "malformed"})),
    st.integers(1, 5000).map(lambda d: ("[" * d + "]" * d, {"code": "malformed"})),
    st.integers(4400, 20000).map(
        lambda n: ('{"type":"send","id":' + "7" * n + "}", {"code": "malformed"})
    ),
    st.one_of(json_values.filter(lambda v: not isinstance(v, str))).map(
        lambda t: (json.dumps({"type": t}), {"code": "malformed"})
    ),
    st.text(max_size=30)
    .filter(lambda t: t not in protocol.KNOWN_CLIENT_TYPES)
    .map(lambda t: (json.dumps({"type": t}), {"code": "unknown_type"})),
    st.fixed_dictionaries({"to": json_values, "id": json_values, "body": json_values})
    .filter(lambda d: not all(isinstance(v, str) for v in d.values()))
    .map(lambda d: (json.dumps({"type": "send", **d}), {"code": "malformed"})),
    st.text(min_size=1, max_size=64)
    .filter(lambda i: i.encode("utf-8", "surrogatepass") == i.encode("utf-8", "ignore"))
    .flatmap(
        lambda i: st.sampled_from(
            [
                (
                    json.dumps({"type": "send", "to": "x" * 64, "id": i, "body": ""}),
                    {"id": i, "reason": "invalid_recipient"},
                ),
                (
                    json.dumps(
                        {"type": "send", "to": NOBODY, "id": i, "body": "é" * 33_000},
                        ensure_ascii=False,  # 66 000 bytes of body, within the frame limit
                    ),
                    {"id": i, "reason": "too_large"},
                ),
                (
                    json.dumps({"type": "send", "to": NOBODY, "id": i, "body": "hi"}),
                    {"id": i, "status": "offline"},
                ),
            ]
        )
    ),
    st.builds(lambda s: (_claim(PK, s), {"code": "malformed"}), hex128),  # auth again
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=after_auth)
def test_hostile_frames_after_auth(world: World, case: tuple[str | bytes, dict[str, Any]]) -> None:
    frame, expected = case

    async def attempt() -> None:
        await world.rude.send(frame)
        async with asyncio.timeout(10):
            reply = json.loads(await world.rude.recv())
        assert reply["type"] in ("error", "send_result"), reply
        for name, value in expected.items():
            assert reply[name] == value, (frame, reply)
        if reply["type"] == "error":
            assert isinstance(reply["message"], str) and reply["message"]

    world.loop.run(attempt())
