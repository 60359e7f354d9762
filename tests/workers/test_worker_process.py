"""One real ``python -m workers`` process against a coordinator played by the test.

The test binds a real ROUTER (events) and an XPUB (updates: a PUB that also tells us
when the worker's subscription has arrived, so nothing is published into the void)
and talks to the worker exactly as the coordinator would, while real WebSocket clients
sign real challenges. Every wait has a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
import zmq.asyncio
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from shared import backbone as bb
from shared import protocol
from tests.support import ROOT, ManagedProcess, free_port, health, http, run, tls_files, until

pytestmark = pytest.mark.process

M = TypeVar("M")
WORKER = "w1"
FAST = [
    "--heartbeat-interval", "0.2",
    "--coordinator-timeout", "0.6",
    "--log-level", "DEBUG",
]  # fmt: skip
BEAT_EVERY = 0.1
QUIET = 0.3  # how long "nothing arrives" is watched for in negative checks


@pytest.fixture
def ipc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A short path: ipc:// endpoints are limited to about 100 bytes.
    return tmp_path_factory.mktemp("ipc")


# --------------------------------------------------------------------------- fake coordinator


@dataclass
class FakeCoordinator:
    """Answers Hello and SnapshotRequest from its truth, beats, records everything."""

    router: zmq.asyncio.Socket
    pub: zmq.asyncio.Socket
    peer: zmq.asyncio.Socket
    """A PULL socket playing another worker's results endpoint (:data:`PEER`)."""
    epoch: str = "e1"
    seq: int = 10
    mseq: int = 10  # the last update that changed who is online: protocol 1's seq
    users: set[str] = field(default_factory=set)
    answering: bool = True
    beating: bool = True
    up: list[bb.Message] = field(default_factory=list)
    taken: set[int] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    routing: bytes = b""
    """The worker's routing id (its worker id and its process's token), once heard."""

    async def serve_peer(self) -> None:
        """Record what the worker reports to another worker's results endpoint."""
        while True:
            messages, errors = bb.decode_batch(await self.peer.recv())
            assert not errors, errors
            self.up.extend(messages)
            self.arrived.set()

    async def serve(self) -> None:
        while True:
            ident, frame = await self.router.recv_multipart()
            assert bb.split_routing_id(ident)[0] == WORKER
            assert self.routing in (b"", ident)  # one process, one routing id
            self.routing = ident
            messages, errors = bb.decode_batch(frame)  # one message or a batch
            assert not errors, errors
            for msg in messages:
                if isinstance(msg, bb.Heartbeat):
                    continue
                self.up.append(msg)
                self.arrived.set()
                if self.answering and isinstance(msg, bb.Hello):
                    self.send(bb.Welcome(self.epoch))
                if self.answering and isinstance(msg, bb.SnapshotRequest):
                    self.send(bb.Snapshot(self.epoch, self.seq, self.mseq, sorted(self.users)))

    async def beat(self) -> None:
        while True:
            if self.beating:
                self.publish(bb.Beat(self.epoch, self.seq, time.time()))
            await asyncio.sleep(BEAT_EVERY)  # a clock, not synchronisation

    def send(self, msg: bb.Message) -> None:
        self.router.send_multipart([self.routing, bb.encode(msg)])

    def publish(self, msg: bb.Message) -> None:
        self.pub.send(bb.encode(msg))

    def update(self, joined: list[str] = (), left: list[str] = (), lose: bool = False) -> int:  # type: ignore[assignment]
        """Change the truth as the next seq; publish it unless ``lose``. Returns the
        protocol 1 seq (mseq) that shows it."""
        self.seq += 1
        self.mseq += 1
        self.users -= set(left)
        self.users |= set(joined)
        if not lose:
            update = bb.Update(
                self.epoch, self.seq, self.mseq, list(joined), list(left), time.time()
            )
            self.publish(update)
        return self.mseq

    def change_record(self, key: str, status: str, data: str) -> None:
        """Publish a change of ``key``'s record alone: the next seq, the same mseq."""
        self.seq += 1
        self.publish(
            bb.Update(self.epoch, self.seq, self.mseq, [], [], time.time(), [(key, status, data)])
        )

    async def expect(
        self, cls: type[M], where: Callable[[M], bool] = lambda m: True, timeout: float = 5.0
    ) -> M:
        """The first not yet taken message of type ``cls`` matching ``where``."""
        async with asyncio.timeout(timeout):
            while True:
                for i, msg in enumerate(self.up):
                    if i not in self.taken and isinstance(msg, cls) and where(msg):
                        self.taken.add(i)
                        return msg
                self.arrived.clear()
                await self.arrived.wait()

    def seen(self, cls: type[Any]) -> list[Any]:
        return [m for i, m in enumerate(self.up) if isinstance(m, cls) and i not in self.taken]


@dataclass
class Harness:
    coord: FakeCoordinator
    proc: ManagedProcess
    port: int
    ipc_dir: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def login(self, sk: SigningKey) -> Session:
        """Connect, authenticate, ack and publish the join: a ready session."""
        ws = await connect(self.url)
        session = Session(ws, sk)
        await session.answer_challenge()
        authed = await self.coord.expect(bb.Authed, lambda m: m.key == session.key)
        session.conn = authed.conn
        session.ack_epoch, session.ack_seq = self.coord.epoch, self.coord.seq + 1
        self.coord.send(bb.AuthAck(authed.conn, session.ack_epoch, session.ack_seq))
        self.coord.update(joined=[session.key])
        assert await session.recv() == {"type": "auth_ok", "publicKey": session.key}
        snap = await session.recv()
        assert snap["type"] == "lobby_snapshot" and session.key in keys(snap["users"])
        session.seq = snap["seq"]
        return session


@dataclass
class Session:
    ws: ClientConnection
    sk: SigningKey
    conn: int = -1
    seq: int = -1
    ack_epoch: str = ""
    ack_seq: int = -1

    @property
    def key(self) -> str:
        return self.sk.verify_key.encode().hex()

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            frame = await self.ws.recv()
        assert isinstance(frame, str)
        decoded: dict[str, Any] = json.loads(frame)
        return decoded

    async def quiet(self) -> None:
        """Assert that nothing arrives for a moment."""
        with pytest.raises(TimeoutError):
            frame = await self.recv(timeout=QUIET)
            pytest.fail(f"unexpected frame {frame}")

    async def answer_challenge(self, nonce_hex: str | None = None) -> str:
        if nonce_hex is None:
            nonce_hex = str((await self.recv())["nonce"])
        sig = self.sk.sign(protocol.signed_payload(nonce_hex)).signature.hex()
        await self.send({"type": "auth", "publicKey": self.key, "signature": sig})
        return nonce_hex

    async def send(self, obj: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(obj))

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str | None, list[Any]]:
        """Read until the server closes; the close code, reason and frames before it."""
        frames: list[Any] = []
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    frames.append(json.loads(await self.ws.recv()))
        return self.ws.close_code, self.ws.close_reason, frames


def keys(users: list[dict[str, str]]) -> set[str]:
    return {u["publicKey"] for u in users}


def new_key() -> SigningKey:
    return SigningKey.generate()


@contextlib.asynccontextmanager
async def worker(ipc_dir: Path, *args: str) -> AsyncIterator[Harness]:
    ctx = zmq.asyncio.Context()
    router, pub, peer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.XPUB), ctx.socket(zmq.PULL)
    for sock in (router, pub, peer):
        sock.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{ipc_dir}/events")
    pub.bind(f"ipc://{ipc_dir}/updates")
    peer.bind(f"ipc://{ipc_dir}/{PEER}")
    coord = FakeCoordinator(router, pub, peer)
    port = free_port()
    proc = ManagedProcess(
        "workers",
        [
            *("--port", str(port), "--worker-id", WORKER),
            *("--events-endpoint", f"ipc://{ipc_dir}/events"),
            *("--updates-endpoint", f"ipc://{ipc_dir}/updates"),
            *FAST,
            *args,
        ],
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(10):
            assert await pub.recv() == b"\x01"  # the worker subscribed to everything
        tasks = [asyncio.create_task(t) for t in (coord.serve(), coord.beat(), coord.serve_peer())]
        harness = Harness(coord, proc, port, ipc_dir)
        status = await asyncio.to_thread(proc.wait_ready, 10.0)
        scheme = "wss" if "--tls-cert" in args else "ws"
        assert status == f"worker {WORKER} ready at {scheme}://127.0.0.1:{port}/ws"
        hello = await coord.expect(bb.Hello)
        assert hello == bb.Hello(WORKER, "", f"ipc://{ipc_dir}/results-{WORKER}", "", [])
        await coord.expect(bb.SnapshotRequest)
        yield harness
    finally:
        # Stop while the loop still runs, so open test clients answer the close handshake.
        code = await asyncio.to_thread(proc.stop)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ctx.destroy(linger=0)
        proc.assert_no_traceback()
        assert code == 0, proc.output()


# --------------------------------------------------------------------------- authentication


def test_auth_ok_is_held_until_the_acked_update_is_published(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            c = h.coord
            c.update(joined=["f" * 64])
            s = Session(await connect(h.url), new_key())
            challenge = await s.recv()
            assert set(challenge) == {"type", "version", "nonce"}
            assert challenge["type"] == "challenge" and challenge["version"] == 1
            assert protocol.is_hex_key(challenge["nonce"]) and challenge["nonce"].islower()
            await s.answer_challenge(challenge["nonce"])
            authed = await c.expect(bb.Authed)
            assert authed.key == s.key

            c.send(bb.AuthAck(authed.conn, c.epoch, c.seq + 1))
            # A Deliver behind the ack: once its result is back the ack was handled too.
            c.send(deliver(h, 77, authed.conn, "early"))
            assert await c.expect(bb.RouteDone) == bb.RouteDone(77, "delivered")
            await s.quiet()  # acked, but the replica has not seen the join: no auth_ok

            seq = c.update(joined=[s.key])
            assert await s.recv() == {"type": "auth_ok", "publicKey": s.key}
            snap = await s.recv()
            assert snap == json.loads(protocol.lobby_snapshot(seq, sorted(c.users)))
            assert await s.recv() == json.loads(protocol.message("d" * 64, "m77", "early"))

    run(scenario())


Frame = str | bytes
AUTH_FAILURES: list[tuple[str, Callable[[SigningKey, str], Frame], str]] = [
    ("not-json", lambda sk, nonce: "{nope", "malformed"),
    ("binary", lambda sk, nonce: b"\x00binary", "malformed"),
    ("missing-field", lambda sk, nonce: json.dumps({"type": "auth"}), "malformed"),
    ("unknown-type", lambda sk, nonce: json.dumps({"type": "hi"}), "malformed"),
    ("get_lobby", lambda sk, nonce: json.dumps({"type": "get_lobby"}), "unexpected_message"),
    (
        "send",
        lambda sk, nonce: json.dumps({"type": "send", "to": "a" * 64, "id": "1", "body": ""}),
        "unexpected_message",
    ),
    (
        "key-not-hex",
        lambda sk, nonce: json.dumps({"type": "auth", "publicKey": "x" * 64, "signature": ""}),
        "invalid_public_key",
    ),
    (
        "key-not-a-point",
        lambda sk, nonce: json.dumps(
            {"type": "auth", "publicKey": "00" * 32, "signature": "00" * 64}
        ),
        "invalid_public_key",
    ),
    (
        "sig-not-hex",
        lambda sk, nonce: json.dumps(
            {"type": "auth", "publicKey": sk.verify_key.encode().hex(), "signature": "zz" * 64}
        ),
        "invalid_signature",
    ),
    (
        "sig-wrong",
        lambda sk, nonce: json.dumps(
            {
                "type": "auth",
                "publicKey": sk.verify_key.encode().hex(),
                "signature": sk.sign(b"lobby-auth-v1:" + bytes(32)).signature.hex(),
            }
        ),
        "invalid_signature",
    ),
]


def test_every_auth_failure_reason_closes_4001(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            for name, make, reason in AUTH_FAILURES:
                s = Session(await connect(h.url), new_key())
                nonce = (await s.recv())["nonce"]
                await s.ws.send(make(s.sk, nonce))
                code, why, frames = await s.closed()
                assert frames == [{"type": "auth_failed", "reason": reason}], name
                assert (code, why) == (4001, "auth_failed"), name
            assert not h.coord.seen(bb.Authed)

    run(scenario())


def test_silent_client_is_closed_4003(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir, "--auth-timeout", "0.4") as h:
            s = Session(await connect(h.url), new_key())
            assert (await s.recv())["type"] == "challenge"
            assert await s.closed() == (4003, "auth_timeout", [])

    run(scenario())


def test_no_ack_closes_1013_and_reports_closed(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir, "--auth-wait", "0.5") as h:
            s = Session(await connect(h.url), new_key())
            await s.answer_challenge()
            authed = await h.coord.expect(bb.Authed)
            code, _, frames = await s.closed()
            assert (code, frames) == (1013, [])
            assert await h.coord.expect(bb.Closed) == bb.Closed(authed.conn, s.key)

    run(scenario())


def test_kick_closes_4002_before_and_after_auth_ok(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            c = h.coord
            s = await h.login(new_key())
            c.send(bb.Kick(s.conn))
            assert await s.closed() == (4002, "session_replaced", [])
            assert await c.expect(bb.Closed) == bb.Closed(s.conn, s.key)

            # Kicked while acked and waiting for the replica.
            w = Session(await connect(h.url), new_key())
            await w.answer_challenge()
            authed = await c.expect(bb.Authed)
            c.send(bb.AuthAck(authed.conn, c.epoch, c.seq + 5))
            c.send(bb.Kick(authed.conn))
            assert await w.closed() == (4002, "session_replaced", [])
            assert await c.expect(bb.Closed) == bb.Closed(authed.conn, w.key)

    run(scenario())


def test_unreachable_coordinator_health_auth_and_send(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir, "--auth-wait", "5") as h:
            c = h.coord
            assert (await http(h.port))[0] == 200
            s = await h.login(new_key())
            c.answering = c.beating = False
            await until(lambda: answers(h.port, 503), "/healthz to answer 503", 5)

            await s.send({"type": "send", "to": "a" * 64, "id": "x1", "body": "hi"})
            assert await s.recv() == {
                "type": "send_result",
                "id": "x1",
                "status": "rejected",
                "reason": "unavailable",
            }
            # A valid auth waits for the coordinator instead of failing at once.
            w = Session(await connect(h.url), new_key())
            await w.answer_challenge()
            await w.quiet()
            assert not c.seen(bb.Authed)

            c.answering = c.beating = True  # back: the worker re-announces its sessions
            hello = await c.expect(bb.Hello)
            assert [claim[:2] for claim in hello.sessions] == [(s.conn, s.key)]
            authed = await c.expect(bb.Authed)
            assert authed.key == w.key
            await until(lambda: answers(h.port, 200), "/healthz to answer 200", 5)

    run(scenario())


# --------------------------------------------------------------------------- lobby


def test_lobby_updates_are_forwarded_in_order(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            c = h.coord
            a = await h.login(new_key())
            b = await h.login(new_key())
            assert await a.recv() == json.loads(protocol.lobby_update(b.seq, [b.key], []))
            other = "c" * 64
            # A change of records alone: protocol 1 clients get nothing for it, and the
            # next update is their next seq (byte for byte what they always got).
            c.change_record(a.key, "away", '{"note":"back at 5"}')
            seq = c.update(joined=[other], left=[b.key])
            assert seq == b.seq + 1 and c.seq == seq + 1
            expected = json.loads(protocol.lobby_update(seq, [other], [b.key]))
            assert await a.recv() == expected
            assert await b.recv() == expected
            await a.send({"type": "get_lobby"})
            snap = await a.recv()
            assert snap == json.loads(protocol.lobby_snapshot(seq, sorted(c.users)))

    run(scenario())


def test_updates_that_queued_up_reach_every_client_in_order_once(ipc_dir: Path) -> None:
    """Updates published while the worker is stopped are read in one batch and written
    together; a client online gets each of them in order, and a session acknowledged
    among them gets its snapshot and then exactly the updates after it."""

    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            c = h.coord
            a = await h.login(new_key())
            b = Session(await connect(h.url), new_key())
            await b.answer_challenge()
            authed = await c.expect(bb.Authed, lambda m: m.key == b.key)
            others = [f"{i:x}" * 64 for i in range(1, 6)]
            h.proc.signal(signal.SIGSTOP)
            try:
                expected = [c.update(joined=[others[0]]), c.update(joined=[others[1]])]
                c.send(bb.AuthAck(authed.conn, c.epoch, c.seq + 1))
                expected.append(c.update(joined=[b.key]))
                expected += [c.update(joined=[key]) for key in others[2:]]
            finally:
                h.proc.signal(signal.SIGCONT)
            for seq in expected:
                update = await a.recv()
                assert update["type"] == "lobby_update" and update["seq"] == seq
            assert await b.recv() == {"type": "auth_ok", "publicKey": b.key}
            snap = await b.recv()
            assert snap["type"] == "lobby_snapshot" and b.key in keys(snap["users"])
            for seq in range(snap["seq"] + 1, c.seq + 1):
                assert (await b.recv())["seq"] == seq
            await a.quiet()
            await b.quiet()
            assert snap["seq"] <= c.seq

    run(scenario())


def test_lost_update_triggers_snapshot_request_and_fresh_snapshot(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            c = h.coord
            a = await h.login(new_key())
            c.beating = False  # the next Update, not a Beat, reveals the gap
            c.update(joined=["1" * 64], lose=True)
            seq = c.update(joined=["2" * 64])
            await c.expect(bb.SnapshotRequest)
            snap = await a.recv()
            assert snap == json.loads(protocol.lobby_snapshot(seq, sorted(c.users)))
            c.beating = True
            seq = c.update(left=["1" * 64])
            assert await a.recv() == json.loads(protocol.lobby_update(seq, [], ["1" * 64]))

    run(scenario())


def test_beat_ahead_triggers_resync(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            c = h.coord
            a = await h.login(new_key())
            c.update(joined=["3" * 64], lose=True)  # only the Beat tells
            await c.expect(bb.SnapshotRequest)
            snap = await a.recv()
            assert snap == json.loads(protocol.lobby_snapshot(c.seq, sorted(c.users)))

    run(scenario())


def test_new_epoch_reannounces_sessions_and_sends_fresh_snapshot(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            c = h.coord
            a = await h.login(new_key())
            c.epoch, c.seq, c.mseq, c.users = "e2", 3, 3, {a.key, "9" * 64}  # restarted, rebuilt
            hello = await c.expect(bb.Hello)
            # Each session carries the stamp of its ack, from the first coordinator.
            assert hello.sessions == [(a.conn, a.key, a.ack_epoch, a.ack_seq, True)]
            assert hello.epoch == "e1"  # what its replica followed: a new one goes above
            snap = await a.recv()
            assert snap == json.loads(protocol.lobby_snapshot(3, sorted(c.users)))
            seq = c.update(left=["9" * 64])
            assert await a.recv() == json.loads(protocol.lobby_update(seq, [], ["9" * 64]))

    run(scenario())


def test_reannounce_makes_the_worker_register_its_sessions_again(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            c = h.coord
            a = await h.login(new_key())
            c.send(bb.Reannounce())  # the coordinator gave us up for dead, or restarted
            hello = await c.expect(bb.Hello)
            assert hello.sessions == [(a.conn, a.key, a.ack_epoch, a.ack_seq, True)]
            await c.expect(bb.SnapshotRequest)

    run(scenario())


# --------------------------------------------------------------------------- direct messages


def test_send_is_routed_and_answered_once(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            c = h.coord
            a = await h.login(new_key())
            to = "AB" * 32
            for n, (status, expected) in enumerate(
                [
                    ("delivered", {"status": "delivered"}),
                    ("offline", {"status": "offline"}),
                    ("rate_limited", {"status": "rejected", "reason": "rate_limited"}),
                    ("unavailable", {"status": "rejected", "reason": "unavailable"}),
                ]
            ):
                await a.send({"type": "send", "to": to, "id": f"m{n}", "body": "secret"})
                route = await c.expect(bb.Route)
                assert (route.sender, route.to, route.msg_id, route.body) == (
                    a.key,
                    to.lower(),
                    f"m{n}",
                    "secret",
                )
                # Dropped wherever it is a second before the sender's 5 s deadline.
                assert 3.5 < route.deadline - time.time() <= 4.0
                c.send(bb.RouteDone(route.route, status))
                c.send(bb.RouteDone(route.route, status))  # a duplicate changes nothing
                assert await a.recv() == {"type": "send_result", "id": f"m{n}", **expected}
            await a.send({"type": "send", "to": to, "id": "big", "body": "x" * 65537})
            assert (await a.recv())["reason"] == "too_large"
            await a.send({"type": "send", "to": "nobody", "id": "bad", "body": ""})
            assert (await a.recv())["reason"] == "invalid_recipient"
            await a.quiet()

    run(scenario())


def test_route_timeout_is_unavailable(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir, "--route-timeout", "0.4") as h:
            a = await h.login(new_key())
            await a.send({"type": "send", "to": "a" * 64, "id": "t", "body": ""})
            route = await h.coord.expect(bb.Route)
            assert await a.recv() == {
                "type": "send_result",
                "id": "t",
                "status": "rejected",
                "reason": "unavailable",
            }
            h.coord.send(bb.RouteDone(route.route, "delivered"))  # too late: ignored
            await a.quiet()

    run(scenario())


def test_deliver_writes_message_or_reports_offline(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            c = h.coord
            a = await h.login(new_key())
            c.send(deliver(h, 5, a.conn, "ciphertext"))
            assert await a.recv() == {
                "type": "message",
                "from": "d" * 64,
                "id": "m5",
                "body": "ciphertext",
            }
            # The answer goes to the origin worker's results endpoint, not back up.
            assert await c.expect(bb.RouteDone) == bb.RouteDone(5, "delivered")
            c.send(deliver(h, 6, 999_999, "x"))
            assert await c.expect(bb.RouteDone) == bb.RouteDone(6, "offline")
            # Past its deadline (the coordinator stalled): dropped, never written.
            c.send(deliver(h, 7, a.conn, "late", deadline=time.time() - 0.01))
            await a.quiet()
            # From this worker to itself: answered without a socket. (A send to a session
            # this worker holds is delivered here at once, see below; the coordinator
            # routes one back only for a session it knows here and the worker not yet.)
            await a.send({"type": "send", "to": "f" * 64, "id": "self", "body": "me"})
            route = await c.expect(bb.Route)
            mine = bb.Deliver(
                WORKER, "", "", route.route, a.conn, a.key, "self", "me", route.deadline
            )
            c.send(mine)
            assert await a.recv() == {"type": "message", "from": a.key, "id": "self", "body": "me"}
            assert await a.recv() == {"type": "send_result", "id": "self", "status": "delivered"}
            assert not c.seen(bb.RouteDone)

    run(scenario())


def test_a_result_is_believed_only_for_a_route_in_flight(ipc_dir: Path) -> None:
    """Results come from other workers: one for an unknown route id changes nothing."""

    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            a = await h.login(new_key())
            results = h.coord.peer.context.socket(zmq.PUSH)
            results.setsockopt(zmq.LINGER, 0)
            results.connect(f"ipc://{ipc_dir}/results-{WORKER}")
            await a.send({"type": "send", "to": "b" * 64, "id": "r", "body": ""})
            route = await h.coord.expect(bb.Route)
            for guess in (route.route + 1, route.route - 1, 1):
                await results.send(bb.encode(bb.RouteDone(guess, "delivered")))
            await results.send(bb.encode(bb.Kick(a.conn)))  # not a result: dropped
            await a.quiet()
            await results.send(bb.encode(bb.RouteDone(route.route, "offline")))
            assert await a.recv() == {"type": "send_result", "id": "r", "status": "offline"}
            results.close()

    run(scenario())


async def until_result(session: Session, msg_id: str) -> list[dict[str, Any]]:
    """Every frame ``session`` gets up to and including the ``send_result`` for ``msg_id``."""
    frames = [await session.recv()]
    while not (frames[-1]["type"] == "send_result" and frames[-1]["id"] == msg_id):
        frames.append(await session.recv())
    return frames


def test_a_send_to_a_session_here_is_delivered_here_exactly_as_through_the_coordinator(
    ipc_dir: Path,
) -> None:
    """Differential: the same sends, once to sessions on this worker (no Route: delivered
    here) and once the long way (the coordinator's Deliver, the recipient's result
    reported to the origin, the origin's answer), give the same frames to both ends."""

    async def scenario() -> None:
        async with worker(ipc_dir, "--max-queue-bytes", "1024") as h:
            c = h.coord
            a, b = await h.login(new_key()), await h.login(new_key())
            assert (await a.recv())["type"] == "lobby_update"  # b joined
            far = "f" * 64  # a recipient elsewhere: the sender's half of the long way
            situations = [
                (b, "hello", "delivered"),
                (b, "x" * 2000, "rate_limited"),  # past the recipient's bound
                (a, "me", "delivered"),  # to oneself: the message, then the result
            ]
            for n, (to, body, status) in enumerate(situations):
                msg_id = f"m{n}"
                send = {"type": "send", "to": to.key.upper(), "id": msg_id, "body": body}
                # Here.
                await a.send(send)
                here_sender = await until_result(a, msg_id)
                here_recipient = [await b.recv()] if to is b and status == "delivered" else []
                # The long way: the recipient's worker, then the origin's.
                c.send(bb.Deliver("w9", f"ipc://{ipc_dir}/{PEER}", "", 900 + n, to.conn,
                                  a.key, msg_id, body, time.time() + 60))  # fmt: skip
                done = await c.expect(bb.RouteDone, lambda m, n=n: m.route == 900 + n)
                assert done.status == status
                far_recipient = [await to.recv()] if status == "delivered" else []
                await a.send({**send, "to": far})
                route = await c.expect(bb.Route)
                c.send(bb.RouteDone(route.route, done.status))
                far_sender = await until_result(a, msg_id)
                if to is a:
                    assert here_sender == far_recipient + far_sender
                else:
                    assert (here_sender, here_recipient) == (far_sender, far_recipient)
                    if status != "delivered":
                        await b.quiet()
            # A newer session of b's key takes the sends here; the end of the older one
            # (the coordinator kicks it) leaves the newer one in place.
            b2 = await h.login(b.sk)
            assert (await a.recv())["type"] == "lobby_update"
            c.send(bb.Kick(b.conn))
            assert (await b.closed())[0] == 4002
            await c.expect(bb.Closed, lambda m: m.conn == b.conn)
            await a.send({"type": "send", "to": b.key, "id": "new", "body": "hi"})
            assert await b2.recv() == {"type": "message", "from": a.key, "id": "new", "body": "hi"}
            assert await a.recv() == {"type": "send_result", "id": "new", "status": "delivered"}
            assert not c.seen(bb.Route)  # nothing sent here went to the coordinator
            # Once its last session ends here, a recipient is looked up by the coordinator.
            await b2.ws.close()
            await c.expect(bb.Closed, lambda m: m.conn == b2.conn)
            await a.send({"type": "send", "to": b.key, "id": "gone", "body": ""})
            route = await c.expect(bb.Route)
            assert route.to == b.key
            c.send(bb.RouteDone(route.route, "offline"))
            assert await a.recv() == {"type": "send_result", "id": "gone", "status": "offline"}

    run(scenario())


# --------------------------------------------------------------------------- errors, HTTP, shutdown


def test_errors_after_auth_keep_the_connection_and_oversize_closes_1009(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir, "--max-frame-bytes", "4096") as h:
            a = await h.login(new_key())
            bad: list[tuple[Frame, str]] = [
                ("nope", "malformed"),
                (b"\x01\x02", "malformed"),
                (json.dumps({"type": "dance"}), "unknown_type"),
                (json.dumps({"type": "send", "to": "a" * 64, "id": ""}), "malformed"),
                (json.dumps({"type": "auth", "publicKey": a.key, "signature": ""}), "malformed"),
            ]
            for frame, code in bad:
                await a.ws.send(frame)
                reply = await a.recv()
                assert reply["type"] == "error" and reply["code"] == code, frame
            await a.send({"type": "get_lobby"})
            assert (await a.recv())["type"] == "lobby_snapshot"
            await a.ws.send("x" * 5000)
            closed_with, _, _ = await a.closed()
            assert closed_with == 1009
            assert await h.coord.expect(bb.Closed) == bb.Closed(a.conn, a.key)

    run(scenario())


def test_http_paths(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir, "--v1-only") as h:
            assert (await http(h.port))[0] == 200
            with pytest.raises(InvalidStatus) as refused:
                await connect(f"ws://127.0.0.1:{h.port}/elsewhere")
            assert refused.value.response.status_code == 404
            assert (await http(h.port, path="/ws"))[0] == 426  # plain GET, no upgrade
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
            writer.write(b"\x16\x03\x01garbage\r\n\r\n")  # e.g. TLS to a plain port
            async with asyncio.timeout(5):
                await reader.read()  # the worker answers and hangs up; no traceback
            writer.close()
            # permessage-deflate is off unless the operator turns it on.
            async with connect(h.url, compression="deflate") as ws:
                assert "Sec-WebSocket-Extensions" not in ws.response.headers
            # With --v1-only a client offering version 2 gets version 1, none selected.
            async with connect(h.url, subprotocols=[Subprotocol("presence.v2")]) as ws:
                assert ws.subprotocol is None
                assert "Sec-WebSocket-Protocol" not in ws.response.headers
                assert json.loads(await ws.recv())["version"] == 1

    run(scenario())


def test_the_lobby_page_and_its_files_are_served_with_safe_headers(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            for path, kind in (
                ("/", "text/html"),
                ("/lobby.js", "text/javascript"),
                ("/lobby.css", "text/css"),
            ):
                status, headers, body = await http(h.port, path=path)
                assert status == 200 and headers["content-type"].startswith(kind), path
                assert headers["x-content-type-options"] == "nosniff"
                assert "connect-src 'self'" in headers["content-security-policy"]
                expected = (ROOT / "workers" / "static" / (path[1:] or "index.html")).read_bytes()
                assert body == expected
                status, head_headers, head_body = await http(h.port, method="HEAD", path=path)
                assert (status, head_body) == (200, b"")
                assert head_headers["content-length"] == str(len(expected))
                assert (await http(h.port, method="POST", path=path))[0] == 405
            assert (await http(h.port, path="/../pyproject.toml"))[0] == 404
            assert (await http(h.port, path="/static/lobby.js"))[0] == 404

    run(scenario())


def test_tls_serves_wss_and_https(ipc_dir: Path, tmp_path: Path) -> None:
    """With --tls-cert/--tls-key the same port speaks TLS: the page over https, the
    protocol over wss (certificates made by the test's own CA)."""
    chain, key, client_ssl = tls_files(tmp_path)

    async def scenario() -> None:
        async with worker(ipc_dir, "--tls-cert", str(chain), "--tls-key", str(key)) as h:
            c = h.coord
            async with connect(f"wss://127.0.0.1:{h.port}/ws", ssl=client_ssl) as ws:
                s = Session(ws, new_key())
                await s.answer_challenge()
                authed = await c.expect(bb.Authed)
                c.send(bb.AuthAck(authed.conn, c.epoch, c.seq + 1))
                c.update(joined=[s.key])
                assert await s.recv() == {"type": "auth_ok", "publicKey": s.key}
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", h.port, ssl=client_ssl, server_hostname="127.0.0.1"
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(5):
                answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200") and b"text/html" in answer
            with pytest.raises((ConnectionClosed, InvalidHandshake, OSError)):
                async with connect(h.url) as plain:  # plain ws to a TLS port: no
                    await plain.recv()

    run(scenario())


def test_a_tls_key_that_cannot_be_read_is_refused_at_start(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    result = subprocess.run(
        [sys.executable, "-m", "workers", "--tls-cert", missing, "--tls-key", missing],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and f"--tls-cert {missing}" in result.stderr
    assert "Traceback" not in result.stderr
    alone = subprocess.run(
        [sys.executable, "-m", "workers", "--tls-cert", missing],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert alone.returncode == 2 and "--tls-cert and --tls-key go together" in alone.stderr


@pytest.mark.parametrize("mode", [0o644, 0o604])
def test_a_tls_key_every_user_can_read_is_refused_at_start(tmp_path: Path, mode: int) -> None:
    """Anyone who reads the key can pose as the server: one readable by every user is
    refused, naming it (a group, as Debian's ssl-cert, may read it)."""
    chain, key, _ = tls_files(tmp_path)
    key.chmod(mode)
    args = ["--tls-cert", str(chain), "--tls-key", str(key)]
    result = subprocess.run(
        [sys.executable, "-m", "workers", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert f"--tls-key {key} is open to every user (mode {mode:04o})" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_closes_clients_1001_and_says_goodbye(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            a = await h.login(new_key())
            h.proc.signal(signal.SIGTERM)
            code, _, _ = await a.closed()
            assert code == 1001
            assert await h.coord.expect(bb.Goodbye) == bb.Goodbye(WORKER)
            await until(lambda: h.proc.proc.poll() == 0, "the worker to exit with 0", 5)

    run(scenario())


def test_sigterm_repeated_while_stopping_still_ends_in_a_clean_exit(ipc_dir: Path) -> None:
    """An operator's second Ctrl-C, or a supervisor that signals twice, must not turn a
    clean exit into death by signal, however late in the shutdown it lands."""

    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            await h.login(new_key())
            deadline = time.monotonic() + 10
            while h.proc.proc.poll() is None and time.monotonic() < deadline:
                h.proc.signal(signal.SIGTERM)
                await asyncio.sleep(0.0005)  # pacing the signals, not waiting for anything
            assert h.proc.proc.poll() == 0, h.proc.proc.returncode

    run(scenario())


# --------------------------------------------------------------------------- helpers

PEER = "peer-w9"


def deliver(
    h: Harness, route: int, conn: int, body: str, deadline: float | None = None
) -> bb.Deliver:
    """A Deliver from worker w9, which takes its results at the coordinator's PULL."""
    when = time.time() + 60 if deadline is None else deadline
    reply_to = f"ipc://{h.ipc_dir}/{PEER}"
    return bb.Deliver("w9", reply_to, "", route, conn, "d" * 64, f"m{route}", body, when)


async def answers(port: int, status: int) -> bool:
    """Whether ``/healthz`` answers with ``status`` right now."""
    return (await http(port))[0] == status


def test_help_documents_every_option_and_its_environment_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "workers", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flat = " ".join(out.split())
    for group in ("Network", "Backbone", "Timeouts", "Limits", "Message rate", "Admission"):
        assert f"{group}:" in out
    for option in [
        "host", "port", "compression", "events-endpoint", "updates-endpoint", "worker-id",
        "hwm", "auth-timeout", "auth-wait", "ping-interval", "ping-timeout",
        "heartbeat-interval", "coordinator-timeout", "route-timeout", "max-frame-bytes",
        "lag-bytes", "max-queue-bytes", "log-level", "pre-auth-frame-bytes", "msg-rate",
        "msg-burst", "flood-rejects", "flood-window", "max-pending-auth", "lag-target",
        "auth-window", "auth-reserve", "source-share", "max-connections", "trusted-proxies",
        "challenge-grace",
        "cutoff-grace", "stall-timeout",
        "max-pipelined", "max-pipelined-bytes", "results-endpoint", "plain-tcp",
        "max-message-bytes",
    ]:  # fmt: skip
        env = "PRESENCE_" + option.upper().replace("-", "_")
        assert f"--{option}" in out and f"env {env}" in flat, option


# --------------------------------------------------------------------------- abuse limits


def test_pre_auth_frame_limit_then_rate_limit_then_flood_close(ipc_dir: Path) -> None:
    args = ["--pre-auth-frame-bytes", "512", "--msg-rate", "0.001", "--msg-burst", "2"]
    args += ["--flood-rejects", "1", "--flood-window", "1000"]

    async def scenario() -> None:
        async with worker(ipc_dir, *args) as h:
            s = Session(await connect(h.url), new_key())
            assert (await s.recv())["type"] == "challenge"
            await s.ws.send("x" * 600)  # over the pre-auth limit, under max-frame-bytes
            code, _, frames = await s.closed()
            assert (code, frames) == (1009, [])
            assert not h.coord.seen(bb.Authed)

            a = await h.login(new_key())  # after auth_ok the frame limit is raised
            await a.send({"type": "dance", "pad": "x" * 2000})
            assert (await a.recv())["code"] == "unknown_type"
            await a.send({"type": "get_lobby"})
            assert (await a.recv())["type"] == "lobby_snapshot"
            # The burst is spent: answered, not carried out.
            await a.send({"type": "send", "to": "a" * 64, "id": "r1", "body": ""})
            assert await a.recv() == {
                "type": "send_result",
                "id": "r1",
                "status": "rejected",
                "reason": "rate_limited",
            }
            assert not h.coord.seen(bb.Route)
            await a.send({"type": "get_lobby"})  # the second rejection: flooding
            assert await a.closed() == (1008, "policy_violation", [])
            assert await h.coord.expect(bb.Closed) == bb.Closed(a.conn, a.key)

    run(scenario())


# --------------------------------------------------------------------------- protocol 1.1


def test_frames_pipelined_behind_the_auth_are_answered_in_order_after_auth_ok(
    ipc_dir: Path,
) -> None:
    """auth, get_lobby and a maximal send written at once, without waiting for auth_ok
    (protocol 1.1): answered in order after auth_ok and the snapshot. The send is far
    over the pre-auth frame limit and arrives in the same read as the auth."""

    async def scenario() -> None:
        async with worker(ipc_dir, "--pre-auth-frame-bytes", "1024") as h:
            c = h.coord
            s = Session(await connect(h.url, max_size=None), new_key())
            nonce = (await s.recv())["nonce"]
            sig = s.sk.sign(protocol.signed_payload(nonce)).signature.hex()
            body = "Q" * protocol.MAX_BODY_BYTES
            frames = [
                {"type": "auth", "publicKey": s.key, "signature": sig},
                {"type": "get_lobby"},
                {"type": "send", "to": "c" * 64, "id": "p1", "body": body},
                {"type": "dance"},
            ]
            s.ws.transport.write(b"".join(_client_frame(json.dumps(f)) for f in frames))
            authed = await c.expect(bb.Authed)
            await s.quiet()
            c.send(bb.AuthAck(authed.conn, c.epoch, c.seq + 1))
            seq = c.update(joined=[s.key])
            assert await s.recv() == {"type": "auth_ok", "publicKey": s.key}
            snapshot = json.loads(protocol.lobby_snapshot(seq, sorted(c.users)))
            assert await s.recv() == snapshot
            assert await s.recv() == snapshot  # the pipelined get_lobby
            route = await c.expect(bb.Route)
            assert (route.msg_id, len(route.body)) == ("p1", protocol.MAX_BODY_BYTES)
            assert (await s.recv())["code"] == "unknown_type"
            c.send(bb.RouteDone(route.route, "offline"))
            assert await s.recv() == {"type": "send_result", "id": "p1", "status": "offline"}

    run(scenario())


def test_pipelined_frames_past_the_bound_close_1008(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir, "--max-pipelined", "16") as h:
            s = Session(await connect(h.url), new_key())
            await s.answer_challenge()
            authed = await h.coord.expect(bb.Authed)
            for _ in range(17):
                await s.send({"type": "get_lobby"})
            assert await s.closed() == (1008, "policy_violation", [])
            assert await h.coord.expect(bb.Closed) == bb.Closed(authed.conn, s.key)

    run(scenario())


def test_healthz_answers_get_and_head_only(ipc_dir: Path) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir) as h:
            status, headers, body = await http(h.port)
            assert status == 200 and json.loads(body)["status"] == "ok"
            status, head_headers, head_body = await http(h.port, method="HEAD")
            assert (status, head_body) == (200, b"")
            assert head_headers["content-length"] == headers["content-length"]
            for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
                status, allowed, _ = await http(h.port, method=method)
                assert (status, allowed["allow"]) == (405, "GET, HEAD"), method
            status, allowed, _ = await http(h.port, method="POST", path="/ws")
            assert (status, allowed["allow"]) == (405, "GET")

    run(scenario())


def test_a_worker_cut_off_past_its_grace_closes_clients_1013_then_admits_again(
    ipc_dir: Path,
) -> None:
    async def scenario() -> None:
        async with worker(ipc_dir, "--cutoff-grace", "1.0") as h:
            c = h.coord
            s = await h.login(new_key())
            c.answering = c.beating = False
            code, reason, _ = await s.closed(timeout=10)
            assert (code, reason) == (1013, "try_again_later")
            assert await c.expect(bb.Closed) == bb.Closed(s.conn, s.key)
            with pytest.raises(InvalidStatus) as late:  # refused before the handshake
                await connect(h.url)
            assert late.value.response.status_code == 503
            assert late.value.response.headers["Retry-After"] == "1"
            assert not answers_now(await http(h.port), 200)
            c.answering = c.beating = True
            await until(lambda: answers(h.port, 200), "/healthz to answer 200", 10)
            back = await h.login(new_key())  # admitted again
            assert back.key != s.key

    run(scenario())


def answers_now(response: tuple[int, Any, bytes], status: int) -> bool:
    return response[0] == status


def _client_frame(text: str) -> bytes:
    """One masked text frame, as a client writes it (RFC 6455)."""
    from websockets.frames import Frame, Opcode

    return Frame(Opcode.TEXT, text.encode()).serialize(mask=True, extensions=[])


def test_a_message_lost_on_the_way_to_the_coordinator_is_repaired_by_a_hello(
    ipc_dir: Path,
) -> None:
    """The coordinator's events socket goes away while its beats keep coming (so the
    worker sees a live coordinator): with a high-water mark of 1, Closed messages cannot
    all be queued. The lost ones are counted, and once the socket is back the worker
    re-registers with the whole truth, which holds none of the closed sessions: no
    ghost, whichever of them got through."""

    async def scenario() -> None:
        async with worker(ipc_dir, "--hwm", "1") as h:
            c = h.coord
            stays = await h.login(new_key())
            gone = [await h.login(new_key()) for _ in range(4)]
            events = f"ipc://{ipc_dir}/events"
            c.router.unbind(events)
            await until(lambda: dropped(h.port, "hb"), "a heartbeat to be refused", 5)
            for session in gone:
                await session.ws.close()
            await until(lambda: dropped(h.port, "closed"), "a Closed to be refused", 5)
            c.router.bind(events)
            hello = await c.expect(bb.Hello, timeout=10)
            assert hello.sessions == [(stays.conn, stays.key, stays.ack_epoch, stays.ack_seq, True)]
            assert h.proc.count("lost closed to the coordinator; will re-register") == 1

    run(scenario())


async def dropped(port: int, tag: str) -> bool:
    return bool((await health(port))["dropped"].get(tag))
