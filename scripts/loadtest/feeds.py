"""The backend's two feeds, measured from the receiving side: an event-stream consumer
(``GET /v1/events``) and a webhook receiver, each checking that it gets every event
once and in order, and timing each event from its publication (its ``at``, the
coordinator's clock) to its receipt here (meaningful when both run on one machine).

Used by ``scripts/events_bench.py``, ``scripts/webhook_bench.py`` and the load
generator's ``--api-consumers``/``--webhooks`` (scripts/loadtest/backend.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from scripts.webhook_receiver import SIGNATURE_HEADER, verify
from shared import events

MAX_FRAME = 64 * 1024 * 1024
"""Bytes one event's frame may take (the leaves at the end of a large churn, or a mass
join, make one event of many keys)."""


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` of ``values`` lie (0.0 when there are none)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def spread_ms(values: list[float]) -> dict[str, float]:
    """p50, p99 and maximum of ``values`` (seconds) in milliseconds."""
    return {
        "p50": round(1000 * percentile(values, 0.5), 1),
        "p99": round(1000 * percentile(values, 0.99), 1),
        "max": round(1000 * max(values, default=0.0), 1),
    }


@dataclass
class Tally:
    """What one event-stream consumer received."""

    events: int = 0
    bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    last: int | None = None
    """The ``seq`` the consumer's view is at (None until the stream's start reset)."""
    first_at: float | None = None
    last_at: float = 0.0
    """This machine's clock at the first and the last event received."""
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    """(this machine's clock, bytes) of each event received."""


async def consume(
    host: str, port: int, token: str, tally: Tally, duration: float = math.inf
) -> None:
    """Follow ``GET /v1/events`` for ``duration`` seconds (or until cancelled), counting
    into ``tally``: one ``start`` reset, then consecutive events; any other reset, a gap,
    a cut-off or the stream's end is a problem."""
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_FRAME)
    except OSError as exc:
        tally.problems.append(f"no connection: {exc}")
        return
    writer.write(f"GET /v1/events HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            tally.problems.append(head.decode("latin-1").splitlines()[0])
            return
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(reader.readuntil(b"\n\n"), left)
            except TimeoutError:
                break
            if not receive(tally, frame, time.time()):
                return
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        tally.problems.append(f"the stream ended: {exc!r}")
    except (asyncio.LimitOverrunError, ValueError) as exc:  # ValueError: not UTF-8, say
        tally.problems.append(f"an unreadable frame: {exc!r}")
    finally:
        writer.close()


def receive(tally: Tally, frame: bytes, now: float) -> bool:
    """Count one Server-Sent Events ``frame`` read at ``now``; False once the stream
    says it ends (a cut-off)."""
    tally.bytes += len(frame)
    lines = frame.decode().strip("\n").split("\n")
    if lines[0].startswith(":"):
        return True
    fields = dict(line.split(": ", 1) for line in lines)
    kind = fields.get("event", "message")
    if kind == "reset":
        reset = json.loads(fields["data"])
        if tally.last is not None or reset["reason"] != "start":
            tally.problems.append(f"reset {reset}")
        tally.last = reset["seq"]
        return True
    if kind != "message":
        tally.problems.append(f"{kind} {fields.get('data')}")
        return False
    event = events.decode(fields["data"].encode())
    if tally.last is not None and event.seq != tally.last + 1:
        tally.problems.append(f"gap: {tally.last} then {event.seq}")
    tally.last = event.seq
    tally.events += 1
    tally.latencies.append(now - event.at)
    tally.arrivals.append((now, len(frame)))
    tally.first_at = tally.first_at or now
    tally.last_at = now
    return True


class Measuring:
    """A webhook receiver that checks every delivery's signature and the order of its
    events, times every event, and counts gaps and reported losses."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.lags: list[float] = []
        self.deliveries = 0
        self.bad = 0
        self.gaps = 0
        self.lost = 0
        self.bytes = 0
        self.position: tuple[str, int] = ("", 0)
        self.first_at: float | None = None
        self.last_at = 0.0
        self.arrivals: list[tuple[float, int]] = []
        """(this machine's clock, new events) of each signed delivery."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            headers = dict(
                (name.strip().lower(), value.strip())
                for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
                if name
            )
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            writer.close()
            return
        now = time.time()
        status = "204 No Content"
        if not verify(self.secret, headers.get(SIGNATURE_HEADER.lower(), ""), body, now, 300):
            self.bad += 1
            status = "401 Unauthorized"
        else:
            self.record(json.loads(body), now, len(body))
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    def record(self, delivery: dict[str, Any], now: float, size: int) -> None:
        self.deliveries += 1
        self.bytes += size
        self.lost += (delivery["lost"] or {}).get("count", 0)
        new = len(self.lags)
        for event in delivery["events"]:
            epoch, seq = self.position
            if event["epoch"] == epoch and event["seq"] <= seq:
                continue  # a retry's
            if event["epoch"] == epoch and event["seq"] != seq + 1:
                self.gaps += 1
            self.position = (event["epoch"], event["seq"])
            self.lags.append(now - event["at"])
            self.first_at = self.first_at or now
            self.last_at = now
        self.arrivals.append((now, len(self.lags) - new))
