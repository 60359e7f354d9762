"""The worker's heartbeat does not wait for its event loop (:mod:`workers.backbone`).

A real :class:`~workers.backbone.Backbone` in this process, its DEALER connected to a
ROUTER the test holds in place of the coordinator. The loop is then held busy on purpose
(a blocking call inside it: what a flood of client work does to a worker, without the
flood), and the ROUTER counts the heartbeats that arrive meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import zmq

from shared import backbone as bb
from workers.backbone import Backbone
from workers.settings import Backbone as BackboneOptions
from workers.settings import Network, Timing, WorkerSettings

INTERVAL = 0.05


def _settings(tmp: Path, grace: float) -> WorkerSettings:
    return WorkerSettings(
        network=Network(port=1),
        backbone=BackboneOptions(
            events_endpoint=f"ipc://{tmp}/events",
            updates_endpoint=f"ipc://{tmp}/updates",
            worker_id="w1",
        ),
        timing=Timing(
            heartbeat_interval=INTERVAL,
            coordinator_timeout=2 * INTERVAL,
            cutoff_grace=grace,
            route_timeout=5.0,
        ),
    )


def _beats_while_the_loop_is_held(tmp: Path, grace: float, held: float) -> tuple[int, int]:
    """Heartbeats the ROUTER got from ``w1`` while the worker's loop was held for
    ``held`` seconds, and after it turned again (until as many beats' time passed)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp}/events")
    settings = _settings(tmp, grace)
    backbone = Backbone(settings)

    def count() -> int:
        beats = 0
        while router.poll(0):
            ident, frame = router.recv_multipart()
            messages, _ = bb.decode_batch(frame)
            beats += sum(
                bb.split_routing_id(ident)[0] == "w1" and isinstance(m, bb.Heartbeat)
                for m in messages
            )
        return beats

    async def scenario() -> tuple[int, int]:
        backbone.connect()
        backbone.bind()
        backbone.turned()  # the loop turns (the ticker says so every tick)
        backbone.start_pulse()
        try:
            time.sleep(held)  # holds the loop: nothing else on it runs meanwhile
            during = count()
            backbone.turned()
            deadline = time.monotonic() + held
            after = 0
            while time.monotonic() < deadline:  # the loop turns again
                backbone.turned()
                await asyncio.sleep(INTERVAL / 5)
                after += count()
            return during, after
        finally:
            backbone.close(linger_ms=0)

    try:
        return asyncio.run(scenario())
    finally:
        router.close(linger=0)
        ctx.term()


def test_heartbeats_go_on_while_the_loop_is_busy(tmp_path: Path) -> None:
    held = 0.5
    during, after = _beats_while_the_loop_is_held(tmp_path, grace=10.0, held=held)
    # About one every INTERVAL; a loaded machine may lose a few, never most.
    assert during >= held / INTERVAL / 2, during
    assert after >= held / INTERVAL / 2, after


def test_a_loop_stuck_past_the_cutoff_grace_stops_the_heartbeats(tmp_path: Path) -> None:
    """A loop that has not turned for the grace serves nobody: its worker must be given
    up, so the beats stop until it turns again."""
    grace, held = 0.15, 0.8
    during, after = _beats_while_the_loop_is_held(tmp_path, grace=grace, held=held)
    assert 1 <= during <= grace / INTERVAL + 2, during  # only while within the grace
    assert after >= held / INTERVAL / 2, after  # and again once it turns
