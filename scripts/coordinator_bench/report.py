"""The report: the figures the README's estimate uses, and the Markdown tables."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import zmq

from scripts.coordinator_bench.common import BODY, IDLE_SECONDS, MAX_MESSAGE_BYTES
from scripts.coordinator_bench.pure import EVENT_KINDS

ROOT = Path(__file__).resolve().parents[2]


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """The capacity figures the paper estimate in docs/operating.md uses, from the measurements."""
    pure = result["pure"]
    largest = str(max(pure["sizes"]))
    snap = pure["snapshot"][-1]
    flush = {f["keys"]: f for f in pure["flush"]}
    big_flush = flush[max(flush)]
    derived: dict[str, Any] = {
        "pure_join_leave_us": (
            pure["events"]["join_batch"][largest]["us"]
            + pure["events"]["leave_batch"][largest]["us"]
        )
        / 2,
        "pure_route_us": pure["events"]["route"][largest]["us"],
        "snapshot_bytes_per_user": snap["bytes_per_user"],
        "update_bytes_per_key": big_flush["update_bytes"] / big_flush["keys"],
        "users_at_max_message_bytes": int(MAX_MESSAGE_BYTES / snap["bytes_per_user"]),
        "max_message_bytes": MAX_MESSAGE_BYTES,
    }
    proc = result.get("process")
    if proc:
        for row in proc["saturation"]:
            name = "join_leave" if row["load"] == "join/leave" else "route"
            derived[f"{name}_saturated_per_s"] = row["events_per_s"]
            derived[f"{name}_saturated_main_pct"] = row["main_thread_pct"]
            derived[f"{name}_main_us"] = row["main_us_per_event"]
            derived[f"{name}_saturated_us"] = row["cpu_us_per_event"]
            derived[f"{name}_one_core_per_s"] = 1e6 / row["main_us_per_event"]
        top = max(r["users"] for r in proc["fixed_rate"])
        for row in proc["fixed_rate"]:
            if row["users"] == top:
                name = "join_leave" if row["load"] == "join/leave" else "route"
                derived[f"{name}_process_us"] = row["cpu_us_per_event"]
        derived["kib_per_session"] = proc["kib_per_session"]
        derived["sessions_per_gib"] = int(2**20 / proc["kib_per_session"])
        last = proc["snapshot"][-1]
        derived["snapshot_users"] = last["users"]
        derived["snapshot_process_ms"] = last["cpu_ms_per_snapshot"]
        derived["snapshot_main_ms"] = last["main_ms_per_snapshot"]
        derived["fanout_us_per_subscriber"] = proc["fanout_us_per_subscriber"]
        derived["send_us_per_kib"] = {t["transport"]: t["us_per_kib"] for t in proc["transfer"]}
    return derived


def _n(value: float) -> str:
    """A figure for a table: 3 significant digits, thousands separated."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown(result: dict[str, Any]) -> list[str]:
    """The tables, in Markdown (for stdout and for BENCHMARKS.md)."""
    pure = result["pure"]
    sizes = [str(s) for s in pure["sizes"]]
    m = result["machine"]
    lines = [
        f"Measured by `{result['command']}` in {result['wall_s']:.0f} s, at commit "
        f"{m['commit']} on {m['date']}: {m['cpu']}, Python {m['python']}, libzmq {m['zmq']}. "
        "Every figure is a measurement on that machine, not a target.",
        "",
        "### Pure core: µs per event, in process",
        "",
        "`CoordinatorCore` with no sockets: decode the frame, `handle`, the event's share of",
        "the flush that publishes it, encode every output (in brackets: the core alone,",
        f"without decode/encode). Median of {pure['rounds']} rounds of "
        f"{pure['round_events']:,} events after a warm-up.",
        "",
        "| event | "
        + " | ".join(f"{int(s):,} users" for s in sizes)
        + f" | {_k(sizes[-1])} / {_k(sizes[0])} |",
        "|---" * (len(sizes) + 2) + "|",
    ]
    for kind, label in EVENT_KINDS.items():
        by_size = pure["events"][kind]
        cells = [f"{_n(by_size[s]['us'])} ({_n(by_size[s]['core_us'])})" for s in sizes]
        ratio = pure["scaling"][kind]
        lines.append(
            f"| {label.format(batch=pure['batch'])} | " + " | ".join(cells) + f" | {ratio:.2f}x |"
        )
    lines += [
        "",
        f"### Pure core: one flush of K keys (at {pure['flush_at_users']:,} users)",
        "",
        "A join flush publishes an `Update` of K joined keys and K `AuthAck`s; a leave flush",
        "an `Update` of K left keys. Encoding included.",
        "",
        "| K keys | join flush µs | per key | leave flush µs | per key | Update encode µs "
        "| Update bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in pure["flush"]:
        lines.append(
            f"| {f['keys']:,} | {_n(f['join_flush_us'])} | {_n(f['join_flush_us_per_key'])} | "
            f"{_n(f['leave_flush_us'])} | {_n(f['leave_flush_us_per_key'])} | "
            f"{_n(f['update_encode_us'])} | {f['update_bytes']:,} |"
        )
    lines += [
        "",
        "### Pure core: snapshot (SnapshotRequest -> Snapshot, encoded)",
        "",
        "Made: the first request at a `seq`; again: another worker asking at the same",
        "`seq`, handed the snapshot already made (the encoding is measured both times; the",
        "process encodes it once per `seq` too).",
        "",
        "| users | made µs | again µs | bytes | bytes per user |",
        "|---|---|---|---|---|",
    ]
    for s in pure["snapshot"]:
        again = _n(s["cached_us"]) if "cached_us" in s else "-"
        lines.append(
            f"| {s['users']:,} | {_n(s['us'])} | {again} | {s['bytes']:,} "
            f"| {s['bytes_per_user']:.1f} |"
        )
    proc = result.get("process")
    if proc:
        lines += _process_tables(proc)
    lines += [
        "",
        "### Derived (the inputs of the paper estimate in docs/operating.md)",
        "",
        "| figure | key | value |",
        "|---|---|---|",
    ]
    for name, value in result["derived"].items():
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {_n(v)}" for k, v in value.items())
        else:
            shown = _n(value)
        label = DERIVED_LABELS.get(name, name).format(
            users=f"{max(pure['sizes']):,}",
            rate=f"{result.get('process', {}).get('rate', 0):,.0f}",
            keys=f"{max(f['keys'] for f in pure['flush']):,}",
        )
        lines.append(f"| {label} | `{name}` | {shown} |")
    return [*lines, ""]


DERIVED_LABELS = {
    "pure_join_leave_us": "pure core µs per join or leave, 100 per update, {users} users",
    "pure_route_us": "pure core µs per direct message, {users} users",
    "snapshot_bytes_per_user": "snapshot bytes per online user",
    "update_bytes_per_key": "update bytes per changed key ({keys}-key update)",
    "users_at_max_message_bytes": "users whose snapshot fills --max-message-bytes",
    "max_message_bytes": "--max-message-bytes (default)",
    "join_leave_saturated_per_s": "joins + leaves per s, unthrottled (here a lower bound)",
    "join_leave_saturated_main_pct": "  main thread % in that run",
    "join_leave_main_us": "  main thread µs per join or leave, unthrottled",
    "join_leave_saturated_us": "  µs per join or leave (every thread), unthrottled",
    "join_leave_one_core_per_s": "joins + leaves per s one core takes (10^6 / main thread µs)",
    "route_saturated_per_s": "direct messages per s, unthrottled (here a lower bound)",
    "route_saturated_main_pct": "  main thread % in that run",
    "route_main_us": "  main thread µs per direct message, unthrottled",
    "route_saturated_us": "  µs per direct message (every thread), unthrottled",
    "route_one_core_per_s": "direct messages per s one core takes (10^6 / main thread µs)",
    "join_leave_process_us": "µs per join or leave (every thread) at {rate}/s, {users} users",
    "route_process_us": "µs per direct message (every thread) at {rate}/s, {users} users",
    "kib_per_session": "coordinator RSS per session, KiB",
    "sessions_per_gib": "sessions per GiB of coordinator RSS",
    "snapshot_users": "snapshot measured at users",
    "snapshot_process_ms": "  CPU ms per snapshot (every thread)",
    "snapshot_main_ms": "  main thread ms per snapshot (no event is applied meanwhile)",
    "fanout_us_per_subscriber": "µs per update per more subscriber (batch window 0)",
    "send_us_per_kib": "µs per KiB sent to a worker (snapshots)",
}


def _k(size: str) -> str:
    n = int(size)
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _process_tables(proc: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "### The coordinator process: CPU per event",
        "",
        "`python -m coordinator` with its default settings (batching 5-50 ms) over ipc://, two",
        "fake workers each with a DEALER and a SUB, driven from the benchmark process. CPU is",
        "the coordinator's own, from `/proc/PID/stat` (utime + stime of every thread; main",
        "thread: its Python loop, from `/proc/PID/task/PID/stat`), read before the first",
        "event and after the last reply; `others %` is what the rest of the machine used",
        "meanwhile (`/proc/stat`), in % of one core. Join/leave: a leave, then a join, on one",
        "worker, the lobby size constant. Direct messages: `Route` from one worker to a user",
        f"on the other, {len(BODY)}-character body. {proc['duration_s']:g} s per run. Idle",
        f"(heartbeats and beats only): {proc['idle_cpu_pct']:.2f} % of a core over "
        f"{IDLE_SECONDS:g} s (/proc counts in 10 ms ticks).",
        "",
        "| users | load | offered /s | achieved /s | CPU % | main thread % | others % "
        "| µs per event | main thread µs per event |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in proc["fixed_rate"]:
        lines.append(
            f"| {r['users']:,} | {r['load']} | {r['offered']:,.0f} | {_n(r['events_per_s'])} | "
            f"{_n(r['cpu_pct'])} | {_n(r['main_thread_pct'])} | {_n(r['others_cpu_pct'])} | "
            f"{_n(r['cpu_us_per_event'])} | {_n(r['main_us_per_event'])} |"
        )
    lines += [
        "",
        "Saturation: as fast as the coordinator answers (at most `window` events awaiting a",
        "reply). The generator runs on the same 2 cores: where the coordinator's main thread",
        "is below 100 %, the machine, not the coordinator, was the bound, and the rate is a",
        "lower bound (`derived` below projects one core from the main thread's µs per event).",
        "",
        "| users | load | window | events/s | main thread % | CPU % | generator CPU % "
        "| others % | µs per event | main thread µs per event |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in proc["saturation"]:
        lines.append(
            f"| {r['users']:,} | {r['load']} | {r['window']:,} | {_n(r['events_per_s'])} | "
            f"{_n(r['main_thread_pct'])} | {_n(r['cpu_pct'])} | {_n(r['generator_cpu_pct'])} | "
            f"{_n(r['others_cpu_pct'])} | {_n(r['cpu_us_per_event'])} | "
            f"{_n(r['main_us_per_event'])} |"
        )
    lines += [
        "",
        "Memory: RSS of a fresh coordinator as sessions join (a process of its own). Snapshots",
        "(SnapshotRequest -> Snapshot, CPU per snapshot) in the runs above: requests at one",
        "unchanged `seq`, so after the first each is the one already made and encoded",
        "(what every worker resyncing after a restart gets); making one is the pure",
        'table\'s "made" column, and no event is applied meanwhile:',
        "",
        "| sessions | RSS MiB | snapshot CPU ms | main thread ms | snapshot bytes |",
        "|---|---|---|---|---|",
    ]
    snaps = {s["users"]: s for s in proc["snapshot"]}
    for r in proc["rss"]:
        s = snaps.get(r["sessions"])
        snap_cells = "- | - | -"
        if s:
            snap_cells = (
                f"{_n(s['cpu_ms_per_snapshot'])} | {_n(s['main_ms_per_snapshot'])} | {s['bytes']:,}"
            )
        lines.append(f"| {r['sessions']:,} | {_n(r['rss_mib'])} | {snap_cells} |")
    lines += [
        "",
        f"RSS per session: {proc['kib_per_session']:.2f} KiB.",
        "",
        "PUB fan-out: a coordinator with `--batch-window 0` (every event is its own update),",
        f"join/leave churn at {proc['fanout_rate']:,.0f} events/s with 1, 2, 4 SUB sockets, over",
        "ipc:// and over tcp:// on loopback with CURVE (every copy encrypted on its own).",
        f"Median of {proc['fanout_rounds']} runs of {proc['fanout_duration_s']:g} s per row,",
        "the subscriber counts interleaved.",
        "",
        "| transport | subscribers | updates/s | update bytes | CPU % | others % | µs per update "
        "| main thread µs per update |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in proc["fanout"]:
        lines.append(
            f"| {r['transport']} | {r['subscribers']} | {_n(r['updates_per_s'])} | "
            f"{_n(r['update_bytes_mean'])} | {_n(r['cpu_pct'])} | {_n(r['others_cpu_pct'])} | "
            f"{_n(r['cpu_us_per_update'])} | {_n(r['main_us_per_update'])} |"
        )
    slopes = proc["fanout_us_per_subscriber"]
    lines += [
        "",
        "Each more subscriber costs per update (least-squares slope of µs per update over the",
        "subscriber count): " + ", ".join(f"{t} {v:.2f} µs" for t, v in slopes.items()) + ".",
        "",
        "Bytes to one worker: snapshots of a big lobby over each transport, the coordinator's",
        "CPU per KiB sent (building and encoding the snapshot included).",
        "",
        "| transport | users | snapshots | bytes each | CPU ms per snapshot | µs per KiB |",
        "|---|---|---|---|---|---|",
    ]
    for t in proc["transfer"]:
        lines.append(
            f"| {t['transport']} | {t['users']:,} | {t['count']} | {t['bytes']:,} | "
            f"{_n(t['cpu_ms_per_snapshot'])} | {_n(t['us_per_kib'])} |"
        )
    return lines


def describe_machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "zmq": zmq.zmq_version(),
        "commit": commit or "?",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
