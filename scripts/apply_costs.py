#!/usr/bin/env python3
"""What one worker spends applying a published update, in the shape of the ``scale``
scenario, with no sockets and no generator (a measurement, never an assertion).

    python scripts/apply_costs.py [--users 10000,100000] [--workers 7] [--changes 20000]
                                  [--batch 1] [--rounds 3] [--profile]

Every worker applies every update the coordinator publishes, whichever of its clients
follow the key: at W workers a change costs W times this. The replay builds one
worker's share of the lobby (``users / workers`` clients, each following 20 contacts
drawn from a skewed graph, a tenth only the count) and feeds it the updates of the
scenario's mix (about 2/3 status changes, 1/6 leaves, 1/6 rejoins) as backbone frames,
through what the worker does for each: decode the frame, the replica, protocol 1's
frame, the scopes (resume ring, count, the routing to watchers and their frames) and
each frame's WebSocket bytes. Writing to the transports is not counted (a write per
routed frame, the same at any lobby size). It prints the CPU time per update, best of
``--rounds``, at each lobby size (the cost of a change should not grow with the
lobby), and the watcher frames per change ("frames"). ``--batch``: the changes one
published update holds (the coordinator's batching window nets a few at 1,000/s).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import scripts  # noqa: F401  (names the dependencies a bare Python lacks)
from shared import backbone as bb
from shared.v2 import Follow, Scope
from workers.frames import SharedFrame
from workers.replica import Forward, Replica
from workers.scopes import Scopes

CONTACTS, COUNT_SHARE, ZIPF = 20, 0.1, 0.8
EPOCH = "e"


def lobby(users: int, workers: int, rng: random.Random) -> tuple[list[str], Replica, Scopes]:
    """A live replica of ``users`` online and one worker's share of their clients."""
    keys = [f"{i:064x}" for i in range(users)]
    weights = [1.0 / (rank + 1) ** ZIPF for rank in range(users)]
    replica = Replica()
    replica.start()
    replica.on_welcome(bb.Welcome(EPOCH))
    replica.on_snapshot(bb.Snapshot(EPOCH, 1, 1, sorted(keys)))
    scopes = Scopes()
    scopes.resynced(replica)
    for conn in range(1, users // workers + 1):
        if rng.random() < COUNT_SHARE:
            scopes.choose(conn, Follow(Scope.COUNT), checked=False)
            scopes.fresh(conn, Scope.COUNT, replica, 0.0)
        else:
            contacts = tuple(set(rng.choices(keys, weights, k=CONTACTS)))
            scopes.choose(conn, Follow(Scope.WATCH, contacts), checked=False)
            scopes.fresh(conn, Scope.WATCH, replica, 0.0)
    return keys, replica, scopes


def published(
    keys: list[str], count: int, batch: int, rng: random.Random
) -> tuple[list[bytes], int]:
    """About ``count`` changes of the scenario's mix after state 1, ``batch`` draws a
    published update (as the coordinator's batching window nets them; a draw of a key
    already touched is dropped), as backbone frames; and the changes made."""
    online, offline = set(keys), list[str]()
    frames = []
    seq = mseq = 1
    made = 0
    for _ in range(count // batch):
        joined, left, updated, touched = [], [], [], set()
        for _ in range(batch):
            draw = rng.random()
            if offline and draw < 1 / 6:
                key = offline.pop(rng.randrange(len(offline)))
                if key in touched:
                    offline.append(key)
                    continue
                online.add(key)
                joined.append(key)
            elif draw < 2 / 6:
                key = rng.choice(keys)
                if key not in online or key in touched:
                    continue
                online.discard(key)
                offline.append(key)
                left.append(key)
            else:
                key = rng.choice(keys)
                if key not in online or key in touched:
                    continue
                updated.append((key, f"s{seq % 7}", "{}"))
            touched.add(key)
            made += 1
        seq += 1
        mseq += bool(joined or left)
        frames.append(bb.encode(bb.Update(EPOCH, seq, mseq, joined, left, 0.0, updated)))
    return frames, made


def apply(replica: Replica, scopes: Scopes, frames: list[bytes]) -> int:
    """What a worker does with each frame; returns the frames routed to watchers."""
    routed_frames = 0
    now = 0.0
    for frame in frames:
        messages, _ = bb.decode_batch(frame)
        for msg in messages:
            assert isinstance(msg, bb.Update)
            forwards = [o for o in replica.on_update(msg) if isinstance(o, Forward)]
            for forward in forwards:
                if forward.frame:
                    SharedFrame(forward.frame)
            routed = scopes.published(forwards, len(replica.users), now)
            for payloads in routed.values():
                for payload in payloads:
                    SharedFrame(payload)
                    routed_frames += 1
        now += 0.001
    return routed_frames


def measure(
    users: int, workers: int, changes: int, batch: int, profile: bool
) -> tuple[float, float]:
    """Microseconds of CPU per change, and frames routed per change."""
    rng = random.Random(1)
    keys, replica, scopes = lobby(users, workers, rng)
    frames, changes = published(keys, changes, batch, rng)
    began = time.process_time()
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        routed = apply(replica, scopes, frames)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    else:
        routed = apply(replica, scopes, frames)
    spent = time.process_time() - began
    assert replica.seq == len(frames) + 1
    return spent / changes * 1e6, routed / changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", default="10000,100000", help="lobby sizes (%(default)s)")
    parser.add_argument("--workers", type=int, default=7, help="workers (%(default)s)")
    parser.add_argument("--changes", type=int, default=20_000, help="changes (%(default)s)")
    parser.add_argument(
        "--batch", type=int, default=1, help="changes a published update (%(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="best of (%(default)s)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile")
    args = parser.parse_args()
    try:
        sizes = [int(size) for size in args.users.split(",")]
    except ValueError:
        parser.error(f"--users: numbers separated by commas, not {args.users!r}")
    if min(args.workers, args.changes, args.batch, args.rounds) < 1:
        parser.error("--workers, --changes, --batch, --rounds: at least 1")
    if min(sizes) < args.workers:
        parser.error("--users: at least --workers")
    print("| users | workers | changes an update | µs per change (one worker) | frames |")
    print("|---:|---:|---:|---:|---:|")
    for users in sizes:
        runs = [
            measure(users, args.workers, args.changes, args.batch, args.profile)
            for _ in range(args.rounds)
        ]
        best = min(runs)
        print(f"| {users:,} | {args.workers} | {args.batch} | {best[0]:.1f} | {best[1]:.2f} |")


if __name__ == "__main__":
    main()
