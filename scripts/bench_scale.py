"""The scale benchmark set of ``make bench``: the ``scale`` scenario
(:mod:`scripts.loadtest.scale`) at 10,000, 30,000 and 100,000 users, each watching 20
contacts of a skewed graph (a tenth following only the count), under 1,000 presence
changes a second for 20 s, then one of the seven workers killed: the cost curve.

Seven workers at every size: on the machine these figures come from a process may hold
at most 20,000 open files (the hard limit, which a container's root cannot raise), so
100,000 users need six workers to hold them all after one is killed; the smaller runs
use the same cluster so that the curve compares one shape.

Each size runs twice: with the server and the generator sharing both CPUs, and pinned
(the server on CPU 0, the generator on CPU 1). The targets are judged on the shared
runs: one core cannot carry the generator's 100,000 clients (its processes fall behind
the server's keepalive pings, 20 s, and the server rightly closes those clients with
1011, which the pinned 100,000 row shows), and a target judged on one size pinned and
another shared would compare two machines. The shared runs' latencies include the
generator's queueing. The scenario
chooses its generator processes and source addresses from N and the machine's limits,
gives the workers a ``--memory-budget`` and ``--max-connections`` that hold their
share of the users after the kill, and refuses before starting anything when a
limit of the machine is short: such a run is reported "skipped: raise ...", never with
numbers. The targets are judged at 100,000 and on the curve from 10,000 to 100,000.

The kill's bytes: everything the killed worker's users received on their new
connections until whole, against the same with each first view replaced by the
snapshot (or count) their connection before the kill began with (``kill_bytes_ratio``),
and the first views alone (``kill_view_bytes_ratio``). With 20 contacts a snapshot is
a few hundred bytes, about what the handshake (challenge and ``auth_ok``) costs, so
the first ratio cannot reach 20x however small a resume is; the row shows both.
"""

from __future__ import annotations

from typing import Any

from scripts.benchkit import PINNED, Row, Run, fmt, metric, ratio

SIZES = (10_000, 30_000, 100_000)
SCALE = ("scale", "--contacts", "20", "--rate", "1000", "--duration", "20")
TIMEOUTS = {10_000: 900.0, 30_000: 1800.0, 100_000: 3600.0}
"""Seconds a run may take: connecting and bringing back a killed worker's users take
about N / 250 s each on this machine's single server CPU."""
WORKERS = 7
"""Workers of every run (see above)."""
FLAT = 0.25
"""How far CPU per change and memory per connection may move from 10,000 to 100,000."""


def name(users: int, *, pinned: bool = False) -> str:
    return f"scale {users}" + (" pinned" if pinned else "")


SMALL, BIG = name(SIZES[0]), name(SIZES[-1])
"""The runs the targets are judged on: both CPUs shared (see above)."""

SECTIONS: dict[str, tuple[str, list[str]]] = {
    "scale": (
        "scale: N users x 20 contacts (a tenth on the count), 1,000 changes/s, a worker killed",
        [
            "connect_all_s",
            "auth_per_s",
            "memory_per_connection_kib",
            "idle_server_cpu_s_per_s",
            "changes_per_s",
            "server_cpu_us_per_change_above_idle",
            "frames_per_change",
            "bytes_per_change",
            "change_to_seen_p50_ms",
            "change_to_seen_p99_ms",
            "kill_lost",
            "kill_back_s",
            "kill_whole_s",
            "kill_retried_1013",
            "kill_bytes_ratio",
            "kill_view_bytes_ratio",
            "generator_cpu_s",
        ],
    ),
}


def runs() -> list[Run]:
    shared = ("--start", "cluster", "--workers", str(WORKERS), "--protocol", "2")
    return [
        Run(
            name(n, pinned=pin), (*shared, *(PINNED if pin else ())), scenario, "scale", TIMEOUTS[n]
        )
        for n in SIZES
        for pin in (False, True)
        for scenario in [(SCALE[0], str(n), *SCALE[1:])]
    ]


def state(res: dict[str, dict[str, Any]], run: str) -> str | None:
    """Why ``run`` has no numbers ("skipped: raise ...", "failed", "not run"), or None."""
    r = res.get(run)
    if r is None:
        return "not run"
    if r.get("skipped"):
        return f"skipped: {r['skipped']}"
    return None if r.get("ok") else "failed"


def _flat(res: dict[str, dict[str, Any]], label: str, key: str, unit: str) -> Row:
    why = state(res, SMALL) or state(res, BIG)
    a, b = metric(res, BIG, key), metric(res, SMALL, key)
    value = ratio(a, b)
    if why is not None or value is None:
        return label, why or "failed", None
    shown = f"{fmt(value, 'x')} ({fmt(a, unit)} at 100,000 vs {fmt(b, unit)} at 10,000)"
    return label, shown, abs(value - 1) <= FLAT


def targets(res: dict[str, dict[str, Any]]) -> list[Row]:
    def m(key: str) -> Any:
        return metric(res, BIG, key)

    why = state(res, BIG)
    rows: list[Row] = []
    kib = m("memory_per_connection_kib")
    rows.append(
        (
            "scale: 100,000 users connected at once, <= 16 KiB of server memory each",
            why or f"{fmt(kib, ' KiB')} each, connected in {fmt(m('connect_all_s'), ' s')}",
            None if why or kib is None else kib <= 16,
        )
    )
    p99 = m("change_to_seen_p99_ms")
    curve = ", ".join(
        f"{run}: {state(res, run) or fmt(metric(res, run, 'change_to_seen_p99_ms'), ' ms')}"
        for n in SIZES
        for run in (name(n), name(n, pinned=True))
    )
    rows.append(
        (
            "scale at 100,000: change-to-seen p99 <= 500 ms at 1,000 changes/s",
            why or f"p99 {fmt(p99, ' ms')} at {fmt(m('changes_per_s'), '/s')} ({curve})",
            None if why or p99 is None else p99 <= 500,
        )
    )
    rows.append(
        _flat(
            res,
            "scale: server CPU per change flat from 10,000 to 100,000 (within 25%)",
            "server_cpu_us_per_change_above_idle",
            " µs",
        )
    )
    rows.append(
        _flat(
            res,
            "scale: server memory per connection flat from 10,000 to 100,000 (within 25%)",
            "memory_per_connection_kib",
            " KiB",
        )
    )
    whole, bytes_ratio = m("kill_whole_s"), m("kill_bytes_ratio")
    rows.append(
        (
            "scale at 100,000, one of seven workers killed: its users whole again (how long), "
            "bytes >= 20x fewer than snapshots",
            why
            or f"{fmt(m('kill_lost'))} users whole in {fmt(whole, ' s')} (back in "
            f"{fmt(m('kill_back_s'), ' s')}), {fmt(bytes_ratio, 'x')} fewer bytes "
            f"({fmt(m('kill_view_bytes_ratio'), 'x')} counting the first view alone)",
            None if why or whole is None or bytes_ratio is None else bytes_ratio >= 20,
        )
    )
    states = {run: state(res, run) for n in SIZES for run in (name(n), name(n, pinned=True))}
    rows.append(
        (
            "scale: every correctness check passes in every run",
            ", ".join(f"{run}: {s or 'passed'}" for run, s in states.items()),
            None
            if any(s and s.startswith("skipped") for s in states.values())
            else all(s is None for s in states.values()),
        )
    )
    return rows
