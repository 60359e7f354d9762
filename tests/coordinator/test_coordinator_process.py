"""The coordinator as a real process, driven over ZeroMQ by a test playing several workers."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from scripts.fake_worker import FakeWorker
from shared import backbone as bb
from tests.support import ManagedProcess, wait_until

pytestmark = pytest.mark.process

A, B, C = ("a" * 64, "b" * 64, "c" * 64)


class CoordinatorUnderTest:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.events = f"ipc://{tmp}/events"
        self.updates = f"ipc://{tmp}/updates"
        self.proc = ManagedProcess(
            "coordinator",
            [
                "--events-endpoint",
                self.events,
                "--updates-endpoint",
                self.updates,
                "--heartbeat-interval",
                "0.1",
                *extra,
            ],
        )
        self.proc.wait_ready()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.workers: list[FakeWorker] = []

    def worker(self, name: str) -> FakeWorker:
        w = FakeWorker(self.ctx, name, self.events, self.updates)
        w.wait_subscribed()
        w.send(bb.Hello(name, "", f"ipc:///results/{name}", "", []))
        assert isinstance(w.reply(), bb.Welcome)
        self.workers.append(w)
        return w

    def core_dropped_logged(self) -> bool:
        """Whether the coordinator logged the replies it could not queue."""
        wait_until(lambda: self.proc.count("could not queue") > 0, "the drop summary", 5)
        return True

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self.ctx.destroy(linger=0)
        code = self.proc.stop()
        self.proc.assert_no_traceback()
        assert code == 0, self.proc.output()


@pytest.fixture
def coord(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[CoordinatorUnderTest]:
    marker = request.node.get_closest_marker("coordinator_args")
    c = CoordinatorUnderTest(tmp_path, *(marker.args if marker else ("--batch-window", "0")))
    yield c
    c.close()


def expect_update(w: FakeWorker, seq: int, joined: list[str], left: list[str]) -> bb.Update:
    msg = w.published()
    assert isinstance(msg, bb.Update), msg
    assert (msg.seq, msg.joined, msg.left) == (seq, joined, left)
    return msg


def test_snapshot_and_welcome_share_one_epoch(coord: CoordinatorUnderTest) -> None:
    w = coord.worker("w1")
    w.send(bb.SnapshotRequest())
    snap = w.reply()
    assert isinstance(snap, bb.Snapshot) and (snap.seq, snap.users) == (0, [])
    beat = w.published(skip_beats=False)
    assert isinstance(beat, bb.Beat) and beat.epoch == snap.epoch


def test_auth_is_published_then_acked_with_its_seq(coord: CoordinatorUnderTest) -> None:
    w = coord.worker("w1")
    w.send(bb.Authed(1, A))
    update = expect_update(w, 1, [A], [])
    ack = w.reply()
    assert ack == bb.AuthAck(1, update.epoch, 1)
    w.send(bb.SnapshotRequest())
    snap = w.reply()
    assert isinstance(snap, bb.Snapshot) and (snap.seq, snap.users) == (1, [A])


def test_newest_session_wins_across_workers_and_stale_close_is_ignored(
    coord: CoordinatorUnderTest,
) -> None:
    w1, w2 = coord.worker("w1"), coord.worker("w2")
    w1.send(bb.Authed(1, A))
    expect_update(w2, 1, [A], [])
    assert isinstance(w1.reply(), bb.AuthAck)
    w2.send(bb.Authed(1, A))
    expect_update(w2, 2, [A], [A])  # a reconnection: in left and joined of one update
    assert w1.reply() == bb.Kick(1)
    assert isinstance(w2.reply(), bb.AuthAck)
    w1.send(bb.Closed(1, A))  # the replaced connection's close, arriving afterwards
    w1.send(bb.SnapshotRequest())  # same socket: answered after the close is applied
    snap = w1.reply()
    assert isinstance(snap, bb.Snapshot) and (snap.seq, snap.users) == (2, [A])


def test_records_are_published_and_a_change_alone_keeps_mseq(
    coord: CoordinatorUnderTest,
) -> None:
    w = coord.worker("w1")
    w.send(bb.Authed(1, A, "busy", '{"n":1}'))
    update = expect_update(w, 1, [A], [])
    assert (update.mseq, update.records) == (1, [(A, "busy", '{"n":1}')])
    assert isinstance(w.reply(), bb.AuthAck)
    w.send(bb.SetRecord(1, A, "away", "not json"))  # refused (logged), no traceback
    w.send(bb.SetRecord(1, A, "away", '{"n":2}'))
    update = expect_update(w, 2, [], [])
    assert (update.mseq, update.updated) == (1, [(A, "away", '{"n":2}')])
    w.send(bb.SnapshotRequest())
    assert w.reply() == bb.Snapshot(update.epoch, 2, 1, [A], [(A, "away", '{"n":2}')])
    wait_until(lambda: coord.proc.count("malformed key or record") == 1, "the warning", 5)


def test_close_of_current_session_leaves(coord: CoordinatorUnderTest) -> None:
    w = coord.worker("w1")
    w.send(bb.Authed(4, B))
    expect_update(w, 1, [B], [])
    w.send(bb.Closed(4, B))
    expect_update(w, 2, [], [B])


@pytest.mark.coordinator_args("--batch-window", "1.0")
def test_burst_of_joins_is_batched_into_net_effect_updates(coord: CoordinatorUnderTest) -> None:
    w = coord.worker("w1")
    keys = [f"{i:064x}" for i in range(200)]
    for conn, key in enumerate(keys):
        w.send(bb.Authed(conn, key))
    w.send(bb.Authed(999, C))
    w.send(bb.Closed(999, C))  # joins and leaves inside the window: never published
    seen: set[str] = set()
    updates = 0
    while len(seen) < len(keys):
        msg = w.published()
        assert isinstance(msg, bb.Update) and not msg.left and C not in msg.joined
        seen.update(msg.joined)
        updates += 1
    assert seen == set(keys)
    assert updates <= 5, f"{updates} updates for one burst of 200 joins"
    acks = [w.reply() for _ in keys]
    assert all(isinstance(a, bb.AuthAck) for a in acks)


@pytest.mark.coordinator_args("--batch-window", "0", "--worker-timeout", "0.5")
def test_silent_worker_is_presumed_dead_and_its_users_leave(coord: CoordinatorUnderTest) -> None:
    w1, w2 = coord.worker("w1"), coord.worker("w2")
    w1.send(bb.Authed(1, A))
    expect_update(w2, 1, [A], [])  # two workers' events have no order between them
    w2.send(bb.Authed(1, B))
    expect_update(w2, 2, [B], [])
    deadline = time.monotonic() + 5
    msg: bb.Message | None = None
    while time.monotonic() < deadline:  # w2 keeps beating, w1 says nothing more
        w2.send(bb.Heartbeat("w2"))
        if w2.sub.poll(50):
            msg = bb.decode(w2.sub.recv())
            if isinstance(msg, bb.Update):
                break
    assert isinstance(msg, bb.Update) and (msg.joined, msg.left) == ([], [A])


def test_goodbye_removes_all_sessions_at_once(coord: CoordinatorUnderTest) -> None:
    w1, w2 = coord.worker("w1"), coord.worker("w2")
    w1.send(bb.Authed(1, A))
    w1.send(bb.Authed(2, B))
    expect_update(w2, 1, [A], [])
    expect_update(w2, 2, [B], [])
    w1.send(bb.Goodbye("w1"))
    expect_update(w2, 3, [], [A, B])


def test_hello_reregisters_sessions_and_drops_forgotten_ones(coord: CoordinatorUnderTest) -> None:
    w1 = coord.worker("w1")
    w1.send(bb.Authed(1, A))
    w1.send(bb.Authed(2, B))
    expect_update(w1, 1, [A], [])
    expect_update(w1, 2, [B], [])
    ack = w1.reply()
    w1.reply()
    assert isinstance(ack, bb.AuthAck)
    w1.send(bb.Hello("w1", ack.epoch, "", "", [(2, B, ack.epoch, 2, True), (3, C, "", 0, False)]))
    expect_update(w1, 3, [C], [A])
    assert isinstance(w1.reply(), bb.Welcome)
    assert w1.reply() == bb.AuthAck(3, ack.epoch, 3)  # the one still waiting gets its ack


def test_unknown_worker_is_asked_to_reannounce_and_newest_session_wins(
    coord: CoordinatorUnderTest,
) -> None:
    w1, w2 = coord.worker("w1"), coord.worker("w2")
    w1.send(bb.Authed(1, A))
    expect_update(w2, 1, [A], [])
    ack = w1.reply()
    assert isinstance(ack, bb.AuthAck)
    # A worker the coordinator never heard from (as after a coordinator restart, or a
    # worker given up for dead) is asked to announce its sessions.
    w3 = FakeWorker(coord.ctx, "w3", coord.events, coord.updates)
    coord.workers.append(w3)
    w3.send(bb.Heartbeat("w3"))
    assert w3.reply() == bb.Reannounce()
    # It claims A with an older authentication: the newer session stays, its is kicked.
    claims = [(5, A, ack.epoch, ack.seq - 1, True), (6, B, ack.epoch, 0, True)]
    w3.send(bb.Hello("w3", ack.epoch, "", "", claims))
    assert isinstance(w3.reply(), bb.Welcome)
    assert w3.reply() == bb.Kick(5)
    expect_update(w2, 2, [B], [])
    # Until it said Hello, its events changed nothing.
    w4 = FakeWorker(coord.ctx, "w4", coord.events, coord.updates)
    coord.workers.append(w4)
    w4.send(bb.Authed(1, C))
    assert w4.reply() == bb.Reannounce()
    w4.send(bb.SnapshotRequest())
    snapshot = w4.reply()
    assert isinstance(snapshot, bb.Snapshot) and C not in snapshot.users


def test_direct_message_routes_to_the_recipients_worker_with_where_to_answer(
    coord: CoordinatorUnderTest,
) -> None:
    w1, w2 = coord.worker("w1"), coord.worker("w2")
    w2.send(bb.Authed(9, B))
    expect_update(w1, 1, [B], [])
    later = time.time() + 60
    w1.send(bb.Route(5, A, B, "m1", "ciphertext", later))
    assert isinstance(w2.reply(), bb.AuthAck)
    deliver = w2.reply()
    assert deliver == bb.Deliver("w1", "ipc:///results/w1", "", 5, 9, A, "m1", "ciphertext", later)
    w1.send(bb.Route(6, A, C, "m2", "x", later))
    assert w1.reply() == bb.RouteDone(6, "offline")
    # Past its deadline (a coordinator that stalled): dropped here, answered unavailable.
    w1.send(bb.Route(7, A, B, "m3", "x", time.time() - 0.001))
    assert w1.reply() == bb.RouteDone(7, "unavailable")
    w2.no_reply(0.2)


def test_garbage_frames_are_dropped_and_break_nothing(coord: CoordinatorUnderTest) -> None:
    w = coord.worker("w1")
    for frame in [b"", b"\xff\x00", bb.encode(bb.Kick(1)), b"\x93\x01\xa3upd\x01"]:
        w.dealer.send(frame)
    w.dealer.send_multipart([b"a", b"b"])
    w.send(bb.Authed(1, "not-a-key"))
    w.send(bb.Authed(1, A))
    expect_update(w, 1, [A], [])
    # Processed before the update was published; the log lines may still be in the pipe.
    coord.proc.wait_for_line("dropping", count=4, timeout=5)


def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    c = CoordinatorUnderTest(tmp_path)
    c.proc.signal(signal.SIGTERM)
    assert c.proc.proc.wait(5) == 0
    c.close()


# ------------------------------------------------------------ issue 7: truth under races


def test_an_auth_in_flight_when_its_worker_re_registers_stays_and_is_acked(
    coord: CoordinatorUnderTest,
) -> None:
    """The race behind "auth_ok but absent": the ack is on its way when the worker says
    Hello. The Hello lists the session as waiting for its ack, so it stays in the lobby
    (no left) and is acknowledged again."""
    w1 = coord.worker("w1")
    w1.send(bb.Authed(1, A))
    update = expect_update(w1, 1, [A], [])
    w1.send(bb.Hello("w1", update.epoch, "", "", [(1, A, update.epoch, 0, False)]))
    assert w1.reply() == bb.AuthAck(1, update.epoch, 1)  # the first ack
    assert isinstance(w1.reply(), bb.Welcome)
    assert w1.reply() == bb.AuthAck(1, update.epoch, 1)  # and again, for the Hello
    w1.send(bb.SnapshotRequest())
    snapshot = w1.reply()
    assert isinstance(snapshot, bb.Snapshot) and snapshot.users == [A] and snapshot.seq == 1


def test_a_session_acked_under_a_clock_that_was_ahead_loses_to_a_newer_one(
    coord: CoordinatorUnderTest,
) -> None:
    """An earlier coordinator's clock was a day ahead (or this one's is behind): a
    worker comes back with a session it acked, stamped with an epoch above ours. The
    session this coordinator acknowledged since is newer and stays; we move above the
    reported epoch and re-acknowledge our sessions with it."""
    w1 = coord.worker("w1")
    w1.send(bb.Authed(1, A))
    ours = expect_update(w1, 1, [A], []).epoch
    assert w1.reply() == bb.AuthAck(1, ours, 1)
    ahead = f"{bb.epoch_generation(ours) + 86_400 * 10**9:020d}-0000abcd"
    w2 = FakeWorker(coord.ctx, "w2", coord.events, coord.updates)
    coord.workers.append(w2)
    w2.send(bb.Hello("w2", ahead, "", "", [(5, A, ahead, 40, True), (6, B, ahead, 41, True)]))
    welcome = w2.reply()
    assert isinstance(welcome, bb.Welcome) and welcome.epoch > ahead
    assert w2.reply() == bb.Kick(5)
    assert w1.reply() == bb.AuthAck(1, welcome.epoch, 1)  # our session, restamped
    update = expect_update(w1, 2, [B], [])
    assert update.epoch == welcome.epoch


def test_a_reply_that_cannot_be_queued_is_repaired(coord: CoordinatorUnderTest) -> None:
    """A Kick for a worker that is not there (ROUTER_MANDATORY makes that an error, not a
    silent drop) makes the worker re-register when it is back; its Hello gets the kick
    again, so the key is never online twice."""
    w1 = coord.worker("w1")
    w1.send(bb.Authed(1, A))
    stamp = expect_update(w1, 1, [A], [])
    assert isinstance(w1.reply(), bb.AuthAck)
    w1.close()
    coord.workers.remove(w1)
    w2 = coord.worker("w2")
    w2.send(bb.Authed(1, A))  # newer: w1's session must be kicked, but w1 is gone
    expect_update(w2, 2, [A], [A])
    coord.proc.wait_for_line("lost kick to worker w1", timeout=5)
    back = FakeWorker(coord.ctx, "w1", coord.events, coord.updates)
    coord.workers.append(back)
    back.send(bb.Heartbeat("w1"))  # still "registered"? no: it must say Hello again
    assert back.reply() == bb.Reannounce()
    back.send(bb.Hello("w1", stamp.epoch, "", "", [(1, A, stamp.epoch, 1, True)]))
    assert isinstance(back.reply(), bb.Welcome)
    assert back.reply() == bb.Kick(1)
    assert isinstance(w2.reply(), bb.AuthAck)
    w2.send(bb.SnapshotRequest())
    snapshot = w2.reply()
    assert isinstance(snapshot, bb.Snapshot) and snapshot.users == [A]
    assert coord.core_dropped_logged()


def test_after_a_crash_unknown_recipients_are_unavailable_until_the_lobby_is_rebuilt(
    tmp_path: Path,
) -> None:
    """A coordinator that finds its predecessor's lock file saying "running" (it
    crashed, or stopped with workers still holding sessions) answers unavailable, not
    offline, for keys it has not heard of until every worker had time to re-register, and
    only then says READY; one whose predecessor stopped with no worker left has nothing
    to rebuild."""
    first = CoordinatorUnderTest(tmp_path, "--worker-timeout", "1.0")
    first.proc.signal(signal.SIGKILL)
    first.proc.proc.wait(5)
    first.ctx.destroy(linger=0)
    ends = ["--events-endpoint", first.events, "--updates-endpoint", first.updates]
    crashed = ManagedProcess(
        "coordinator", [*ends, "--worker-timeout", "1.0", "--heartbeat-interval", "0.1"]
    )
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        w = FakeWorker(ctx, "w1", first.events, first.updates)
        started = time.monotonic()
        w.send(bb.Hello("w1", "", "", "", []))
        assert isinstance(w.reply(), bb.Welcome)
        w.send(bb.Route(1, A, B, "m", "x", time.time() + 60))
        assert w.reply() == bb.RouteDone(1, "unavailable")
        deadline = time.monotonic() + 5
        while True:  # beat like a live worker, or w1 expires on a slow machine
            w.send(bb.Heartbeat("w1"))
            try:
                crashed.wait_ready(timeout=0.1)
                break
            except AssertionError:
                if crashed.proc.poll() is not None or time.monotonic() > deadline:
                    raise
        assert time.monotonic() - started > 0.8  # the grace: every worker beats by then
        w.send(bb.Route(2, A, B, "m", "x", time.time() + 60))
        assert w.reply() == bb.RouteDone(2, "offline")
        w.close()
    finally:
        ctx.destroy(linger=0)
        assert crashed.stop() == 0  # w1 never said goodbye: "running" again
    idle = CoordinatorUnderTest(tmp_path)
    idle.close()  # no worker at all: "idle"
    ready = time.monotonic()
    clean = CoordinatorUnderTest(tmp_path, "--worker-timeout", "5")
    try:
        assert time.monotonic() - ready < 2.5  # ready at once, no grace to wait out
        w = clean.worker("w1")
        w.send(bb.Route(3, A, B, "m", "x", time.time() + 60))
        assert w.reply() == bb.RouteDone(3, "offline")
    finally:
        clean.close()
