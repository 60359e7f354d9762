"""Protocol version 2 (offered unless ``--v1-only``) on a real cluster started as
``make run`` starts it: raw v2 clients (websockets + shared.v2), a raw v1 client beside
them, and a relay that passes a victim's authentication on to the real server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from scripts.procfs import free_port
from shared import protocol, v2
from shared.client import LobbyClient, ReconnectPolicy
from shared.client_v2 import LobbyClientV2
from tests.support import ManagedProcess, http, run, until
from tests.v2support import SUBPROTOCOL, Refused, V2Client

pytestmark = pytest.mark.process


class V2Cluster:
    """``scripts/cluster.py`` with two workers speaking version 2, their public URL
    given, and a metrics port."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        worker = [f"--public-url={self.url},ws://localhost:{self.port}/ws"]
        args = ["--workers", "2", "--port", str(self.port)]
        args += ["--metrics-port", str(self.metrics_port)]
        args += [f"--worker-arg={a}" for a in worker]
        self.proc = ManagedProcess("scripts.cluster", args, env={"XDG_RUNTIME_DIR": str(tmp)})
        self.proc.wait_ready(timeout=30)

    async def authentications(self, result: str) -> float:
        status, _, body = await http(self.metrics_port, path="/metrics")
        assert status == 200
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == "presence_authentications_total" and s.labels == {"result": result}:
                    return float(s.value)
        return 0.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Cluster]:
    c = V2Cluster(tmp_path_factory.mktemp("v2"))
    yield c
    assert c.proc.stop(timeout=20) == 0, c.proc.output()
    assert "Traceback" not in c.proc.output(), c.proc.output()


class RawV1:
    """A version 1 client that keeps every frame it is sent."""

    def __init__(self, ws: ClientConnection, key: str) -> None:
        self.ws, self.key = ws, key
        self.frames: list[dict[str, object]] = []

    @classmethod
    async def connect(cls, url: str) -> RawV1:
        ws = await connect(url)
        key = SigningKey.generate()
        nonce = json.loads(await ws.recv())["nonce"]
        public = key.verify_key.encode().hex()
        await ws.send(protocol.auth(public, protocol.sign_challenge(key, nonce)))
        assert json.loads(await ws.recv())["type"] == "auth_ok"
        client = cls(ws, public)
        asyncio.get_running_loop().create_task(client._read())
        return client

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in self.ws:
                self.frames.append(json.loads(frame))

    def online(self) -> set[str]:
        online: set[str] = set()
        for f in self.frames:
            if f["type"] == "lobby_snapshot":
                online = _keys(f["users"])
            elif f["type"] == "lobby_update":
                online = (online - _keys(f["left"])) | _keys(f["joined"])
        return online


def _keys(users: object) -> set[str]:
    assert isinstance(users, list)
    return {user["publicKey"] for user in users}


def test_v2_clients_see_joins_records_and_leaves_and_v1_sees_its_own_frames(
    cluster: V2Cluster,
) -> None:
    async def scenario() -> None:
        old = await RawV1.connect(cluster.url)
        a = await V2Client.connect(cluster.url, record=v2.RecordChange("away", '{"n":"A"}'))
        assert a.auth_ok is not None and not a.auth_ok.resumed
        assert a.auth_ok.seq == a.seq  # the snapshot is the state auth_ok names
        assert a.view[a.public_key] == v2.Record("away", '{"n":"A"}')  # itself, with its record
        assert old.key in a.view
        await until(lambda: a.public_key in old.online(), "v1 sees A", 5)

        b = await V2Client.connect(cluster.url.replace("127.0.0.1", "localhost"))
        await a.until(lambda: b.public_key in a.view)
        assert a.view[b.public_key] == v2.Record()
        await until(lambda: b.public_key in old.online(), "v1 sees B", 5)
        v1_frames = len(old.frames)

        await b.send(v2.set_record(status="busy", data={"mood": "é"}))
        busy = v2.Record("busy", '{"mood":"é"}')
        await a.until(lambda: a.view.get(b.public_key) == busy)
        await b.until(lambda: b.view.get(b.public_key) == busy)  # its own change comes back
        assert b.errors() == []
        changed = [u for u in a.updates() if any(e.key == b.public_key for e in u.updated)]
        assert changed and not changed[0].joined and not changed[0].left

        await b.close()
        await a.until(lambda: b.public_key not in a.view)
        await until(lambda: b.public_key not in old.online(), "v1 sees B leave", 5)
        # Protocol 1 saw the leave and nothing for the change of record.
        assert len(old.frames) == v1_frames + 1
        seqs = [f["seq"] for f in old.frames if f["type"] != "lobby_snapshot"]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), old.frames
        # Every update of a whole-lobby client follows on: prev = seq - 1.
        assert a.gaps == [] and all(u.prev == u.seq - 1 for u in a.updates())
        await a.close()
        await old.ws.close()

    run(scenario(), timeout=20)


def test_set_record_refusals_keep_the_connection(cluster: V2Cluster) -> None:
    async def scenario() -> None:
        a = await V2Client.connect(cluster.url)
        await a.send({"type": "set_record", "status": "x" * 33})
        await a.send({"type": "follow", "scope": "everything"})
        await a.send({"type": "watch", "keys": [a.public_key]})
        for i in range(6):  # the burst is 5
            await a.send(v2.set_record(data={"i": i}))
        await a.until(lambda: len(a.errors()) == 4)
        codes = [getattr(e.code, "value", e.code) for e in a.errors()]
        assert codes == ["bad_record", "bad_follow", "not_watching", "rate_limited"]
        await a.until(lambda: a.view[a.public_key] == v2.Record(data_json='{"i":4}'))
        await a.send(v2.follow(v2.Follow()))  # the lobby: a fresh snapshot
        await a.until(lambda: isinstance(a.frames[-1], v2.Snapshot))
        await a.close()

    run(scenario(), timeout=20)


def test_a_watcher_sees_only_its_watched_keys_each_update_after_its_last(
    cluster: V2Cluster,
) -> None:
    async def scenario() -> None:
        key_a, key_b = SigningKey.generate(), SigningKey.generate()
        a_key, b_key = (k.verify_key.encode().hex() for k in (key_a, key_b))
        w = await V2Client.connect(cluster.url, follow=v2.Follow(v2.Scope.WATCH, (a_key,)))
        first = w.frames[0]
        assert isinstance(first, v2.Snapshot) and first.scope is v2.Scope.WATCH
        assert first.entries == ()  # A is not online yet; nobody else is listed
        observer = await V2Client.connect(cluster.url)
        a = await V2Client.connect(cluster.url, key=key_a)
        b = await V2Client.connect(cluster.url, key=key_b)
        await w.until(lambda: a_key in w.view)
        await a.send(v2.set_record(status="busy"))
        await w.until(lambda: w.view[a_key] == v2.Record("busy"))
        await b.send(v2.set_record(status="away"))  # between A's updates: not for w
        await observer.until(lambda: observer.view.get(b_key) == v2.Record("away"))
        await a.close()
        await w.until(lambda: a_key not in w.view)
        updates = w.updates()
        assert w.gaps == [] and len(updates) == 3, w.frames  # join, record, leave
        assert updates[-1].prev < updates[-1].seq - 1  # B's change came between
        touched = {e.key for u in updates for e in (*u.joined, *u.updated)}
        assert touched == {a_key} and all(u.left == (a_key,) for u in updates[-1:])

        await w.send(v2.watch([b_key]))  # a fresh snapshot of the new watchlist
        await w.until(lambda: b_key in w.view)
        assert isinstance(w.frames[-1], v2.Snapshot) and set(w.view) == {b_key}
        await w.send(v2.unwatch([b_key, a_key]))
        await w.until(lambda: isinstance(w.frames[-1], v2.Snapshot) and not w.view)
        too_many = [f"{i:064x}" for i in range(1001)]
        await w.send({"type": "watch", "keys": too_many})
        await w.until(lambda: len(w.errors()) == 1)
        assert getattr(w.errors()[0].code, "value", None) == "watchlist_full"
        await w.send(v2.follow(v2.Follow()))  # back to the whole lobby
        await w.until(lambda: isinstance(w.frames[-1], v2.Snapshot) and b_key in w.view)
        for client in (w, observer, b):
            await client.close()

    run(scenario(), timeout=20)


def test_a_count_follower_sees_the_count_change_at_most_once_a_second(
    cluster: V2Cluster,
) -> None:
    async def scenario() -> None:
        c = await V2Client.connect(cluster.url, follow=v2.Follow(v2.Scope.COUNT))
        first = c.counts()[0]
        assert c.frames == [first]  # at once, and no snapshot
        x, y = await asyncio.gather(*(V2Client.connect(cluster.url) for _ in range(2)))
        await c.until(lambda: c.counts()[-1].online == first.online + 2)
        await asyncio.gather(x.close(), y.close())
        await c.until(lambda: c.counts()[-1].online == first.online)
        assert c.frames == c.counts()  # never a lobby frame
        numbers = [count.online for count in c.counts()]
        assert all(a != b for a, b in itertools.pairwise(numbers)), numbers
        times = c.received
        assert all(b - a > 0.9 for a, b in itertools.pairwise(times)), times
        await c.close()

    run(scenario(), timeout=20)


def test_a_dropped_client_resumes_and_its_view_is_what_a_snapshot_shows(
    cluster: V2Cluster,
) -> None:
    async def scenario() -> None:
        policy = ReconnectPolicy(initial=0.3, maximum=0.3, random=lambda: 1.0)
        other, gone = await asyncio.gather(*(V2Client.connect(cluster.url) for _ in range(2)))
        async with LobbyClientV2.connect(cluster.url, reconnect=policy) as me:
            await me.wait_for_view({me.public_key, other.public_key, gone.public_key})
            me.drop()  # the network goes: no close frame; 0.3 s later it comes back
            newcomer = await V2Client.connect(cluster.url)
            await other.send(v2.set_record(status="away"))
            await gone.close()
            await other.until(lambda: other.view.get(other.public_key) == v2.Record("away"))
            await until(lambda: me.reconnects == 1 and me.status == "online", "back", 5)
            assert me.session.resumed is True
            fresh = await V2Client.connect(cluster.url)
            await until(lambda: me.records == fresh.view, "the same view", 5)
            assert fresh.view[other.public_key] == v2.Record("away")
            assert gone.public_key not in fresh.view and newcomer.public_key in fresh.view
            assert me.errors == [] and me.error_frames == []
        # A watchlist's view resumes with the changes of its keys alone.
        watching = v2.Follow(v2.Scope.WATCH, (other.public_key, gone.public_key))
        w = await V2Client.connect(cluster.url, follow=watching)
        await w.close()
        await other.send(v2.set_record(status="busy"))
        await newcomer.send(v2.set_record(status="busy"))
        await newcomer.until(lambda: newcomer.view.get(other.public_key) == v2.Record("busy"))
        assert fresh.auth_ok is not None
        view = v2.Resume(fresh.auth_ok.epoch, w.seq)
        back = await V2Client.connect(cluster.url, follow=watching, resume=view)
        assert back.auth_ok is not None and back.auth_ok.resumed
        update = back.frames[0]
        assert isinstance(update, v2.Update) and update.prev == w.seq  # (back held no view)
        assert back.view == {other.public_key: v2.Record("busy")}  # newcomer's: not watched
        for client in (other, newcomer, fresh, back):
            await client.close()

        # A view of another epoch, or newer than the worker's, gets a snapshot.
        for view in (v2.Resume("another", 1), v2.Resume(fresh.auth_ok.epoch, 2**40)):
            late = await V2Client.connect(cluster.url, resume=view)
            assert late.auth_ok is not None and not late.auth_ok.resumed
            assert isinstance(late.frames[0], v2.Snapshot)
            await late.close()

    run(scenario(), timeout=20)


def test_a_watch_in_flight_when_the_connection_drops_is_in_the_resumed_view(
    cluster: V2Cluster,
) -> None:
    """The bundled client resumes with the watchlist its view is of (not the one it
    asked for since), and asks again for what the view did not reflect."""

    async def scenario() -> None:
        a, b = await asyncio.gather(*(V2Client.connect(cluster.url) for _ in range(2)))
        policy = ReconnectPolicy(initial=0.05, maximum=0.05, random=lambda: 1.0)
        follow = {"scope": "watch", "keys": [a.public_key]}
        async with LobbyClientV2.connect(cluster.url, follow=follow, reconnect=policy) as me:
            await me.wait_for_view({a.public_key})
            await me.watch([b.public_key])  # b is online already
            me.drop()  # before the answering snapshot is read
            await until(lambda: me.reconnects == 1 and me.status == "online", "back", 5)
            assert me.session.resumed is True
            watching = v2.Follow(v2.Scope.WATCH, (a.public_key, b.public_key))
            fresh = await V2Client.connect(cluster.url, follow=watching)
            await until(lambda: me.records == fresh.view, "the view a fresh client has", 2)
            assert set(me.records) == {a.public_key, b.public_key}
            assert me.errors == [] and me.error_frames == []
        for client in (a, b, fresh):
            await client.close()

    run(scenario(), timeout=20)


def test_wrong_server_is_refused_counted_and_logged(cluster: V2Cluster) -> None:
    async def scenario() -> None:
        before = await cluster.authentications("wrong_server")
        with pytest.raises(Refused) as refused:
            await V2Client.connect(cluster.url, server="wss://elsewhere.example:443/ws")
        assert (refused.value.reason, refused.value.code) == ("wrong_server", 4001)

        async def counted() -> bool:
            return await cluster.authentications("wrong_server") == before + 1

        await until(counted, "wrong_server counted", 5)

    run(scenario(), timeout=20)
    cluster.proc.wait_for_line("'wss://elsewhere.example:443/ws'", timeout=5)


def test_a_client_that_offers_no_v2_gets_v1(cluster: V2Cluster) -> None:
    async def scenario() -> None:
        async with connect(cluster.url, subprotocols=["chat"]) as ws:
            assert ws.subprotocol is None
            assert json.loads(await ws.recv())["version"] == 1
        async with connect(cluster.url) as ws:
            assert ws.subprotocol is None
            assert json.loads(await ws.recv())["version"] == 1

    run(scenario(), timeout=20)


# --------------------------------------------------------------------------- the relay


class Relay:
    """A look-alike server: for each victim it opens its own connection to the real
    server (offering what the victim offered), passes the real challenge on to the
    victim and the victim's answers back, and keeps what the server told it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.heard: list[str | bytes] = []

    async def _relay(self, victim: ServerConnection) -> None:
        offered = victim.request.headers.get("Sec-WebSocket-Protocol") if victim.request else None
        protocols = [SUBPROTOCOL] if offered else None
        async with connect(self.target, subprotocols=protocols) as upstream:

            async def down() -> None:
                async for frame in upstream:
                    self.heard.append(frame)
                    await victim.send(frame)

            async def up() -> None:
                async for frame in victim:
                    await upstream.send(frame)

            tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            if upstream.close_code is not None:
                await victim.close(upstream.close_code, upstream.close_reason or "")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        def select(conn: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
            return SUBPROTOCOL if SUBPROTOCOL in offered else None

        async with serve(self._relay, "127.0.0.1", self.port, select_subprotocol=select):
            yield


def test_a_relay_acts_as_a_v1_victim_but_not_as_a_v2_one(cluster: V2Cluster) -> None:
    """Version 1's signature names no server, so a relay is in the lobby as its victim
    (a known limit, which docs/PROTOCOL.md states); version 2's names the server the
    victim dialed, and the real server refuses it: ``wrong_server``."""

    async def scenario() -> None:
        observer = await V2Client.connect(cluster.url)
        relay = Relay(cluster.url)
        async with relay.running():
            victim1 = await LobbyClient.connect(relay.url)
            await observer.until(lambda: victim1.public_key in observer.view)
            assert any(json.loads(f)["type"] == "auth_ok" for f in relay.heard)  # the relay's own
            await victim1.close()

            heard = len(relay.heard)
            victim2 = SigningKey.generate()
            with pytest.raises(Refused) as refused:
                await V2Client.connect(relay.url, key=victim2)
            assert (refused.value.reason, refused.value.code) == ("wrong_server", 4001)
            assert [json.loads(f)["type"] for f in relay.heard[heard:]] == [
                "challenge",
                "auth_failed",
            ]
            # Never in the lobby: a later join is seen, and the victim's key never was.
            late = await V2Client.connect(cluster.url)
            await observer.until(lambda: late.public_key in observer.view)
            victim_key = victim2.verify_key.encode().hex()
            assert not any(e.key == victim_key for u in observer.updates() for e in u.joined)
            await late.close()
        await observer.close()

    run(scenario(), timeout=20)


def test_the_bundled_v2_client_works_with_the_worker(cluster: V2Cluster) -> None:
    """shared.client_v2 (written from the contract) against the real thing."""

    async def scenario() -> None:
        async with (
            LobbyClientV2.connect(cluster.url, record={"status": "away"}) as me,
            LobbyClient.connect(cluster.url) as old,
        ):
            await me.wait_for_view({me.public_key, old.public_key})
            assert me.records[me.public_key] == v2.Record("away")
            await me.set_record(data={"n": 1})
            await until(
                lambda: me.records[me.public_key] == v2.Record("away", '{"n":1}'), "echo", 5
            )
            assert me.errors == [] and me.error_frames == [] and old.errors == []

    run(scenario(), timeout=20)
