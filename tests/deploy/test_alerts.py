"""The shipped alert rules (docs/deploy/alerts.yml), checked by Prometheus's own
``promtool``: the file is valid (``check rules``, templates included), and each alert
fires on the series that should raise it, and only on those (``test rules``, fed
series in the shape the launcher's scrape has)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import deploy_file, tool

pytestmark = pytest.mark.process

WEB1, WEB2, COORD = "web1:9765", "web2:9765", "coord:9765"


def series(name: str, values: str, instance: str = WEB1, **labels: str) -> dict[str, str]:
    inner = ",".join(
        f'{k}="{v}"' for k, v in {"job": "presence", "instance": instance, **labels}.items()
    )
    return {"series": f"{name}{{{inner}}}", "values": values}


def fires(alert: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": labels} for labels in expected],
    }


def on(instance: str, severity: str, **labels: str) -> dict[str, str]:
    return {"job": "presence", "instance": instance, "severity": severity, **labels}


CASES: list[dict[str, Any]] = [
    {  # web1's launcher stops answering at 30 s; web2's answers
        "input_series": [series("up", "1 1 0x10"), series("up", "1x12", WEB2)],
        "alert_rule_test": [
            fires(
                "PresenceMachineDown",
                "1m",
            ),  # pending for 1 min
            fires("PresenceMachineDown", "2m", on(WEB1, "critical")),
        ],
    },
    {  # the coordinator's process is gone from 30 s on
        "input_series": [
            series("process_start_time_seconds", "100 100 stale", COORD, process="coordinator"),
            series("process_start_time_seconds", "100x10", WEB1, process="w1"),
        ],
        "alert_rule_test": [
            fires("PresenceCoordinatorDown", "15s"),
            fires(
                "PresenceCoordinatorDown",
                "1m30s",
                {"job": "presence", "process": "coordinator", "severity": "critical"},
            ),
        ],
    },
    {  # a worker of web1 loses the coordinator at 30 s; web2's all reach it
        "input_series": [
            series("presence_workers_coordinator_unreachable", "0 0 1x10"),
            series("presence_workers_coordinator_unreachable", "0x12", WEB2),
        ],
        "alert_rule_test": [
            fires("PresenceWorkerCutOff", "30s"),
            fires("PresenceWorkerCutOff", "1m", on(WEB1, "critical")),
        ],
    },
    {  # web1 refuses (busy) for ten minutes; web2's refusals are only while cut off
        "input_series": [
            series("presence_admission_refusals_total", "0+10x60", reason="busy"),
            series("presence_admission_refusals_total", "0x60", reason="full"),
            series("presence_admission_refusals_total", "0+10x60", WEB2, reason="cut_off"),
        ],
        "alert_rule_test": [
            fires("PresenceAdmissionRefusing", "3m"),
            fires("PresenceAdmissionRefusing", "12m", on(WEB1, "warning")),
        ],
    },
    {  # web1's worst worker lags twice the target; web2's within it
        "input_series": [
            series("presence_event_loop_lag_seconds", "0.5x60"),
            series("presence_lag_target_seconds", "0.25x60"),
            series("presence_event_loop_lag_seconds", "0.1x60", WEB2),
            series("presence_lag_target_seconds", "0.25x60", WEB2),
        ],
        "alert_rule_test": [
            fires("PresenceEventLoopLagOverTarget", "2m"),
            fires("PresenceEventLoopLagOverTarget", "10m", on(WEB1, "warning")),
        ],
    },
    {  # web1's buffers take 90 % of the budget, web2's 50 %
        "input_series": [
            series("presence_memory_budget_bytes", "1000x60", part="limit"),
            series("presence_memory_budget_bytes", "500x60", part="reserved"),
            series("presence_memory_budget_bytes", "400x60", part="backlog"),
            series("presence_memory_budget_bytes", "1000x60", WEB2, part="limit"),
            series("presence_memory_budget_bytes", "300x60", WEB2, part="reserved"),
            series("presence_memory_budget_bytes", "200x60", WEB2, part="backlog"),
        ],
        "alert_rule_test": [
            fires("PresenceMemoryBudgetNearFull", "2m"),
            fires("PresenceMemoryBudgetNearFull", "10m", on(WEB1, "warning")),
        ],
    },
    {  # w1 restarted three times within a minute; w2 never
        "input_series": [
            series("process_start_time_seconds", "100 100 200 300 400x10", process="w1"),
            series("process_start_time_seconds", "100x14", process="w2"),
        ],
        "alert_rule_test": [
            fires("PresenceProcessRestarting", "30s"),
            fires("PresenceProcessRestarting", "2m", on(WEB1, "warning", process="w1")),
        ],
    },
    {  # w1 holds 900 files of 1,000; w2 100
        "input_series": [
            series("process_open_fds", "900x60", process="w1"),
            series("process_max_fds", "1000x60", process="w1"),
            series("process_open_fds", "100x60", process="w2"),
            series("process_max_fds", "1000x60", process="w2"),
        ],
        "alert_rule_test": [
            fires("PresenceOpenFilesNearLimit", "2m"),
            fires("PresenceOpenFilesNearLimit", "10m", on(WEB1, "warning", process="w1")),
        ],
    },
    {  # coord's receiver falls 2 minutes behind for 10 minutes; another's stays current
        "input_series": [
            series("presence_webhook_lag_seconds", "0 0 120x60", COORD),
            series("presence_webhook_lag_seconds", "0.1x60", WEB1),
        ],
        "alert_rule_test": [
            fires("PresenceWebhookLagging", "3m"),
            fires("PresenceWebhookLagging", "10m", on(COORD, "warning")),
        ],
    },
    {  # coord's attempts fail (timeouts) for 20 minutes; web1's fail one time in ten
        "input_series": [
            series("presence_webhook_deliveries_total", "0+1x90", COORD, outcome="timeout"),
            series("presence_webhook_deliveries_total", "0x90", COORD, outcome="delivered"),
            series("presence_webhook_deliveries_total", "0+1x90", WEB1, outcome="status"),
            series("presence_webhook_deliveries_total", "0+9x90", WEB1, outcome="delivered"),
        ],
        "alert_rule_test": [
            fires("PresenceWebhookDeliveriesFailing", "8m"),
            fires("PresenceWebhookDeliveriesFailing", "20m", on(COORD, "warning")),
        ],
    },
]


def test_promtool_accepts_the_rules() -> None:
    promtool = tool("promtool", "prometheus")
    checked = subprocess.run(
        [promtool, "check", "rules", str(deploy_file("alerts.yml"))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout


def test_each_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    promtool = tool("promtool", "prometheus")
    rules = yaml.safe_load(deploy_file("alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tested = {test["alertname"] for case in CASES for test in case["alert_rule_test"]}
    assert tested == alerts, "an alert without a case"
    # promtool compares annotations too: the texts are checked above, the rules here.
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    cases = [{"interval": "15s", **case} for case in CASES]
    spec = {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": cases}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(spec))
    tested_run = subprocess.run(
        [promtool, "test", "rules", "tests.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested_run.returncode == 0, tested_run.stdout + tested_run.stderr
