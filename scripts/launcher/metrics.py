"""The launcher's metrics: one ``/metrics`` endpoint for every process on this machine."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from scripts import procfs
from scripts.launcher.config import connect_url
from shared import listen

MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")

Processes = Callable[[], Iterable[tuple[str, int]]]
"""The processes of this machine as ``(label, pid)``: ``launcher``, ``coordinator``,
``w1``... (one per supervised position, whatever its restarts)."""


class MetricsEndpoint:
    """``GET /metrics`` for every process of this machine, from a thread.

    The children write their metrics to memory-mapped files in a private directory
    (``PROMETHEUS_MULTIPROC_DIR``, ``prometheus_client``'s multiprocess mode); a scrape
    sums them. So one endpoint covers every process without any channel between them,
    and a process that died is dealt with where it is noticed: :meth:`process_died`.
    ``prometheus_client`` is imported here, and only here: the launcher starts without
    it when metrics are off."""

    def __init__(self, host: str, port: int, processes: Processes = lambda: ()) -> None:
        """Raises :class:`ImportError` without ``prometheus_client``,
        :class:`PortTaken` when the port cannot be bound on one of the addresses. On a
        loopback host that is both loopback addresses, as for the workers
        (:mod:`shared.listen`): ``localhost`` is ``[::1]`` first."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

        self._mark_dead = mark_process_dead
        self.directory = tempfile.mkdtemp(prefix="presence-metrics-")  # mode 0700
        self._served: list[tuple[Any, threading.Thread]] = []
        try:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
            registry.register(ProcessCollector(processes))
            for addr in listen.hosts(host, ipv6_loopback=listen.ipv6_loopback()):
                try:
                    served = start_http_server(port, addr=addr, registry=registry)
                except OSError as exc:
                    raise PortTaken(listen.address(addr, port), exc) from None
                self._served.append(served)
        except BaseException:
            self.close()
            raise
        self.url = connect_url(host, port, page=True) + "metrics"

    def process_died(self, pid: int) -> None:
        """Drop the live gauges of a child that exited (its counters stay: they count
        what happened, and the machine's totals must not go back)."""
        self._mark_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        for server, thread in self._served:
            server.shutdown()
            server.server_close()
            thread.join(5)
        self._served = []
        shutil.rmtree(self.directory, ignore_errors=True)


class ProcessCollector:
    """``process_*`` for each process of this machine, labelled ``process``, read from
    ``/proc`` at scrape time: what every Prometheus client exports about its own
    process, which ``prometheus_client`` does not in multiprocess mode. The same names
    (``process_cpu_seconds_total``, ``process_resident_memory_bytes``...), so the usual
    dashboards and alerts apply; a process that is gone is left out."""

    NAMES = (
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    )
    """The families, as declared (a counter's samples end in ``_total``)."""

    def __init__(self, processes: Processes) -> None:
        self._processes = processes

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        label = ["process"]
        cpu = CounterMetricFamily(self.NAMES[0], "User and system CPU time.", labels=label)
        rss = GaugeMetricFamily(self.NAMES[1], "Resident memory.", labels=label)
        fds = GaugeMetricFamily(self.NAMES[2], "Open file descriptors.", labels=label)
        limit = GaugeMetricFamily(self.NAMES[3], "Open-file limit (soft).", labels=label)
        start = GaugeMetricFamily(
            self.NAMES[4], "Start time, in seconds since the epoch.", labels=label
        )
        for name, pid in list(self._processes()):
            with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
                figures = (
                    procfs.rss_bytes(pid),
                    procfs.open_fds(pid),
                    procfs.max_fds(pid),
                    procfs.start_time(pid),
                )
                cpu.add_metric([name], procfs.cpu_seconds(pid))
                for family, value in zip((rss, fds, limit, start), figures, strict=True):
                    family.add_metric([name], value)
        yield from (cpu, rss, fds, limit, start)


class PortTaken(OSError):
    """The metrics port cannot be bound on :attr:`where` (``host:port``)."""

    def __init__(self, where: str, error: OSError) -> None:
        super().__init__(error.errno, f"cannot serve {where}: {error.strerror or error}")
        self.where = where
