"""The webhook sender: the HTTP side of :mod:`coordinator.webhooks`, on a thread of its own.

The coordinator's loop is one thread that must never wait for a receiver, so the sender
runs an asyncio loop on a second thread. The coordinator's thread only offers each
published update (:meth:`WebhookSender.offer`: the event's encoding, then a few list
operations on the :class:`~coordinator.webhooks.Outbox` under a lock) and wakes the
sender if it was idle; the sender takes deliveries from the outbox, POSTs them one at a
time and tells the outbox and the :class:`~coordinator.webhooks.Retry` schedule how each
attempt ended. Everything it decides is decided there; this module only carries it out.

HTTP is a minimal HTTP/1.1 client over asyncio streams (:func:`post`), written here
rather than taken from a library: one request shape (a POST with a known length), one
fact needed from the answer (its status), ``Connection: close``, and ``ssl`` from the
standard library for ``https://`` (certificates checked against the system's
authorities, or ``--webhook-ca-file``). Redirects are not followed (a 3xx is a failed
attempt, like any answer but 2xx).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Final, NamedTuple

from coordinator.webhooks import (
    ATTEMPT_HEADER,
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Delivery,
    Outbox,
    Retry,
    Target,
    WebhookOptions,
    outcome_of,
    parse_url,
    signature,
)
from shared import backbone as bb
from shared import events, logs, metrics

log = logging.getLogger("coordinator.webhooks")

USER_AGENT: Final = "presence-lobby-webhooks"
REPORT_EVERY: Final = 1.0
"""Seconds between two updates of the lag and outbox gauges while the sender waits."""
FAILURE_LOG_EVERY: Final = 10.0
"""A receiver that keeps failing is logged at its first failure, then this often, and
whenever the way it fails changes (a status, a refused connection, a timeout...)."""
STOP_WAIT: Final = 2.0


class Attempt(NamedTuple):
    """How one POST ended."""

    outcome: str
    """One of :data:`coordinator.webhooks.OUTCOMES`."""
    status: int | None
    detail: str


async def post(
    target: Target,
    context: ssl.SSLContext | None,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    timeout: float,
) -> Attempt:
    """POST ``body`` to ``target`` with ``headers``; never raises for anything the network
    or the receiver does."""
    head = [f"POST {target.path} HTTP/1.1", f"Host: {target.authority}"]
    head += [f"{name}: {value}" for name, value in headers]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    request = "\r\n".join(head).encode("ascii") + body
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(
                    target.host, target.port, ssl=context
                )
            except OSError as exc:
                return Attempt("unreachable", None, str(exc) or type(exc).__name__)
            writer.write(request)
            await writer.drain()
            while True:  # a 1xx answer (100 Continue, unasked) comes before the real one
                status, reason = _status_line(await reader.readline())
                if status >= 200:
                    return Attempt(outcome_of(status), status, reason)
                while (await reader.readline()).strip():
                    pass
    except TimeoutError:
        return Attempt("timeout", None, f"no answer within {timeout:g} s")
    except (OSError, EOFError, ValueError) as exc:  # reset, TLS alert, a line too long
        return Attempt("broken", None, str(exc) or type(exc).__name__)
    finally:
        if writer is not None:
            writer.transport.abort()


def _status_line(line: bytes) -> tuple[int, str]:
    """The status and reason of an HTTP/1.x status line; ``ValueError`` otherwise."""
    if not line:
        raise EOFError("the connection closed before an answer")
    version, _, rest = line.decode("latin-1").strip().partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError("the answer is not HTTP/1.x")
    return int(code), reason[:80]


class WebhookSetupError(Exception):
    """The webhooks cannot start as configured (the message names the option)."""


def tls_context(options: WebhookOptions) -> ssl.SSLContext:
    """Certificates checked against ``--webhook-ca-file``, else the system's authorities."""
    try:
        return ssl.create_default_context(cafile=options.webhook_ca_file)
    except (OSError, ValueError) as exc:  # missing, unreadable, not PEM certificates
        raise WebhookSetupError(
            f"--webhook-ca-file {options.webhook_ca_file}: {exc.strerror or exc}"
            if isinstance(exc, OSError)
            else f"--webhook-ca-file {options.webhook_ca_file}: {exc}"
        ) from None


class WebhookSender:
    """The outbox, its lock, and the thread that empties it."""

    def __init__(
        self, options: WebhookOptions, secret: bytes, context: ssl.SSLContext | None = None
    ) -> None:
        assert options.webhook_url is not None
        self.options = options
        self.target = parse_url(options.webhook_url)
        self._secret = secret
        self._context = context if context is not None or not self.target.tls else None
        if self.target.tls and self._context is None:
            self._context = tls_context(options)
        self._lock = threading.Lock()
        self.outbox = Outbox(options)
        self._retry = Retry(options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._main: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._tally = metrics.Tally()
        self._failing_logged = float("-inf")
        self._failing_as: tuple[str, int | None] = ("", None)  # the last failure logged
        self._loss_logged = 0  # the number of the last delivery whose loss was logged

    # ------------------------------------------------------------------ the coordinator's side

    def start(self) -> None:
        metrics.start_webhooks()
        self._thread.start()
        self._started.wait(STOP_WAIT)
        log.info(
            "webhooks on: signed deliveries to %s://%s%s",
            "https" if self.target.tls else "http",
            self.target.authority,
            self.target.path.partition("?")[0],
            extra=logs.event("webhooks_on", host=self.target.authority),
        )

    def offer(self, update: bb.Update) -> None:
        """Queue the event of a published update (called on the coordinator's thread:
        never waits for the receiver)."""
        event = events.encode(events.from_update(update))
        with self._lock:
            idle = self.outbox.add(update.epoch, update.seq, event, time.monotonic())
        loop, wake = self._loop, self._wake
        if idle and loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: stopping
                loop.call_soon_threadsafe(wake.set)

    def stop(self) -> None:
        """Stop the sender (what is undelivered is lost, as at a crash: the next
        coordinator's deliveries are of another epoch, which tells the receiver)."""
        loop, main = self._loop, self._main
        if loop is not None and main is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(main.cancel)
        self._thread.join(STOP_WAIT)

    # ------------------------------------------------------------------ the sender's thread

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._main = asyncio.current_task()
        self._started.set()
        reporter = asyncio.create_task(self._report_often())
        try:
            while True:
                self._wake.clear()
                with self._lock:
                    delivery = self.outbox.next()
                if delivery is None:
                    await self._wake.wait()
                    continue
                if delivery.lost is not None and delivery.number != self._loss_logged:
                    self._loss_logged = delivery.number
                    self._log_loss(delivery)
                await self._attempt(delivery)
        finally:
            reporter.cancel()

    async def _attempt(self, delivery: Delivery) -> None:
        retry = self._retry
        headers = [
            ("User-Agent", USER_AGENT),
            ("Content-Type", "application/json"),
            (DELIVERY_HEADER, delivery.id),
            (ATTEMPT_HEADER, str(retry.failures + 1)),
            (SIGNATURE_HEADER, signature(self._secret, int(time.time()), delivery.body)),
        ]
        attempt = await post(
            self.target, self._context, headers, delivery.body, self.options.webhook_timeout
        )
        metrics.WEBHOOK_DELIVERIES.labels(attempt.outcome).inc()
        if attempt.outcome == "delivered":
            with self._lock:
                self.outbox.done()
            failed = retry.succeeded()
            if failed:
                log.info(
                    "webhook receiver answered after %d failed attempts: deliveries go on",
                    failed,
                    extra=logs.event("webhook_recovered", failures=failed),
                )
            self._report()
            return
        delay = retry.failed(random.random())
        self._log_failure(delivery, attempt, delay)
        self._report()
        await asyncio.sleep(delay)

    def _log_failure(self, delivery: Delivery, attempt: Attempt, delay: float) -> None:
        now = time.monotonic()
        outcome, status, detail = attempt
        same = (outcome, status) == self._failing_as
        if self._retry.failures > 1 and same and now - self._failing_logged < FAILURE_LOG_EVERY:
            return
        self._failing_logged, self._failing_as = now, (outcome, status)
        what = (
            f"status {status} {detail}".rstrip() if status is not None else f"{outcome}: {detail}"
        )
        log.warning(
            "webhook delivery %s failed (%s), %d attempts in a row; retrying in %.1f s",
            delivery.id,
            what,
            self._retry.failures,
            delay,
            extra=logs.event(
                "webhook_failed",
                delivery=delivery.id,
                outcome=outcome,
                status=status,
                error=detail,
                failures=self._retry.failures,
            ),
        )

    @staticmethod
    def _log_loss(delivery: Delivery) -> None:
        lost = delivery.lost
        assert lost is not None
        first, last = events.event_id(*lost.first), events.event_id(*lost.last)
        log.warning(
            "webhook outbox full: %d events dropped (%s to %s); delivery %s tells the receiver",
            lost.count,
            first,
            last,
            delivery.id,
            extra=logs.event("webhook_events_dropped", count=lost.count, first=first, last=last),
        )

    async def _report_often(self) -> None:
        while True:
            self._report()
            await asyncio.sleep(REPORT_EVERY)

    def _report(self) -> None:
        """The outbox's figures to the metrics."""
        with self._lock:
            box = self.outbox
            lag, queued, size = box.lag(time.monotonic()), len(box), box.bytes
            dropped, delivered = box.dropped, box.delivered
        metrics.WEBHOOK_LAG.set(lag)
        metrics.WEBHOOK_OUTBOX_EVENTS.set(queued)
        metrics.WEBHOOK_OUTBOX_BYTES.set(size)
        self._tally.feed(metrics.WEBHOOK_EVENTS.labels("dropped"), dropped)
        self._tally.feed(metrics.WEBHOOK_EVENTS.labels("delivered"), delivered)
