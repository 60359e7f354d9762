"""Supervision: start the children, learn when they are ready, pass their output
through, restart the ones that die, and stop them all in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from scripts.launcher.config import USAGE_ERROR, Config, connect_url, tcp
from scripts.launcher.metrics import MULTIPROC_ENV, MetricsEndpoint, PortTaken
from shared import endpoints, logs, notify, stopping

ROOT = Path(__file__).resolve().parents[2]
COORDINATOR_READY_WAIT = 10.0
"""Seconds to wait for the coordinator's ``READY=1`` before starting workers anyway
(workers cope with a coordinator that is not there yet; waiting only makes start-up
quieter)."""
NAME_WIDTH = 12
LOGGED = re.compile(r"^\d{4}-\d\d-\d\d \S+ [A-Z]+ \S+: (.*)$")
"""A text log line of a child: its time, level and logger, then the message."""
IGNORED_SHOWN = 5
"""Lines a second about notifications from strangers (the rest are counted)."""


def describe_exit(returncode: int | None) -> str:
    """``exit code 3`` or ``signal SIGKILL`` (asyncio reports signals as -N)."""
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def last_words(line: str) -> str:
    """What a child's output line says, without its time and level (text) or as its
    ``message`` (JSON): a reason to quote in the launcher's own line."""
    if line.startswith("{"):
        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(line).get("message", line))
    match = LOGGED.match(line)
    return match.group(1) if match else line.strip()


def is_ready(notification: dict[str, str]) -> bool:
    """Whether a child's notification (:func:`shared.notify.parse`) says it serves
    (``READY=1``)."""
    return notification.get("READY") == "1"


def notify_socket() -> notify.Listener:
    """The receiving end of one child's ``NOTIFY_SOCKET``."""
    return notify.Listener(prefix="presence-cluster")


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child if the launcher dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def notify_supervisor(state: str, status: str = "") -> str | None:
    """Send ``state`` (and ``STATUS``) to this launcher's own ``$NOTIFY_SOCKET``, if it
    has one (:func:`shared.notify.send`). Never raises: returns why it could not send,
    or None (also when there is nothing to send to)."""
    problem = notify.send(state, status)
    if problem is None:
        return None
    target = os.environ.get(notify.ENV, "")
    if isinstance(problem, notify.NotAnAddress):
        return f"NOTIFY_SOCKET={target} is not a path or an @abstract name"
    return f"could not notify NOTIFY_SOCKET={target}: {problem}"


@dataclass(slots=True)
class Slot:
    """One supervised position: the coordinator (``index`` 0) or worker ``index``."""

    index: int
    generation: int = 0
    fast_crashes: int = 0
    name: str = ""
    ready: bool = False
    ever_ready: bool = False
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    last_words: str = ""
    """The last line this generation printed: why it refused to start, when it did."""

    @property
    def is_coordinator(self) -> bool:
        return self.index == 0


class Cluster:
    def __init__(self, config: Config, out: TextIO = sys.stdout) -> None:
        self.config = config
        self.out = out
        self.coordinator = Slot(0)
        count = config.workers if config.runs_workers else 0
        self.workers = [Slot(i) for i in range(1, count + 1)]
        self.exit_code = 0
        self._refusal = ""
        tls = config.tls_cert is not None
        self.url = connect_url(config.host, config.port, tls=tls)
        self.page = connect_url(config.host, config.port, tls=tls, page=True)
        self._stop = asyncio.Event()
        self._whole = False
        self._was_whole = False
        self._env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._preexec = _die_with_parent(os.getpid())
        self._metrics: MetricsEndpoint | None = None
        self._ignored_since = float("-inf")
        self._ignored_shown = self._ignored_held = 0

    # ------------------------------------------------------------------ output

    def emit(self, name: str, text: str) -> None:
        """A line of a child's output: prefixed with its name, or as JSON."""
        if self.config.log_format != "json":
            self._write(f"{name:<{NAME_WIDTH}} | {text}")
        elif text.startswith("{"):
            self._write(text)  # the child's own JSON line
        else:  # a line the child's logging did not write (a crash before it was set up)
            role = "coordinator" if name == "coordinator" else "worker"
            self._write(logs.json_line("INFO", role, name, "output", text, "cluster"))

    def log(self, text: str, event: str, level: str = "INFO", **fields: Any) -> None:
        """A line of the launcher's own, named ``event`` with ``fields`` in JSON."""
        if self.config.log_format == "json":
            line = logs.json_line(
                level, "launcher", str(os.getpid()), event, text, "cluster", **fields
            )
            self._write(line)
        else:
            self._write(f"{'cluster':<{NAME_WIDTH}} | {text}")

    def _write(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed or broken stdout
            self.out.write(line + "\n")
            self.out.flush()

    def _notify(self, state: str, status: str) -> None:
        problem = notify_supervisor(state, status)
        if problem is not None:
            self.log(problem, "notify_failed", "WARNING")

    # ------------------------------------------------------------------ running

    @property
    def slots(self) -> list[Slot]:
        """The processes this machine runs."""
        own = [self.coordinator] if self.config.runs_coordinator else []
        return own + self.workers

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stopping.on_stop_signals(loop, self._on_signal)
        self._start_metrics()
        try:
            return await self._run()
        finally:
            stopping.settle(loop)
            if self._metrics is not None:
                self._metrics.close()

    def _start_metrics(self) -> None:
        """Serve the metrics, and give the children the directory, or none at all."""
        for name in MULTIPROC_ENV:
            self._env.pop(name, None)  # ours, or no metrics files: never an inherited one
        port = self.config.metrics_port
        if not port:
            return
        try:
            self._metrics = MetricsEndpoint(self.config.host, port, self._processes)
        except ImportError:
            self.log(
                "no metrics: prometheus_client is not installed (--metrics-port 0 to hush)",
                "metrics_off",
                "WARNING",
            )
            return
        except PortTaken as exc:
            self.log(
                f"no metrics: {exc.strerror}",
                "metrics_off",
                "WARNING",
                port=port,
                error=str(exc),
            )
            return
        except OSError as exc:
            self.log(
                f"no metrics: cannot serve {self.config.host}:{port}: {exc}",
                "metrics_off",
                "WARNING",
                port=port,
                error=str(exc),
            )
            return
        self._env[MULTIPROC_ENV[0]] = self._metrics.directory
        self.log(f"metrics at {self._metrics.url}", "metrics_serving", url=self._metrics.url)

    def _processes(self) -> list[tuple[str, int]]:
        """This machine's processes for the metrics, each by its position (the
        launcher's metrics thread reads this)."""
        found = [("launcher", os.getpid())]
        for slot in self.slots:
            proc = slot.proc
            if proc is not None:
                found.append(("coordinator" if slot.is_coordinator else f"w{slot.index}", proc.pid))
        return found

    async def _run(self) -> int:
        config = self.config
        if config.role == "coordinator":
            assert config.backbone is not None
            backbone = tcp(*config.backbone)
            self.log(
                f"starting the coordinator with its backbone on {backbone} (CURVE)",
                "starting",
                runs=config.role,
                backbone=backbone,
            )
        elif config.role == "workers":
            assert config.coordinator is not None
            coordinator = tcp(*config.coordinator)
            self.log(
                f"starting {config.workers} workers on {config.host}:{config.port}, "
                f"joining the coordinator at {coordinator} (CURVE) as {config.advertise}",
                "starting",
                runs=config.role,
                workers=config.workers,
                host=config.host,
                port=config.port,
                coordinator=coordinator,
                advertise=config.advertise,
            )
        else:
            self.log(
                f"starting 1 coordinator and {config.workers} workers on "
                f"{config.host}:{config.port}",
                "starting",
                runs=config.role,
                workers=config.workers,
                host=config.host,
                port=config.port,
            )
        if config.role == "all":
            self._share_runtime_dir()
        if config.runs_coordinator:
            await self._start_coordinator()
        if not self._stop.is_set():
            for slot in self.workers:
                slot.task = asyncio.create_task(self._supervise(slot))
        await self._stop.wait()
        self._notify("STOPPING=1", "stopping")
        await self._shutdown()
        if self._refusal:  # said again last, where an operator looks first
            self.log(f"stopped (exit code {self.exit_code}): {self._refusal}", "stopped")
        else:
            self.log("stopped", "stopped")
        return self.exit_code

    def _share_runtime_dir(self) -> None:
        """Pick the directory of the ipc backbone once, for every child: they must all
        use the same one, and when another user holds ``/tmp/presence-UID`` it is one of
        this user's own (:func:`shared.endpoints.runtime_base`), which says so."""
        try:
            base = endpoints.runtime_base()
        except OSError as exc:
            self.log(f"no private directory for the backbone: {exc}", "ipc_dir", "ERROR")
            return  # the children refuse it too, naming it
        self._env[endpoints.RUNTIME_ENV] = str(base)
        notice = endpoints.fallback_notice()
        if notice is not None:
            self.log(notice, "ipc_dir_fallback", "WARNING", directory=str(base))

    async def _start_coordinator(self) -> None:
        """Start the coordinator and give it a moment to be ready before the workers."""
        self.coordinator.task = asyncio.create_task(self._supervise(self.coordinator))
        if not self.workers:
            return
        waiters = [
            asyncio.create_task(e.wait()) for e in (self.coordinator.ready_event, self._stop)
        ]
        await asyncio.wait(
            waiters, timeout=COORDINATOR_READY_WAIT, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waiters:
            waiter.cancel()
        if not self._stop.is_set() and not self.coordinator.ready:
            self.log(
                f"coordinator not ready after {COORDINATOR_READY_WAIT:.0f}s; "
                "starting workers anyway",
                "coordinator_late",
                "WARNING",
            )

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._stop.is_set():
            hint = " (Ctrl-C again to kill at once)" if sig == signal.SIGINT else ""
            self.log(f"received {sig.name}; stopping{hint}", "stopping", signal=sig.name)
            self._stop.set()
            return
        if sig != signal.SIGINT:
            return  # a repeated SIGTERM (process managers) just lets the shutdown go on
        self.log("received SIGINT again; killing everything", "killing", "WARNING")
        for slot in self.slots:
            self._kill(slot, signal.SIGKILL)

    def _kill(self, slot: Slot, sig: int) -> None:
        proc = slot.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)  # its own session: take any children along
            else:
                os.kill(proc.pid, sig)

    async def _shutdown(self) -> None:
        for group in (self.workers, [self.coordinator]):
            tasks = [slot.task for slot in group if slot.task is not None]
            for slot in group:
                self._kill(slot, signal.SIGTERM)
            if not tasks:
                continue
            _, pending = await asyncio.wait(tasks, timeout=self.config.grace)
            if pending:
                for slot in group:
                    if slot.proc is not None and slot.proc.returncode is None:
                        self.log(
                            f"{slot.name} still running after {self.config.grace}s; SIGKILL",
                            "killed",
                            "WARNING",
                            process=slot.name,
                        )
                        self._kill(slot, signal.SIGKILL)
                await asyncio.wait(pending)

    def _command(self, slot: Slot) -> list[str]:
        if slot.is_coordinator:
            slot.name = "coordinator"
            return self.config.coordinator_command()
        slot.name = self.config.worker_name(slot.index, slot.generation)
        return self.config.worker_command(slot.name, slot.index)

    async def _supervise(self, slot: Slot) -> None:
        while not self._stop.is_set():
            slot.generation += 1
            command = self._command(slot)
            started = time.monotonic()
            returncode = await self._run_once(slot, command)
            uptime = time.monotonic() - started
            if self._stop.is_set():
                how = describe_exit(returncode)
                self.log(
                    f"{slot.name} stopped ({how})", "process_stopped", process=slot.name, exit=how
                )
                return
            if returncode == USAGE_ERROR and not slot.ever_ready:
                reason = slot.last_words or "see above"
                self.log(
                    f"{slot.name} refused its options or could not listen "
                    f"({describe_exit(returncode)}): {reason}; restarting cannot help: "
                    "stopping",
                    "process_refused_options",
                    "ERROR",
                    process=slot.name,
                    exit=describe_exit(returncode),
                    reason=reason,
                )
                self.exit_code = USAGE_ERROR
                self._refusal = f"{slot.name} did not start: {reason}"
                self._stop.set()
                return
            slot.fast_crashes = self.config.backoff.fast_crashes(slot.fast_crashes, uptime)
            delay = self.config.backoff.delay(slot.fast_crashes)
            following = (
                "coordinator"
                if slot.is_coordinator
                else self.config.worker_name(slot.index, slot.generation + 1)
            )
            self.log(
                f"{slot.name} died ({describe_exit(returncode)}) after {uptime:.1f}s; "
                f"restarting as {following} in {delay:.1f}s",
                "process_died",
                "WARNING",
                process=slot.name,
                exit=describe_exit(returncode),
                uptime=round(uptime, 3),
                next=following,
                delay=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_once(self, slot: Slot, command: list[str]) -> int | None:
        """Start one generation with its own notify socket, pump its output, return its
        exit status."""
        try:
            listener = notify_socket()
        except OSError as exc:
            self.log(
                f"could not start {slot.name}: no notify socket: {exc}",
                "start_failed",
                "ERROR",
                process=slot.name,
            )
            return None
        loop = asyncio.get_running_loop()
        loop.add_reader(listener.fileno(), self._on_notify, slot, listener)
        try:
            return await self._run_child(slot, command, listener)
        finally:
            loop.remove_reader(listener.fileno())
            listener.close()

    async def _run_child(
        self, slot: Slot, command: list[str], listener: notify.Listener
    ) -> int | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                cwd=ROOT,
                env=dict(self._env, NOTIFY_SOCKET=listener.address),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._preexec,
                limit=1 << 20,
            )
        except OSError as exc:
            self.log(
                f"could not start {slot.name}: {exc}", "start_failed", "ERROR", process=slot.name
            )
            return None
        slot.proc = proc
        slot.last_words = ""
        listener.expect(proc.pid)  # nobody else may say it is ready
        self.log(
            f"started {slot.name} pid {proc.pid}",
            "process_started",
            process=slot.name,
            pid=proc.pid,
        )
        if self._stop.is_set():
            self._kill(slot, signal.SIGTERM)
        assert proc.stdout is not None
        pump = asyncio.create_task(self._pump(slot, proc.stdout))
        returncode = await proc.wait()
        if self._metrics is not None:
            self._metrics.process_died(proc.pid)
        # Output still in the pipe belongs to this generation; a grandchild holding the
        # pipe open must not stall the restart, hence the bound.
        done, _ = await asyncio.wait([pump], timeout=2.0)
        if not done:
            pump.cancel()
        slot.ready = False
        self._whole = False
        slot.proc = None
        return returncode

    async def _pump(self, slot: Slot, stream: asyncio.StreamReader) -> None:
        name = slot.name
        while True:
            try:
                raw = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                raw = exc.partial
                if not raw:
                    return
            except asyncio.LimitOverrunError as exc:
                raw = await stream.readexactly(exc.consumed)
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.strip():
                slot.last_words = last_words(line)
            self.emit(name, line)

    def _on_notify(self, slot: Slot, listener: notify.Listener) -> None:
        """The child's notify socket is readable: a ``READY=1`` makes it ready."""
        for notification in listener.receive(0):
            if is_ready(notification) and not slot.ready:
                self._on_ready(slot)
        while listener.ignored:
            pid, uid = listener.ignored.pop(0)
            self._ignored(slot, pid, uid)

    def _ignored(self, slot: Slot, pid: int, uid: int) -> None:
        """Say that a stranger wrote to ``slot``'s notify socket: a few lines a second at
        most, then how many more there were (anyone can send as many as they like)."""
        now = time.monotonic()
        if now - self._ignored_since >= 1.0:
            if self._ignored_held:
                self.log(
                    f"ignored {self._ignored_held} more notifications from other processes",
                    "notify_ignored",
                    "WARNING",
                    count=self._ignored_held,
                )
            self._ignored_since, self._ignored_shown, self._ignored_held = now, 0, 0
        if self._ignored_shown >= IGNORED_SHOWN:
            self._ignored_held += 1
            return
        self._ignored_shown += 1
        self.log(
            f"ignored a notification from pid {pid} uid {uid} on the notify socket of "
            f"{slot.name}: only that process may say it is ready",
            "notify_ignored",
            "WARNING",
            process=slot.name,
            sender_pid=pid,
            sender_uid=uid,
        )

    def _on_ready(self, slot: Slot) -> None:
        slot.ready = slot.ever_ready = True
        slot.ready_event.set()
        everyone = self.slots
        if self._stop.is_set():
            return  # stopping: a process that just came up makes nothing ready again
        if self._whole or not all(s.ready for s in everyone):
            return
        self._whole = True
        again = " again" if self._was_whole else ""
        self._was_whole = True
        if self.config.role == "coordinator":
            assert self.config.backbone is not None
            port = self.config.backbone[1]
            status = (
                f"coordinator ready{again}: workers join with "
                f"make run ROLE=workers COORDINATOR=THIS_HOST:{port}"
            )
        else:
            status = f"all {len(everyone)} processes ready{again}: connect to {self.url}"
        self.log(status, "ready", processes=len(everyone), url=self.url, again=bool(again))
        if not again and self.workers:
            self.log(f"open the lobby page at {self.page}", "page", url=self.page)
        self._notify("READY=1", status)
