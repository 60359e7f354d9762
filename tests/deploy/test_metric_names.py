"""Every metric the dashboard and the alert rules name exists: the names are compared
with those the code declares (shared/metrics.py, and the launcher's per-process
figures), so a renamed metric cannot leave a panel or an alert silently empty."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from scripts.launcher.metrics import ProcessCollector
from shared import metrics
from tests.deploy.conftest import deploy_file

NAME = re.compile(r"\b((?:presence|process)_[a-z_]+|up(?=\{))\b")
BUILTIN = {"up"}
"""What Prometheus records itself for each target."""
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def declared() -> set[str]:
    """Every sample name a scrape can show."""
    families: list[Any] = [
        family
        for obj in vars(metrics).values()
        if hasattr(obj, "describe") and hasattr(obj, "_name")
        for family in obj.describe()
    ]
    families += list(ProcessCollector(lambda: ()).collect())
    names = set()
    for family in families:
        names |= {family.name + s for s in SAMPLE_SUFFIXES.get(family.type, ("",))}
    return names | BUILTIN


def dashboard_exprs() -> Iterator[str]:
    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    yield from walk(json.loads(deploy_file("grafana-dashboard.json").read_text()))


def alert_exprs() -> Iterator[tuple[str, str]]:
    rules = yaml.safe_load(deploy_file("alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def test_the_code_declares_what_the_checks_below_read() -> None:
    names = declared()
    assert "presence_authentications_total" in names
    assert "presence_lobby_update_latency_seconds_bucket" in names
    assert "process_cpu_seconds_total" in names and "process_open_fds" in names
    assert "presence_lobby_users_total" not in names


def test_every_metric_the_dashboard_names_exists() -> None:
    names, used = declared(), set()
    exprs = list(dashboard_exprs())
    assert len(exprs) >= 10
    for expr in exprs:
        found = set(NAME.findall(expr))
        assert found, f"a panel reads no metric: {expr}"
        assert found <= names, f"unknown {sorted(found - names)} in {expr}"
        used |= found
    # The figures an operator watches first are on it.
    for name in (
        "presence_lobby_users",
        "presence_connections",
        "presence_admission_refusals_total",
        "presence_event_loop_lag_seconds",
        "presence_memory_budget_bytes",
        "presence_workers_coordinator_unreachable",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "presence_events_consumers",
        "presence_events_sent_total",
        "presence_webhook_deliveries_total",
        "presence_webhook_lag_seconds",
    ):
        assert name in used, f"the dashboard does not show {name}"


def test_every_metric_the_alerts_name_exists() -> None:
    names = declared()
    alerts = dict(alert_exprs())
    for alert, expr in alerts.items():
        found = set(NAME.findall(expr))
        assert found, f"{alert} reads no metric"
        assert found <= names, f"{alert}: unknown {sorted(found - names)}"
    assert {
        "PresenceCoordinatorDown",
        "PresenceWorkerCutOff",
        "PresenceAdmissionRefusing",
        "PresenceEventLoopLagOverTarget",
        "PresenceMemoryBudgetNearFull",
        "PresenceWebhookLagging",
        "PresenceWebhookDeliveriesFailing",
    } <= set(alerts)
