"""What a worker records in :mod:`shared.metrics`, one function per fact.

The core (:mod:`workers.core`) calls these where it decides (routes, refusals, drops,
resyncs, connection counts), the shell (:mod:`workers.server`) where it writes what the
pure parts decided: the outputs a :class:`~workers.connection.Connection` returns carry their
outcome (an authentication's end, a ``send_result``, a snapshot's cause), the replica's
``Resynced`` its reason. Labelled series are bound here once, so recording one fact is
a dictionary lookup and an increment, never a label lookup under a lock.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from prometheus_client import Counter

from shared import metrics, protocol
from shared.protocol import AuthFailure, RejectReason, SendStatus
from workers.admission import Admit
from workers.outputs import AuthOutcome, SendOutcome, SnapshotCause, Write, WriteSnapshot
from workers.replica import ResyncReason

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from workers.budget import Figures

_AUTH: Final = {o: metrics.AUTHENTICATIONS.labels(o.value) for o in AuthOutcome}
_SNAPSHOTS: Final = {c: metrics.SNAPSHOTS.labels(c.value) for c in SnapshotCause}
_RESYNCS: Final = {r: metrics.RESYNCS.labels(r.value) for r in ResyncReason}
_REFUSED: Final = {
    Admit.FULL: metrics.ADMISSION_REFUSALS.labels("full"),
    Admit.BUSY: metrics.ADMISSION_REFUSALS.labels("busy"),
    Admit.THROTTLED: metrics.ADMISSION_REFUSALS.labels("throttled"),
}
_CUT_OFF: Final = metrics.ADMISSION_REFUSALS.labels("cut_off")
_MEMORY: Final = {
    part: metrics.MEMORY_BYTES.labels(part) for part in ("limit", "reserved", "backlog", "indexes")
}
_HEAVIER, _WAITED = (metrics.ADMISSION_EVICTIONS.labels(r) for r in metrics.EVICTION_RULES)
_MARKS: Final = {why: metrics.ADMISSION_MARKS.labels(why) for why in metrics.MARK_REASONS}
_STATES: Final = {state: metrics.CONNECTIONS.labels(state) for state in metrics.CONNECTION_STATES}
_ROUTED: Final = {s: metrics.ROUTE_SECONDS.labels(s.value) for s in SendStatus}
_API: Final = {int(status): metrics.API_REQUESTS.labels(status) for status in metrics.API_STATUSES}


def started(lag_target: float) -> None:
    metrics.start_worker()
    metrics.LAG_TARGET.set(lag_target)


def loop_lag(seconds: float) -> None:
    """How late this tick fired."""
    metrics.LOOP_LAG.set(seconds)


def coordinator_reachable(reachable: bool) -> None:
    """Once a tick: whether the coordinator is reachable (``/healthz`` 200)."""
    metrics.COORDINATOR_UNREACHABLE.set(0 if reachable else 1)


def written(action: Write | WriteSnapshot) -> None:
    """A frame the machine asked for was written: count what it tells."""
    if isinstance(action, WriteSnapshot):
        _SNAPSHOTS[action.cause].inc()
        return
    outcome = action.outcome
    if outcome is None:
        return
    if isinstance(outcome, AuthOutcome):
        _AUTH[outcome].inc()
    else:
        sent(outcome)


_SENT: Final[dict[tuple[SendStatus, RejectReason | None], Counter]] = {}
"""``presence_direct_messages_total`` by outcome, bound at the first of each (a few)."""


def sent(outcome: SendOutcome) -> None:
    key = (outcome.status, outcome.reason)
    series = _SENT.get(key)
    if series is None:
        reason = metrics.NO_REASON if outcome.reason is None else outcome.reason.value
        series = _SENT[key] = metrics.DIRECT_MESSAGES.labels(outcome.status.value, reason)
    series.inc()


def auth_ended(outcome: AuthOutcome) -> None:
    """An authentication ended with a close (4003, or 1013 once verified)."""
    _AUTH[outcome].inc()


def resynced(reason: ResyncReason) -> None:
    _RESYNCS[reason].inc()


def fanned_out(clients: int, frame_bytes: int) -> None:
    """One update broadcast to ``clients`` clients (frames are ASCII: chars are bytes)."""
    fanned_out_frames(clients, clients * frame_bytes)


def fanned_out_frames(frames: int, total_bytes: int) -> None:
    """``frames`` frames of ``total_bytes`` in all written, counted at once (a flush's
    own frames to each watchlist client: two increments, not two a frame)."""
    if frames:
        metrics.FANOUT_FRAMES.inc(frames)
        metrics.FANOUT_BYTES.inc(total_bytes)


def update_latency(seconds: float) -> None:
    # The clock estimate runs a beat's travel time behind: never below zero.
    metrics.PUBLISH_TO_WRITTEN.observe(max(0.0, seconds))


def routed(seconds: float, status: SendStatus) -> None:
    _ROUTED[status].observe(seconds)


def refused(verdict: Admit) -> None:
    refusal = _REFUSED.get(verdict)
    if refusal is not None:
        refusal.inc()


def refused_cut_off() -> None:
    _CUT_OFF.inc()


def evicted(count: int, *, waited: bool) -> None:
    """``count`` challenged connections evicted: by the waiting rule (they waited past
    ``challenge_grace``), or for a newcomer from a source holding fewer."""
    if count:
        (_WAITED if waited else _HEAVIER).inc(count)


def marked(why: str) -> None:
    """A source marked (``why``: one of ``metrics.MARK_REASONS``)."""
    _MARKS[why].inc()


def dropped(kind: str) -> None:
    """A backbone message of this kind (a ``shared.backbone`` tag) could not be queued."""
    metrics.BACKBONE_DROPPED.labels("worker", kind).inc()


def connections(challenged: int, authenticating: int, online: int, lagging: int) -> None:
    _STATES["challenged"].set(challenged)
    _STATES["authenticating"].set(authenticating)
    _STATES["online"].set(online)
    _STATES["lagging"].set(lagging)


def memory(figures: Figures) -> None:
    """The memory budget's state, once a tick."""
    _MEMORY["limit"].set(figures.limit)
    _MEMORY["reserved"].set(figures.reserved)
    _MEMORY["backlog"].set(figures.backlog)
    _MEMORY["indexes"].set(figures.indexes)


def closed(ws: ServerConnection) -> None:
    """``ws`` ended: count it by its close code and by who closed first."""
    proto = ws.protocol
    sent_code = None if proto.close_sent is None else proto.close_sent.code
    received = None if proto.close_rcvd is None else proto.close_rcvd.code
    code, by = metrics.closed_by(sent_code, received, proto.close_rcvd_then_sent)
    metrics.CLOSES.labels(code, by).inc()


def timed_verify(nonce: bytes, public_key: str, signature: str) -> AuthFailure | None:
    """:func:`shared.protocol.verify_auth`, timed (the machine calls it; see
    :data:`~workers.connection.Verifier`)."""
    start = time.perf_counter()
    try:
        return protocol.verify_auth(nonce, public_key, signature)
    finally:
        metrics.VERIFY_SECONDS.observe(time.perf_counter() - start)


def api_answered(status: int) -> None:
    """The backend API answered a request with ``status``."""
    _API[status].inc()
