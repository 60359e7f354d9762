"""``python -m coordinator``: run the coordinator (see ``--help``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from coordinator.service import Coordinator, CoordinatorSettings
from shared import curve, endpoints


def _option(
    group: Any, flag: str, env: str, default: Any, help: str, kind: Callable[[str], Any] = str
) -> None:
    """Add ``flag``, defaulting to ``$env`` (converted by ``kind``), then ``default``."""
    raw = os.environ.get(env)
    value = default
    if raw:
        try:
            value = kind(raw)
        except ValueError:
            raise SystemExit(f"python -m coordinator: invalid value for {env}: {raw!r}") from None
    shown = "off" if default is None else "%(default)s"
    group.add_argument(flag, type=kind, default=value, help=f"{help} ({env}; default {shown})")


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(text)
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m coordinator",
        description="The lobby coordinator: owns who is online, orders every change, "
        "and publishes numbered updates to the workers over ZeroMQ. "
        "Every option can also be set by the environment variable shown.",
    )
    d = CoordinatorSettings(events_endpoint="", updates_endpoint="")
    net = parser.add_argument_group("Backbone")
    _option(
        net,
        "--port",
        "PRESENCE_PORT",
        endpoints.DEFAULT_PORT,
        "public WebSocket port of the cluster; names the default ipc endpoints so "
        "clusters on different ports never collide",
        int,
    )
    _option(
        net,
        "--events-endpoint",
        "PRESENCE_EVENTS_ENDPOINT",
        None,
        "ZeroMQ endpoint the ROUTER binds for worker events; off means "
        "ipc://$XDG_RUNTIME_DIR (or /tmp/presence-UID)/presence-PORT/events",
    )
    _option(
        net,
        "--updates-endpoint",
        "PRESENCE_UPDATES_ENDPOINT",
        None,
        "ZeroMQ endpoint the PUB binds for numbered updates; off means beside the "
        "events endpoint, .../updates",
    )
    timing = parser.add_argument_group("Timeouts")
    _option(
        timing,
        "--batch-window",
        "PRESENCE_BATCH_WINDOW",
        d.batch_window,
        "seconds to gather changes into one net-effect update while the lobby is "
        "quiet; 0 = publish every change at once",
        float,
    )
    _option(
        timing,
        "--max-batch-window",
        "PRESENCE_MAX_BATCH_WINDOW",
        d.max_batch_window,
        "seconds the window may widen to while changes keep coming, so clients get "
        "at most 1/this updates a second under load; equal to --batch-window for a "
        "fixed window",
        float,
    )
    _option(
        timing,
        "--heartbeat-interval",
        "PRESENCE_HEARTBEAT_INTERVAL",
        d.heartbeat_interval,
        "seconds between liveness beats to workers",
        float,
    )
    _option(
        timing,
        "--worker-timeout",
        "PRESENCE_WORKER_TIMEOUT",
        d.worker_timeout,
        "seconds of silence before a worker is presumed dead and its users leave",
        float,
    )
    limits = parser.add_argument_group("Limits")
    _option(
        limits,
        "--hwm",
        "PRESENCE_HWM",
        d.hwm,
        "ZeroMQ high-water mark per socket, in messages",
        int,
    )
    security = parser.add_argument_group("Security")
    _option(
        security,
        "--curve-secret-key",
        "PRESENCE_CURVE_SECRET_KEY",
        None,
        "the coordinator's CURVE certificate, a .key_secret file from "
        "scripts/backbone_keys.py; with --curve-clients it encrypts the backbone and "
        "admits only listed workers; required to listen beyond loopback",
    )
    _option(
        security,
        "--curve-clients",
        "PRESENCE_CURVE_CLIENTS",
        None,
        "directory of the public keys (*.key) of the workers allowed in",
    )
    logs = parser.add_argument_group("Logging")
    _option(
        logs,
        "--log-level",
        "PRESENCE_LOG_LEVEL",
        "INFO",
        "DEBUG, INFO, WARNING or ERROR",
        _log_level,
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
