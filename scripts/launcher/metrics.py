"""The launcher's metrics: one ``/metrics`` endpoint for every process on this machine."""

from __future__ import annotations

import shutil
import tempfile

from scripts.launcher.config import connect_url

MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


class MetricsEndpoint:
    """``GET /metrics`` for every process of this machine, from a thread.

    The children write their metrics to memory-mapped files in a private directory
    (``PROMETHEUS_MULTIPROC_DIR``, ``prometheus_client``'s multiprocess mode); a scrape
    sums them. So one endpoint covers every process without any channel between them,
    and a process that died is dealt with where it is noticed: :meth:`process_died`.
    ``prometheus_client`` is imported here, and only here: the launcher starts without
    it when metrics are off."""

    def __init__(self, host: str, port: int) -> None:
        """Raises :class:`ImportError` without ``prometheus_client``, :class:`OSError`
        when the port cannot be bound."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

        self._mark_dead = mark_process_dead
        self.directory = tempfile.mkdtemp(prefix="presence-metrics-")  # mode 0700
        try:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self.url = connect_url(host, port, page=True) + "metrics"

    def process_died(self, pid: int) -> None:
        """Drop the live gauges of a child that exited (its counters stay: they count
        what happened, and the machine's totals must not go back)."""
        self._mark_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        shutil.rmtree(self.directory, ignore_errors=True)
