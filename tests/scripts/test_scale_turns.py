"""The scale scenario's turns (scripts/loadtest/scaleops.py) against a slow rejoin:
a user whose rejoin is still connecting when its turn comes again skips it, and one
key never has two connections on the way."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from scripts.loadtest.scaleops import ScaleOps
from scripts.loadtest.tallies import ConnectStats

CONNECT_S = 0.35
"""How long each rejoin takes here: more than three rounds of 0.1 s."""


class _Slow(ScaleOps):
    """The agent's part the ops use, with rejoins slower than a round."""

    def __init__(self, users: int) -> None:
        self.index, self.progress, self.counting = 0, 0, False
        self.clients: dict[int, Any] = {i: object() for i in range(users)}
        self.follows, self.watchlists = {}, {}
        self.measuring, self.watching = set(), set()
        self.status_sent, self.status_latency, self.status_seen, self.status_made = {}, {}, 0, 0
        self.watchers_fixed = None
        self._changed_at = None
        self.connecting: set[int] = set()
        self.twice: list[int] = []

    def pub(self, index: int) -> str:
        return f"{index:064x}"

    def _watchers_of(self, public_key: str) -> int:
        return 0

    def _mark_leave(self, index: int) -> None:
        pass

    def _retire(self, index: int) -> Any:
        return self.clients.pop(index, None)

    def _adopt(self, index: int, client: Any, watch: bool) -> None:
        self.clients[index] = client

    async def _connect(self, index: int, stats: ConnectStats) -> Any:
        if index in self.connecting:
            self.twice.append(index)
        self.connecting.add(index)
        await asyncio.sleep(CONNECT_S)  # a slow server, not a synchronisation
        self.connecting.discard(index)
        return object()


def test_a_user_still_rejoining_skips_its_turn() -> None:
    agent = _Slow(2)
    result = asyncio.run(
        agent.op_scale_changes(
            rate=20.0, duration=1.0, start_at=time.time(), leave_share=1.0, seed=1
        )
    )
    made = result["made"]
    assert not agent.twice, f"two connections of one key on the way: {agent.twice}"
    assert made["skipped_rejoining"] > 0 and made["rejoin"] > 0 and made["leave"] > 0
    assert made["leave"] + made["rejoin"] + made["skipped_rejoining"] == 20
