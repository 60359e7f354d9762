"""Measure the backend API's event stream: throughput and latency under whatever load
the lobby is under (run ``make load ARGS="churn ..."`` against the same cluster).

    python -m scripts.events_bench --api http://127.0.0.1:8766 --token-file api-token \\
        [--consumers 4] [--duration 20]

Each consumer follows ``GET /v1/events`` for ``--duration`` seconds and checks what it
gets: one ``start`` reset, then consecutive events (any other reset, a gap or a cut-off
is reported as a failure). Latency is this machine's clock at reading minus the
event's ``at`` (the coordinator's clock at publication): meaningful when both run on
one machine. Prints one JSON object: events and bytes per second per consumer, and the
latency's p50, p99 and maximum in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shared import events


@dataclass
class Tally:
    events: int = 0
    bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def consume(host: str, port: int, token: str, duration: float, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /v1/events HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        tally.problems.append(head.decode("latin-1").splitlines()[0])
        return
    last: int | None = None
    deadline = time.monotonic() + duration
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(reader.readuntil(b"\n\n"), left)
            except TimeoutError:
                break
            now = time.time()
            tally.bytes += len(frame)
            lines = frame.decode().strip("\n").split("\n")
            if lines[0].startswith(":"):
                continue
            fields = dict(line.split(": ", 1) for line in lines)
            kind = fields.get("event", "message")
            if kind == "reset":
                reset = json.loads(fields["data"])
                if last is not None or reset["reason"] != "start":
                    tally.problems.append(f"reset {reset}")
                last = reset["seq"]
                continue
            if kind != "message":
                tally.problems.append(f"{kind} {fields.get('data')}")
                return
            event = events.decode(fields["data"].encode())
            if last is not None and event.seq != last + 1:
                tally.problems.append(f"gap: {last} then {event.seq}")
            last = event.seq
            tally.events += 1
            tally.latencies.append(now - event.at)
    finally:
        writer.close()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default="http://127.0.0.1:8766", help="the API's URL")
    parser.add_argument("--token-file", required=True, help="file holding the API token")
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    args = parser.parse_args(argv)
    url = urlsplit(args.api)
    token = Path(args.token_file).read_text().strip()
    tallies = [Tally() for _ in range(args.consumers)]
    await asyncio.gather(
        *(
            consume(url.hostname or "127.0.0.1", url.port or 80, token, args.duration, t)
            for t in tallies
        )
    )
    latencies = sorted(x for t in tallies for x in t.latencies)

    def quantile(q: float) -> float | None:
        return round(1000 * latencies[int(q * (len(latencies) - 1))], 2) if latencies else None

    report = {
        "consumers": args.consumers,
        "duration_s": args.duration,
        "events_per_s_per_consumer": round(
            statistics.mean(t.events for t in tallies) / args.duration, 1
        ),
        "bytes_per_s_per_consumer": round(
            statistics.mean(t.bytes for t in tallies) / args.duration
        ),
        "latency_ms": {"p50": quantile(0.5), "p99": quantile(0.99), "max": quantile(1.0)},
        "problems": [p for t in tallies for p in t.problems],
    }
    print(json.dumps(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
