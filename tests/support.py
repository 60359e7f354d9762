"""What the tests share: deadlines, ports, HTTP, real processes and a real cluster.

Every wait here polls a condition against a deadline (every 10 ms unless said
otherwise) or blocks on a socket with a timeout; nothing sleeps to synchronise. A process
is ready when it says so with the sd_notify protocol (``READY=1``, see
:mod:`shared.notify`), not when its log contains some text: :class:`ManagedProcess`
gives each child its own notification socket.

A test that starts a process must be marked ``@pytest.mark.process`` (tests/conftest.py
fails it otherwise), so that ``make test-fast`` runs only what is quick.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from scripts.procfs import free_port
from shared.notify import Listener

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


# --------------------------------------------------------------------------- deadlines


def run(coro: Coroutine[Any, Any, T], timeout: float = 90) -> T:
    """Run ``coro`` on a fresh event loop; fail it after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout: float = 15.0,
    interval: float = 0.01,
) -> float:
    """Poll ``condition`` (plain or async) every ``interval`` s until it holds; fail the
    test after ``timeout`` s. Returns the seconds it took (some tests report them)."""
    start = time.monotonic()
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while not await _holds(condition):
                await asyncio.sleep(interval)  # polling with a deadline
    except TimeoutError:
        if not deadline.expired():
            raise  # the condition's own timeout, not ours
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
    return time.monotonic() - start


async def _holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> float:
    """:func:`until` for code without an event loop: poll ``condition`` every 10 ms;
    fail after ``timeout`` s; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)  # polling with a deadline
    return time.monotonic() - start


# --------------------------------------------------------------------------- network


async def http(
    port: int,
    method: str = "GET",
    path: str = "/healthz",
    timeout: float = 5.0,
    *,
    headers: Sequence[tuple[str, str]] = (),
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request to ``host``:``port`` over a raw connection, read to its end
    (``Connection: close``): the status, the headers (names in lower case) and the body.
    No client library, so nothing is added to the request or hidden from the answer;
    ``headers`` are sent as given (repeated names too)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
            request = (
                f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n"
            )
            writer.write(request.encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    answer: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        answer[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), answer, body


async def health(port: int) -> dict[str, Any]:
    """The JSON body of ``GET /healthz`` (whatever the status: 503 has a body too)."""
    _, _, body = await http(port)
    decoded: dict[str, Any] = json.loads(body)
    return decoded


async def health_until(
    port: int, condition: Callable[[dict[str, Any]], bool], what: str, timeout: float = 15.0
) -> None:
    """Poll ``/healthz`` (every 20 ms) until ``condition`` holds for its body."""

    async def holds() -> bool:
        return condition(await health(port))

    await until(holds, what, timeout, interval=0.02)


# --------------------------------------------------------------------------- processes


class ManagedProcess:
    """A child ``python -m module ...`` whose stdout+stderr lines are collected, with its
    own sd_notify socket (``NOTIFY_SOCKET``) for :meth:`wait_ready`. Every one started
    is remembered until it has exited, so the test session can kill what a test left
    (:meth:`kill_all`)."""

    started: ClassVar[list[ManagedProcess]] = []

    @classmethod
    def kill_all(cls) -> list[str]:
        """SIGKILL the process group of every child still running; their names."""
        killed = []
        for child in cls.started:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(10)
                killed.append(f"{child.module} (pid {child.proc.pid})")
        cls.started.clear()
        return killed

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        prefix: Sequence[str] = (),
        python: str = sys.executable,
    ):
        """``prefix``: words before ``python -m module`` (``ip netns exec NS`` runs it
        in a network namespace; its notify socket is then a file, reachable from there).
        ``python``: another interpreter (another virtualenv's) than the tests' own."""
        self.notify = Listener(in_file=bool(prefix))
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["NOTIFY_SOCKET"] = self.notify.address
        self.module = module
        try:
            self.proc = subprocess.Popen(
                [*prefix, python, "-m", module, *args],
                cwd=ROOT,
                env=full_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        except BaseException:
            self.notify.close()
            raise
        ManagedProcess.started = [p for p in ManagedProcess.started if p.proc.poll() is None]
        ManagedProcess.started.append(self)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def count(self, needle: str) -> int:
        with self._lock:
            return sum(needle in line for line in self.lines)

    def wait_ready(self, timeout: float = 15.0, count: int = 1) -> str:
        """Wait for the child's ``count``-th ``READY=1`` (a launcher sends one each time
        its cluster is whole again); returns that notification's ``STATUS``. Fails at
        once, with the child's output, if the child exits first."""
        deadline = time.monotonic() + timeout
        while self.notify.count("READY") < count:
            if self.proc.poll() is not None:
                self.notify.receive(0)  # what it sent before it exited
                if self.notify.count("READY") >= count:
                    break
                self._reader.join(1)
                raise AssertionError(
                    f"{self.module} exited ({self.proc.returncode}) before it was ready:\n"
                    f"{self.output()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {self.module} to notify "
                    f"READY=1 x{count}:\n{self.output()}"
                )
            self.notify.receive(0.01)  # returns as soon as a notification arrives
        readies = [n for n in self.notify.received if n.get("READY") == "1"]
        return readies[count - 1].get("STATUS", "")

    def wait_for_line(self, needle: str, timeout: float = 15.0, count: int = 1) -> None:
        """Wait until ``needle`` appears in ``count`` lines of output (for what the log
        says; readiness is :meth:`wait_ready`)."""

        def seen() -> bool:
            if self.proc.poll() is not None and self.count(needle) < count:
                self._reader.join(1)
                raise AssertionError(
                    f"{self.module} exited ({self.proc.returncode}) before logging "
                    f"{needle!r}:\n{self.output()}"
                )
            return self.count(needle) >= count

        wait_until(seen, f"{self.module} to log {needle!r} x{count}", timeout)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self._reader.join(2)
        self.notify.close()
        return self.proc.returncode

    def assert_no_traceback(self) -> None:
        text = self.output()
        assert "Traceback" not in text, f"{self.module} logged a traceback:\n{text}"


class Cluster:
    """A real cluster: one coordinator and N workers, each its own process.

    Start with :meth:`start`; every process is checked for tracebacks on :meth:`stop`."""

    def __init__(
        self,
        tmp: Path,
        workers: int = 2,
        *,
        coordinator_args: tuple[str, ...] = (),
        worker_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.events = f"ipc://{tmp}/events"
        self.updates = f"ipc://{tmp}/updates"
        self.n_workers = workers
        self.coordinator_args = coordinator_args
        self.worker_args = worker_args
        self.coordinator: ManagedProcess | None = None
        self.workers: list[ManagedProcess] = []

    def _backbone(self) -> list[str]:
        return ["--events-endpoint", self.events, "--updates-endpoint", self.updates]

    def start(self) -> Cluster:
        """Every process is started at once, then each is waited for (a worker connects
        before its coordinator binds and waits for it, as a machine's workers may): the
        cluster is up in the time of its slowest process, not the sum of all."""
        self.coordinator = ManagedProcess(
            "coordinator",
            [*self._backbone(), "--port", str(self.port), *self.coordinator_args],
        )
        self.workers.extend(self._spawn_worker(f"w{i + 1}") for i in range(self.n_workers))
        for process in self.processes():
            process.wait_ready()
        return self

    def add_worker(self, name: str) -> ManagedProcess:
        worker = self._spawn_worker(name)
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def _spawn_worker(self, name: str) -> ManagedProcess:
        return ManagedProcess(
            "workers",
            [*self._backbone(), "--port", str(self.port), "--worker-id", name, *self.worker_args],
        )

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def processes(self) -> list[ManagedProcess]:
        return [p for p in [self.coordinator, *self.workers] if p is not None]

    def stop(self) -> None:
        """Workers first, all told at once (as the launcher does), then the coordinator."""
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        codes = {p.module + str(i): p.stop() for i, p in enumerate(reversed(self.processes()))}
        for p in self.processes():
            p.assert_no_traceback()
        assert all(code in (0, -9) for code in codes.values()), codes


async def raw_upgrade(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A non-blocking socket to ``127.0.0.1:port`` that has sent a WebSocket upgrade
    request and read nothing: a client whose reading the test controls (``rcvbuf``
    shrinks its receive buffer first, so that a server's writes back up sooner)."""
    raw = socket.socket()
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.connect(("127.0.0.1", port))
    raw.setblocking(False)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await asyncio.get_running_loop().sock_sendall(raw, request.encode())
    return raw


class Launched:
    """``scripts/cluster.py``, as ``make run`` starts it, in a private runtime dir, with
    ``coordinator``/``worker`` words passed through and ``extra`` launcher options."""

    def __init__(
        self,
        tmp: Path,
        workers: int,
        *,
        coordinator: Sequence[str] = (),
        worker: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        args = ["--workers", str(workers), "--port", str(self.port), *extra]
        args += [f"--coordinator-arg={a}" for a in coordinator]
        args += [f"--worker-arg={a}" for a in worker]
        self.proc = ManagedProcess("scripts.cluster", args, env={"XDG_RUNTIME_DIR": str(tmp)})
        self.proc.wait_ready(timeout=30)

    def pid(self, name: str) -> int:
        """The pid of the launcher's child ``name`` (the last one started)."""
        pids = re.findall(rf"started {re.escape(name)} pid (\d+)", self.proc.output())
        assert pids, f"{name} was never started:\n{self.proc.output()}"
        return int(pids[-1])

    def stop(self) -> None:
        assert self.proc.stop(timeout=20) == 0, self.proc.output()
        text = self.proc.output()
        assert "Traceback" not in text, text


def tls_files(tmp: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 and localhost from a CA made for the test: the chain
    and key files (for ``--tls-cert``/``--tls-key``) and a client context trusting it."""
    import trustme  # only the TLS tests need it

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp / "chain.pem", tmp / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)  # one every user can read is refused
    cert.cert_chain_pems[0].write_to_path(str(chain))
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    return chain, key, client_ssl


# --------------------------------------------------------------------------- other users

NOBODY = 65534
AS_ROOT = os.getuid() == 0
"""Whether a test can act as another local user (it forks and drops to ``nobody``):
as root, which the developers' machines and CI are."""


@contextlib.contextmanager
def another_user(action: Callable[[], str], timeout: float = 30.0) -> Iterator[str]:
    """Run ``action`` in a forked child that became uid and gid ``nobody`` (an attacker
    with a local shell) and yield the line of text it returned (``error: ...`` if it
    raised) while the child lives on, holding whatever it opened (a listening socket);
    the child exits when the block ends. Needs root (:data:`AS_ROOT`). ``action`` runs
    in a fork of the test process: plain sockets and files only."""
    results, result_end = os.pipe()
    hold_end, hold = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other user
        try:
            os.close(results)
            os.close(hold)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                text = action()
            except BaseException as exc:
                text = f"error: {exc!r}"
            os.write(result_end, " ".join(text.splitlines()).encode()[:4000] + b"\n")
            os.read(hold_end, 1)  # until the test closes its end
        finally:
            os._exit(0)
    os.close(result_end)
    os.close(hold_end)
    try:
        ready, _, _ = select.select([results], [], [], timeout)
        assert ready, f"the other user's action did not finish within {timeout}s"
        yield os.read(results, 4096).decode().strip()
    finally:
        os.close(results)
        os.close(hold)
        os.waitpid(pid, 0)
