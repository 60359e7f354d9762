"""Every knob of a worker, grouped as on its command line (``python -m workers --help``).

Each group is the settings of the core that uses it: :class:`~workers.connection.Limits`
(with :class:`~workers.ratelimit.RateLimits`) for one connection's state machine,
:class:`~workers.admission.AdmissionLimits` for the door; the groups here belong to the
shell. Every default is written once, where its option is declared.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import stat
from dataclasses import dataclass

from shared import defaults, endpoints, timings
from shared.endpoints import BackboneOptions
from shared.logs import Logging
from shared.options import (
    SettingsError,
    at_least,
    group,
    option,
    optional,
    port_number,
    positive,
    require,
    validate,
)
from workers.admission import AdmissionLimits
from workers.api import ApiOptions
from workers.budget import MemoryLimits
from workers.connection import Limits
from workers.identities import check_public_urls
from workers.sources import parse_trusted


def split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _proxies(value: tuple[str, ...]) -> str | None:
    try:
        parse_trusted(value)
    except ValueError as exc:
        return f"has a bad entry ({exc})"
    return None


def seconds_or_off(text: str) -> float | None:
    """Seconds; ``0``, ``off`` or ``none`` turn the timer off."""
    if text.strip().lower() in ("none", "off", "0", "0.0"):
        return None
    return float(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    host: str = option(
        endpoints.DEFAULT_HOST,
        "interface to listen on (put a reverse proxy in front for the world)",
    )
    port: int = option(
        endpoints.DEFAULT_PORT,
        "public port, shared by every worker through SO_REUSEPORT",
        check=port_number,
    )
    compression: str = option(
        "none",
        "permessage-deflate: 'deflate' turns it on. Off by default: lobby frames are small "
        "and fanned out, so compressing each copy costs more CPU than the bytes it saves",
        choices=("none", "deflate"),
    )
    ping_interval: float | None = option(
        defaults.PING_INTERVAL,
        "seconds between keepalive pings (the protocol's default); 0 turns them off",
        parse=seconds_or_off,
        check=optional(positive),
    )
    trusted_proxies: tuple[str, ...] = option(
        (),
        "comma-separated addresses or networks of reverse proxies whose X-Forwarded-For "
        "or Forwarded header names the client (admission is fair per client address); "
        "headers from anyone else are ignored",
        parse=split_list,
        check=_proxies,
        shown="none",
    )
    tls_cert: str | None = option(
        None,
        "PEM certificate chain: with --tls-key the workers serve wss:// and https:// (a "
        "page served from anywhere but localhost needs it: browsers give WebCrypto only "
        "to secure contexts)",
    )
    tls_key: str | None = option(None, "PEM private key of --tls-cert")
    ping_timeout: float | None = option(
        defaults.PING_TIMEOUT,
        "seconds to wait for a pong before dropping the connection; 0 waits for ever",
        parse=seconds_or_off,
        check=optional(positive),
    )

    def __post_init__(self) -> None:
        validate(self)
        require(
            (self.tls_cert is None) == (self.tls_key is None),
            "--tls-cert and --tls-key go together",
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """The server TLS context, or ``None`` without TLS; raises :class:`TlsError`
        naming the file when the certificate or key cannot be used."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        with contextlib.suppress(OSError):  # (a missing key is named below)
            mode = os.stat(self.tls_key).st_mode
            if mode & 0o007:  # a group may read it (Debian's ssl-cert): not everyone
                raise TlsError(
                    f"--tls-key {self.tls_key} is open to every user (mode "
                    f"{stat.S_IMODE(mode):04o}): anyone on this machine could pose as the "
                    "server; chmod 600 it (or 640 for a group)"
                )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(
                f"--tls-cert {self.tls_cert} / --tls-key {self.tls_key}: {exc}"
            ) from None
        return context


class TlsError(Exception):
    """The TLS certificate or key cannot be loaded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backbone(BackboneOptions):
    worker_id: str = option(
        "",
        "ZeroMQ routing id of this worker: fresh per start by default, so a restarted "
        "worker is never confused with its previous life",
        shown="random hex, fresh per start",
    )
    curve_server_key: str | None = option(
        None,
        "the coordinator's public key file (.key): with --curve-secret-key turns CURVE on, "
        "and the worker talks to no other coordinator",
    )
    results_endpoint: str | None = option(
        None,
        "ZeroMQ endpoint this worker binds to take direct-message results from other "
        "workers; required with tcp:// backbone endpoints (an address the other workers "
        "can reach, e.g. tcp://10.0.0.5:7001)",
        shown="ipc://.../results-WORKER_ID beside an ipc events endpoint",
    )

    def __post_init__(self) -> None:
        validate(self)
        if not self.worker_id:
            object.__setattr__(self, "worker_id", secrets.token_hex(4))

    def results(self, events: str) -> str:
        """The results endpoint: the given one, else beside an ipc events endpoint."""
        if self.results_endpoint:
            return self.results_endpoint
        path = endpoints.ipc_path(events)
        if path is None:
            raise SettingsError(
                "--results-endpoint is required with a tcp:// backbone: other workers "
                "must be able to reach it"
            )
        return f"ipc://{path.parent}/results-{self.worker_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    heartbeat_interval: float = option(
        timings.HEARTBEAT_INTERVAL,
        "seconds between heartbeats to the coordinator (it beats as often)",
        check=positive,
    )
    coordinator_timeout: float = option(
        timings.COORDINATOR_TIMEOUT,
        "seconds without any coordinator message after which it counts as unreachable "
        "(three missed beats)",
        check=positive,
    )
    route_timeout: float = option(
        timings.ROUTE_TIMEOUT,
        "seconds to wait for a direct message's outcome before answering "
        "rejected/unavailable; the message itself is dropped wherever it is a second "
        "earlier (at most half this sooner), so it is never delivered after that answer",
        check=positive,
    )
    cutoff_grace: float = option(
        timings.CUTOFF_GRACE,
        "seconds cut off from the coordinator after which the worker closes its clients "
        "with 1013 (and /healthz answers 503 meanwhile), so they reconnect to a worker "
        "that sees the lobby; much longer than a coordinator restart",
        check=positive,
    )

    def __post_init__(self) -> None:
        validate(self)
        require(
            self.coordinator_timeout > self.heartbeat_interval,
            "--coordinator-timeout must be longer than --heartbeat-interval",
        )
        require(
            self.cutoff_grace >= self.coordinator_timeout,
            "--cutoff-grace must be at least --coordinator-timeout",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolV2:
    v1_only: bool = option(
        False,
        "offer protocol version 1 alone: a client asking for version 2 (the subprotocol "
        "presence.v2) gets version 1, as from a server without version 2 (by default, "
        "version 2 goes to the clients that ask for it, version 1 to every other)",
    )
    public_url: tuple[str, ...] = option(
        (),
        "URLs clients dial, comma-separated or repeated (e.g. wss://lobby.example/ws behind a "
        "reverse proxy): a version 2 auth must name one of them",
        parse=split_list,
        check=check_public_urls,
        shown="ws[s]://HOST:PORT/ws, every name of a loopback or wildcard HOST",
    )
    record_rate: float = option(
        1.0, "presence record changes a version 2 client may make per second", check=positive
    )
    record_burst: int = option(
        5, "record changes it may make at once before that rate applies", check=at_least(1)
    )
    resume_ring_bytes: int = option(
        defaults.RESUME_RING_BYTES,
        "bytes of recent lobby updates kept to resume a reconnecting version 2 client "
        "from (charged to --memory-budget; 0: none)",
        check=at_least(0),
    )
    resume_ring_age: float = option(
        defaults.RESUME_RING_AGE,
        "seconds of recent lobby updates kept to resume a version 2 client from",
        check=at_least(0),
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    network: Network = group(Network, "Network")
    backbone: Backbone = group(Backbone, "Backbone")
    timing: Timing = group(Timing, "Timeouts")
    limits: Limits = group(Limits, "Limits")
    admission: AdmissionLimits = group(AdmissionLimits, "Admission")
    memory: MemoryLimits = group(MemoryLimits, "Memory")
    api: ApiOptions = group(ApiOptions, "Backend API")
    v2: ProtocolV2 = group(ProtocolV2, "Protocol version 2")
    logging: Logging = group(Logging, "Logging")

    def __post_init__(self) -> None:
        validate(self)

    @property
    def worker_id(self) -> str:
        return self.backbone.worker_id

    @property
    def backbone_endpoints(self) -> endpoints.Endpoints:
        return self.backbone.endpoints(self.network.port)
