"""Every knob of the coordinator, grouped as on its command line (``--help``)."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.webhooks import WebhookOptions
from shared import endpoints, timings
from shared.endpoints import BackboneOptions
from shared.logs import Logging
from shared.options import (
    group,
    non_negative,
    option,
    port_number,
    positive,
    require,
    validate,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Backbone(BackboneOptions):
    curve_clients: str | None = option(
        None,
        "directory of the public keys (*.key) of the workers allowed in; with "
        "--curve-secret-key turns CURVE on",
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    batch_window: float = option(
        0.005,
        "seconds to gather changes into one net-effect update while the lobby is quiet "
        "(a latency nobody notices); 0 publishes every change at once",
        check=non_negative,
    )
    max_batch_window: float = option(
        0.05,
        "seconds the window may widen to while changes keep coming (in a lobby of "
        "--batch-window-clients or more), so its clients get at most 1/this updates a "
        "second under any load; never below --batch-window (equal to it, or below it, "
        "for a fixed window)",
        check=non_negative,
    )
    batch_window_clients: int = option(
        500,
        "lobby size at which a busy window may widen all the way to --max-batch-window: "
        "a smaller lobby's widens in proportion (each update costs a frame per client, "
        "so only a large lobby's is worth the wait); 0 widens any lobby's all the way",
        check=non_negative,
    )
    heartbeat_interval: float = option(
        timings.HEARTBEAT_INTERVAL,
        "seconds between liveness beats to workers (workers send theirs as often)",
        check=positive,
    )
    worker_timeout: float = option(
        timings.WORKER_TIMEOUT,
        "seconds of silence before a worker is presumed dead and its users leave: a few "
        "heartbeats, so one late beat never makes users flap",
        check=positive,
    )

    def __post_init__(self) -> None:
        validate(self)
        require(
            self.worker_timeout > self.heartbeat_interval,
            "--worker-timeout must be longer than --heartbeat-interval (workers beat as often)",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorSettings:
    port: int = option(
        endpoints.DEFAULT_PORT,
        "public WebSocket port of the cluster; names the default ipc endpoints so clusters "
        "on different ports never collide",
        check=port_number,
    )
    backbone: Backbone = group(Backbone, "Backbone")
    timing: Timing = group(Timing, "Timeouts")
    webhooks: WebhookOptions = group(WebhookOptions, "Webhooks")
    logging: Logging = group(Logging, "Logging")

    def __post_init__(self) -> None:
        validate(self)

    @property
    def batch_ceiling(self) -> float:
        """The widest window: never below the floor; 0 when batching is off."""
        t = self.timing
        return max(t.batch_window, t.max_batch_window) if t.batch_window else 0.0

    @property
    def backbone_endpoints(self) -> endpoints.Endpoints:
        return self.backbone.endpoints(self.port)
