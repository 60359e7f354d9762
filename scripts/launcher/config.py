"""What runs where: the launcher's configuration, each child's command line, and when
a crashed child restarts. Nothing here starts anything; it reads only the key directory
(:meth:`Keys.missing`) and the route towards the coordinator
(:func:`local_address_towards`)."""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_METRICS_PORT = 9765
COORDINATOR_METRICS_PORT = DEFAULT_METRICS_PORT + 1
"""The metrics port of ``--role coordinator``: a machine may also run ``--role
workers``, and both must have their metrics by default."""
FORWARD_OPTIONS = ("--coordinator-arg", "--worker-arg")


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """When to restart a process that died.

    A crash within ``stable_after`` seconds of the start counts as *fast*; the n-th fast
    crash in a row waits ``initial * factor**(n-1)`` seconds, at most ``cap``. A process
    that ran at least ``stable_after`` seconds restarts after ``initial`` again.
    """

    initial: float = 0.2
    factor: float = 2.0
    cap: float = 10.0
    stable_after: float = 30.0

    def fast_crashes(self, previous: int, uptime: float) -> int:
        """The count of fast crashes in a row, including this exit after ``uptime`` s."""
        return previous + 1 if uptime < self.stable_after else 1

    def delay(self, fast_crashes: int) -> float:
        """Seconds to wait before the restart that follows ``fast_crashes`` (>= 1)."""
        exponent = max(fast_crashes, 1) - 1
        # Cap the exponent too, so a process that crashes for days cannot overflow.
        return min(self.cap, self.initial * self.factor ** min(exponent, 64))


def worker_id(slot: int, generation: int) -> str:
    """The id of generation ``generation`` (1, 2, ...) of worker slot ``slot`` (1..N)."""
    return f"w{slot}-{generation}"


def connect_url(host: str, port: int, *, tls: bool = False, page: bool = False) -> str:
    """Where a client connects (``page``: where a browser opens the lobby page):
    wildcard hosts become loopback, IPv6 gets brackets."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    if page:
        return f"{'https' if tls else 'http'}://{host}:{port}/"
    return f"{'wss' if tls else 'ws'}://{host}:{port}/ws"


def split_forwarded(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Take ``--coordinator-arg X`` / ``--worker-arg X`` (or ``=X``) out of ``argv``.

    Returns (the launcher's own arguments, coordinator args, worker args). X is taken
    verbatim, whatever it looks like, which argparse alone cannot do for ``-x`` values.
    After a bare ``--`` only these options are allowed (:class:`ValueError` otherwise).
    """
    rest: list[str] = []
    forwarded: dict[str, list[str]] = {name: [] for name in FORWARD_OPTIONS}
    after_separator = False
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        if token == "--" and not after_separator:
            after_separator = True
        elif name in forwarded and eq:
            forwarded[name].append(value)
        elif token in forwarded:
            if i + 1 >= len(argv):
                raise ValueError(f"{token} needs a value")
            forwarded[token].append(argv[i + 1])
            i += 1
        elif after_separator:
            raise ValueError(
                f"after '--' only --coordinator-arg X and --worker-arg X are accepted, "
                f"not {token!r}"
            )
        else:
            rest.append(token)
        i += 1
    return rest, forwarded["--coordinator-arg"], forwarded["--worker-arg"]


ROLES = ("all", "coordinator", "workers")
DEFAULT_BACKBONE = "0.0.0.0:7100"
USAGE_ERROR = 2
"""The exit code of a process that refused its options (argparse's)."""


def default_metrics_port(role: str) -> int:
    """The metrics port of ``role`` when ``--metrics-port`` is not given."""
    return COORDINATOR_METRICS_PORT if role == "coordinator" else DEFAULT_METRICS_PORT


def host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as a pair; :class:`ValueError` naming
    ``what`` otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65535:
        raise ValueError(f"{what} must be HOST:PORT with a port of 1-65534, not {text!r}")
    return host, int(port)


def tcp(host: str, port: int | str) -> str:
    """A ZeroMQ tcp endpoint (IPv6 hosts in brackets)."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def local_address_towards(host: str, port: int) -> str:
    """This machine's address on the route to ``host`` (no packet is sent: a UDP
    socket's connect only picks the route)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        return str(probe.getsockname()[0])


MACHINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""What may name a worker machine (its key directory, the prefix of its worker ids)."""
MACHINE_NAME_FILE = "name"
"""The file of a worker machine's key directory that names the machine."""


@dataclass(frozen=True, slots=True)
class Keys:
    """The CURVE files of one machine's role, under ``--keys DIR``."""

    directory: Path

    @property
    def coordinator_secret(self) -> Path:
        return self.directory / "coordinator.key_secret"

    @property
    def authorised_workers(self) -> Path:
        return self.directory / "workers"

    @property
    def coordinator_public(self) -> Path:
        return self.directory / "coordinator.key"

    @property
    def worker_secret(self) -> Path:
        return self.directory / "worker.key_secret"

    def machine_name(self) -> str | None:
        """The machine's name recorded in the directory by ``backbone_keys.py --cluster``
        (``None`` in a directory without one); :class:`ValueError` for a file that does
        not hold a name."""
        path = self.directory / MACHINE_NAME_FILE
        try:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        if not MACHINE_NAME.fullmatch(text):
            raise ValueError(f"{path} does not hold a machine name ({text[:40]!r})")
        return text

    def missing(self, role: str) -> list[str]:
        """What ``role`` needs that is not there (empty when all is)."""
        if role == "coordinator":
            needed = [self.coordinator_secret]
            workers = self.authorised_workers
            if not workers.is_dir() or not any(workers.glob("*.key")):
                return [str(p) for p in needed if not p.is_file()] + [f"{workers}/*.key"]
        else:
            needed = [self.coordinator_public, self.worker_secret]
        return [str(p) for p in needed if not p.is_file()]


@dataclass(frozen=True, slots=True)
class Config:
    workers: int
    host: str
    port: int
    role: str = "all"
    backbone: tuple[str, int] | None = None
    """role coordinator: where the backbone listens (events; updates on the next port)."""
    coordinator: tuple[str, int] | None = None
    """role workers: the coordinator's backbone (events; updates on the next port)."""
    keys: Keys | None = None
    advertise: str | None = None
    results_port_base: int | None = None
    name: str = ""
    api_port: int | None = None
    api_token_file: str | None = None
    log_level: str | None = None
    log_format: str | None = None
    coordinator_args: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    grace: float = 10.0
    backoff: BackoffPolicy = BackoffPolicy()
    python: str = sys.executable
    coordinator_module: str = "coordinator"
    workers_module: str = "workers"

    @property
    def runs_coordinator(self) -> bool:
        return self.role in ("all", "coordinator")

    @property
    def runs_workers(self) -> bool:
        return self.role in ("all", "workers")

    def coordinator_command(self) -> list[str]:
        cmd = [self.python, "-m", self.coordinator_module, "--port", str(self.port)]
        if self.role == "coordinator":
            assert self.backbone is not None and self.keys is not None
            host, port = self.backbone
            cmd += ["--events-endpoint", tcp(host, port)]
            cmd += ["--updates-endpoint", tcp(host, port + 1)]
            cmd += ["--curve-secret-key", str(self.keys.coordinator_secret)]
            cmd += ["--curve-clients", str(self.keys.authorised_workers)]
        return cmd + self._logging() + list(self.coordinator_args)

    def worker_name(self, slot: int, generation: int) -> str:
        """The worker id: unique per slot and generation, and with ``--role workers``
        across machines (prefixed with the machine's name)."""
        own = worker_id(slot, generation)
        return f"{self.name}-{own}" if self.role == "workers" else own

    def worker_command(self, worker: str, slot: int = 1) -> list[str]:
        cmd = [
            self.python,
            "-m",
            self.workers_module,
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        cmd += ["--worker-id", worker]
        if self.role == "workers":
            assert self.coordinator is not None and self.keys is not None
            host, port = self.coordinator
            results_port = (
                "*" if self.results_port_base is None else self.results_port_base + slot - 1
            )
            cmd += ["--events-endpoint", tcp(host, port)]
            cmd += ["--updates-endpoint", tcp(host, port + 1)]
            cmd += ["--results-endpoint", tcp(self.advertise or "0.0.0.0", results_port)]
            cmd += ["--curve-secret-key", str(self.keys.worker_secret)]
            cmd += ["--curve-server-key", str(self.keys.coordinator_public)]
        if self.tls_cert and self.tls_key:
            cmd += ["--tls-cert", self.tls_cert, "--tls-key", self.tls_key]
        if self.api_port is not None:
            cmd += ["--api-port", str(self.api_port)]
            if self.api_token_file:
                cmd += ["--api-token-file", self.api_token_file]
        return cmd + self._logging() + list(self.worker_args)

    def _logging(self) -> list[str]:
        cmd = []
        if self.log_level:
            cmd += ["--log-level", self.log_level]
        if self.log_format:
            cmd += ["--log-format", self.log_format]
        return cmd
