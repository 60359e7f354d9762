"""Both processes refuse, at start and naming the option, values that would make a bound
or a timer meaningless; each default is declared once and shown in ``--help``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coordinator.settings import CoordinatorSettings
from coordinator.settings import Timing as CoordinatorTiming
from shared import options, timings
from shared.endpoints import BackboneOptions
from tests.support import ROOT
from workers.admission import AdmissionLimits
from workers.connection import Limits
from workers.ratelimit import RateLimits
from workers.settings import Network, WorkerSettings

BAD_OPTIONS = [
    # (process, option, value, what the error says)
    ("workers", "--hwm", "0", "--hwm must be at least 1, not 0"),
    ("coordinator", "--hwm", "0", "--hwm must be at least 1, not 0"),
    ("workers", "--heartbeat-interval", "0", "--heartbeat-interval must be positive, not 0"),
    ("coordinator", "--heartbeat-interval", "0", "--heartbeat-interval must be positive"),
    ("coordinator", "--batch-window", "-0.1", "--batch-window must not be negative"),
    ("coordinator", "--max-batch-window", "-1", "--max-batch-window must not be negative"),
    ("coordinator", "--worker-timeout", "0.5", "--worker-timeout must be longer than"),
    ("workers", "--msg-burst", "0.5", "--msg-burst must be at least 1, not 0.5"),
    ("workers", "--lag-target", "0", "--lag-target must be positive, not 0"),
    ("workers", "--msg-rate", "-1", "--msg-rate must not be negative"),
    ("workers", "--lag-bytes", "0", "--lag-bytes must be at least 1"),
    ("workers", "--auth-wait", "0", "--auth-wait must be positive"),
    ("workers", "--port", "70000", "--port must be a port number"),
    ("workers", "--coordinator-timeout", "0.5", "--coordinator-timeout must be longer than"),
    ("coordinator", "--port", "-1", "--port must be a port number"),
    ("workers", "--hwm", "many", "argument --hwm: invalid int value: 'many'"),
]


@pytest.mark.process
@pytest.mark.parametrize(("process", "flag", "value", "error"), BAD_OPTIONS)
def test_a_bad_option_is_refused_at_start_naming_it(
    process: str, flag: str, value: str, error: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", process, flag, value],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert error in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.process
def test_a_bad_environment_value_is_refused_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coordinator"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PRESENCE_HWM": "lots", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "invalid value for PRESENCE_HWM: 'lots'" in result.stderr


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: RateLimits(msg_burst=0), "--msg-burst"),
        (lambda: AdmissionLimits(auth_window=0), "--auth-window"),
        (lambda: Limits(max_queue_bytes=0), "--max-queue-bytes"),
        (lambda: BackboneOptions(hwm=0), "--hwm"),
        (lambda: Network(ping_interval=0.0), "--ping-interval"),
        (lambda: CoordinatorTiming(worker_timeout=0.5), "--worker-timeout"),
    ],
)
def test_settings_made_in_code_are_checked_too(make: object, error: str) -> None:
    with pytest.raises(options.SettingsError, match=error):
        make()  # type: ignore[operator]


def test_defaults_are_the_shared_timings_and_keep_their_promises() -> None:
    timings.check()
    worker, coordinator = WorkerSettings(), CoordinatorSettings()
    assert worker.timing.heartbeat_interval == coordinator.timing.heartbeat_interval
    assert coordinator.timing.worker_timeout == timings.WORKER_TIMEOUT
    assert worker.timing.coordinator_timeout == timings.COORDINATOR_TIMEOUT
    assert worker.limits.auth_wait == timings.AUTH_WAIT


def test_the_batch_window_never_narrows_below_its_floor() -> None:
    fixed = CoordinatorSettings(timing=CoordinatorTiming(batch_window=1.0))
    assert fixed.batch_ceiling == 1.0
    off = CoordinatorSettings(timing=CoordinatorTiming(batch_window=0.0))
    assert off.batch_ceiling == 0.0
    with pytest.raises(options.SettingsError, match="--batch-window-clients must not be neg"):
        CoordinatorTiming(batch_window_clients=-1)


def test_off_means_none_for_keepalive() -> None:
    parser = options.build_parser(WorkerSettings, prog="w", description="")
    args = parser.parse_args(["--ping-interval", "0", "--ping-timeout", "off"])
    settings = options.from_args(WorkerSettings, args)
    assert settings.network.ping_interval is None and settings.network.ping_timeout is None


def test_every_option_has_a_unique_flag() -> None:
    for cls in (WorkerSettings, CoordinatorSettings):
        flags = [f.name for _, f in options._options(cls)]
        assert len(flags) == len(set(flags)), cls
