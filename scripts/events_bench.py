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
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import scripts  # noqa: F401  (first: it names the Python to use if a dependency lacks)

from scripts.loadtest.feeds import Tally, consume, spread_ms


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
            consume(url.hostname or "127.0.0.1", url.port or 80, token, t, args.duration)
            for t in tallies
        )
    )
    latencies = [x for t in tallies for x in t.latencies]
    report = {
        "consumers": args.consumers,
        "duration_s": args.duration,
        "events_per_s_per_consumer": round(
            statistics.mean(t.events for t in tallies) / args.duration, 1
        ),
        "bytes_per_s_per_consumer": round(
            statistics.mean(t.bytes for t in tallies) / args.duration
        ),
        "latency_ms": spread_ms(latencies),
        "problems": [p for t in tallies for p in t.problems],
    }
    print(json.dumps(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
