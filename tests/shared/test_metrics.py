"""The metrics' declarations (names, labels, gauge modes) and their pure helpers."""

from __future__ import annotations

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from shared import metrics
from shared.protocol import CloseCode
from workers.admission import Admit
from workers.feed import CutOff, Reset
from workers.outputs import AuthOutcome, SnapshotCause
from workers.replica import ResyncReason

DECLARED = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
IDENTIFYING = {"key", "public_key", "user", "conn", "connection", "worker", "worker_id", "pid"}


def test_every_metric_is_named_by_the_rules() -> None:
    assert len(DECLARED) == 41  # a new metric: add it to docs/operating.md
    names = [m._name for m in DECLARED]
    assert len(set(names)) == len(names)
    for metric in DECLARED:
        name = metric._name
        assert name.startswith("presence_"), name
        if isinstance(metric, Counter):
            (family,) = metric.describe()
            assert family.type == "counter" and not name.endswith("_total"), name
        elif isinstance(metric, Histogram):
            assert name.endswith(("_seconds", "_keys")), name
        else:
            assert isinstance(metric, Gauge)
            counts = (
                "presence_connections",
                "presence_workers_coordinator_unreachable",
                "presence_events_consumers",
                "presence_webhook_outbox_events",
            )
            assert name.endswith(("_seconds", "_users", "_bytes")) or name in counts, name


def test_no_label_can_name_a_user_a_connection_or_a_process() -> None:
    for metric in DECLARED:
        assert not IDENTIFYING & set(metric._labelnames), metric._name


def test_every_gauge_chooses_how_processes_combine() -> None:
    modes = {m._name: m._multiprocess_mode for m in DECLARED if isinstance(m, Gauge)}
    assert modes == {
        "presence_lobby_users": "livemostrecent",
        "presence_lobby_batch_window_seconds": "livemostrecent",
        "presence_connections": "livesum",
        "presence_memory_budget_bytes": "livesum",
        "presence_event_loop_lag_seconds": "livemax",
        "presence_lag_target_seconds": "livemax",
        "presence_workers_coordinator_unreachable": "livesum",
        "presence_events_consumers": "livesum",
        "presence_webhook_lag_seconds": "livemostrecent",
        "presence_webhook_outbox_events": "livemostrecent",
        "presence_webhook_outbox_bytes": "livemostrecent",
    }


def test_the_closed_label_sets_are_the_enums_values() -> None:
    assert set(metrics.AUTH_RESULTS) == {o.value for o in AuthOutcome}
    assert set(metrics.SNAPSHOT_CAUSES) == {c.value for c in SnapshotCause}
    assert set(metrics.RESYNC_REASONS) == {r.value for r in ResyncReason}
    assert set(metrics.EVENTS_RESETS) == {v for k, v in vars(Reset).items() if k.isupper()}
    assert set(metrics.EVENTS_CUT_OFF) == {v for k, v in vars(CutOff).items() if k.isupper()}
    refusals = {a.value for a in Admit if a is not Admit.OK}
    assert refusals | {"cut_off"} == set(metrics.REFUSAL_REASONS)
    assert {str(int(c)) for c in CloseCode} <= set(metrics.CLOSE_CODES)


@pytest.mark.parametrize(
    ("code", "label"),
    [(4001, "4001"), (1000, "1000"), (None, "1006"), (3000, "other"), (4999, "other")],
)
def test_close_label(code: int | None, label: str) -> None:
    assert metrics.close_label(code) == label


def test_closed_by_names_who_closed_first() -> None:
    assert metrics.closed_by(4001, 4001, False) == ("4001", "server")  # we closed, it echoed
    assert metrics.closed_by(4005, None, None) == ("4005", "server")  # it never answered
    assert metrics.closed_by(1000, 1000, True) == ("1000", "client")  # we echoed
    assert metrics.closed_by(None, 1001, None) == ("1001", "client")
    assert metrics.closed_by(None, None, None) == ("1006", "client")  # the TCP dropped


def test_a_tally_adds_only_what_is_new() -> None:
    counter = Counter("presence_test_tally_total", "test", registry=None)
    tally = metrics.Tally()
    for total in (0, 2, 2, 5, 3):
        tally.feed(counter, total)
    assert counter._value.get() == 5


def test_start_creates_every_series_at_zero() -> None:
    metrics.start_worker()
    metrics.start_coordinator()
    samples = {
        (s.name, tuple(sorted(s.labels.items())))
        for m in DECLARED
        for family in m.collect()
        for s in family.samples
    }
    assert ("presence_authentications_total", (("result", "invalid_signature"),)) in samples
    assert ("presence_closes_total", (("by", "client"), ("code", "1000"))) in samples
    assert ("presence_connections", (("state", "lagging"),)) in samples
    dropped_ack = (
        "presence_backbone_dropped_total",
        (("kind", "authack"), ("role", "coordinator")),
    )
    assert dropped_ack in samples
    assert ("presence_backbone_dropped_total", (("kind", "closed"), ("role", "worker"))) in samples
