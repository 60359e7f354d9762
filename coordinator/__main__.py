"""``python -m coordinator``: run the coordinator (see ``--help``)."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

import zmq

from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from coordinator.webhook_sender import WebhookSender, WebhookSetupError
from shared import curve, endpoints, fdlimit, logs, options, secretfile

DESCRIPTION = (
    "The lobby coordinator: owns who is online, orders every change, and publishes "
    "numbered updates to the workers over ZeroMQ. Every option can also be set by the "
    "environment variable shown."
)


def main(argv: Sequence[str] | None = None) -> int:
    settings, _ = options.parse_args(
        CoordinatorSettings,
        None if argv is None else list(argv),
        prog="python -m coordinator",
        description=DESCRIPTION,
    )
    logs.configure(settings.logging, role="coordinator")
    hooks = settings.webhooks
    sender = None
    if hooks.enabled and hooks.webhook_secret_file is not None:
        try:
            secret = secretfile.read(hooks.webhook_secret_file, "--webhook-secret-file")
            sender = WebhookSender(hooks, secret)
        except (secretfile.SecretFileError, WebhookSetupError) as exc:
            logging.getLogger("coordinator").error(
                "cannot start webhooks: %s",
                exc,
                extra=logs.event("webhooks_failed", error=str(exc)),
            )
            return 2
    # The context is made here, inside the process that uses it, never before a fork.
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        coordinator = Coordinator(settings, context, webhooks=sender)
    except (
        zmq.ZMQError,
        curve.BackboneSecurityError,
        endpoints.UnsafeDirectory,
        endpoints.EndpointInUse,
    ) as exc:
        hint = ""
        if isinstance(exc, endpoints.EndpointInUse) and settings.backbone.events_endpoint is None:
            hint = (
                f": a cluster already runs on port {settings.port} (its backbone follows "
                "from the port); stop it first, or start this one on another port "
                "(make run PORT=...)"
            )
        logging.getLogger("coordinator").error(
            "cannot start the backbone: %s%s",
            exc,
            hint,
            extra=logs.event("backbone_failed", error=f"{exc}{hint}"),
        )
        context.destroy(linger=0)
        return 2
    # After Coordinator(): its log lines carry the epoch it makes.
    fdlimit.raise_and_log(logging.getLogger("coordinator"))  # a socket per worker
    signal.signal(signal.SIGTERM, lambda *_: coordinator.stop())
    signal.signal(signal.SIGINT, lambda *_: coordinator.stop())
    coordinator.run()
    context.term()
    logging.getLogger("coordinator").info(
        "coordinator stopped", extra=logs.event("coordinator_stopped")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
