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
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(path: str) -> list[str]:
    """The fields of a ``stat`` file after the command name (which may hold spaces and
    parentheses, hence the last ``)``): field 3 of proc(5) is the first."""
    stat = Path(path).read_text()
    return stat[stat.rindex(")") + 2 :].split()


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


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets' inodes, found in
    /proc/net/tcp and tcp6 in state LISTEN)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
