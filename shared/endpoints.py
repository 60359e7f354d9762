"""Where the backbone listens.

By default both backbone sockets live under a private directory (mode 0700) named
after the public port, so two clusters on different ports on one machine never
collide and no other local user can connect. ``tcp://`` endpoints can be given
instead so that workers on other machines can join.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.options import at_least, option, validate

DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Endpoints:
    events: str  # coordinator ROUTER <- worker DEALERs
    updates: str  # coordinator PUB -> worker SUBs


def runtime_dir(port: int) -> Path:
    """The private directory for the ipc endpoints of the cluster on ``port``."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(
        tempfile.gettempdir(), f"presence-{os.getuid()}"
    )
    return Path(base) / f"presence-{port}"


def default_endpoints(port: int) -> Endpoints:
    directory = runtime_dir(port)
    return Endpoints(events=f"ipc://{directory}/events", updates=f"ipc://{directory}/updates")


def prepare(endpoint: str) -> None:
    """Create the private parent directory of an ``ipc://`` endpoint (no-op for others)."""
    if not endpoint.startswith("ipc://"):
        return
    parent = Path(endpoint[len("ipc://") :]).parent
    parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(parent, 0o700)


def resolve(port: int, events: str | None, updates: str | None) -> Endpoints:
    """Endpoints from explicit values, falling back to the defaults for ``port``."""
    default = default_endpoints(port)
    return Endpoints(events=events or default.events, updates=updates or default.updates)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackboneOptions:
    """How a process reaches the backbone (both roles; each adds its own CURVE key)."""

    events_endpoint: str | None = option(
        None,
        "ZeroMQ endpoint of the coordinator's ROUTER for worker events",
        shown="ipc://$XDG_RUNTIME_DIR (or /tmp/presence-UID)/presence-PORT/events",
    )
    updates_endpoint: str | None = option(
        None,
        "ZeroMQ endpoint of the coordinator's PUB for numbered updates",
        shown="beside the events endpoint, .../updates",
    )
    hwm: int = option(
        100_000,
        "high-water mark of each backbone socket, in messages: past it updates are lost "
        "(a worker's replica sees the gap and resyncs from a snapshot) and other messages "
        "are refused, counted and logged",
        check=at_least(1),
    )
    curve_secret_key: str | None = option(
        None,
        "this process's CURVE certificate, a .key_secret file from "
        "scripts/backbone_keys.py: encrypts the backbone and proves who is talking; "
        "required for tcp:// endpoints",
    )

    def __post_init__(self) -> None:
        validate(self)

    def endpoints(self, port: int) -> Endpoints:
        """The endpoints to use: the given ones, else the defaults for ``port``."""
        return resolve(port, self.events_endpoint, self.updates_endpoint)
