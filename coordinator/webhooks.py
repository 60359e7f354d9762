"""Signed webhooks: what is delivered, when, and what is given up (pure, no I/O).

Theory of operation
-------------------
A backend that reacts to presence can be told of every lobby update by an HTTP POST to
a URL of its own (``--webhook-url``). Exactly one process sends them: the coordinator,
which alone orders every change (a worker-based sender would send each event once per
worker). Each published update becomes one event (:mod:`shared.events`, the encoding
the event stream uses too), and events go out in **deliveries**: one POST of a batch of
consecutive events, in order, one delivery in flight at a time.

The outbox. The coordinator's loop must never wait for a receiver, so an update only
adds its event to the :class:`Outbox` (a few list operations) and the sender, on a
thread of its own (:mod:`coordinator.webhook_sender`), takes batches from it. The
outbox is bounded in events and in bytes (``--webhook-outbox-events``,
``--webhook-outbox-bytes``): when an event would take it past either bound, the oldest
undelivered events are dropped, never the delivery in flight, and the loss is never
silent: the next delivery carries ``lost`` (how many events, the ids of the first and
the last), and it is made even if no event is left to go with it. Its memory is the
outbox's bound plus the delivery in flight.

A delivery. Made once from the oldest events (at most ``--webhook-batch-events`` of
them and ``--webhook-batch-bytes`` of body, though a larger event goes alone; never two
epochs in one), it is retried unchanged, the same number and body, until the receiver
answers 2xx: a receiver that applied a delivery whose answer was lost sees it again,
and drops the events it has (their ``seq`` is not above its own). The body::

    {"epoch": E, "first": F, "last": L, "previous": P, "lost": null, "events": [...]}

``first`` and ``last`` are the ``seq`` of its first and last event (``null`` in a
delivery that only reports a loss), ``previous`` the ``seq`` of the last event of the
previous delivery of epoch ``E`` (0 if none: the epoch's first delivery, from an empty
lobby at ``seq`` 0), and ``lost`` ``{"count": N, "from": ID, "to": ID}`` when events
were dropped since the previous delivery. So a receiver that holds ``seq`` S of epoch
E applies the events above S, starts a new epoch from an empty lobby when its first
delivery starts at ``seq`` 1, and knows it missed something when an event skips a
number, ``lost`` is there, or a new epoch starts elsewhere; it then repairs from
``GET /v1/lobby`` (docs/API.md, "Webhooks").

Signing, as Stripe and GitHub do: the header ``Presence-Signature: t=T,v1=HEX`` where T
is the attempt's Unix time in seconds and HEX the HMAC-SHA256, with the secret from
``--webhook-secret-file``, of ``T`` + ``"."`` + the body (:func:`signature`). Each attempt
is signed afresh (a new T, the same body), so a receiver that refuses old timestamps
refuses replays of a captured delivery and never a retry.

Retries (:class:`Retry`): after a failed attempt (no connection, no answer within
``--webhook-timeout``, an answer that is not 2xx) the next one waits a random time
between 0 and ``--webhook-backoff`` x 2^(failures - 1), capped at
``--webhook-max-backoff`` (exponential backoff with full jitter: a receiver that comes
back is not hit by every sender at once). A receiver that is down for a restart gets
the delivery once it is back, and every one after it, in order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import deque
from dataclasses import dataclass
from typing import Final, NamedTuple
from urllib.parse import urlsplit

from shared import events
from shared.options import (
    SettingsError,
    at_least,
    option,
    optional,
    positive,
    require,
    validate,
)

SIGNATURE_HEADER: Final = "Presence-Signature"
"""``t=UNIX_SECONDS,v1=HEX``: see :func:`signature`."""
DELIVERY_HEADER: Final = "Presence-Delivery"
"""``EPOCH/N``: the delivery's number in its coordinator's life; a retry repeats it."""
ATTEMPT_HEADER: Final = "Presence-Attempt"
"""1 for a delivery's first attempt, 2 for its first retry, ..."""
OUTCOMES: Final = ("delivered", "status", "timeout", "unreachable", "broken")
"""How an attempt ends: a 2xx answer; another status; no answer in time; no connection
(refused, no route, a name that does not resolve, a TLS handshake refused); the
connection lost or an answer that is not HTTP."""


def url_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a webhook URL, or ``None``."""
    try:
        target = parse_url(text)
    except ValueError as exc:
        return str(exc)
    return None if target else "must be an http:// or https:// URL"


class Target(NamedTuple):
    """Where deliveries go, from ``--webhook-url``."""

    tls: bool
    host: str
    port: int
    path: str
    """The request target: the path and query (``/`` if none)."""
    authority: str
    """The ``Host`` header: the URL's host and port as written."""


def parse_url(text: str) -> Target:
    """The :class:`Target` of an ``http://`` or ``https://`` URL; ``ValueError`` saying
    what is wrong with anything else."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"must be an http:// or https:// URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold credentials (the signature authenticates deliveries)")
    if parts.fragment or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in text):
        raise ValueError("must be a URL without a fragment, spaces or non-ASCII characters")
    tls = parts.scheme == "https"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(tls, parts.hostname, port or (443 if tls else 80), path, parts.netloc)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookOptions:
    """Where presence events are POSTed, how they are signed, and the sender's bounds."""

    webhook_url: str | None = option(
        None,
        "URL (http:// or https://) to POST signed deliveries of presence events to "
        "(docs/API.md, Webhooks); needs --webhook-secret-file. Off by default",
        check=optional(url_problem),
    )
    webhook_secret_file: str | None = option(
        None,
        "file holding the secret deliveries are signed with (at least 16 characters, one "
        "line; readable only by this user); needs --webhook-url",
    )
    webhook_ca_file: str | None = option(
        None,
        "PEM file of the certificate authorities an https:// --webhook-url is checked against",
        shown="the system's",
    )
    webhook_timeout: float = option(
        10.0,
        "seconds an attempt may take (connect, send, the answer's status line) before it "
        "counts as failed and is retried: a receiver should answer at once and do its "
        "work later; GitHub allows its webhooks as long",
        check=positive,
    )
    webhook_backoff: float = option(
        0.5,
        "seconds: after the n-th failed attempt in a row the next one waits a random time "
        "up to this x 2^(n-1) (full jitter), so a receiver back from a restart gets its "
        "deliveries within about a second",
        check=positive,
    )
    webhook_max_backoff: float = option(
        30.0,
        "seconds: the cap on that wait, so a receiver back after a long outage is tried "
        "again within half a minute",
        check=positive,
    )
    webhook_batch_events: int = option(
        100,
        "events in one delivery at most (a receiver that falls behind catches up a "
        "hundred at a time)",
        check=at_least(1),
    )
    webhook_batch_bytes: int = option(
        256 * 1024,
        "bytes of one delivery's body at most (a larger event goes alone): well under "
        "common request-body limits (nginx's is 1 MiB)",
        check=at_least(1024),
    )
    webhook_outbox_events: int = option(
        10_000,
        "undelivered events kept while the receiver fails; past it the oldest are dropped "
        "and the next delivery says so: 50 s of a busy small lobby's updates (200 a "
        "second at the 5 ms --batch-window), 8 minutes of a big one's (20 a second)",
        check=at_least(1),
    )
    webhook_outbox_bytes: int = option(
        32 * 1024 * 1024,
        "bytes of undelivered events kept (the coordinator's memory for them, with the "
        "delivery in flight); past it the oldest are dropped and the next delivery says "
        "so: half a minute of 10,000 joins and leaves a second",
        check=at_least(1024),
    )

    def __post_init__(self) -> None:
        validate(self)
        if (self.webhook_url is None) != (self.webhook_secret_file is None):
            given, missing = (
                ("--webhook-url", "--webhook-secret-file")
                if self.webhook_secret_file is None
                else ("--webhook-secret-file", "--webhook-url")
            )
            raise SettingsError(f"{given} needs {missing}: webhooks are always signed")
        require(
            self.webhook_max_backoff >= self.webhook_backoff,
            "--webhook-max-backoff must be at least --webhook-backoff",
        )

    @property
    def enabled(self) -> bool:
        return self.webhook_url is not None


# ------------------------------------------------------------------ signing


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The :data:`SIGNATURE_HEADER` value of ``body`` sent at ``timestamp`` (Unix
    seconds): ``t=TIMESTAMP,v1=HEX``, HEX the HMAC-SHA256 with ``secret`` of
    ``TIMESTAMP`` + ``"."`` + ``body``."""
    signed = str(timestamp).encode() + b"." + body
    return f"t={timestamp},v1={hmac.new(secret, signed, hashlib.sha256).hexdigest()}"


# ------------------------------------------------------------------ the outbox


@dataclass(frozen=True, slots=True)
class Loss:
    """Events dropped between two deliveries: how many, and the first's and the last's
    ``(epoch, seq)``."""

    count: int
    first: tuple[str, int]
    last: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One POST, made once and retried unchanged until the receiver answers 2xx."""

    number: int
    """Counts the deliveries of this outbox, from 1."""
    epoch: str
    first: int | None
    last: int | None
    previous: int
    lost: Loss | None
    count: int
    """Events in it."""
    body: bytes
    oldest: float
    """When its first event was added (or its loss noticed): for the lag."""

    @property
    def id(self) -> str:
        """The :data:`DELIVERY_HEADER` value."""
        return f"{self.epoch}/{self.number}"


class _Queued(NamedTuple):
    epoch: str
    seq: int
    event: bytes
    at: float


class Outbox:
    """Events waiting for delivery, bounded; the delivery in flight; losses. Used by two
    threads, so its caller holds a lock around every call (each is a few list
    operations)."""

    def __init__(self, options: WebhookOptions) -> None:
        self.max_events = options.webhook_outbox_events
        self.max_bytes = options.webhook_outbox_bytes
        self.batch_events = options.webhook_batch_events
        self.batch_bytes = options.webhook_batch_bytes
        self._queue: deque[_Queued] = deque()
        self.bytes = 0
        """Bytes of the events queued (the delivery in flight is not counted)."""
        self._in_flight: Delivery | None = None
        self._lost: Loss | None = None
        self._lost_at = 0.0
        self._previous: tuple[str, int] = ("", 0)  # epoch and seq of the last event sent
        self._made = 0
        self.dropped = 0
        """Events dropped since the start (each reported to the receiver)."""
        self.delivered = 0
        """Events the receiver acknowledged since the start."""

    def __len__(self) -> int:
        """Events queued (the delivery in flight is not counted)."""
        return len(self._queue)

    @property
    def in_flight(self) -> Delivery | None:
        return self._in_flight

    def add(self, epoch: str, seq: int, event: bytes, now: float) -> bool:
        """Queue one event (its encoding) at ``now``; drops the oldest queued events if
        the bounds are passed. Returns whether the sender may be waiting for work
        (nothing in flight), so that it is woken."""
        self._queue.append(_Queued(epoch, seq, event, now))
        self.bytes += len(event)
        while self._queue and (len(self._queue) > self.max_events or self.bytes > self.max_bytes):
            old = self._queue.popleft()
            self.bytes -= len(old.event)
            self.dropped += 1
            here = (old.epoch, old.seq)
            if self._lost is None:
                self._lost, self._lost_at = Loss(1, here, here), now
            else:
                self._lost = Loss(self._lost.count + 1, self._lost.first, here)
        return self._in_flight is None

    def next(self) -> Delivery | None:
        """The delivery to attempt: the one in flight, else a new one from the oldest
        queued events (and the loss since the last), else ``None`` (nothing to send)."""
        if self._in_flight is None and (self._queue or self._lost is not None):
            self._in_flight = self._make()
        return self._in_flight

    def done(self) -> Delivery | None:
        """The receiver acknowledged the delivery in flight (returned)."""
        delivery, self._in_flight = self._in_flight, None
        if delivery is not None:
            self.delivered += delivery.count
        return delivery

    def lag(self, now: float) -> float:
        """Seconds since the oldest undelivered event (or loss) was added; 0 if none."""
        if self._in_flight is not None:
            return max(0.0, now - self._in_flight.oldest)
        oldest = [self._lost_at] if self._lost is not None else []
        if self._queue:
            oldest.append(self._queue[0].at)
        return max(0.0, now - min(oldest)) if oldest else 0.0

    def _make(self) -> Delivery:
        taken: list[_Queued] = []
        size = 0
        queue = self._queue
        while queue and len(taken) < self.batch_events:
            head = queue[0]
            if taken and (
                head.epoch != taken[0].epoch or size + len(head.event) > self.batch_bytes
            ):
                break
            taken.append(queue.popleft())
            size += len(head.event)
        self.bytes -= size
        lost, self._lost = self._lost, None
        if taken:
            epoch, first, last = taken[0].epoch, taken[0].seq, taken[-1].seq
            oldest = taken[0].at if lost is None else min(taken[0].at, self._lost_at)
        else:
            assert lost is not None
            epoch, first, last, oldest = lost.last[0], None, None, self._lost_at
        previous = self._previous[1] if self._previous[0] == epoch else 0
        if last is not None:
            self._previous = (epoch, last)
        self._made += 1
        body = _body(epoch, first, last, previous, lost, [item.event for item in taken])
        return Delivery(self._made, epoch, first, last, previous, lost, len(taken), body, oldest)


def _body(
    epoch: str,
    first: int | None,
    last: int | None,
    previous: int,
    lost: Loss | None,
    encoded: list[bytes],
) -> bytes:
    loss = "null"
    if lost is not None:
        loss = (
            f'{{"count":{lost.count},"from":{json.dumps(events.event_id(*lost.first))},'
            f'"to":{json.dumps(events.event_id(*lost.last))}}}'
        )
    head = (
        f'{{"epoch":{json.dumps(epoch)},"first":{json.dumps(first)},"last":{json.dumps(last)},'
        f'"previous":{previous},"lost":{loss},"events":['
    )
    return head.encode() + b",".join(encoded) + b"]}"


# ------------------------------------------------------------------ retries


class Retry:
    """When the next attempt goes: at once after a success, else after exponential
    backoff with full jitter (``draw`` is a random number in [0, 1), from the caller)."""

    def __init__(self, options: WebhookOptions) -> None:
        self.base = options.webhook_backoff
        self.cap = options.webhook_max_backoff
        self.failures = 0
        """Failed attempts in a row."""

    def failed(self, draw: float) -> float:
        """An attempt failed: seconds to wait before the next one."""
        self.failures += 1
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 64))
        return draw * ceiling

    def succeeded(self) -> int:
        """An attempt succeeded: returns how many had failed before it."""
        failures, self.failures = self.failures, 0
        return failures


def outcome_of(status: int) -> str:
    """The :data:`OUTCOMES` label of an answer with ``status``."""
    return "delivered" if 200 <= status <= 299 else "status"
