"""The server under test: start one (cluster, baseline or bare broadcast) or name the
processes of a running one, and read their CPU time and memory from /proc (Linux).

Every server this module starts runs in its own session and is stopped by
:meth:`Server.stop` (SIGTERM, then SIGKILL of the whole group), which the CLI calls in
a ``finally`` so that a failure or Ctrl-C leaves nothing behind. It is ready when it
says so with the sd_notify protocol (``READY=1`` on the socket this module hands it in
``NOTIFY_SOCKET``; the launcher sends it once the whole cluster serves), not when its
log shows some text.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scripts import procfs
from scripts.loadtest.cpus import CpuSet, pin_process
from shared.notify import Listener

ROOT = Path(__file__).resolve().parent.parent.parent

# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A running server: its URL and the processes whose CPU and memory count."""

    url: str
    name: str
    launcher: subprocess.Popen[str] | None = None
    external_pids: tuple[int, ...] = ()
    lines: list[str] = field(default_factory=list)
    notify: Listener | None = None
    _reader: threading.Thread | None = None

    def pids(self) -> list[int]:
        """The serving processes: a launcher's descendants (not the launcher, which
        only relays logs), or the named pids and their descendants."""
        if self.launcher is not None:
            kids = procfs.descendants(self.launcher.pid)
            return kids or [self.launcher.pid]
        return [p for pid in self.external_pids for p in (pid, *procfs.descendants(pid))]

    def worker_pids(self) -> list[int]:
        """The processes that hold client connections (cluster workers, else all)."""
        pids = self.pids()
        workers = [p for p in pids if b"workers" in _cmdline(p)]
        return workers or pids

    def output(self) -> str:
        return "\n".join(self.lines[-200:])

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the server's ``READY=1``; fail if it exits first or takes too long."""
        deadline = time.monotonic() + timeout
        assert self.launcher is not None and self.notify is not None
        while not self.notify.count("READY"):
            if self.launcher.poll() is not None:
                raise RuntimeError(f"{self.name} exited before it was ready:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.output()}")
            self.notify.receive(0.05)  # returns as soon as a notification arrives

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the launcher (it stops its children in order), then SIGKILL the
        whole process group if anything is left. Idempotent."""
        proc = self.launcher
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
        if self._reader is not None:
            self._reader.join(2.0)
        if self.notify is not None:
            self.notify.close()
        self.launcher = None


def _cmdline(pid: int) -> bytes:
    try:
        return procfs.cmdline(pid)
    except OSError:
        return b""


def _start(name: str, command: list[str], url: str, cpus: CpuSet | None = None) -> Server:
    """Run ``command`` (in its own session) and wait until it is ready; with ``cpus``,
    the launcher is pinned to them before it runs, so everything it starts inherits
    them."""
    notify = Listener()
    env = dict(os.environ, PYTHONUNBUFFERED="1", NOTIFY_SOCKET=notify.address)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus),
        )
    except BaseException:
        notify.close()
        raise
    server = Server(url=url, name=name, launcher=proc, notify=notify)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line.rstrip("\n"))
            del server.lines[:-2000]

    server._reader = threading.Thread(target=read, daemon=True)
    server._reader.start()
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def start_cluster(
    workers: int,
    port: int,
    batch_window: float | None = None,
    extra: Sequence[str] = (),
    cpus: CpuSet | None = None,
) -> Server:
    """``scripts/cluster.py`` with ``workers`` workers; ``batch_window`` (seconds, 0 =
    off) is passed to the coordinator when given; ``cpus``: the CPUs every process of
    the cluster runs on (default: any)."""
    command = [
        sys.executable,
        str(ROOT / "scripts" / "cluster.py"),
        "--workers",
        str(workers),
        "--port",
        str(port),
    ]
    if batch_window is not None:
        command += ["--coordinator-arg", "--batch-window", "--coordinator-arg", str(batch_window)]
    command += list(extra)
    return _start(f"cluster ({workers} workers)", command, f"ws://127.0.0.1:{port}/ws", cpus)


def start_baseline(port: int, fault: str = "none", cpus: CpuSet | None = None) -> Server:
    """The single-process direct implementation, ``scripts/baseline_server.py``
    (``fault``: one of its deliberate bugs, for tests of the checks)."""
    command = [
        sys.executable,
        str(ROOT / "scripts" / "baseline_server.py"),
        "--port",
        str(port),
        "--fault",
        fault,
    ]
    return _start("baseline", command, f"ws://127.0.0.1:{port}/ws", cpus)


def start_bare(port: int, cpus: CpuSet | None = None) -> Server:
    """The bare ``websockets.broadcast()`` server, ``scripts/bare_broadcast.py``."""
    command = [sys.executable, str(ROOT / "scripts" / "bare_broadcast.py"), "--port", str(port)]
    return _start("bare broadcast", command, f"ws://127.0.0.1:{port}/ws", cpus)


def external(url: str, pids: Sequence[int], cpus: CpuSet | None = None) -> Server:
    """A server someone else runs; CPU and memory are read only for ``pids``. With
    ``cpus``, ``pids`` and their descendants are pinned to them (processes they start
    later inherit it)."""
    server = Server(url=url, name="external", external_pids=tuple(pids))
    if cpus is not None:
        for pid in server.pids():
            pin_process(pid, cpus)
    return server
