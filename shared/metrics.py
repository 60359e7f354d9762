"""Every Prometheus metric of the cluster, declared once (``prometheus_client``).

Theory of operation
-------------------
One scrape endpoint per machine covers every process on it: the launcher
(``scripts/cluster.py --metrics-port``) gives its children a private directory in
``PROMETHEUS_MULTIPROC_DIR``, and ``prometheus_client``'s multiprocess mode keeps each
process's values in memory-mapped files there, which the launcher's endpoint sums at
scrape time. A process started without that variable (a test, a bare ``python -m
workers``) keeps its values in memory, where nobody reads them: recording costs the same
few hundred nanoseconds either way and nothing else changes.

The coordinator's core records nothing: it counts, or says what happened, and its
shell (``coordinator/service.py``) records it here. The worker's core
(``workers/core.py``) records what it decides through :mod:`workers.stats` (a counter
write, no I/O of its own), and its shell (``workers/server.py``) what it writes.
Recording is cheap but not free (an mmap write, about 0.7 us per ``inc()`` in
multiprocess mode), so the hot paths record per batch: a lobby update's fan-out is two
increments per broadcast, whatever the number of clients.

Naming: one prefix (``presence_``), base units (seconds, bytes), ``_total`` for
counters. Labels take values from small closed sets only (the tuples below): never a
public key, a connection id or a worker id, so a scrape reveals nobody and its size
does not grow with the users.

Gauges need a multiprocess mode: how the values of the processes are combined. Each
gauge below says which and why. The ``live`` modes drop a process's value when the
launcher marks it dead, so a dead worker's connections or a dead coordinator's lobby do
not linger.
"""

from __future__ import annotations

from typing import Final, get_args

from prometheus_client import Counter, Gauge, Histogram

from shared import backbone as bb
from shared.protocol import CloseCode, RejectReason, SendStatus
from shared.v2.identity import AuthFailureV2

# ------------------------------------------------------------------ closed label sets

ROLES: Final = ("coordinator", "worker")
CONNECTION_STATES: Final = ("challenged", "authenticating", "online", "lagging")
AUTH_RESULTS: Final = ("ok", *(f.value for f in AuthFailureV2), "timeout", "unavailable")
"""``workers.connection.AuthOutcome``'s values (a test checks that they agree): version 2's
``auth_failed`` reasons are version 1's and ``wrong_server``, ``bad_record``, ...."""
SNAPSHOT_CAUSES: Final = ("join", "get_lobby", "resync", "slow_consumer")
"""``workers.connection.SnapshotCause``'s values."""
RESYNC_REASONS: Final = ("start", "gap", "new_epoch")
"""``workers.replica.ResyncReason``'s values."""
REFUSAL_REASONS: Final = ("full", "busy", "throttled", "cut_off")
"""``workers.admission.Admit``'s refusals, and a worker cut off from its coordinator."""
EVICTION_RULES: Final = ("heavier_source", "waited")
"""Why ``workers.admission`` evicted a challenged connection: its source held more, or
it waited past ``--challenge-grace`` while the door was full."""
MARK_REASONS: Final = ("replaced", "unanswered", "closed")
"""Why ``workers.admission`` marked a source: its connection was replaced by the waiting
rule, answered wrongly or not before its deadline, or was closed while waiting."""
EPOCH_REASONS: Final = ("start", "move")
API_STATUSES: Final = ("200", "400", "401", "404", "405", "503")
EVENTS_RESETS: Final = ("start", "too_old", "epoch", "gap")
"""Why an event-stream consumer was sent a reset (``workers.feed.Reset``)."""
EVENTS_CUT_OFF: Final = ("slow_consumer", "going_away")
"""Why an event-stream consumer was cut off (``workers.feed.CutOff``)."""
KICK_OUTCOMES: Final = bb.EJECT_OUTCOMES
"""The statuses the backend API answers with (``workers.api``; a test checks them)."""
CLOSE_CODES: Final = tuple(
    str(code) for code in sorted({1000, 1002, 1005, 1006, 1007, 1011, *(int(c) for c in CloseCode)})
)
"""Close codes with a label of their own; any other is ``other`` (clients choose theirs)."""
CLOSED_BY: Final = ("server", "client")
NO_REASON: Final = "none"
DIRECT_RESULTS: Final = (
    (SendStatus.DELIVERED.value, NO_REASON),
    (SendStatus.OFFLINE.value, NO_REASON),
    *((SendStatus.REJECTED.value, r.value) for r in RejectReason),
)
"""The ``(status, reason)`` pairs a sender's ``send_result`` can carry."""
COORDINATOR_SENDS: Final = tuple(cls.TAG for cls in get_args(bb.DownMessage))
"""Backbone messages the coordinator queues for one worker (a queue that can refuse)."""
WORKER_SENDS: Final = (*(cls.TAG for cls in get_args(bb.UpMessage)), bb.RouteDone.TAG)
"""Backbone messages a worker queues: events for the coordinator, results for workers."""

# ------------------------------------------------------------------ the coordinator

LOBBY_USERS: Final = Gauge(
    "presence_lobby_users",
    "Keys online in the lobby as of the last published update (what clients are shown).",
    # One coordinator runs at a time: its latest figure, gone when it dies (a dead
    # coordinator has no lobby; its successor's first publication sets it again).
    multiprocess_mode="livemostrecent",
)
LOBBY_UPDATES: Final = Counter(
    "presence_lobby_updates_total", "Lobby updates (numbered deltas) published to the workers."
)
LOBBY_UPDATE_KEYS: Final = Histogram(
    "presence_lobby_update_keys",
    "Keys per published lobby update (joined plus left): how much batching gathers.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 50_000),
)
BATCH_WINDOW: Final = Gauge(
    "presence_lobby_batch_window_seconds",
    "The coordinator's current batching window: it widens under load, up to "
    "--max-batch-window, and returns to --batch-window when the lobby is quiet.",
    multiprocess_mode="livemostrecent",  # the one living coordinator's current value
)
FLAPS: Final = Counter(
    "presence_flaps_total",
    "Keys that left the lobby and joined it again within 10 s, as published.",
)
WORKERS_EXPIRED: Final = Counter(
    "presence_workers_expired_total",
    "Workers presumed dead by the coordinator (silent past --worker-timeout).",
)
GHOSTS_REAPED: Final = Counter(
    "presence_ghosts_reaped_total",
    "Sessions removed from the lobby because their worker was presumed dead.",
)
SESSIONS_REPLACED: Final = Counter(
    "presence_sessions_replaced_total",
    "Sessions that lost their key to a newer session of it (closed with 4002).",
)
EPOCH_CHANGES: Final = Counter(
    "presence_coordinator_epoch_changes_total",
    "New coordinator epochs: one per coordinator start, and one per move above an epoch "
    "a worker reported (a clock behind a predecessor's).",
    ["reason"],
)

WEBHOOK_OUTCOMES: Final = ("delivered", "status", "timeout", "unreachable", "broken")
"""How a webhook delivery attempt ended (``coordinator.webhooks.OUTCOMES``; a test
checks that they agree)."""
WEBHOOK_EVENT_RESULTS: Final = ("delivered", "dropped")
WEBHOOK_DELIVERIES: Final = Counter(
    "presence_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (2xx), status (another answer), "
    "timeout (no answer within --webhook-timeout), unreachable (no connection), broken "
    "(the connection lost, or an answer that is not HTTP).",
    ["outcome"],
)
WEBHOOK_EVENTS: Final = Counter(
    "presence_webhook_events_total",
    "Presence events by what became of them: delivered (the receiver answered 2xx), "
    "dropped (the outbox was full; the next delivery told the receiver).",
    ["result"],
)
WEBHOOK_LAG: Final = Gauge(
    "presence_webhook_lag_seconds",
    "Seconds since the oldest undelivered webhook event was published (0 when all are "
    "delivered): how far behind the receiver is.",
    multiprocess_mode="livemostrecent",  # the one living coordinator's figure
)
WEBHOOK_OUTBOX_EVENTS: Final = Gauge(
    "presence_webhook_outbox_events",
    "Webhook events waiting for delivery (--webhook-outbox-events bounds them; the "
    "delivery in flight is not counted).",
    multiprocess_mode="livemostrecent",
)
WEBHOOK_OUTBOX_BYTES: Final = Gauge(
    "presence_webhook_outbox_bytes",
    "Bytes of webhook events waiting for delivery (--webhook-outbox-bytes bounds them).",
    multiprocess_mode="livemostrecent",
)

# ------------------------------------------------------------------ both

BACKBONE_DROPPED: Final = Counter(
    "presence_backbone_dropped_total",
    "Backbone messages that could not be queued (a full queue or a peer gone), by "
    "message kind and by the role of the process that could not send them.",
    ["role", "kind"],
)

# ------------------------------------------------------------------ the workers

CONNECTIONS: Final = Gauge(
    "presence_connections",
    "Client connections by state: challenged (waiting for a valid auth), authenticating "
    "(verified, not yet auth_ok), online (getting every update), lagging (updates skipped "
    "until it drains, or waiting for a fresh snapshot after a resync).",
    ["state"],
    # Each worker counts its own clients: the machine's figure is the sum over the
    # workers alive (a dead worker's clients are gone with it).
    multiprocess_mode="livesum",
)
MEMORY_BYTES: Final = Gauge(
    "presence_memory_budget_bytes",
    "A worker's memory budget for connection buffers (--memory-budget), by part: limit, "
    "reserved (the kernel send buffers of its connections), backlog (bytes written to "
    "clients and not yet sent), indexes (protocol 2's watchlists and resume ring).",
    ["part"],
    multiprocess_mode="livesum",
)
LOOP_LAG: Final = Gauge(
    "presence_event_loop_lag_seconds",
    "How late a worker's last tick fired (its event loop's lag, which sizes the auth "
    "window): the worst worker's.",
    multiprocess_mode="livemax",
)
LAG_TARGET: Final = Gauge(
    "presence_lag_target_seconds",
    "The workers' --lag-target: lag above it shrinks the auth window.",
    multiprocess_mode="livemax",
)
COORDINATOR_UNREACHABLE: Final = Gauge(
    "presence_workers_coordinator_unreachable",
    "Workers that cannot reach the coordinator (their /healthz answers 503); past "
    "--cutoff-grace they close their clients.",
    multiprocess_mode="livesum",
)
AUTHENTICATIONS: Final = Counter(
    "presence_authentications_total",
    "Authentications by result: ok, an auth_failed reason (wrong_server: a protocol 2 "
    "auth signed for another server, a relay or a client given the wrong URL), timeout (4003) or "
    "unavailable (1013: verified, but the lobby could not record it in time).",
    ["result"],
)
CLOSES: Final = Counter(
    "presence_closes_total",
    "Client connections that ended, by close code (1006: no close frame) and by who closed first.",
    ["code", "by"],
)
FANOUT_FRAMES: Final = Counter(
    "presence_fanout_frames_total", "lobby_update frames handed to clients' transports."
)
FANOUT_BYTES: Final = Counter(
    "presence_fanout_bytes_total", "Bytes of lobby_update frames handed to clients' transports."
)
SNAPSHOTS: Final = Counter(
    "presence_snapshots_sent_total",
    "lobby_snapshot frames sent, by cause: join (after auth_ok), get_lobby, resync (the "
    "worker's replica resynced), slow_consumer (a lagging client drained).",
    ["cause"],
)
RESYNCS: Final = Counter(
    "presence_replica_resyncs_total",
    "Worker replica syncs from a snapshot, by reason: start (first sync or "
    "re-registration), gap (lost updates), new_epoch (another coordinator).",
    ["reason"],
)
DIRECT_MESSAGES: Final = Counter(
    "presence_direct_messages_total",
    "Direct messages by the send_result their sender got: status and reject reason.",
    ["status", "reason"],
)
ADMISSION_REFUSALS: Final = Counter(
    "presence_admission_refusals_total",
    "Connections refused before any challenge (HTTP 503 before the handshake, or 1013 "
    "after it): full (--max-connections), busy "
    "(challenge phase full), throttled (auth window full), cut_off (no coordinator).",
    ["reason"],
)
ADMISSION_EVICTIONS: Final = Counter(
    "presence_admission_evictions_total",
    "Challenged connections closed (1013) to give their place to a newcomer from a source "
    "holding fewer, by rule: heavier_source (their source held at least two more), "
    "waited (the oldest, silent past --challenge-grace while the door was full).",
    ["rule"],
)
ADMISSION_MARKS: Final = Counter(
    "presence_admission_marks_total",
    "Sources marked for 30 s (no waiting rule, no top quarter of the challenge phase) "
    "because a connection of theirs left the challenge phase without a valid answer: "
    "replaced (by the waiting rule), unanswered (a bad frame, or the deadline), closed.",
    ["why"],
)
PUBLISH_TO_WRITTEN: Final = Histogram(
    "presence_lobby_update_latency_seconds",
    "From the coordinator's publication of a lobby update to its frames handed to the "
    "clients' transports on a worker (on the worker's estimate of the coordinator's clock).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
ROUTE_SECONDS: Final = Histogram(
    "presence_direct_message_route_seconds",
    "From a direct message's route being opened to its send_result, on the sender's "
    "worker, by the status the sender got.",
    ["status"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
)
API_REQUESTS: Final = Counter(
    "presence_api_requests_total",
    "Backend API requests (docs/API.md) by the HTTP status of the answer; 401s are "
    "callers without the token.",
    ["status"],
)
EVENTS_CONSUMERS: Final = Gauge(
    "presence_events_consumers",
    "Consumers of the backend API's event stream (GET /v1/events) connected now.",
    multiprocess_mode="livesum",  # each worker's own consumers; a dead worker has none
)
EVENTS_SENT: Final = Counter(
    "presence_events_sent_total",
    "Events written to event-stream consumers (one per consumer per event).",
)
EVENTS_RESET: Final = Counter(
    "presence_events_resets_total",
    "Resets sent to event-stream consumers, by reason: start (no Last-Event-ID), too_old "
    "(the ring no longer held what followed it), epoch (coordinator restart), gap (the "
    "worker resynced).",
    ["reason"],
)
EVENTS_CUT: Final = Counter(
    "presence_events_cut_off_total",
    "Event-stream consumers cut off, by reason (slow_consumer, going_away).",
    ["reason"],
)
LOOKUPS: Final = Counter(
    "presence_api_lookups_total", "Bulk lookups answered (POST /v1/users:lookup)."
)
LOOKUP_KEYS: Final = Counter(
    "presence_api_lookup_keys_total", "Keys asked about in bulk lookups answered."
)
KICKS: Final = Counter(
    "presence_kicks_total",
    "Kicks asked through the backend API, by outcome: kicked, offline, unavailable (the "
    "coordinator could not tell, or did not answer in time).",
    ["outcome"],
)
VERIFY_SECONDS: Final = Histogram(
    "presence_auth_verify_seconds",
    "Time to check one auth: the key's point check and the Ed25519 signature verification.",
    buckets=(0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01),
)


# ------------------------------------------------------------------ helpers


def close_label(code: int | None) -> str:
    """The ``code`` label of a close code: itself when listed, else ``other``; no code
    at all (the connection dropped) is 1006, as RFC 6455 says."""
    text = "1006" if code is None else str(code)
    return text if text in CLOSE_CODES else "other"


def closed_by(
    sent: int | None, received: int | None, received_first: bool | None
) -> tuple[str, str]:
    """``(code, by)`` labels of a connection's end from its close frames: the code the
    server sent, if it closed first (whether or not the client answered), else the
    client's code, else 1006 (no close frame either way)."""
    if sent is not None and not (received is not None and received_first):
        return close_label(sent), "server"
    return close_label(received), "client"


class Tally:
    """Feeds counters from the running totals a pure core keeps: each :meth:`feed`
    adds what is new since the last one."""

    def __init__(self) -> None:
        self._seen: dict[object, float] = {}

    def feed(self, counter: Counter, total: float) -> None:
        seen = self._seen.get(counter, 0)
        if total > seen:
            counter.inc(total - seen)
            self._seen[counter] = total


def start_coordinator() -> None:
    """Create every coordinator series at zero, so a scrape lists them all from the
    start (a rate over a series that appears late misses its first increments)."""
    LOBBY_USERS.set(0)
    for reason in EPOCH_REASONS:
        EPOCH_CHANGES.labels(reason)
    for kind in COORDINATOR_SENDS:
        BACKBONE_DROPPED.labels("coordinator", kind)


def start_webhooks() -> None:
    """Create the webhook series at zero (a coordinator with --webhook-url; see
    :func:`start_coordinator`)."""
    for outcome in WEBHOOK_OUTCOMES:
        WEBHOOK_DELIVERIES.labels(outcome)
    for result in WEBHOOK_EVENT_RESULTS:
        WEBHOOK_EVENTS.labels(result)
    WEBHOOK_LAG.set(0)
    WEBHOOK_OUTBOX_EVENTS.set(0)
    WEBHOOK_OUTBOX_BYTES.set(0)


def start_worker() -> None:
    """Create every worker series at zero (see :func:`start_coordinator`)."""
    for state in CONNECTION_STATES:
        CONNECTIONS.labels(state).set(0)
    for result in AUTH_RESULTS:
        AUTHENTICATIONS.labels(result)
    for code in (*CLOSE_CODES, "other"):
        for by in CLOSED_BY:
            CLOSES.labels(code, by)
    for cause in SNAPSHOT_CAUSES:
        SNAPSHOTS.labels(cause)
    for reason in RESYNC_REASONS:
        RESYNCS.labels(reason)
    for status, reason in DIRECT_RESULTS:
        DIRECT_MESSAGES.labels(status, reason)
        ROUTE_SECONDS.labels(status)
    for reason in REFUSAL_REASONS:
        ADMISSION_REFUSALS.labels(reason)
    for rule in EVICTION_RULES:
        ADMISSION_EVICTIONS.labels(rule)
    for why in MARK_REASONS:
        ADMISSION_MARKS.labels(why)
    for kind in WORKER_SENDS:
        BACKBONE_DROPPED.labels("worker", kind)
    EVENTS_CONSUMERS.set(0)
    for reason in EVENTS_RESETS:
        EVENTS_RESET.labels(reason)
    for reason in EVENTS_CUT_OFF:
        EVENTS_CUT.labels(reason)
    for outcome in KICK_OUTCOMES:
        KICKS.labels(outcome)
