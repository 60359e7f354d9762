"""Hypothesis throws random backbone input at a real coordinator process.

The way ``tests/test_fuzz.py`` fuzzes a worker's clients, this fuzzes the coordinator's
workers: three sockets with worker identities send sequences of well-formed messages
with hostile contents (unknown workers, keys twice on one connection, stale and future
epochs, malformed keys, routes with any deadline) and bytes that are not messages at
all. After every example a probe worker that behaves checks that the coordinator still
answers, that its lobby holds only well-formed keys and that its snapshot and updates
agree; at the end the process exits cleanly without a traceback. (The pure core gets
the same treatment with many more examples in ``test_core.py``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.fake_worker import FakeWorker
from shared import backbone as bb
from tests.coordinator.test_core import likely, up_messages
from tests.support import ManagedProcess

pytestmark = pytest.mark.process

NAMES = ["f1", "f2", "f3"]


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.events, self.updates = f"ipc://{tmp}/events", f"ipc://{tmp}/updates"
        self.proc = ManagedProcess(
            "coordinator",
            [
                *("--events-endpoint", self.events, "--updates-endpoint", self.updates),
                *("--batch-window", "0", "--heartbeat-interval", "0.2"),
                *("--worker-timeout", "30"),
            ],
        )
        self.proc.wait_ready()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.fuzzers = {name: FakeWorker(self.ctx, name, self.events) for name in NAMES}
        self.probe = FakeWorker(self.ctx, "probe", self.events, self.updates)
        self.probe.send(bb.Hello("probe", "", "", "", []))
        assert isinstance(self.reply(), bb.Welcome)

    def reply(self, timeout: float = 5.0) -> bb.Message:
        messages = self.probe.next_frame(timeout)
        assert len(messages) == 1  # one request, one reply
        return messages[0]

    def drain(self) -> None:
        for fuzzer in self.fuzzers.values():
            fuzzer.drain_replies()
        self.probe.drain_pub()

    def snapshot(self) -> bb.Snapshot:
        """A snapshot for the probe; it answers after everything sent before it by the
        probe, and, being one loop, after what the fuzzers sent before too."""
        self.probe.send(bb.SnapshotRequest())
        while True:
            msg = self.reply()
            if isinstance(msg, bb.Snapshot):
                return msg

    def close(self) -> None:
        self.ctx.destroy(linger=0)
        assert self.proc.stop() == 0
        self.proc.assert_no_traceback()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("cfuzz"))
    yield r
    r.close()


frames = st.one_of(
    likely.map(bb.encode),
    likely.map(bb.encode),
    up_messages().map(bb.encode),
    st.binary(max_size=40),
    st.builds(lambda tag: bb.encode(bb.Heartbeat("x"))[:-1] + tag, st.binary(max_size=3)),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(st.sampled_from(NAMES), frames), min_size=1, max_size=25))
def test_no_backbone_input_crashes_the_coordinator(
    rig: Rig, sends: list[tuple[str, bytes]]
) -> None:
    for name, frame in sends:
        rig.fuzzers[name].send_frame(frame)
    snapshot = rig.snapshot()
    assert all(len(u) == 64 and u == u.lower() for u in snapshot.users)
    assert len(set(snapshot.users)) == len(snapshot.users)
    assert rig.proc.proc.poll() is None
    rig.drain()
