"""``python -m coordinator``: run the coordinator (see ``--help``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import zmq

from coordinator.service import Coordinator, CoordinatorSettings
from shared import curve, endpoints


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m coordinator",
        description="The lobby coordinator: owns who is online, orders every change, "
        "and publishes numbered updates to the workers over ZeroMQ. "
        "Every option can also be set by the environment variable shown.",
    )
    net = parser.add_argument_group("Backbone")
    net.add_argument(
        "--port",
        type=int,
        default=int(_env("PRESENCE_PORT", str(endpoints.DEFAULT_PORT))),
        help="public WebSocket port of the cluster; names the default ipc endpoints so "
        "clusters on different ports never collide (PRESENCE_PORT, default %(default)s)",
    )
    net.add_argument(
        "--events-endpoint",
        default=os.environ.get("PRESENCE_EVENTS_ENDPOINT"),
        help="ZeroMQ endpoint the ROUTER binds for worker events (PRESENCE_EVENTS_ENDPOINT, "
        "default ipc://$XDG_RUNTIME_DIR or /tmp/presence-UID, then /presence-PORT/events)",
    )
    net.add_argument(
        "--updates-endpoint",
        default=os.environ.get("PRESENCE_UPDATES_ENDPOINT"),
        help="ZeroMQ endpoint the PUB binds for numbered updates (PRESENCE_UPDATES_ENDPOINT, "
        "default beside the events endpoint, .../updates)",
    )
    timing = parser.add_argument_group("Timeouts")
    timing.add_argument(
        "--batch-window",
        type=float,
        default=float(_env("PRESENCE_BATCH_WINDOW", "0.005")),
        help="seconds to gather changes into one net-effect update; 0 = publish every "
        "change at once (PRESENCE_BATCH_WINDOW, default %(default)s)",
    )
    timing.add_argument(
        "--max-batch-window",
        type=float,
        default=float(_env("PRESENCE_MAX_BATCH_WINDOW", "0.05")),
        help="seconds the batching window may widen to while changes keep coming, so "
        "clients get at most 1/this updates a second under load; equal to "
        "--batch-window for a fixed window (PRESENCE_MAX_BATCH_WINDOW, default %(default)s)",
    )
    timing.add_argument(
        "--heartbeat-interval",
        type=float,
        default=float(_env("PRESENCE_HEARTBEAT_INTERVAL", "1.0")),
        help="seconds between liveness beats to workers (PRESENCE_HEARTBEAT_INTERVAL, "
        "default %(default)s)",
    )
    timing.add_argument(
        "--worker-timeout",
        type=float,
        default=float(_env("PRESENCE_WORKER_TIMEOUT", "2.5")),
        help="seconds of silence before a worker is presumed dead and its users leave "
        "(PRESENCE_WORKER_TIMEOUT, default %(default)s)",
    )
    limits = parser.add_argument_group("Limits")
    limits.add_argument(
        "--hwm",
        type=int,
        default=int(_env("PRESENCE_HWM", "100000")),
        help="ZeroMQ high-water mark per socket, in messages (PRESENCE_HWM, default %(default)s)",
    )
    security = parser.add_argument_group("Security")
    security.add_argument(
        "--curve-secret-key",
        default=os.environ.get("PRESENCE_CURVE_SECRET_KEY"),
        help="the coordinator's CURVE certificate, a .key_secret file from "
        "scripts/backbone_keys.py; with --curve-clients it encrypts the backbone and "
        "admits only listed workers; required to listen beyond loopback "
        "(PRESENCE_CURVE_SECRET_KEY, default off)",
    )
    security.add_argument(
        "--curve-clients",
        default=os.environ.get("PRESENCE_CURVE_CLIENTS"),
        help="directory of the public keys (*.key) of the workers allowed in "
        "(PRESENCE_CURVE_CLIENTS, default off)",
    )
    logs = parser.add_argument_group("Logging")
    logs.add_argument(
        "--log-level",
        default=_env("PRESENCE_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (PRESENCE_LOG_LEVEL, default %(default)s)",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> CoordinatorSettings:
    ends = endpoints.resolve(args.port, args.events_endpoint, args.updates_endpoint)
    return CoordinatorSettings(
        events_endpoint=ends.events,
        updates_endpoint=ends.updates,
        batch_window=args.batch_window,
        max_batch_window=args.max_batch_window,
        heartbeat_interval=args.heartbeat_interval,
        worker_timeout=args.worker_timeout,
        hwm=args.hwm,
        curve_secret_key=args.curve_secret_key,
        curve_clients=args.curve_clients,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The context is made here, inside the process that uses it, never before a fork.
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        coordinator = Coordinator(settings_from_args(args), context)
    except (zmq.ZMQError, curve.BackboneSecurityError) as exc:
        logging.getLogger("coordinator").error("cannot start the backbone: %s", exc)
        context.destroy(linger=0)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: coordinator.stop())
    signal.signal(signal.SIGINT, lambda *_: coordinator.stop())
    coordinator.run()
    context.term()
    logging.getLogger("coordinator").info("coordinator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
