#!/usr/bin/env python3
"""Measure what one coordinator costs per event, for a paper estimate of its capacity.

    python scripts/coordinator_costs.py [--sizes 1000,10000,50000] [--json FILE]
                                         [--pure-only] [--duration 3] [--rate 10000]

Two parts, both printed as Markdown tables (``bench.py --only coordinator`` puts the
same tables in BENCHMARKS.md):

1. **Pure core.** :class:`~coordinator.core.CoordinatorCore` in this process, no
   sockets: the time of each kind of event (decode the frame, ``handle``, its share of
   the flush that publishes it, encode what goes out; and the core alone, without the
   codec), the median of many rounds after a warm-up, at each lobby size, so the cost
   per event can be compared between a small and a big lobby. Also the flush as a
   function of keys per update and the snapshot as a function of lobby size.
2. **The real process.** ``python -m coordinator`` on private endpoints, driven by
   fake workers (a DEALER each, registered with ``Hello``, and SUB sockets) from this
   process. The coordinator's own CPU time is read from ``/proc/PID/stat`` (utime +
   stime, every thread; and its main thread's from ``/proc/PID/task/PID/stat``) before
   and after each run, so the figures are the server's cost, not the generator's:
   join/leave churn and direct messages at a fixed rate at each lobby size, RSS at each
   size, snapshots, the rate at which it saturates, and the PUB fan-out cost per
   subscriber (1, 2, 4 SUB sockets, over ipc:// and over tcp:// with CURVE).

Nothing here waits by sleeping: every wait polls the sockets until a condition holds or
a deadline passes. Figures are measurements for one machine, never assertions.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.coordinator_bench.plans import measure_process
from scripts.coordinator_bench.pure import measure_pure
from scripts.coordinator_bench.report import derive, describe_machine, markdown

__all__ = ["describe_machine", "main", "markdown", "measuring_options"]
"""What ``scripts/bench.py`` and the tests use (the report's, re-exported here)."""


def measuring_options(argv: Sequence[str] | None) -> list[str]:
    """The command-line options that change what is measured (not where it goes)."""
    given = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip = False
    for arg in given:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif arg != "--quiet" and not arg.startswith("--json="):
            kept.append(arg)
    return kept


def _counts(text: str) -> list[int]:
    counts = sorted({int(part) for part in text.split(",") if part.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("give positive whole numbers, comma-separated")
    return counts


def _sizes(text: str) -> list[int]:
    sizes = _counts(text)
    if sizes[0] < 2:  # the two workers hold one user each at least
        raise argparse.ArgumentTypeError("give lobby sizes of at least 2, comma-separated")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coordinator_costs.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--sizes", type=_sizes, default=[1000, 10000, 50000], help="lobby sizes (%(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=15, help="pure: timed rounds per figure (%(default)s)"
    )
    parser.add_argument(
        "--round-events", type=int, default=1000, help="pure: events per round (%(default)s)"
    )
    parser.add_argument(
        "--batch", type=int, default=100, help="pure: events per update when batched (%(default)s)"
    )
    parser.add_argument(
        "--flush-keys",
        type=_counts,
        default=[1, 10, 100, 1000, 10000],
        help="pure: keys per flush (%(default)s)",
    )
    parser.add_argument("--pure-only", action="store_true", help="skip the coordinator process")
    parser.add_argument(
        "--rate",
        type=float,
        default=10_000,
        help="process: events/s of the fixed-rate runs (%(default)s)",
    )
    parser.add_argument(
        "--fanout-rate",
        type=float,
        default=8_000,
        help="process: events/s of the fan-out runs (%(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=3.0, help="process: seconds per run (%(default)s)"
    )
    parser.add_argument(
        "--fanout-rounds",
        type=int,
        default=3,
        help="process: fan-out runs per subscriber count (%(default)s)",
    )
    parser.add_argument(
        "--fanout-duration",
        type=float,
        default=2.0,
        help="process: seconds per fan-out run (%(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, no tables")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    log("pure core ...")
    gc.collect()
    result: dict[str, Any] = {
        "machine": describe_machine(),
        "command": " ".join(["python scripts/coordinator_costs.py", *measuring_options(argv)]),
        "pure": measure_pure(
            args.sizes,
            rounds=args.rounds,
            round_events=args.round_events,
            batch=args.batch,
            flush_keys=args.flush_keys,
        ),
    }
    if not args.pure_only:
        log("coordinator process ...")
        result["process"] = measure_process(
            args.sizes,
            rate=args.rate,
            duration=args.duration,
            fanout_rate=args.fanout_rate,
            fanout_rounds=args.fanout_rounds,
            fanout_duration=args.fanout_duration,
            log=log,
        )
    result["derived"] = derive(result)
    result["wall_s"] = time.monotonic() - started
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if not args.quiet:
        print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
