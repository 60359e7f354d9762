"""The server under test: start one (cluster, baseline, bare broadcast or the Node.js
peer) or name the processes of a running one, and read their CPU time and memory from
/proc (Linux).

Every server this module starts runs in its own session and is stopped by
:meth:`Server.stop` (SIGTERM, then SIGKILL of the whole group), which the CLI calls in
a ``finally`` so that a failure or Ctrl-C leaves nothing behind. It is ready when it
says so with the sd_notify protocol (``READY=1`` on the socket this module hands it in
``NOTIFY_SOCKET``; the launcher sends it once the whole cluster serves), not when its
log shows some text; the Node.js peer, which does not speak it, when its ``/healthz``
answers.

The Node.js peer (``../shared/peers/node-ws-lobby`` beside the repository: a
single-process ``ws`` lobby speaking protocol version 1, the row every benchmark should
be ahead of) is read-only where it lives: it is copied to :data:`PEER_CACHE` (ignored by
git) and ``npm ci`` runs there once; the copy is reused until the peer's files change.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from scripts import procfs
from scripts.loadtest.cpus import CpuSet, pin_process
from shared.notify import Listener

ROOT = Path(__file__).resolve().parent.parent.parent
PEER_DIR = ROOT.parent / "shared" / "peers" / "node-ws-lobby"
"""Where the Node.js peer lives: beside the repository, read-only."""
PEER_CACHE = ROOT / ".cache" / "node-ws-lobby"
"""Its copy with its ``node_modules`` (``npm ci``), made once and reused."""
PEER_FILES = ("server.js", "package.json", "package-lock.json")
"""The peer's files: the copy is made again when any of them differs."""
PEER_BATCH_MS = 20
"""The peer's ``--batch-ms``: its fixed batching window, as it is measured against."""

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
    probe: Callable[[], bool] | None = None
    """For a server that does not speak sd_notify: True once it serves."""
    _reader: threading.Thread | None = None
    _log: TextIO | None = None

    def log_to(self, path: str) -> None:
        """From now on, also write every line of the server's output to ``path`` (the
        lines kept so far first): all of it, where :attr:`lines` keeps the last 2,000."""
        log = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by stop())
        log.writelines(line + "\n" for line in list(self.lines))
        self._log = log

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
        probe = self.probe
        while not (probe() if probe is not None else self.notify.count("READY")):
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
        if self._log is not None:
            self._log.close()
            self._log = None
        self.launcher = None


def _cmdline(pid: int) -> bytes:
    try:
        return procfs.cmdline(pid)
    except OSError:
        return b""


def _start(
    name: str,
    command: list[str],
    url: str,
    cpus: CpuSet | None = None,
    probe: Callable[[], bool] | None = None,
) -> Server:
    """Run ``command`` (in its own session) and wait until it is ready (its
    ``READY=1``, or ``probe``); with ``cpus``, the launcher is pinned to them before it
    runs, so everything it starts inherits them."""
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
    server = Server(url=url, name=name, launcher=proc, notify=notify, probe=probe)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line.rstrip("\n"))
            del server.lines[:-2000]
            log = server._log
            if log is not None:
                log.write(line)

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


def node_peer_missing(peer_dir: Path) -> list[str]:
    """What running the Node.js peer from ``peer_dir`` needs and is not there: ``node``
    and ``npm`` on the PATH, the directory and its files (empty: nothing)."""
    missing = [f"{tool} (not on the PATH)" for tool in ("node", "npm") if not shutil.which(tool)]
    if not peer_dir.is_dir():
        return [*missing, f"the peer's directory {peer_dir}"]
    return missing + [str(peer_dir / f) for f in PEER_FILES if not (peer_dir / f).is_file()]


def peer_copy_stale(source: Path, cache: Path) -> bool:
    """Whether ``cache`` must be made again from ``source``: ``npm ci`` never finished
    there (no stamp), or a file of the peer differs from its copy."""
    if not (cache / ".installed").is_file():
        return True
    for name in PEER_FILES:
        try:
            if (source / name).read_bytes() != (cache / name).read_bytes():
                return True
        except OSError:
            return True
    return False


def prepare_node_peer(source: Path, cache: Path = PEER_CACHE) -> Path:
    """The peer's copy in ``cache`` with its modules installed (``npm ci``), made only
    when :func:`peer_copy_stale`; raises RuntimeError with npm's output if it fails."""
    if peer_copy_stale(source, cache):
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        for name in PEER_FILES:  # writable copies (the source may be read-only)
            shutil.copyfile(source / name, cache / name)
        npm = [shutil.which("npm") or "npm", "ci", "--silent", "--no-audit", "--no-fund"]
        done = subprocess.run(npm, cwd=cache, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"npm ci in {cache} failed:\n{done.stdout}{done.stderr}")
        (cache / ".installed").write_text("npm ci done\n")
    return cache


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""An HTTP opener that never goes through a proxy the environment names."""


def _serves(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=1.0) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def start_node(port: int, peer_dir: Path = PEER_DIR, cpus: CpuSet | None = None) -> Server:
    """The Node.js peer with its fixed :data:`PEER_BATCH_MS` window, from its copy
    (:func:`prepare_node_peer`); ready when its ``/healthz`` answers."""
    cache = prepare_node_peer(peer_dir)
    command = [
        shutil.which("node") or "node",
        str(cache / "server.js"),
        "--port",
        str(port),
        "--batch-ms",
        str(PEER_BATCH_MS),
    ]
    health = f"http://127.0.0.1:{port}/healthz"
    url = f"ws://127.0.0.1:{port}/ws"
    return _start("node peer", command, url, cpus, probe=functools.partial(_serves, health))


def external(url: str, pids: Sequence[int], cpus: CpuSet | None = None) -> Server:
    """A server someone else runs; CPU and memory are read only for ``pids``. With
    ``cpus``, ``pids`` and their descendants are pinned to them (processes they start
    later inherit it)."""
    server = Server(url=url, name="external", external_pids=tuple(pids))
    if cpus is not None:
        for pid in server.pids():
            pin_process(pid, cpus)
    return server
