"""The coordinator's own stalls and big registrations must not make the cluster flap:
a stall is not a worker's silence, and a worker whose replies keep being lost
re-registers at most once per beat interval."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core import CoordinatorCore, ToWorker
from shared import backbone as bb
from tests.coordinator.test_core import E0, SETTINGS, A, B, core, hello, to

TIMEOUT = SETTINGS.timing.worker_timeout
BEAT = SETTINGS.timing.heartbeat_interval


def two_workers() -> CoordinatorCore:
    c = core()
    c.handle("w1", hello("w1", (1, A, "", 0, False)), now=0.0, wall=0.0)
    c.handle("w2", hello("w2", (1, B, "", 0, False)), now=0.0, wall=0.0)
    c.tick(now=0.0, wall=0.0)
    return c


def test_a_stall_of_the_coordinator_is_not_the_silence_of_its_workers() -> None:
    """Stopped for longer than the timeout, the coordinator's first tick (before it has
    read the heartbeats that queued meanwhile) expires nobody."""
    c = two_workers()
    out = c.tick(now=0.1 + 2 * TIMEOUT, wall=0.0)
    assert c.workers_expired == 0 and c.lobby.get_user(A) and c.lobby.get_user(B)
    assert to(out, "w1") == to(out, "w2") == []
    # Awake again, it still hears what is silent on its own time: w1 keeps beating,
    # w2 is dead, and w2's sessions leave once it was silent for the timeout awake.
    stalled_until = c.due
    while c.workers_expired == 0:
        now = c.due
        if now - stalled_until > TIMEOUT + 1:
            raise AssertionError("a dead worker never expired")
        c.handle("w1", bb.Heartbeat("w1"), now=now, wall=0.0)
        c.tick(now=now, wall=0.0)
    assert "w2" not in c.registry and c.lobby.get_user(A) and not c.lobby.get_user(B)
    assert c.due - stalled_until >= TIMEOUT - 0.2


def test_a_long_message_counts_as_the_coordinators_own_stall() -> None:
    """A registration that kept the loop busy for longer than the timeout (the
    heartbeats of the others wait behind it) expires nobody."""
    c = two_workers()
    c.handle("w3", hello("w3"), now=0.1, wall=0.0)  # took the loop 3 s
    c.tick(now=0.1 + TIMEOUT + 0.5, wall=0.0)
    assert c.workers_expired == 0


def test_a_worker_whose_replies_keep_being_lost_re_registers_once_a_beat() -> None:
    """Each lost reply makes its worker unregistered; each Hello registers it again. The
    requests to re-register are still limited to one per beat interval, however many
    replies are lost (each Hello of a big worker costs a whole registration)."""
    c = two_workers()
    asked = []
    now = 0.0
    while now < 5 * BEAT:
        now = round(now + 0.05, 2)
        out = c.handle("w1", bb.Authed(round(now * 100), A), now=now, wall=0.0)
        for msg in to(out, "w1"):
            if isinstance(msg, bb.AuthAck):
                c.undelivered("w1", msg)  # its queue is full
        out += c.tick(now=now, wall=0.0)
        if bb.Reannounce() in to(out, "w1"):
            asked.append(now)
            c.handle("w1", hello("w1", (1, A, E0, 1, True)), now=now, wall=0.0)
    assert len(asked) <= 5 and all(b - a >= BEAT for a, b in itertools.pairwise(asked))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 8.0), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_no_session_leaves_for_the_coordinators_own_stalls(
    stalls: list[tuple[float, bool]],
) -> None:
    """Workers beat every second; the coordinator stalls (anywhere from nothing to far
    past the timeout) between turns of its loop, and after each stall the beats queued
    meanwhile may reach it only after its first tick. Nobody expires, nobody is asked
    to re-register, the lobby never changes."""
    c = two_workers()
    now, next_beat, queued = 0.0, BEAT, []
    for stall, beats_late in stalls:
        # The loop runs normally for a while: ticks when due, beats read as they come.
        for _ in range(12):
            now = c.due
            while next_beat <= now:
                queued += ["w1", "w2"]
                next_beat += BEAT
            for worker in queued:
                c.handle(worker, bb.Heartbeat(worker), now=now, wall=0.0)
            queued = []
            assert not [o for o in c.tick(now=now, wall=0.0) if isinstance(o, ToWorker)]
        now += stall  # stopped: the workers' beats queue up
        while next_beat <= now:
            queued += ["w1", "w2"]
            next_beat += BEAT
        if not beats_late:
            for worker in queued:
                c.handle(worker, bb.Heartbeat(worker), now=now, wall=0.0)
            queued = []
        c.tick(now=now, wall=0.0)  # what is queued is not read yet, or was just read
        assert c.workers_expired == 0 and len(c.lobby) == 2
