#!/usr/bin/env python3
"""Bytes per user entry on the wire, protocol versions 1 and 2, from the worker's own
encoders (a benchmark set of ``make bench``; pure: no server, no sockets, well under a
second a run).

    python scripts/bench_bytes.py --protocol 2 --record custom [--json OUT]

Each figure is the bytes of the WebSocket frame the worker would write (header
included), built by the code that builds it in the worker: protocol 1's
``lobby_snapshot`` from the replica's encoded items and its ``lobby_update``
(shared.protocol); protocol 2's whole-lobby ``snapshot`` and ``update``
(workers.lobby_v2), and a watchlist's ``snapshot`` and routed ``update``
(workers.scopes, through the interest index), each framed by workers.frames.
A snapshot's bytes per entry are (bytes of N entries - bytes of none) / N for N =
:data:`ENTRIES`; a one-key delta is the whole frame of one join, one record change or
one leave; a batched delta is (bytes of 100 keys - bytes of none) / 100.

Records: ``online`` (the default status, no data: what most users hold) and
``custom`` (a short status of its own and a small data object). Protocol 1 has no
records (its entry is a key) and no watchlists: those cells are "-".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.benchkit import Row, Run, fmt, metric  # noqa: E402
from shared import backbone as bb  # noqa: E402
from shared import protocol  # noqa: E402
from shared.v2 import Follow, Scope  # noqa: E402
from workers.frames import SharedFrame  # noqa: E402
from workers.lobby_v2 import Entries, update_frame  # noqa: E402
from workers.replica import Forward, SyncState  # noqa: E402
from workers.scopes import Scopes  # noqa: E402

ENTRIES: Final = 10_000
"""Entries of the snapshots measured."""
BATCH: Final = 100
"""Keys of the batched delta."""
RECORDS: Final = {
    "online": ("online", "{}"),
    "custom": ("in a call", '{"room":"b2","mic":false}'),
}
"""(status, data as the backbone holds it: compact JSON) of each record measured."""
EPOCH: Final = "e" * 16
SEQ: Final = 123_456
BOUND: Final = 0.5
"""A version 2 entry is at most this fraction of a version 1 entry."""

KEYS: Final = [
    "lobby_snapshot_b_per_entry",
    "watch_snapshot_b_per_entry",
    "join_delta_b",
    "update_delta_b",
    "left_delta_b",
    "batch_join_b_per_entry",
    "batch_update_b_per_entry",
    "batch_left_b_per_entry",
]

SECTIONS: dict[str, tuple[str, list[str]]] = {
    "bytes": (
        f"bytes per user entry (wire bytes, WebSocket header included; snapshots of "
        f"{ENTRIES:,} entries, batches of {BATCH} keys)",
        KEYS,
    ),
}

SCRIPT: Final = "scripts/bench_bytes.py"


def runs() -> list[Run]:
    return [
        Run(f"bytes v{v} {record}", (SCRIPT,), ("--protocol", str(v), "--record", record), "bytes")
        for v in (1, 2)
        for record in RECORDS
        if v == 2 or record == "online"  # protocol 1 has no records
    ]


def targets(res: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for key, what in (
        ("lobby_snapshot_b_per_entry", "snapshot"),
        ("batch_join_b_per_entry", "batched join"),
    ):
        v1, v2 = metric(res, "bytes v1 online", key), metric(res, "bytes v2 online", key)
        custom = metric(res, "bytes v2 custom", key)
        label = f"{what} entry, status online: version 2 <= half of version 1's"
        if v1 is None or v2 is None:
            rows.append((label, "failed", None))
            continue
        shown = (
            f"{v2 / v1:.2f}x ({fmt(v2, ' B')} vs {fmt(v1, ' B')}); "
            f"with a custom status and data: {fmt(custom, ' B')}"
        )
        rows.append((label, shown, v2 <= BOUND * v1))
    return rows


# --------------------------------------------------------------------------- measure


def key_of(i: int) -> str:
    return f"{i:064x}"


def wire(payload: str | bytes) -> int:
    """The bytes the worker writes for ``payload``: its WebSocket frame."""
    return len(SharedFrame(payload))


class _View:
    """A replica's state as the v2 encoders read it (workers.replica.ReplicaView)."""

    def __init__(self, keys: list[str], record: tuple[str, str]) -> None:
        self.epoch: str | None = EPOCH
        self.seq = SEQ
        self.mseq = SEQ
        self.sync = SyncState.LIVE
        self.users = frozenset(keys)
        self.snapshot_bytes = 0
        self._record = record

    def record_of(self, key: str) -> tuple[str, str]:
        return self._record


def _update(
    keys: list[str], record: tuple[str, str], *, joined: bool, updated: bool, left: bool
) -> bb.Update:
    status, data = record
    rows = [(k, status, data) for k in keys]
    return bb.Update(
        epoch=EPOCH,
        seq=SEQ + 1,
        mseq=SEQ + 1,
        joined=keys if joined else [],
        left=keys if left else [],
        at=0.0,
        updated=rows if updated else [],
        records=rows if joined and record != RECORDS["online"] else [],
    )


def per_entry(size: Callable[[int], int], n: int) -> float:
    """(bytes of ``n`` entries - bytes of none) / ``n``."""
    return round((size(n) - size(0)) / n, 2)


def measure_v1() -> dict[str, Any]:
    def snapshot(n: int) -> int:
        items = [protocol.user_item(key_of(i)) for i in range(n)]
        return wire(protocol.lobby_snapshot_of(SEQ, items))

    def joined(n: int) -> int:
        return wire(protocol.lobby_update(SEQ, [key_of(i) for i in range(n)], []))

    def left(n: int) -> int:
        return wire(protocol.lobby_update(SEQ, [], [key_of(i) for i in range(n)]))

    return {
        "lobby_snapshot_b_per_entry": per_entry(snapshot, ENTRIES),
        "join_delta_b": joined(1),
        "left_delta_b": left(1),
        "batch_join_b_per_entry": per_entry(joined, BATCH),
        "batch_left_b_per_entry": per_entry(left, BATCH),
    }


def _watch_update(n: int, record: tuple[str, str], **kind: bool) -> int:
    """The routed ``update`` one watcher of ``n`` keys gets for an update of them."""
    keys = [key_of(i) for i in range(max(n, 1))]
    scopes = Scopes()
    scopes.choose(1, Follow(Scope.WATCH, tuple(keys)), checked=False)
    scopes.interest.sent(1, SEQ)  # its snapshot was sent: updates follow
    update = _update(keys[:n], record, **kind)
    routed = scopes.published([Forward(SEQ + 1, "", 0.0, update)], n, 0.0)
    frames = routed.get(1, [])
    return sum(wire(frame) for frame in frames)


def measure_v2(record: tuple[str, str]) -> dict[str, Any]:
    def snapshot(n: int) -> int:
        view = _View([key_of(i) for i in range(n)], record)
        return wire(Entries().snapshot(view))

    def watched(n: int) -> int:
        keys = [key_of(i) for i in range(n)]
        return wire(Entries().watched(_View(keys, record), keys))

    def delta(n: int, **kind: bool) -> int:
        return wire(update_frame(_update([key_of(i) for i in range(n)], record, **kind)))

    def join(n: int) -> int:
        return delta(n, joined=True, updated=False, left=False)

    def change(n: int) -> int:
        return delta(n, joined=False, updated=True, left=False)

    def leave(n: int) -> int:
        return delta(n, joined=False, updated=False, left=True)

    return {
        "lobby_snapshot_b_per_entry": per_entry(snapshot, ENTRIES),
        "watch_snapshot_b_per_entry": per_entry(watched, ENTRIES),
        "join_delta_b": join(1),
        "update_delta_b": change(1),
        "left_delta_b": leave(1),
        "batch_join_b_per_entry": per_entry(join, BATCH),
        "batch_update_b_per_entry": per_entry(change, BATCH),
        "batch_left_b_per_entry": per_entry(leave, BATCH),
        "watch_join_delta_b": _watch_update(1, record, joined=True, updated=False, left=False),
        "watch_update_delta_b": _watch_update(1, record, joined=False, updated=True, left=False),
        "watch_left_delta_b": _watch_update(1, record, joined=False, updated=False, left=True),
    }


def measure(version: int, record: str) -> dict[str, Any]:
    return measure_v1() if version == 1 else measure_v2(RECORDS[record])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", type=int, choices=(1, 2), default=2)
    parser.add_argument("--record", choices=sorted(RECORDS), default="online")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    if args.protocol == 1 and args.record != "online":
        parser.error("--record: protocol 1 has no records (only online)")
    metrics = measure(args.protocol, args.record)
    result = {
        "ok": True,
        "metrics": metrics,
        "failures": [],
        "notes": [],
        "params": {"protocol": args.protocol, "record": args.record, "entries": ENTRIES},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.quiet:
        for key, value in metrics.items():
            print(f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
