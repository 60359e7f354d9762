"""The backend's feeds beside a scenario: ``--api-consumers N`` and ``--webhooks``.

With either, the started cluster serves the backend API (a token of its own in a
private temporary directory), and with ``--webhooks`` its coordinator POSTs every
change, signed with a secret of the run's own, to a receiver in this process. Before
the scenario, N consumers follow ``GET /v1/events`` (on an event loop in a thread of
this process, so pinned with the generator by ``--client-cpus``); after it, once the
stream and the webhooks have reached the event the API's ``GET /v1/lobby`` is at, they
stop, and their figures join the scenario's metrics:

* ``stream_*``: events and bytes a second per consumer, within the scenario's measured
  window (its churn) when it has one, else between the first and the last event; the
  latency from an event's publication (``at``) to its receipt, p50/p99/max;
* ``webhook_*``: deliveries a second, events per delivery, the lag from publication to
  the delivery's receipt, p50/p99/max.

Every consumer must get its ``start`` reset then consecutive events, the receiver every
event in order, signed, with no loss reported, and both must catch up: anything else
fails the run (named in its failures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.loadtest.feeds import Measuring, Tally, consume, spread_ms
from scripts.loadtest.pool import LoadTestError
from scripts.loadtest.scenarios import Result
from scripts.procfs import free_port

CATCH_UP_TIMEOUT = 15.0
"""Seconds the feeds may take, after the scenario, to reach the lobby's last event."""
START_TIMEOUT = 10.0
"""Seconds each consumer may take to get its stream's ``start`` reset."""
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _private(path: Path, text: str) -> str:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


class Feeds:
    """The consumers and the receiver of one run; :meth:`close` always, at the end."""

    def __init__(self, consumers: int, webhooks: bool) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="loadtest-feeds-")
        home = Path(self._dir.name)
        self.token = secrets.token_hex(32)
        self.token_file = _private(home / "api-token", self.token)
        secret = secrets.token_hex(32)
        self.secret_file = _private(home / "webhook-secret", secret)
        self.api_port = free_port()
        self.tallies = [Tally() for _ in range(consumers)]
        self.receiver = Measuring(secret.encode()) if webhooks else None
        # Listening from now on, so that no delivery is refused, but served only once
        # :meth:`start` runs the event loop (after the generator forks its processes).
        self._listener = socket.create_server(("127.0.0.1", 0)) if webhooks else None
        self.hook_port = self._listener.getsockname()[1] if self._listener else 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="feeds", daemon=True)
        self._tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None

    def _call(self, coroutine: Any, timeout: float) -> Any:
        """Run ``coroutine`` on the feeds' thread; its result, or LoadTestError."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError as exc:
            future.cancel()
            raise LoadTestError(f"the feeds' thread did not answer in {timeout:g}s") from exc

    def cluster_args(self) -> list[str]:
        """Words for ``scripts/cluster.py``: the API, and the coordinator's webhooks."""
        words = ["--api-port", str(self.api_port), "--api-token-file", self.token_file]
        if self.receiver is not None:
            hook = (
                ("--webhook-url", f"http://127.0.0.1:{self.hook_port}/hook"),
                ("--webhook-secret-file", self.secret_file),
            )
            words += [w for pair in hook for word in pair for w in ("--coordinator-arg", word)]
        return words

    def start(self) -> None:
        """Serve the webhooks, start the consumers; return once each has its stream's
        start."""

        async def start() -> None:
            if self.receiver is not None and self._listener is not None:
                self._server = await asyncio.start_server(self.receiver.handle, sock=self._listener)
            for tally in self.tallies:
                task = consume("127.0.0.1", self.api_port, self.token, tally)
                self._tasks.append(asyncio.ensure_future(task))

        self._thread.start()
        self._call(start(), 5.0)
        deadline = time.monotonic() + START_TIMEOUT
        while any(t.last is None and not t.problems for t in self.tallies):
            if time.monotonic() > deadline:
                raise LoadTestError(f"an event stream did not start in {START_TIMEOUT:g}s")
            time.sleep(0.02)  # polling the consumers' thread until a deadline
        problems = [p for t in self.tallies for p in t.problems]
        if problems:
            raise LoadTestError(f"event stream: {problems[0]}")

    def lobby_position(self) -> tuple[str, int]:
        """The (epoch, seq) of the last event ``GET /v1/lobby`` includes."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/v1/lobby",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with _DIRECT.open(request, timeout=5.0) as answer:
                epoch, _, seq = json.loads(answer.read())["lastEventId"].rpartition(":")
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            raise LoadTestError(f"GET /v1/lobby: {exc}") from exc
        return epoch, int(seq)

    def finish(self, result: Result, window: tuple[float, float] | None) -> None:
        """Wait until the feeds have every event of the lobby, stop them, and add their
        figures and failures to ``result``."""
        epoch, seq = self.lobby_position()
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while (late := behind(self.tallies, self.receiver, epoch, seq)) and not any(
            t.problems for t in self.tallies
        ):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)  # polling the feeds' thread until a deadline

        async def stop() -> None:
            for task in self._tasks:
                task.cancel()
            ended = await asyncio.gather(*self._tasks, return_exceptions=True)
            for tally, end in zip(self.tallies, ended, strict=True):
                if isinstance(end, Exception):  # not a CancelledError: it broke
                    tally.problems.append(f"the consumer failed: {end!r}")

        self._call(stop(), 5.0)
        metrics, failures = summary(self.tallies, self.receiver, window)
        failures += [f"{who} did not reach event {seq} in {CATCH_UP_TIMEOUT:g}s" for who in late]
        merge(result, metrics, failures)

    def close(self) -> None:
        if self._thread.is_alive():

            async def shut() -> None:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                if self._server is not None:
                    self._server.close()

            try:
                with contextlib.suppress(LoadTestError):
                    self._call(shut(), 5.0)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5.0)
        if not self._loop.is_running():
            self._loop.close()
        if self._listener is not None:
            self._listener.close()
        self._dir.cleanup()


# --------------------------------------------------------------------------- pure


def behind(tallies: Sequence[Tally], receiver: Measuring | None, epoch: str, seq: int) -> list[str]:
    """Which feeds have not yet reached event ``seq`` of ``epoch``."""
    late = [f"consumer {i + 1} (at {t.last})" for i, t in enumerate(tallies) if (t.last or 0) < seq]
    if receiver is not None and (receiver.position[0] != epoch or receiver.position[1] < seq):
        late.append(f"the webhook receiver (at {receiver.position[1]})")
    return late


def _rate(
    arrivals: Sequence[tuple[float, int]], window: tuple[float, float] | None
) -> tuple[float, float]:
    """(arrivals, summed values) a second within ``window``, else over their own span."""
    if window is None:
        if len(arrivals) < 2:
            return 0.0, 0.0
        window = (arrivals[0][0], arrivals[-1][0])
    inside = [v for at, v in arrivals if window[0] <= at <= window[1]]
    span = max(window[1] - window[0], 1e-9)
    return len(inside) / span, sum(inside) / span


def summary(
    tallies: Sequence[Tally], receiver: Measuring | None, window: tuple[float, float] | None
) -> tuple[dict[str, Any], list[str]]:
    """The feeds' metrics, and a failure for each thing they got wrong."""
    metrics: dict[str, Any] = {}
    failures: list[str] = []
    if tallies:
        rates = [_rate(t.arrivals, window) for t in tallies]
        metrics["stream_consumers"] = len(tallies)
        metrics["stream_events"] = min(t.events for t in tallies)
        metrics["stream_events_per_s_per_consumer"] = round(statistics.mean(r[0] for r in rates), 1)
        metrics["stream_bytes_per_s_per_consumer"] = round(statistics.mean(r[1] for r in rates))
        spread = spread_ms([x for t in tallies for x in t.latencies])
        metrics.update({f"stream_latency_{k}_ms": v for k, v in spread.items()})
        for i, t in enumerate(tallies):
            if t.problems:
                shown = "; ".join(t.problems[:3])
                failures.append(f"event stream {i + 1}: {len(t.problems)} problems: {shown}")
            elif not t.events:
                failures.append(f"event stream {i + 1} received no event")
    if receiver is not None:
        delivered = len(receiver.lags)
        per_s, _events_per_s = _rate(receiver.arrivals, window)
        metrics["webhook_events"] = delivered
        metrics["webhook_deliveries"] = receiver.deliveries
        metrics["webhook_deliveries_per_s"] = round(per_s, 1)
        metrics["webhook_events_per_delivery"] = round(delivered / max(1, receiver.deliveries), 2)
        metrics.update({f"webhook_lag_{k}_ms": v for k, v in spread_ms(receiver.lags).items()})
        for key, count, what in (
            ("webhook_gaps", receiver.gaps, "gaps between events"),
            ("webhook_lost", receiver.lost, "events reported lost"),
            ("webhook_bad_signatures", receiver.bad, "deliveries with a bad signature"),
        ):
            metrics[key] = count
            if count:
                failures.append(f"webhooks: {count} {what}")
        if not delivered:
            failures.append("webhooks: no event delivered")
    return metrics, failures


def merge(result: Result, metrics: dict[str, Any], failures: list[str]) -> None:
    """The feeds' figures into the scenario's result; their failures fail it."""
    result.metrics.update(metrics)
    result.failures.extend(failures)
