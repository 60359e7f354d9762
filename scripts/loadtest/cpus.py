"""Which CPUs the server and the generator run on (Linux CPU affinity).

On a small machine the generator and the server compete for the same cores, and the
generator's share then shows up as server latency. ``--server-cpus`` and
``--client-cpus`` give each side its own CPUs: a server this tool starts inherits its
CPU set from the launcher, which gets it before it runs (so every coordinator and
worker it forks, also one restarted later, has the same set); the generator's parent
process pins itself before it forks its agents, which inherit the set and set it again
themselves. The result records the CPU sets each side actually had (read back from the
processes), so a report can say "pinned" or "shared".

CPU lists are written as Linux writes them (``0``, ``1``, ``0-1``, ``0,2``,
``0-3,6``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CpuSet = frozenset[int]


def available() -> CpuSet:
    """The CPUs this process may run on."""
    return frozenset(os.sched_getaffinity(0))


def parse_cpu_list(text: str) -> CpuSet:
    """``0-2,5`` -> {0, 1, 2, 5}; raises ValueError saying what is wrong."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty item in CPU list {text!r}")
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ValueError(
                f"{part!r} is not a CPU number or range (write e.g. 0, 1-3 or 0,2)"
            ) from None
        if first < 0 or last < first:
            raise ValueError(f"{part!r} is not a valid CPU range")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> ``0-2,5`` (empty: ``-``)."""
    ordered = sorted(set(cpus))
    if not ordered:
        return "-"
    parts: list[str] = []
    start = prev = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


def choose(
    server: str | None, client: str | None, have: CpuSet | None = None
) -> tuple[CpuSet | None, CpuSet | None]:
    """The CPU sets asked for with ``--server-cpus`` and ``--client-cpus`` (None: not
    asked). Raises ValueError naming the option when a list is malformed, names a CPU
    this process may not use, or the two overlap."""
    have = available() if have is None else have
    chosen: list[CpuSet | None] = []
    for option, text in (("--server-cpus", server), ("--client-cpus", client)):
        if text is None:
            chosen.append(None)
            continue
        try:
            cpus = parse_cpu_list(text)
        except ValueError as exc:
            raise ValueError(f"{option}: {exc}") from None
        missing = cpus - have
        if missing:
            raise ValueError(
                f"{option}: CPU {format_cpu_list(missing)} not available "
                f"(this process may use {format_cpu_list(have)})"
            )
        chosen.append(cpus)
    server_cpus, client_cpus = chosen
    if server_cpus is not None and client_cpus is not None and server_cpus & client_cpus:
        raise ValueError(
            f"--server-cpus {format_cpu_list(server_cpus)} and --client-cpus "
            f"{format_cpu_list(client_cpus)} overlap on CPU "
            f"{format_cpu_list(server_cpus & client_cpus)}"
        )
    return server_cpus, client_cpus


def pin_process(pid: int, cpus: CpuSet) -> None:
    """Pin every thread of ``pid`` to ``cpus`` (threads it starts later inherit it)."""
    tids: list[int] = []
    with contextlib.suppress(OSError):
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    for tid in tids or [pid]:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def affinity(pid: int) -> CpuSet | None:
    """The CPUs ``pid`` may run on, or None when it is gone."""
    try:
        return frozenset(os.sched_getaffinity(pid))
    except OSError:
        return None


def observed(pids: Iterable[int]) -> CpuSet:
    """The union of the CPU sets of ``pids`` (those still running)."""
    cpus: set[int] = set()
    for pid in pids:
        cpus |= affinity(pid) or frozenset()
    return frozenset(cpus)


def allowed_list(pid: int) -> str | None:
    """``Cpus_allowed_list`` from /proc/PID/status, as the kernel writes it."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return None


def placement(
    server_cpus: CpuSet | None,
    client_cpus: CpuSet | None,
    server_pids: Iterable[int],
    generator_pids: Iterable[int],
    have: CpuSet | None = None,
) -> dict[str, Any]:
    """What the JSON result records about CPUs: the CPUs there were (``have``, default
    this process's), for each side whether it was pinned, what was asked and what its
    processes actually had; ``placement`` is ``pinned`` when both sides were pinned to
    CPU sets that do not overlap, else ``shared``."""
    server_seen = observed(server_pids)
    generator_seen = observed(generator_pids)

    def side(asked: CpuSet | None, seen: CpuSet) -> dict[str, Any]:
        return {
            "pinned": asked is not None,
            "requested": None if asked is None else format_cpu_list(asked),
            "observed": format_cpu_list(seen),
        }

    separate = (
        server_cpus is not None
        and client_cpus is not None
        and bool(server_seen)
        and not server_seen & generator_seen
    )
    return {
        "available": format_cpu_list(available() if have is None else have),
        "server": side(server_cpus, server_seen),
        "generator": side(client_cpus, generator_seen),
        "placement": "pinned" if separate else "shared",
    }
