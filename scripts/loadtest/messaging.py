"""The agent's ops that exchange direct messages, and those on bare WebSocket
connections (:class:`MessageOps`, a part of :class:`~scripts.loadtest.agent.Agent`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import WebSocketException

from scripts.loadtest.client import LoadClient
from scripts.loadtest.stats import Histogram
from scripts.loadtest.surface import AgentSurface
from shared.client import ConnectionClosedError


async def sleep_until(wall: float) -> None:
    """Sleep until the wall clock reads ``wall`` (a schedule, not a synchronisation)."""
    delay = wall - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


class MessageOps(AgentSurface):
    """Ops of an agent: what they use of it is declared here."""

    raw: list[ClientConnection]
    raw_frames: int
    _raw_tasks: set[asyncio.Task[None]]

    async def op_messages(
        self,
        pairs: list[tuple[int, int]],
        duration: float,
        start_at: float,
        rate: float = 40.0,
        window: int = 8,
        body_bytes: int = 64,
        drain: float = 10.0,
    ) -> dict[str, Any]:
        """Both clients of each pair send each other direct messages for ``duration``
        seconds, ``rate`` a second per direction, ``window`` unanswered at most.
        Measures the round trip (send to ``send_result``) and the delivery (send to the
        peer's ``message``), and checks every message arrives exactly once: a send is
        given ``drain`` seconds for its answer, and a delivered message as long to
        arrive once the sending is over."""
        body = os.urandom(body_bytes // 2 + 1).hex()[:body_bytes]
        sent_at: dict[str, float] = {}
        rtt, delivery = Histogram(), Histogram()
        status: Counter[str] = Counter()
        problems: Counter[str] = Counter()
        received = 0
        last_answer = start_at
        ids = iter(range(10**12))

        async def one(client: LoadClient, to: str, msg_id: str) -> None:
            nonlocal last_answer
            started = time.perf_counter()
            sent_at[msg_id] = time.time()
            try:
                result = await client.send(to, body, msg_id, timeout=drain)
            except (TimeoutError, ConnectionClosedError) as exc:
                problems[f"send {type(exc).__name__}"] += 1
                return
            rtt.add(time.perf_counter() - started)
            status[result.status.value] += 1
            last_answer = max(last_answer, time.time())

        async def sender(a: int, b: int) -> None:
            # Paced at ``rate`` a second (under the server's per-connection limit),
            # at most ``window`` unanswered.
            client, to = self.clients[a], self.pub(b)
            gate = asyncio.Semaphore(window)
            tasks: set[asyncio.Task[None]] = set()
            # Each direction at its own phase: real senders are not synchronised, and
            # a common schedule would measure the drain time of one artificial burst.
            phase = random.random() / rate
            for n in range(int(duration * rate)):
                await sleep_until(start_at + phase + n / rate)
                await gate.acquire()
                task = asyncio.create_task(one(client, to, f"{self.index}.{a}.{next(ids)}"))
                task.add_done_callback(lambda _t: gate.release())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.progress += 1
            if tasks:
                await asyncio.wait(tasks)

        async def receiver(index: int, expected_from: str) -> None:
            nonlocal received
            client = self.clients[index]
            while True:  # until cancelled once every send is answered and drained
                try:
                    msg = await client.next_message(timeout=duration + 30.0)
                except (TimeoutError, ConnectionClosedError):
                    return
                at = sent_at.pop(msg.id, None)
                if at is None:
                    problems["duplicate or unknown id"] += 1
                elif msg.sender != expected_from or msg.body != body:
                    problems["wrong sender or body"] += 1
                else:
                    delivery.add(time.time() - at)
                received += 1

        await sleep_until(start_at)
        senders = [sender(a, b) for a, b in pairs] + [sender(b, a) for a, b in pairs]
        receivers = [receiver(b, self.pub(a)) for a, b in pairs]
        receivers += [receiver(a, self.pub(b)) for a, b in pairs]
        recv_tasks = [asyncio.create_task(r) for r in receivers]
        await asyncio.gather(*senders)
        sent = sum(status.values()) + sum(problems.values())
        # Everything answered ``delivered`` must arrive; stragglers get ``drain`` seconds.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain):
                while sent_at:
                    await asyncio.sleep(0.05)
        for task in recv_tasks:
            task.cancel()
        await asyncio.gather(*recv_tasks, return_exceptions=True)
        return {
            "sent": sent,
            "received": received,
            "status": dict(status),
            "problems": dict(problems),
            "lost": len(sent_at),
            "rtt": rtt.to_dict(),
            "delivery": delivery.to_dict(),
            "elapsed": time.time() - start_at,
            "span": last_answer - start_at,
        }

    # ------------------------------------------------------------------ ops: bare websockets

    async def op_raw_connect(self, url: str, count: int) -> dict[str, Any]:
        """Open ``count`` plain WebSocket connections that only count frames."""
        gate = asyncio.Semaphore(self.concurrency)
        failed = 0

        async def reader(ws: ClientConnection) -> None:
            with contextlib.suppress(WebSocketException):
                async for _ in ws:
                    self.raw_frames += 1

        async def one() -> None:
            nonlocal failed
            async with gate:
                try:
                    ws = await websockets.connect(url, ping_interval=None, compression=None)
                except (OSError, TimeoutError, WebSocketException):
                    failed += 1
                    return
            self.raw.append(ws)
            task = asyncio.create_task(reader(ws))
            self._raw_tasks.add(task)
            task.add_done_callback(self._raw_tasks.discard)
            self.progress += 1

        await asyncio.gather(*(one() for _ in range(count)))
        return {"ok": len(self.raw), "failed": failed}

    async def op_raw_count(self) -> int:
        return self.raw_frames

    async def op_raw_close(self) -> dict[str, Any]:
        await asyncio.gather(*(ws.close() for ws in self.raw), return_exceptions=True)
        self.raw.clear()
        return {}
