#!/usr/bin/env python3
"""``make bench``: run the benchmark suite and write BENCHMARKS.md and docs/latency.png.

    python scripts/bench.py [--out BENCHMARKS.md] [--plot docs/latency.png] [--only NAME]
    python scripts/bench.py --only coordinator     # only the "Coordinator capacity" section

Every run is one ``python -m scripts.loadtest --start ... --json ...`` invocation that
starts its own server on a free port and stops it, so runs cannot disturb each other;
comparisons (2 workers / 1 worker, batching on / off, cluster / single-process
baseline, cluster fan-out / bare ``broadcast()``) run back to back in this one
invocation, so a noisy machine cannot fake a difference. Sizes are fixed for a 2-core
machine to finish in about twenty minutes; each size is written into BENCHMARKS.md.
A run whose correctness checks fail is reported as failed, never as a number.

The suite ends with ``scripts/coordinator_costs.py`` (the run named "coordinator costs":
the coordinator's measured cost per event, its memory per session, and the figures the
capacity estimate of docs/operating.md uses), written as the "Coordinator capacity"
section between markers. When ``--only`` selects that run alone, only that section of an existing
BENCHMARKS.md is replaced; a partial run that does not measure it keeps the one there.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import (  # noqa: E402  (after the path that finds them)
    bench_auth,
    bench_bytes,
    bench_events,
    bench_peer,
    bench_resume,
    bench_scale,
    bench_scopes,
    coordinator_costs,
)
from scripts.benchkit import (  # noqa: E402
    BARE,
    BASELINE,
    CLUSTER,
    NO_BATCH,
    ONE_WORKER,
    PINNED,
    Row,
    Run,
    both,
    fmt,
    metric,
    ratio_row,
    with_shared,
)

PLOT_RATES = (50, 100, 200)
"""Changes per second of the latency-against-load runs (500 watchers, 8 s each)."""
PLOT_LINES = (
    ("cluster pinned", "o-"),
    ("no batching pinned", "s--"),
    ("baseline pinned", "^:"),
    ("cluster", "o-."),
)
"""The plot's lines (run-name suffixes) and their styles: every server pinned, and the
cluster sharing the CPUs with the generator for comparison."""
MESSAGES = ("messages", "--pairs", "128", "--rate", "40", "--duration", "10")
"""128 pairs, 40 a second each way (under the per-connection rate limit): 10,240
messages/s offered."""
FANOUT = ("fanout", "--watchers", "1000", "--changes", "400", "--rate", "100")
IDLE_CLIENT = ("--ws-client", "websockets")
"""The idle run's generator library. picows keeps each connection's receive buffer at
the size of the largest frame it read, here a snapshot of the whole lobby, so 20,000
picows clients would hold some 20 GB; websockets' client does not, and the idle run
measures the server's memory, not the generator's CPU per frame."""
CHURN_FANOUT = ("fanout", "--watchers", "2000", "--changes", "2000", "--rate", "200")
"""Server CPU per delivered frame at the churn target's size (2,000 watchers, 200
changes/s), against the bare server pushing frames of the same size."""


class BenchSet(Protocol):
    """A benchmark set of its own module (``scripts/bench_*.py``): its runs, its target
    rows and the sections of BENCHMARKS.md its runs' groups land in."""

    SECTIONS: dict[str, tuple[str, list[str]]]

    def runs(self) -> list[Run]: ...

    def targets(self, res: dict[str, dict[str, Any]]) -> list[Row]: ...


SETS: tuple[BenchSet, ...] = (
    bench_peer,
    bench_scopes,
    bench_resume,
    bench_events,
    bench_auth,
    bench_scale,
    bench_bytes,
)
"""The sets run after the suite's own runs, in this order."""


def suite() -> list[Run]:
    """The fixed suite; ``group`` names the section of BENCHMARKS.md it lands in."""
    churn = ("churn", "--watchers", "2000", "--rate", "200", "--duration", "30")
    runs = [
        *both("mass-join cluster", CLUSTER, ("mass-join", "2000"), "mass-join"),
        *both("mass-join baseline", BASELINE, ("mass-join", "2000"), "mass-join"),
        Run("mass-join 1 worker", ONE_WORKER, ("mass-join", "2000"), "mass-join"),
        Run("mass-join no batching", NO_BATCH, ("mass-join", "2000"), "mass-join"),
        *both("churn cluster", CLUSTER, churn, "churn"),
        *both("fanout cluster", CLUSTER, FANOUT, "fanout"),
        *both("fanout bare", BARE, FANOUT, "fanout"),
        *both("churn fanout cluster", CLUSTER, CHURN_FANOUT, "fanout"),
        *both("churn fanout bare", BARE, CHURN_FANOUT, "fanout"),
        *both("messages cluster", CLUSTER, MESSAGES, "messages"),
        Run("idle cluster", (*CLUSTER, *IDLE_CLIENT), ("idle", "20000", "--hold", "10"), "idle"),
        *both("reconnect-storm cluster", CLUSTER, ("reconnect-storm", "5000"), "storm"),
    ]
    for rate in PLOT_RATES:
        scenario = ("churn", "--watchers", "500", "--rate", str(rate), "--duration", "8")
        runs += [
            Run(f"churn@{rate} cluster pinned", (*CLUSTER, *PINNED), scenario, "plot"),
            Run(f"churn@{rate} no batching pinned", (*NO_BATCH, *PINNED), scenario, "plot"),
            Run(f"churn@{rate} baseline pinned", (*BASELINE, *PINNED), scenario, "plot"),
            Run(f"churn@{rate} cluster", CLUSTER, scenario, "plot"),
        ]
    for extra in SETS:
        runs += extra.runs()
    return runs


COORDINATOR_RUN = "coordinator costs"
COORDINATOR_COMMAND = ("scripts/coordinator_costs.py",)
SECTION_BEGIN = "<!-- coordinator capacity: written by scripts/bench.py; do not edit -->"
SECTION_END = "<!-- end of coordinator capacity -->"


def run_coordinator_costs(workdir: Path) -> dict[str, Any]:
    """``scripts/coordinator_costs.py`` in its own process, as a result like a run's:
    its JSON is the ``metrics``."""
    out = workdir / "coordinator_costs.json"
    command = [sys.executable, *COORDINATOR_COMMAND, "--quiet", "--json", str(out)]
    started = time.monotonic()
    print(f"== {COORDINATOR_RUN}: {' '.join(command[1:])}", flush=True)
    proc = subprocess.run(command, cwd=ROOT, timeout=900, check=False)
    ok = proc.returncode == 0 and out.exists()
    return {
        "name": COORDINATOR_RUN,
        "group": "coordinator",
        "ok": ok,
        "metrics": json.loads(out.read_text()) if ok else {},
        "failures": [] if ok else [f"exit {proc.returncode}"],
        "params": {},
        "notes": [],
        "command": "python " + " ".join(COORDINATOR_COMMAND),
        "wall_s": round(time.monotonic() - started, 1),
    }


def coordinator_section(result: dict[str, Any]) -> list[str]:
    """The "Coordinator capacity" section, between its markers."""
    lines = [
        SECTION_BEGIN,
        "## Coordinator capacity",
        "",
        "What one coordinator costs per event and per session, measured on its own (no",
        'WebSocket clients): the figures behind docs/operating.md, "Capacity of one coordinator".',
        "`make bench` rewrites this section; `python scripts/bench.py --only coordinator`",
        "rewrites only this section.",
        "",
    ]
    if result.get("ok"):
        lines += coordinator_costs.markdown(result["metrics"])
    else:
        lines += [f"The measurement failed: {'; '.join(result['failures'])}.", ""]
    return [*lines, SECTION_END]


def existing_section(text: str) -> list[str] | None:
    """The coordinator section of a report, markers included, if it has one."""
    begin, end = text.find(SECTION_BEGIN), text.find(SECTION_END)
    if begin < 0 or end < begin:
        return None
    return text[begin : end + len(SECTION_END)].split("\n")


def splice_section(text: str, section: list[str]) -> str:
    """``text`` with its coordinator section replaced by ``section`` (inserted before
    the notes, or at the end, where it has none)."""
    block = "\n".join(section)
    begin, end = text.find(SECTION_BEGIN), text.find(SECTION_END)
    if begin >= 0 and end > begin:
        return text[:begin] + block + text[end + len(SECTION_END) :]
    notes = text.find(NOTES_TITLE)
    if notes >= 0:
        return text[:notes] + block + "\n\n" + text[notes:]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def same_frame(run: Run, done: list[dict[str, Any]]) -> Run:
    """A bare fan-out pushes frames of the size its cluster counterpart (the run of the
    same name with "cluster" for "bare") delivered on average, so both sides write the
    same bytes per frame."""
    if " bare" not in run.name:
        return run
    twin = run.name.replace(" bare", " cluster")
    cluster = next((r for r in done if r["name"] == twin and r.get("ok")), None)
    if cluster is None:
        return run
    size = str(cluster["metrics"]["frame_bytes_mean"])
    return Run(run.name, run.target, (*run.scenario, "--frame-bytes", size), run.group, run.timeout)


def run_one(run: Run, workdir: Path) -> dict[str, Any]:
    out = workdir / (run.name.replace(" ", "_").replace("@", "_") + ".json")
    # A run's target is the generator's options, or a script of its own (a pure set).
    script = run.target[0].endswith(".py")
    program = [*run.target] if script else ["-m", "scripts.loadtest", *run.target]
    command = [sys.executable, *program, "--quiet", "--json", str(out), *run.scenario]
    started = time.monotonic()
    print(f"== {run.name}: {' '.join(command[1:])}", flush=True)
    proc = subprocess.run(command, cwd=ROOT, timeout=run.timeout, check=False)
    if out.exists():
        result: dict[str, Any] = json.loads(out.read_text())
    else:
        result = {
            "ok": False,
            "metrics": {},
            "failures": [f"exit {proc.returncode}, no JSON"],
            "params": {},
            "notes": [],
        }
    result["name"], result["group"] = run.name, run.group
    result["command"] = " ".join(["python", *program, *run.scenario])
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    """The machine, versions, commit and date (what the coordinator cost report says,
    plus memory, OS and the libraries the runs use)."""
    base = coordinator_costs.describe_machine()
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{mem_kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "?"
    versions = {}
    for module in ("websockets", "uvloop", "zmq", "nacl"):
        try:
            versions[module] = str(__import__(module).__version__)
        except (ImportError, AttributeError):
            versions[module] = "-"
    return {
        "cpu": base["cpu"],
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": base["python"],
        "libraries": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "commit": base["commit"],
        "date": base["date"],
    }


def targets(res: dict[str, dict[str, Any]]) -> list[Row]:
    """(target, measured, met) for every target of the issue. Targets are judged on the
    pinned runs (the generator on a CPU of its own), except the storm and idle, which
    are judged as a deployment runs them: the server on both CPUs."""
    rows: list[Row] = []
    for pinned in (" pinned", ""):
        rows += [
            ratio_row(res, "fan-out CPU per delivered frame <= 0.8x bare broadcast()",
                       f"fanout cluster{pinned}", f"fanout bare{pinned}",
                       "cpu_us_per_frame", " µs", None, 0.8),
            ratio_row(res, "churn (2000 watchers, 200/s): CPU per frame <= 1.0x bare",
                       f"churn fanout cluster{pinned}", f"churn fanout bare{pinned}",
                       "cpu_us_per_frame", " µs", None, 1.0),
            ratio_row(res, "mass-join 2000 converges >= 8x faster than the baseline",
                       f"mass-join baseline{pinned}", f"mass-join cluster{pinned}",
                       "convergence_s", " s", 8),
            ratio_row(res, "mass-join 2000 delivers >= 20x fewer lobby_update frames",
                       f"mass-join baseline{pinned}", f"mass-join cluster{pinned}",
                       "update_frames", "", 20),
        ]  # fmt: skip
    judged, shared = rows[:4], rows[4:]
    rows = [with_shared(row, other[1]) for row, other in zip(judged, shared, strict=True)]

    def churn(name: str) -> tuple[str, bool | None]:
        p99 = metric(res, name, "update_latency_p99_ms")
        ok = res.get(name, {}).get("ok")
        shown = f"p99 {fmt(p99, ' ms')}, checks {'passed' if ok else 'FAILED'}"
        return shown, None if p99 is None else (p99 <= 200 and bool(ok))

    shown, met = churn("churn cluster pinned")
    rows.append(
        (
            "churn 2000 watchers, 200/s, 30 s, pinned: p99 <= 200 ms, no gaps or wrong views",
            f"{shown}; shared CPUs: {churn('churn cluster')[0]}",
            met,
        )
    )

    def storm(name: str) -> str:
        whole = metric(res, name, "whole_again_s")
        retried = metric(res, name, "retried_1013")
        return f"{fmt(whole, ' s')} ({fmt(retried)} retried after 1013)"

    whole = metric(res, "reconnect-storm cluster", "whole_again_s")
    storm_n = res.get("reconnect-storm cluster", {}).get("params", {}).get("clients", "?")
    rows.append(
        (
            f"reconnect-storm of {storm_n}, default settings: whole again <= 10 s",
            f"{storm('reconnect-storm cluster')}; "
            f"pinned: {storm('reconnect-storm cluster pinned')}",
            None if whole is None else whole <= 10,
        )
    )
    kib = metric(res, "idle cluster", "kib_per_connection")
    idle_n = res.get("idle cluster", {}).get("params", {}).get("clients", "?")
    rows.append(
        (
            f"idle: {idle_n} connections at <= 16 KiB of server memory each",
            fmt(kib, " KiB"),
            None if kib is None else kib <= 16,
        )
    )

    def messages(name: str) -> tuple[str, bool | None]:
        rate = metric(res, name, "messages_per_s")
        p99 = metric(res, name, "round_trip_p99_ms")
        shown = f"{fmt(rate, '/s')}, round-trip p99 {fmt(p99, ' ms')}"
        return shown, None if rate is None or p99 is None else rate >= 10_000 and p99 < 50

    shown, met = messages("messages cluster pinned")
    rows.append(
        (
            "messages, pinned: >= 10,000 cross-worker messages/s, round-trip p99 < 50 ms",
            f"{shown}; shared CPUs: {messages('messages cluster')[0]}",
            met,
        )
    )
    for extra in SETS:
        rows += extra.targets(res)
    return rows


SECTIONS = {
    "mass-join": (
        "mass-join 2000",
        [
            "auth_per_s",
            "convergence_s",
            "join_to_seen_p50_ms",
            "join_to_seen_p99_ms",
            "update_frames",
            "update_bytes",
            "retried_1013",
            "server_cpu_s",
        ],
    ),
    "churn": (
        "churn",
        [
            "changes_per_s",
            "update_latency_p50_ms",
            "update_latency_p99_ms",
            "update_latency_max_ms",
            "frames_per_s",
            "changes_per_update",
            "server_cpu_s_per_1000_frames",
            "generator_cpu_s",
            "snapshots_resent",
        ],
    ),
    "fanout": (
        "fan-out against bare broadcast()",
        ["frames_delivered", "frame_bytes_mean", "server_cpu_s", "cpu_us_per_frame"],
    ),
    "messages": (
        "messages",
        [
            "cross_worker_pairs",
            "messages_per_s",
            "round_trip_p50_ms",
            "round_trip_p99_ms",
            "delivery_p50_ms",
            "delivery_p99_ms",
            "server_cpu_us_per_message",
            "generator_cpu_s",
        ],
    ),
    "idle": (
        "idle",
        ["rss_before_mib", "rss_connected_mib", "kib_per_connection", "rss_growth_while_idle_pct"],
    ),
    "storm": (
        "reconnect-storm",
        [
            "whole_again_s",
            "reconnected",
            "retried_1013",
            "retried_other",
            "failed",
            "server_cpu_s",
            "generator_cpu_s",
        ],
    ),
    "plot": (
        "latency against load (churn, 500 watchers, 8 s per point)",
        [
            "changes_per_s",
            "update_latency_p50_ms",
            "update_latency_p99_ms",
            "frames_per_s",
            "changes_per_update",
            "server_cpu_s_per_1000_frames",
        ],
    ),
}


def all_sections() -> dict[str, tuple[str, list[str]]]:
    """The suite's sections, then each set's, in the order BENCHMARKS.md shows them."""
    sections = dict(SECTIONS)
    for extra in SETS:
        sections.update(extra.SECTIONS)
    return sections


def cell(run: dict[str, Any], key: str) -> str:
    """A run's figure, "failed" when the run failed, "-" when the run does not
    measure it (a run without the feature beside one with it)."""
    if run.get("skipped"):  # a limit of the machine stood in the way: no numbers
        return "skipped"
    if not run.get("ok"):
        return "failed"
    return fmt(run["metrics"][key]) if key in run["metrics"] else "-"


def section(group: str, rows: list[dict[str, Any]]) -> list[str]:
    title, keys = all_sections()[group]
    lines = [
        f"### {title}",
        "",
        "| run | " + " | ".join(keys) + " | checks |",
        "|---" * (len(keys) + 2) + "|",
    ]
    for r in rows:
        cells = [cell(r, k) for k in keys]
        checks = "passed" if r.get("ok") else "FAILED: " + "; ".join(r["failures"])[:200]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {checks} |")
    lines += ["", "Commands:", ""]
    lines += [f"    {r['command']}" for r in rows]
    return [*lines, ""]


NOTES_TITLE = "## What bounds the missed targets"


def commits_of(results: list[dict[str, Any]], first: str) -> str:
    """The commit the results were measured at: one, or (a report rewritten from results
    of several runs of ``make bench --only``) each with the runs measured at it, the
    most common first."""
    runs: dict[str, list[str]] = {}
    for r in results:
        runs.setdefault(r.get("machine", {}).get("commit", first), []).append(r["name"])
    if len(runs) <= 1:
        return first
    ordered = sorted(runs.items(), key=lambda item: -len(item[1]))
    head, *rest = ordered
    return f"{head[0]} (the other runs); " + "; ".join(
        f"{commit} ({', '.join(names)})" for commit, names in rest
    )


def write_report(
    results: list[dict[str, Any]],
    out: Path,
    plot: Path | None,
    command: str,
    notes: str,
    kept_section: list[str] | None = None,
) -> None:
    """The whole report. The coordinator section is this run's, else ``kept_section``
    (the one the previous report had), else none."""
    by_name = {r["name"]: r for r in results}
    # What was measured: a report rewritten from saved results keeps their commit and date.
    m = next((r["machine"] for r in results if "machine" in r), None) or machine()
    m = {**m, "commit": commits_of(results, m["commit"])}
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` ({sum(r['wall_s'] for r in results):.0f} s of runs).",
        "Every number below comes from that run, on this machine; run it on yours."
        if ";" not in m["commit"]
        else "Every number below comes from runs of it on this machine, at the commits "
        "named below (sets measured again after a change, the others kept); run it on yours.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in m.items()],
        "",
        'The load generator runs on the same machine as the server. Runs named "pinned"',
        "put the server's processes on CPU 0 and the generator's on CPU 1",
        "(`--server-cpus 0 --client-cpus 1`), so the generator's own work never queues in",
        "front of the server's; the others share both CPUs, as a server and its clients",
        "on one small machine do, and their latencies include the generator's queueing.",
        "Targets are judged on the pinned runs, with the shared figure beside them, except",
        "the storm and idle memory, judged with the server on both CPUs. Comparisons run",
        "back to back in one invocation.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for target, measured, met in targets(by_name):
        lines.append(
            f"| {target} | {measured} | "
            f"{'yes' if met else 'no' if met is not None else 'failed run'} |"
        )
    lines += ["", "## Results", ""]
    if plot is not None:
        lines += [f"![latency against load]({plot.relative_to(out.parent).as_posix()})", ""]
    for group in all_sections():
        rows = [r for r in results if r["group"] == group]
        if rows:
            lines += section(group, rows)
    coordinator = next((r for r in results if r["group"] == "coordinator"), None)
    capacity = coordinator_section(coordinator) if coordinator else kept_section
    if capacity:
        lines += [*capacity, ""]
    if notes:
        lines += [NOTES_TITLE, "", notes.strip(), ""]
    out.write_text("\n".join(lines) + "\n")


def draw(results: list[dict[str, Any]], path: Path) -> bool:
    """p50 and p99 update latency against offered changes/s, one line per server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot (pip install -e '.[bench]')", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, style in PLOT_LINES:
        points = [
            (r["params"]["rate"], r["metrics"])
            for r in results
            if r["group"] == "plot" and r["name"].split(" ", 1)[1] == label and r.get("ok")
        ]
        points.sort(key=lambda p: p[0])
        if not points:
            continue
        xs = [p[0] for p in points]
        ax.plot(xs, [p[1]["update_latency_p99_ms"] for p in points], style, label=f"{label} p99")
        ax.plot(
            xs,
            [p[1]["update_latency_p50_ms"] for p in points],
            style,
            alpha=0.45,
            label=f"{label} p50",
        )
    ax.set_xlabel("offered lobby changes per second (500 watchers)")
    ax.set_ylabel("update latency, ms (log)")
    ax.set_yscale("log")
    ax.set_title(
        "Lobby update latency against load, 2 CPUs (pinned: server on one, generator on the other)",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="(%(default)s)")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "latency.png"), help="(%(default)s)")
    parser.add_argument(
        "--notes",
        default=str(ROOT / "docs" / "bench-notes.md"),
        help="analysis appended to BENCHMARKS.md when present (%(default)s)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only the runs whose name contains this, or is exactly NAME given as =NAME "
        "(repeatable)",
    )
    parser.add_argument("--results", help="also write every run's JSON into this file")
    parser.add_argument(
        "--from-results",
        metavar="PATH",
        help="run nothing: rewrite the report from a --results file",
    )
    args = parser.parse_args(argv)

    def chosen(name: str) -> bool:
        return not args.only or any(
            name == o[1:] if o.startswith("=") else o in name for o in args.only
        )

    if args.from_results:
        results = json.loads(Path(args.from_results).read_text())
    else:
        runs = [r for r in suite() if chosen(r.name)]
        results = []
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            for run in runs:
                results.append(run_one(same_frame(run, results), Path(tmp)))
            if chosen(COORDINATOR_RUN):
                results.append(run_coordinator_costs(Path(tmp)))
        measured_on = machine()  # the commit and date measured, kept with the results
        for result in results:
            result["machine"] = measured_on
    if args.results:
        Path(args.results).write_text(json.dumps(results, indent=1) + "\n")
    out, plot = Path(args.out), Path(args.plot)
    previous = out.read_text() if out.exists() else ""
    failed = [r["name"] for r in results if not r.get("ok")]
    if results and all(r["group"] == "coordinator" for r in results):
        # Only the coordinator section was measured: the rest of the report stays.
        text = previous or "# Benchmarks\n"
        out.write_text(splice_section(text, coordinator_section(results[0])))
        print(f"wrote the coordinator section of {out}")
        if failed:
            print(f"runs with failed checks: {failed}", file=sys.stderr)
        return 1 if failed else 0
    drawn = draw(results, plot)
    notes_path = Path(args.notes)
    notes = notes_path.read_text() if notes_path.exists() else ""
    # Options that only choose where results go do not change what was measured.
    command = "make bench" + "".join(f" --only {o!r}" for o in args.only)
    kept = existing_section(previous)
    write_report(results, out, plot if drawn else None, command, notes, kept)
    print(f"wrote {out}" + (f" and {plot}" if drawn else ""))
    if failed:
        print(f"runs with failed checks: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
