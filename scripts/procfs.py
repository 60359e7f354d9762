"""What Linux's ``/proc`` says about a process, and a free TCP port: one copy for the
benchmarks, the fault timings and the tests.

Every reader takes a pid and reads one file of ``/proc/PID`` (or ``/proc/stat``, the
whole machine). Figures are the kernel's: CPU time in clock ticks (10 ms on most
machines) turned into seconds, memory in pages turned into bytes. A reader raises
:class:`OSError` when the process is gone, except :func:`state`, which says so.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(path: str) -> list[str]:
    """The fields of a ``stat`` file after the command name (which may hold spaces and
    parentheses, hence the last ``)``): field 3 of proc(5) is the first."""
    stat = Path(path).read_text()
    return stat[stat.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie still does)."""
    return Path(f"/proc/{pid}").exists()


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``: children, grandchildren... (scans /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(_stat_fields(f"/proc/{entry}/stat")[1])
                parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of process ``pid`` (every thread), or of its thread ``tid``."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = _stat_fields(path)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core; /proc/stat, not idle
    nor iowait): what else runs beside a measured process shows."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (/proc/PID/statm)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def start_time(pid: int) -> float:
    """When ``pid`` started, in seconds since the epoch (/proc/PID/stat's start time in
    ticks since boot, plus the boot time of /proc/stat)."""
    ticks = int(_stat_fields(f"/proc/{pid}/stat")[19])
    return _boot_time() + ticks / CLK_TCK


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def open_fds(pid: int) -> int:
    """File descriptors ``pid`` holds open (/proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def max_fds(pid: int) -> float:
    """``pid``'s soft limit on open files (/proc/PID/limits; ``inf`` when unlimited)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files") :].split()[0]
            return float("inf") if soft == "unlimited" else float(soft)
    raise OSError(f"no open-file limit in /proc/{pid}/limits")


def total_cpu_seconds(pids: Iterable[int]) -> float:
    """:func:`cpu_seconds` summed over ``pids``; a process that is gone counts 0."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid)
    return total


def total_rss_bytes(pids: Iterable[int]) -> int:
    """:func:`rss_bytes` summed over ``pids``; a process that is gone counts 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += rss_bytes(pid)
    return total


def state(pid: int) -> str | None:
    """The state letter of ``pid`` (``R``, ``S``, ``Z`` for a zombie...), None when
    there is no such process."""
    try:
        return _stat_fields(f"/proc/{pid}/stat")[0]
    except FileNotFoundError:
        return None


def environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with (/proc/PID/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(): v.decode() for k, _, v in pairs}


def cmdline(pid: int) -> bytes:
    """The command line of ``pid``, its words separated by NUL bytes."""
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets ``pid`` holds open (empty when it is gone)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def _tcp_table() -> list[list[str]]:
    """The rows of /proc/net/tcp and tcp6, split into columns."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            rows += [line.split() for line in Path(table).read_text().splitlines()[1:]]
    return rows


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets' inodes, found in
    /proc/net/tcp and tcp6 in state LISTEN)."""
    inodes = socket_inodes(pid)
    return {
        int(cols[1].rsplit(":", 1)[1], 16)
        for cols in _tcp_table()
        if cols[3] == "0A" and cols[9] in inodes  # LISTEN
    }


def _address(hex_addr: str) -> tuple[str, int]:
    """An address of /proc/net/tcp (little-endian words) as (ip, port)."""
    host, port = hex_addr.split(":")
    if len(host) == 8:
        ip = socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)[::-1])
    else:
        raw = bytes.fromhex(host)
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        ip = socket.inet_ntop(socket.AF_INET6, words)
    return ip, int(port, 16)


def peers_by_process(pids: Sequence[int]) -> dict[tuple[str, int], int]:
    """Map each TCP peer (address, port) connected to one of ``pids`` to that pid: on
    a cluster this tells which worker holds a client's connection."""
    owner = {inode: pid for pid in pids for inode in socket_inodes(pid)}
    return {_address(cols[2]): owner[cols[9]] for cols in _tcp_table() if cols[9] in owner}


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
