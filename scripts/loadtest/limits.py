"""What a run of N users needs of the machine, checked before anything starts.

:func:`plan` is pure: from the users, the options given and what the system allows
(:class:`System`), it chooses what the options leave open (generator processes,
source addresses, connection attempts in flight, the workers' ``--memory-budget`` and
``--max-connections``) and lists every limit that stands in the way (:class:`Problem`,
each with the command that raises it), so a run refuses at once with one message
instead of failing half way. :func:`read_system` and :func:`apply` are its shell: what
``/proc`` and ``getrlimit`` say, and raising the open-file limit where the process may.

What it counts:

* **Open files.** Each generator process holds its share of the clients' sockets; a
  started cluster inherits the generator's limit, and one worker may have to hold
  every user (after the other is killed, its users come back to the survivor). The
  soft limit is raised to what is needed when the hard one allows it; as root the
  hard one too (up to ``fs.nr_open``).
* **Local ports.** Every connection from one source address to the server's port
  takes one of the address's ephemeral ports; a user may hold two at once (one
  closing, one coming back), so each address carries at most half its range.
  Addresses of 127.0.0.0/8 are free on Linux: the generator binds to as many as N
  needs (``--source-addresses``).
* **Listen backlog.** The workers listen with a backlog of
  :data:`~workers.server.LISTEN_BACKLOG`, which the kernel cuts to
  ``net.core.somaxconn``; connection attempts in flight are kept within it.
* **Connection tracking.** Where ``nf_conntrack`` is loaded, loopback connections
  take an entry each, and a closed one keeps its entry a while.
* **The workers' memory budget.** Each connection reserves its kernel send buffer
  (twice ``--send-buffer-bytes``, as Linux grants it) from at most half the budget, so
  the default budget admits far fewer connections than a scale run holds.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

from workers.admission import AdmissionLimits
from workers.budget import CONNECTION_SHARE, MemoryLimits
from workers.server import LISTEN_BACKLOG

FILES_SPARE = 64
"""Open files a generator process needs besides its clients' sockets."""
SERVER_FILES_SPARE = 1024
"""Open files a worker needs besides its clients' sockets (backbone, logs, listeners)."""
PORTS_PER_USER = 2
"""Ephemeral ports a user may hold at once on its address: one closing, one opening."""
CONNTRACK_PER_USER = 2
"""Conntrack entries a user may hold at once: the open connection and a closed one."""
CONNTRACK_SPARE = 4096
BUDGET_HEADROOM = 1.25
"""The memory budget given over what the reservations of every user need."""
LOOPBACK_FIRST = 2
"""Source addresses are 127.0.0.2, 127.0.0.3, ...: 127.0.0.1 is left to the rest."""


@dataclass(frozen=True)
class System:
    """What the machine allows (see :func:`read_system`)."""

    nofile_soft: int
    nofile_hard: int
    nr_open: int = 1_048_576
    port_range: tuple[int, int] = (32768, 60999)
    somaxconn: int = 4096
    conntrack_max: int | None = None
    """None: no connection tracking loaded."""
    root: bool = False
    """Whether this process may raise its hard open-file limit (root with
    CAP_SYS_RESOURCE: a container's root often lacks it)."""

    @property
    def ports(self) -> int:
        return self.port_range[1] - self.port_range[0] + 1


@dataclass(frozen=True)
class Problem:
    """A limit to raise: what it is, what the run needs, and how to raise it."""

    limit: str
    have: int
    need: int
    command: str

    def __str__(self) -> str:
        return f"{self.limit}: {self.have:,}, needs {self.need:,}: {self.command}"


@dataclass
class Plan:
    """What a run of ``users`` uses, chosen or checked (see :func:`plan`)."""

    users: int
    procs: int
    sources: list[str]
    concurrency: int
    files: int
    """The open-file soft limit every process (generator and started cluster) needs."""
    raise_hard: bool
    """Whether the hard open-file limit must be raised too (as root)."""
    memory_budget: int
    max_connections: int
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def refusal(self) -> str:
        """One message naming every limit to raise, and how."""
        lines = [f"scale {self.users:,}: raise these limits first (nothing was started):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)

    def short(self) -> str:
        """The limits to raise, in a few words: ``raise open files, local ports``."""
        return "raise " + ", ".join(p.limit for p in self.problems)


def loopback_sources(count: int) -> list[str]:
    """``count`` addresses of 127.0.0.0/8 from 127.0.0.2 (none for one: the OS chooses)."""
    if count <= 1:
        return []
    out = []
    for n in range(LOOPBACK_FIRST, LOOPBACK_FIRST + count):
        out.append(f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    return out


def budget_for(users: int) -> int:
    """The ``--memory-budget`` a worker needs to admit ``users`` connections (each
    reserves twice ``--send-buffer-bytes`` from at most half the budget), and never
    less than the default."""
    limits = MemoryLimits()
    reserved = users * 2 * limits.send_buffer_bytes / CONNECTION_SHARE
    need = math.ceil(reserved * BUDGET_HEADROOM / 2**20) * 2**20
    return max(limits.memory_budget, need)


def plan(
    users: int,
    system: System,
    *,
    procs: int | None = None,
    min_procs: int = 2,
    sources: list[str] | None = None,
    concurrency: int = 500,
    workers: int = 2,
    cluster: bool = True,
    kill: bool = True,
) -> Plan:
    """What ``users`` need on ``system``: ``procs`` and ``sources`` when given are
    checked, else chosen (at least ``min_procs`` processes, and as many as keep each
    under the open-file limit; as many loopback addresses as the ports need);
    ``concurrency`` (attempts in flight per process) is lowered to what the listen
    backlogs of ``workers`` hold; ``cluster``: a cluster is started, which inherits the
    limits; each of its ``workers`` must hold its share of the users, and with ``kill``
    the share of one fewer (one is killed and its users come back to the others)."""
    problems: list[Problem] = []
    notes: list[str] = []
    # Open files: the most the hard limit allows (root may raise it up to nr_open).
    ceiling = system.nr_open if system.root else system.nofile_hard
    if procs is None:
        procs = max(min_procs, math.ceil(users / max(ceiling - FILES_SPARE, 1)))
    per_proc = math.ceil(users / procs) + FILES_SPARE
    holders = max(workers - 1, 1) if kill else max(workers, 1)
    per_worker = math.ceil(users / holders)
    files = per_proc
    if cluster:
        files = max(files, per_worker + SERVER_FILES_SPARE)
    raise_hard = files > system.nofile_hard
    if per_proc > ceiling:
        problems.append(
            Problem(
                "open files (per generator process)",
                ceiling,
                per_proc,
                f"--procs {math.ceil(users / max(ceiling - FILES_SPARE, 1))}, or raise the "
                f"limit: ulimit -n {per_proc} (as root, in the shell that runs the generator)",
            )
        )
    if cluster and per_worker + SERVER_FILES_SPARE > ceiling:
        fit = max(ceiling - SERVER_FILES_SPARE, 1)
        wanted = math.ceil(users / fit) + (1 if kill else 0)
        raise_it = (
            f"sysctl -w fs.nr_open={files}"
            if system.root
            else f"ulimit -n {files} (as root with CAP_SYS_RESOURCE, in the shell that runs "
            f"the generator)"
        )
        problems.append(
            Problem(
                "open files (per worker)",
                ceiling,
                per_worker + SERVER_FILES_SPARE,
                f"--workers {wanted} (a worker holds at most {fit:,} users"
                f"{', and one is killed' if kill else ''}), or raise the limit: "
                f"{raise_it}",
            )
        )
    # Local ports: each address carries at most half its range.
    per_address = max(system.ports // PORTS_PER_USER, 1)
    wanted = math.ceil(users / per_address)
    if sources is None:
        sources = loopback_sources(wanted)
        if sources:
            notes.append(
                f"{len(sources)} source addresses ({sources[0]}...): {per_address:,} users each"
            )
    elif max(len(sources), 1) < wanted:
        problems.append(
            Problem(
                "local ports",
                max(len(sources), 1) * per_address,
                users,
                f"give {wanted} --source-addresses (or none: they are chosen), or "
                f'sysctl -w net.ipv4.ip_local_port_range="1024 65535"',
            )
        )
    # Listen backlog: the kernel cuts each worker's to somaxconn.
    backlog = min(LISTEN_BACKLOG, system.somaxconn)
    if cluster and system.somaxconn < LISTEN_BACKLOG:
        problems.append(
            Problem(
                "net.core.somaxconn",
                system.somaxconn,
                LISTEN_BACKLOG,
                f"sysctl -w net.core.somaxconn={LISTEN_BACKLOG}",
            )
        )
    fits = max(backlog * max(workers, 1) // procs, 1)
    if concurrency > fits:
        notes.append(
            f"connection attempts in flight per process lowered from {concurrency} to "
            f"{fits}: {procs} processes within {workers} listen backlogs of {backlog}"
        )
        concurrency = fits
    # Connection tracking.
    if system.conntrack_max is not None:
        need = users * CONNTRACK_PER_USER + CONNTRACK_SPARE
        if system.conntrack_max < need:
            problems.append(
                Problem(
                    "net.netfilter.nf_conntrack_max",
                    system.conntrack_max,
                    need,
                    f"sysctl -w net.netfilter.nf_conntrack_max={need}",
                )
            )
    max_connections = max(AdmissionLimits().max_connections, per_worker + SERVER_FILES_SPARE)
    return Plan(
        users=users,
        procs=procs,
        sources=sources,
        concurrency=concurrency,
        files=files,
        raise_hard=raise_hard,
        memory_budget=budget_for(per_worker),
        max_connections=max_connections,
        problems=problems,
        notes=notes,
    )


# --------------------------------------------------------------------------- shell


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_system() -> System:
    """This machine's limits, from ``getrlimit`` and ``/proc/sys``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    nr_open = _read_int("/proc/sys/fs/nr_open") or 1_048_576
    soft = nr_open if soft == infinite else soft
    hard = nr_open if hard == infinite else hard
    try:
        low, high = (
            int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        )
    except (OSError, ValueError):
        low, high = 32768, 60999
    return System(
        nofile_soft=soft,
        nofile_hard=hard,
        nr_open=nr_open,
        port_range=(low, high),
        somaxconn=_read_int("/proc/sys/net/core/somaxconn") or 4096,
        conntrack_max=_read_int("/proc/sys/net/netfilter/nf_conntrack_max"),
        root=os.geteuid() == 0 and _may_raise_hard(),
    )


CAP_SYS_RESOURCE = 24
"""The capability that lets a process raise its hard limits (linux/capability.h)."""


def _may_raise_hard() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE (``/proc/self/status``, ``CapEff``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def apply(chosen: Plan) -> Problem | None:
    """Raise this process's open-file limit to what ``chosen`` needs (what it starts
    inherits it): the soft limit, and the hard one too when the plan says so (root).
    What stood in the way, if the kernel refused."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= chosen.files:
        return None
    new_hard = hard
    if chosen.raise_hard and hard != resource.RLIM_INFINITY:
        new_hard = max(hard, chosen.files)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (chosen.files, new_hard))
    except (ValueError, OSError) as exc:
        return Problem(
            f"open files (setrlimit: {exc})",
            soft,
            chosen.files,
            f"ulimit -n {chosen.files} (as root, in the shell that runs the generator)",
        )
    return None
