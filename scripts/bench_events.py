"""The backend's feeds under churn: the event stream and the webhooks, and their cost.

The churn load (200 changes/s under 2,000 watchers for 20 s, 2 workers, the server on
CPU 0 and the generator on CPU 1) twice, back to back: with the backend API on, 4
consumers following ``GET /v1/events`` and the webhooks on to a receiver in the
generator (``--api-consumers 4 --webhooks``, scripts/loadtest/backend.py), then without
them. The consumers and the receiver are the generator's work, pinned with it.

Rows: each consumer's events and bytes a second during the churn, the stream latency
(an event's publication, its ``at``, to its receipt: p50/p99/max), webhook deliveries a
second, events per delivery, the webhook lag p50/p99/max, and the server's CPU during
the churn with and without the feeds: what they cost. A gap, a reset, a cut-off or a
loss on either feed fails the run. Targets: both feeds complete and in order; the
feeds add at most a quarter to the server's CPU (each event is encoded once per worker
however many consumers follow it, and the coordinator alone sends the webhooks).
About 80 s of runs.
"""

from __future__ import annotations

from typing import Any

from scripts.benchkit import CLUSTER, PINNED, Row, Run, fmt, metric, ratio_row

CHURN = ("churn", "--watchers", "2000", "--rate", "200", "--duration", "20")
CONSUMERS = 4
FEEDS = ("--api-consumers", str(CONSUMERS), "--webhooks")
ON = "churn with event stream and webhooks pinned"
OFF = "churn without them pinned"
CPU_BOUND = 1.25
"""The server's CPU during the churn with the feeds over without, at most."""

SECTIONS: dict[str, tuple[str, list[str]]] = {
    "events": (
        f"event stream ({CONSUMERS} consumers) and webhooks under churn 200/s, "
        "2000 watchers, 20 s, pinned",
        [
            "changes_per_s",
            "update_latency_p99_ms",
            "server_cpu_s",
            "stream_events_per_s_per_consumer",
            "stream_bytes_per_s_per_consumer",
            "stream_latency_p50_ms",
            "stream_latency_p99_ms",
            "stream_latency_max_ms",
            "webhook_deliveries_per_s",
            "webhook_events_per_delivery",
            "webhook_lag_p50_ms",
            "webhook_lag_p99_ms",
            "webhook_lag_max_ms",
        ],
    ),
}


def runs() -> list[Run]:
    return [
        Run(ON, (*CLUSTER, *FEEDS, *PINNED), CHURN, "events"),
        Run(OFF, (*CLUSTER, *PINNED), CHURN, "events"),
    ]


def feed_row(res: dict[str, dict[str, Any]], label: str, keys: tuple[tuple[str, str], ...]) -> Row:
    """A row met when the run with the feeds passed its checks (no gap, reset, cut-off
    or loss): ``keys`` (metric, unit) show what was measured."""
    values = [metric(res, ON, key) for key, _unit in keys]
    shown = ", ".join(f"{key} {fmt(v, unit)}" for (key, unit), v in zip(keys, values, strict=True))
    met = None if any(v is None for v in values) else True
    return label, shown, met


def targets(res: dict[str, dict[str, Any]]) -> list[Row]:
    return [
        feed_row(
            res,
            f"event stream under churn 200/s: {CONSUMERS} consumers get every event once, "
            "in order (no gap, reset or cut-off), pinned",
            (
                ("stream_events_per_s_per_consumer", "/s"),
                ("stream_latency_p99_ms", " ms"),
            ),
        ),
        feed_row(
            res,
            "webhooks under churn 200/s: every event delivered in order, signed, "
            "nothing lost, pinned",
            (("webhook_deliveries_per_s", "/s"), ("webhook_lag_p99_ms", " ms")),
        ),
        ratio_row(
            res,
            f"server CPU during churn with the event stream and webhooks <= {CPU_BOUND}x "
            "without, pinned",
            ON,
            OFF,
            "server_cpu_s",
            " s",
            None,
            CPU_BOUND,
        ),
    ]
