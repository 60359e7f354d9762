"""``python -m workers``: run one worker process (start several on the same port)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from shared import endpoints, protocol
from workers.server import main as run_worker
from workers.settings import WorkerSettings

_DEFAULTS = WorkerSettings(events_endpoint="", updates_endpoint="")


def _env(name: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return convert(raw)
    except ValueError:
        raise SystemExit(f"python -m workers: invalid value for {name}: {raw!r}") from None


def _seconds(text: str) -> float | None:
    """Seconds; ``0`` or ``none`` disables (keepalive)."""
    if text.lower() in ("none", "off", "0"):
        return None
    return float(text)


def build_parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    parser = argparse.ArgumentParser(
        prog="python -m workers",
        description="A presence-lobby worker: terminates client WebSockets at /ws on a port "
        "shared with the other workers (SO_REUSEPORT) and talks to the coordinator over "
        "ZeroMQ. Every option can also be set by the environment variable shown.",
    )

    def option(group: Any, flag: str, env: str, default: Any, help: str, **kw: Any) -> None:
        """Add ``flag`` whose default comes from ``env``, then from ``default``."""
        convert = kw.pop("type", str)
        shown = kw.pop("default_text", "%(default)s")
        group.add_argument(
            flag,
            default=_env(env, default, convert),
            type=convert,
            help=f"{help} (env {env}; default {shown})",
            **kw,
        )

    net = parser.add_argument_group("Network")
    option(net, "--host", "PRESENCE_HOST", d.host, "interface to listen on")
    option(net, "--port", "PRESENCE_PORT", d.port, "public port (shared by all workers)", type=int)
    option(
        net,
        "--compression",
        "PRESENCE_COMPRESSION",
        "none",
        "permessage-deflate: 'deflate' turns it on",
        choices=["none", "deflate"],
    )

    bone = parser.add_argument_group("Backbone")
    option(
        bone,
        "--events-endpoint",
        "PRESENCE_EVENTS_ENDPOINT",
        None,
        "coordinator ROUTER endpoint",
        default_text="the ipc endpoint derived from --port",
    )
    option(
        bone,
        "--updates-endpoint",
        "PRESENCE_UPDATES_ENDPOINT",
        None,
        "coordinator PUB endpoint",
        default_text="the ipc endpoint derived from --port",
    )
    option(
        bone,
        "--worker-id",
        "PRESENCE_WORKER_ID",
        None,
        "ZeroMQ routing id of this worker",
        default_text="random hex, fresh per start",
    )
    option(
        bone,
        "--hwm",
        "PRESENCE_HWM",
        d.hwm,
        "high-water mark of each backbone socket, in messages",
        type=int,
    )

    option(
        bone,
        "--curve-secret-key",
        "PRESENCE_CURVE_SECRET_KEY",
        None,
        "this worker's CURVE certificate, a .key_secret file from scripts/backbone_keys.py; "
        "with --curve-server-key it encrypts the backbone and proves this worker belongs",
        default_text="off",
    )
    option(
        bone,
        "--curve-server-key",
        "PRESENCE_CURVE_SERVER_KEY",
        None,
        "the coordinator's public key file (.key)",
        default_text="off",
    )

    times = parser.add_argument_group("Timeouts")
    seconds: list[tuple[str, float | None, str, Callable[[str], Any]]] = [
        ("auth-timeout", d.auth_timeout, "from the challenge to a valid auth (then 4003)", float),
        ("auth-wait", d.auth_wait, "from a verified signature to auth_ok (then 1013)", float),
        ("ping-interval", d.ping_interval, "between keepalive pings; 0 disables", _seconds),
        ("ping-timeout", d.ping_timeout, "to wait for a pong; 0 disables", _seconds),
        ("heartbeat-interval", d.heartbeat_interval, "between heartbeats upstream", float),
        ("coordinator-timeout", d.coordinator_timeout, "of coordinator silence = down", float),
        (
            "route-timeout",
            d.route_timeout,
            "to wait for a send's outcome (then unavailable)",
            float,
        ),
    ]
    for name, default, text, convert in seconds:
        env = "PRESENCE_" + name.upper().replace("-", "_")
        option(times, f"--{name}", env, default, f"seconds {text}", type=convert)

    limits = parser.add_argument_group("Limits")
    option(
        limits,
        "--max-frame-bytes",
        "PRESENCE_MAX_FRAME_BYTES",
        protocol.DEFAULT_MAX_FRAME_BYTES,
        "largest client frame in bytes (larger closes with 1009)",
        type=int,
    )
    option(
        limits,
        "--lag-bytes",
        "PRESENCE_LAG_BYTES",
        d.lag_bytes,
        "client backlog in bytes above which lobby updates are skipped, then resent as a snapshot",
        type=int,
    )
    option(
        limits,
        "--max-queue-bytes",
        "PRESENCE_MAX_QUEUE_BYTES",
        d.max_queue_bytes,
        "client backlog in bytes above which a direct message closes it with 4005",
        type=int,
    )
    abuse: list[tuple[str, Any, str, Callable[[str], Any]]] = [
        ("pre-auth-frame-bytes", d.pre_auth_frame_bytes, "largest frame before auth (1009)", int),
        ("msg-rate", d.msg_rate, "client messages per second per connection (rate_limited)", float),
        ("msg-burst", d.msg_burst, "client messages at once before --msg-rate applies", float),
        ("flood-rejects", d.flood_rejects, "rate-limited frames per --flood-window (1008)", float),
        ("flood-window", d.flood_window, "seconds over which --flood-rejects are counted", float),
        ("max-pending-auth", d.max_pending_auth, "connections in the challenge phase (1013)", int),
        ("auth-rate", d.auth_rate, "new connections admitted per second (then 1013)", float),
        ("auth-burst", d.auth_burst, "new connections admitted at once before --auth-rate", float),
    ]  # fmt: skip
    for name, default, text, convert in abuse:
        env = "PRESENCE_" + name.upper().replace("-", "_")
        option(limits, f"--{name}", env, default, text, type=convert)

    logs = parser.add_argument_group("Logging")
    option(
        logs,
        "--log-level",
        "PRESENCE_LOG_LEVEL",
        d.log_level,
        "log level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
    )
    return parser


def settings_from(args: argparse.Namespace) -> WorkerSettings:
    where = endpoints.resolve(args.port, args.events_endpoint, args.updates_endpoint)
    extra = {"worker_id": args.worker_id} if args.worker_id else {}
    return WorkerSettings(
        host=args.host,
        port=args.port,
        compression=None if args.compression == "none" else args.compression,
        events_endpoint=where.events,
        updates_endpoint=where.updates,
        hwm=args.hwm,
        curve_secret_key=args.curve_secret_key,
        curve_server_key=args.curve_server_key,
        auth_timeout=args.auth_timeout,
        auth_wait=args.auth_wait,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        heartbeat_interval=args.heartbeat_interval,
        coordinator_timeout=args.coordinator_timeout,
        route_timeout=args.route_timeout,
        max_frame_bytes=args.max_frame_bytes,
        lag_bytes=args.lag_bytes,
        max_queue_bytes=args.max_queue_bytes,
        pre_auth_frame_bytes=args.pre_auth_frame_bytes,
        msg_rate=args.msg_rate,
        msg_burst=args.msg_burst,
        flood_rejects=args.flood_rejects,
        flood_window=args.flood_window,
        max_pending_auth=args.max_pending_auth,
        auth_rate=args.auth_rate,
        auth_burst=args.auth_burst,
        log_level=args.log_level,
        **extra,
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets logs client mistakes (bad handshakes) with tracebacks at DEBUG, and
    # every refused request at INFO: keep its own logger to warnings.
    logging.getLogger("websockets").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        settings = settings_from(parser.parse_args(argv))
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(settings.log_level)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_worker(settings))
    return uvloop.run(run_worker(settings))


if __name__ == "__main__":
    sys.exit(main())
