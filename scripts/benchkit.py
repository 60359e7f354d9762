"""The parts every benchmark set shares: a run, the targets it starts, and the
helpers that turn results into target rows. ``scripts/bench.py`` runs the sets and
writes BENCHMARKS.md; each set (``scripts/bench_*.py``) names its runs, its targets and
its sections with these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Row = tuple[str, str, bool | None]
"""A target row: (target, measured, met); met is None when a run failed."""

CLUSTER = ("--start", "cluster", "--workers", "2")
ONE_WORKER = ("--start", "cluster", "--workers", "1")
NO_BATCH = ("--start", "cluster", "--workers", "2", "--batch-window", "0")
BASELINE = ("--start", "baseline")
BARE = ("--start", "bare")
NODE = ("--start", "node")
"""The Node.js peer (``../shared/peers/node-ws-lobby``, its window fixed at 20 ms)."""
PINNED = ("--server-cpus", "0", "--client-cpus", "1")
"""The server on CPU 0, the generator on CPU 1: what the server costs and how fast it
answers without the generator's work queued on the same cores. A run's name ends in
"pinned" when it is run so; the others share both CPUs."""


@dataclass(frozen=True)
class Run:
    name: str
    target: tuple[str, ...]
    scenario: tuple[str, ...]
    group: str
    timeout: float = 900.0
    """Seconds the run may take before ``make bench`` gives it up."""


def both(name: str, target: tuple[str, ...], scenario: tuple[str, ...], group: str) -> list[Run]:
    """The run sharing the CPUs with the generator, and the same run pinned apart."""
    return [
        Run(name, target, scenario, group),
        Run(f"{name} pinned", (*target, *PINNED), scenario, group),
    ]


def metric(results: dict[str, dict[str, Any]], name: str, key: str) -> Any:
    r = results.get(name)
    if r is None or not r.get("ok"):
        return None
    return r["metrics"].get(key)


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "failed"
    if isinstance(value, float):
        return f"{value:,.3g}{unit}" if value < 100 else f"{value:,.0f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not b:
        return None
    return float(a) / float(b)


def ratio_row(
    res: dict[str, dict[str, Any]],
    label: str,
    top: str,
    bottom: str,
    key: str,
    unit: str,
    at_least: float | None,
    at_most: float | None = None,
) -> Row:
    """A target row for ``key`` of run ``top`` over run ``bottom``: the ratio, both values
    (the cluster's first), and whether the ratio is ``at_least``/``at_most`` its bound."""
    a, b = metric(res, top, key), metric(res, bottom, key)
    value = ratio(a, b)
    cluster, other = (b, a) if at_least is not None else (a, b)
    shown = fmt(value, "x") + f" ({fmt(cluster, unit)} vs {fmt(other, unit)})"
    if value is None:
        return label, shown, None
    ok = value >= at_least if at_least is not None else value <= (at_most or 0)
    return label, shown, ok


def with_shared(row: Row, shared: str) -> Row:
    """``row`` (measured pinned, where the target is judged) with the same measure of
    the runs sharing the CPUs beside it."""
    return row[0], f"{row[1]}; shared CPUs: {shared}", row[2]
