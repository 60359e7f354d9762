"""The parent's side of the generator processes: start them, run an op on all of them
at once, show progress, collect the answers, stop them whatever happens."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TextIO

from scripts.loadtest.agent import agent_main
from scripts.loadtest.client import resolve_ws_client
from scripts.loadtest.cpus import CpuSet, pin_process


class LoadTestError(Exception):
    """The load test could not run, or its correctness checks failed."""


class Progress:
    """A one-line progress bar on a terminal; silent elsewhere (logs stay readable)."""

    def __init__(self, label: str, total: int, out: TextIO = sys.stderr) -> None:
        self.label = label
        self.total = max(total, 1)
        self.out = out
        self.started = time.monotonic()
        self.enabled = out.isatty()
        self._drawn = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        width = 30
        filled = min(width, width * done // self.total)
        bar = "#" * filled + "." * (width - filled)
        self.out.write(f"\r{self.label:<18} [{bar}] {done}/{self.total} {now - self.started:5.1f}s")
        self.out.flush()

    def finish(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            self.out.write("\n")
            self.out.flush()


class AgentPool:
    """``procs`` generator processes, each an :class:`~scripts.loadtest.agent.Agent`.

    Processes are forked (Linux): cheap, and they need nothing but their arguments.
    Use as a context manager; leaving it stops every process, also on errors."""

    def __init__(
        self,
        procs: int,
        url: str,
        salt: bytes,
        sources: Sequence[str] = (),
        cpus: CpuSet | None = None,
        sample: float = 1.0,
        ws_client: str = "websockets",
        protocol: int = 1,
    ) -> None:
        """``cpus``: the CPUs every generator process runs on (default: any);
        ``sample``: the fraction of watchers that apply and time every update on arrival
        (:attr:`~scripts.loadtest.agent.Agent.sample`; 1.0: every client);
        ``ws_client``: the clients' WebSocket library (``websockets``, ``picows`` or
        ``auto``: picows when installed); ``protocol``: the version the clients speak."""
        self.ws_client = resolve_ws_client(ws_client)
        ctx = multiprocessing.get_context("fork")
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for i in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=agent_main,
                args=(child, i, url, salt, list(sources), cpus, sample, self.ws_client, protocol),
                name=f"loadgen-{i}",
                daemon=True,
            )
            proc.start()
            if cpus is not None and proc.pid is not None:
                # The child pins itself too, first thing; this makes it so on return.
                pin_process(proc.pid, cpus)
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def size(self) -> int:
        return len(self.conns)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def call(
        self,
        op: str,
        kwargs: dict[str, Any] | Callable[[int], dict[str, Any]] | None = None,
        *,
        timeout: float = 300.0,
        progress: Progress | None = None,
    ) -> list[Any]:
        """Run ``op`` on every agent at once (``kwargs`` per agent index when callable);
        returns the answers in agent order. Raises :class:`LoadTestError` when an
        agent fails, dies, or ``timeout`` seconds pass."""
        for i, conn in enumerate(self.conns):
            args = kwargs(i) if callable(kwargs) else (kwargs or {})
            conn.send((op, args))
        results: dict[int, Any] = {}
        done_counts = [0] * self.size
        deadline = time.monotonic() + timeout
        while len(results) < self.size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadTestError(f"op {op} did not finish within {timeout:.0f}s")
            pending = [c for i, c in enumerate(self.conns) if i not in results]
            for ready in wait(pending, timeout=min(remaining, 0.5)):
                i = next(n for n, c in enumerate(self.conns) if c is ready)
                try:
                    kind, payload = self.conns[i].recv()
                except EOFError:
                    raise LoadTestError(f"generator process {i} died during {op}") from None
                if kind == "progress":
                    done_counts[i] = payload
                elif kind == "error":
                    raise LoadTestError(payload)
                else:
                    results[i] = payload
            if progress is not None:
                progress.update(sum(done_counts))
        if progress is not None:
            progress.finish(sum(done_counts) if any(done_counts) else progress.total)
        return [results[i] for i in range(self.size)]

    def close(self) -> None:
        """Ask every agent to close its clients and exit; kill those that do not."""
        for conn in self.conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        deadline = time.monotonic() + 15.0
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        for conn in self.conns:
            conn.close()

    def __enter__(self) -> AgentPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_procs(cpus: CpuSet | None = None) -> int:
    """Generator processes by default: one per CPU of its own (``cpus``), or, sharing
    the machine with the server, one per CPU and at least 2 (clients parse frames in
    Python, so the generator needs as many cores as it can get). On a CPU of its own,
    a second process only adds switches between them: churn with 2,000 watchers on one
    pinned CPU measured a p99 of 126-189 ms with one process, 171-364 ms with two."""
    if cpus:
        return len(cpus)
    return max(2, os.cpu_count() or 1)
