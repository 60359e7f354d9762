"""The Node.js peer against the cluster: the same version 1 loads, back to back, pinned.

The peer (``../shared/peers/node-ws-lobby``: one Node.js process, the ``ws`` library,
a fixed 20 ms window) is what a capable team would write instead of this project, so
every figure here should be ahead of it. Three loads, each on the cluster (2 workers)
then on the peer, the server on CPU 0 and the generator on CPU 1:

* a mass join of 2,000 clients: converged time, join-to-seen p50/p99, update frames and
  bytes;
* churn at 200 changes/s under 2,000 watchers for 20 s: update p99;
* a reconnect storm of 2,000: time until the lobby is whole again.

Server CPU per delivered change is the server's CPU seconds over the changes delivered
to clients, a change (a key joined or left in an update) counted once per client that
received it, snapshots not counted. Targets: at most 0.8x the peer's, and every latency
row ahead of the peer's. About three minutes of runs.
"""

from __future__ import annotations

from typing import Any

from scripts.benchkit import CLUSTER, NODE, PINNED, Row, Run, fmt, metric, ratio_row

JOIN = ("mass-join", "2000")
CHURN = ("churn", "--watchers", "2000", "--rate", "200", "--duration", "20")
STORM = ("reconnect-storm", "2000")
LOADS = (("mass-join", JOIN, "peer-join"), ("churn", CHURN, "peer-churn"),
         ("reconnect-storm", STORM, "peer-storm"))  # fmt: skip
"""(run name, scenario, group) of each load, run on the cluster then on the peer."""

CPU_PER_CHANGE = ["changes_delivered", "server_cpu_s", "server_cpu_us_per_change"]
SECTIONS: dict[str, tuple[str, list[str]]] = {
    "peer-join": (
        "against the Node.js peer: mass-join 2000, pinned",
        [
            "convergence_s",
            "join_to_seen_p50_ms",
            "join_to_seen_p99_ms",
            "update_frames",
            "update_bytes",
            *CPU_PER_CHANGE,
        ],
    ),
    "peer-churn": (
        "against the Node.js peer: churn 200/s under 2000 watchers, 20 s, pinned",
        [
            "changes_per_s",
            "update_latency_p50_ms",
            "update_latency_p99_ms",
            "frames_delivered",
            "update_bytes",
            *CPU_PER_CHANGE,
        ],
    ),
    "peer-storm": (
        "against the Node.js peer: reconnect-storm 2000, pinned",
        ["whole_again_s", "update_frames", "update_bytes", *CPU_PER_CHANGE],
    ),
}

LATENCIES = (
    ("mass-join", "convergence_s", "mass-join 2000: converged", " s"),
    ("mass-join", "join_to_seen_p50_ms", "mass-join 2000: join-to-seen p50", " ms"),
    ("mass-join", "join_to_seen_p99_ms", "mass-join 2000: join-to-seen p99", " ms"),
    ("churn", "update_latency_p99_ms", "churn 200/s, 2000 watchers: update p99", " ms"),
    ("reconnect-storm", "whole_again_s", "reconnect-storm 2000: whole again", " s"),
)
"""(load, metric, label, unit) of each latency row that must be ahead of the peer's."""


def cluster_run(load: str) -> str:
    return f"{load} cluster vs peer pinned"


def node_run(load: str) -> str:
    return f"{load} node peer pinned"


def runs() -> list[Run]:
    out: list[Run] = []
    for load, scenario, group in LOADS:
        out.append(Run(cluster_run(load), (*CLUSTER, *PINNED), scenario, group))
        out.append(Run(node_run(load), (*NODE, *PINNED), scenario, group))
    return out


def ahead(res: dict[str, dict[str, Any]], load: str, key: str, label: str, unit: str) -> Row:
    """A latency row: the cluster's figure strictly below the peer's."""
    ours, theirs = metric(res, cluster_run(load), key), metric(res, node_run(load), key)
    shown = f"{fmt(ours, unit)} vs the peer's {fmt(theirs, unit)}"
    met = None if ours is None or theirs is None else ours < theirs
    return f"{label} ahead of the Node.js peer, pinned", shown, met


def targets(res: dict[str, dict[str, Any]]) -> list[Row]:
    rows = [
        ratio_row(
            res,
            f"{load}: server CPU per delivered change <= 0.8x the Node.js peer's, pinned",
            cluster_run(load),
            node_run(load),
            "server_cpu_us_per_change",
            " µs",
            None,
            0.8,
        )
        for load, _scenario, _group in LOADS
    ]
    return rows + [ahead(res, *latency) for latency in LATENCIES]
