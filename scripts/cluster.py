#!/usr/bin/env python3
"""Run a whole presence cluster on this machine: one coordinator and N workers.

    python scripts/cluster.py [--workers N] [--host H] [--port P] [--log-level L]
                              [--log-format F] [--metrics-port M] [--coordinator-arg X]...
                              [--worker-arg X]... [-- ...]

This is what ``make run`` starts. It

* starts ``python -m coordinator --port P``, waits (up to 10 s) for it to report
  ready, then starts N ``python -m workers --host H --port P --worker-id ID``. Every
  worker shares the public port; the backbone endpoints default from the port
  (``shared.endpoints``), so nothing else needs to be passed;
* learns that a process is ready from the systemd notification protocol, not from its
  log: each child gets its own datagram socket in ``NOTIFY_SOCKET`` and is ready when it
  sends ``READY=1`` there (``shared.notify``);
* passes every line of their output through, prefixed with the process name, and logs
  its own lines under the name ``cluster`` (``started NAME pid PID``, restarts, exits);
* prints ``connect to ws://H:P/ws`` once every process is ready, and again whenever the
  cluster is whole again after a restart; each time, when it has a ``NOTIFY_SOCKET`` of
  its own (under systemd's ``Type=notify``, or a test), it sends ``READY=1`` there too,
  with that line as ``STATUS``, and ``STOPPING=1`` when it begins to stop;
* restarts any process that dies, after a delay that starts small and doubles with each
  crash that comes soon after the previous start (capped), and resets once a process has
  run for a while. A restarted worker gets a new id, ``w{slot}-{generation}`` (``w3-1``,
  then ``w3-2``), because the coordinator must treat it as a new worker: the old one's
  sessions are gone;
* serves Prometheus metrics of every process on this machine at
  ``http://H:M/metrics`` (``--metrics-port``, default 9765; 0 turns it off):
  ``prometheus_client``'s multiprocess mode, through a private directory (mode 0700,
  removed at exit) given to the children in ``PROMETHEUS_MULTIPROC_DIR``, read by a
  ``MultiProcessCollector`` served from a thread; a child that exits is marked dead
  there (its live gauges go). When the port is taken the cluster runs without
  metrics, and says so;
* on Ctrl-C or SIGTERM sends SIGTERM to the workers, then the coordinator, waits up to
  ``--grace`` seconds for each group, SIGKILLs what is left and exits 0. A second Ctrl-C
  (SIGINT) kills everything at once; a repeated SIGTERM changes nothing.

Options for the children: ``--log-level L`` and ``--log-format F`` go to every process
(with ``--log-format json`` the launcher passes their JSON lines through as they are,
wraps any other line of theirs in a JSON object, and writes its own lines as JSON too, so
its whole output is one JSON object per line);
``--coordinator-arg X`` and ``--worker-arg X`` (repeatable) append the single word X to
the coordinator's or every worker's command line. X is taken verbatim even when it
starts with ``-`` (``--worker-arg --ping-interval --worker-arg 5`` or
``--worker-arg=--ping-interval=5``). They may also follow a ``--``, which keeps them
apart from the launcher's own options; nothing else may follow it.

Roles, one per machine (``--role``, default ``all``): ``coordinator`` runs only the
coordinator, its backbone on ``tcp://`` at ``--backbone HOST:PORT`` (events; updates on
PORT+1) with CURVE keys from ``--keys DIR`` (``coordinator.key_secret`` and the
authorised workers' public keys in ``workers/``); ``workers`` runs only the workers,
joining the coordinator at ``--coordinator HOST:PORT`` with ``--keys DIR``
(``coordinator.key`` and ``worker.key_secret``), each binding its results socket on
``--advertise ADDR`` (default: this machine's address towards the coordinator) and
named ``NAME-wSLOT-GEN`` after ``--name`` (default: the host name) so worker ids are
unique across machines. ``python scripts/backbone_keys.py --cluster DIR HOST...``
makes one such key directory per machine.

A child that exits with code 2 before it was ever ready refused its options: restarting
it cannot help, so the launcher stops everything and exits with code 2 too.

Children run in their own session so a terminal's Ctrl-C reaches only the launcher,
which then stops them in order; on Linux they also get SIGTERM if the launcher itself
dies without cleaning up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import defaults  # constants only: the launcher loads no other project code

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = defaults.PORT
DEFAULT_HOST = defaults.HOST
DEFAULT_METRICS_PORT = 9765
MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
COORDINATOR_READY_WAIT = 10.0
"""Seconds to wait for the coordinator's ``READY=1`` before starting workers anyway
(workers cope with a coordinator that is not there yet; waiting only makes start-up
quieter)."""
NAME_WIDTH = 12
FORWARD_OPTIONS = ("--coordinator-arg", "--worker-arg")


# --------------------------------------------------------------------------- pure logic


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


def notification(datagram: bytes) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of one sd_notify datagram (``shared.notify.parse``; the
    launcher imports nothing from the project)."""
    fields: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").splitlines():
        key, eq, value = line.partition("=")
        if eq and key:
            fields[key] = value
    return fields


def is_ready(datagram: bytes) -> bool:
    """Whether a child's notification says it serves (``READY=1``)."""
    return notification(datagram).get("READY") == "1"


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


def describe_exit(returncode: int | None) -> str:
    """``exit code 3`` or ``signal SIGKILL`` (asyncio reports signals as -N)."""
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


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


def parse_args(argv: Sequence[str]) -> Config:
    parser = argparse.ArgumentParser(
        prog="cluster.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Examples: cluster.py --workers 4 --port 9000; "
            "cluster.py --log-level debug -- --worker-arg --ping-interval --worker-arg 5"
        ),
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="number of worker processes (default: the number of CPUs, %(default)s here)",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address the workers listen on (%(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="public WebSocket port (%(default)s)"
    )
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="what this machine runs: all (one machine), coordinator or workers (%(default)s)",
    )
    parser.add_argument(
        "--backbone",
        metavar="HOST:PORT",
        help=f"--role coordinator: where the backbone listens, tcp with CURVE; updates on "
        f"PORT+1 ({DEFAULT_BACKBONE})",
    )
    parser.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="--role workers: the coordinator's --backbone address (required)",
    )
    parser.add_argument(
        "--keys",
        metavar="DIR",
        default="keys",
        help="--role coordinator/workers: this machine's CURVE key directory, made by "
        "scripts/backbone_keys.py --cluster (%(default)s)",
    )
    parser.add_argument(
        "--advertise",
        metavar="ADDR",
        help="--role workers: the address other machines reach this one at (default: "
        "the local address on the route to the coordinator)",
    )
    parser.add_argument(
        "--results-port-base",
        type=int,
        metavar="PORT",
        help="--role workers: worker N binds its results socket on PORT+N-1 (default: a "
        "port the system picks)",
    )
    parser.add_argument(
        "--name",
        help="--role workers: prefix of this machine's worker ids, unique per machine "
        "(default: the host name)",
    )
    parser.add_argument(
        "--api-port",
        type=int,
        help="every worker serves the backend API on this port (docs/API.md; off by default)",
    )
    parser.add_argument(
        "--api-token-file", help="the API's bearer token file (required with --api-port)"
    )
    parser.add_argument("--log-level", help="passed as --log-level to every process")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="passed as --log-format to every process; json: the launcher's whole output "
        "is one JSON object per line (default: text)",
    )
    parser.add_argument(
        "--tls-cert",
        help="PEM certificate chain: with --tls-key the workers serve wss:// and https://",
    )
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="serve GET /metrics (Prometheus) for every process of this machine on this "
        "port of --host; 0 turns it off (%(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds to wait after SIGTERM before SIGKILL, per group (%(default)s)",
    )
    parser.add_argument(
        "--restart-delay",
        type=float,
        default=BackoffPolicy().initial,
        help="first restart delay in seconds; doubles on repeated fast crashes (%(default)s)",
    )
    parser.add_argument(
        "--max-restart-delay",
        type=float,
        default=BackoffPolicy().cap,
        help="cap on the restart delay in seconds (%(default)s)",
    )
    parser.add_argument(
        "--coordinator-module",
        default="coordinator",
        help="module run as the coordinator (%(default)s; a stand-in for testing)",
    )
    parser.add_argument(
        "--workers-module",
        default="workers",
        help="module run as each worker (%(default)s; a stand-in for testing)",
    )
    parser.add_argument(
        "--coordinator-arg",
        metavar="X",
        action="append",
        help="append the word X to the coordinator's command line (repeatable, verbatim)",
    )
    parser.add_argument(
        "--worker-arg",
        metavar="X",
        action="append",
        help="append the word X to every worker's command line (repeatable, verbatim)",
    )
    try:
        rest, coordinator_args, worker_args = split_forwarded(argv)
    except ValueError as exc:
        parser.error(str(exc))
    args = parser.parse_args(rest)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not 0 < args.port < 65536:
        parser.error("--port must be 1-65535")
    if not 0 <= args.metrics_port < 65536:
        parser.error("--metrics-port must be 0 (off) or 1-65535")
    if args.grace < 0 or args.restart_delay < 0 or args.max_restart_delay < 0:
        parser.error("durations must not be negative")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.api_port is not None and not args.api_token_file:
        parser.error(
            "--api-port needs --api-token-file: the backend API never starts without a token"
        )
    backbone = coordinator = keys = None
    advertise = args.advertise
    try:
        if args.role == "coordinator":
            backbone = host_port(args.backbone or DEFAULT_BACKBONE, "--backbone")
        elif args.backbone:
            parser.error("--backbone is for --role coordinator")
        if args.role == "workers":
            if not args.coordinator:
                parser.error("--role workers needs --coordinator HOST:PORT")
            coordinator = host_port(args.coordinator, "--coordinator")
        elif args.coordinator:
            parser.error("--coordinator is for --role workers")
    except ValueError as exc:
        parser.error(str(exc))
    if args.role != "all":
        keys = Keys(Path(args.keys))
        missing = keys.missing(args.role)
        if missing:
            parser.error(
                f"--keys {args.keys} lacks {', '.join(missing)} for --role {args.role} "
                "(python scripts/backbone_keys.py --cluster DIR HOST... makes them)"
            )
    if coordinator is not None and advertise is None:
        try:
            advertise = local_address_towards(*coordinator)
        except OSError as exc:
            parser.error(
                f"cannot tell this machine's address towards --coordinator: {exc}; "
                "give --advertise ADDR"
            )
    if args.results_port_base is not None and not 0 < args.results_port_base < 65536 - args.workers:
        parser.error("--results-port-base must leave room for every worker below 65536")
    return Config(
        workers=args.workers,
        host=args.host,
        port=args.port,
        role=args.role,
        backbone=backbone,
        coordinator=coordinator,
        keys=keys,
        advertise=advertise,
        results_port_base=args.results_port_base,
        name=args.name or (socket.gethostname().split(".")[0] if args.role == "workers" else ""),
        api_port=args.api_port,
        api_token_file=args.api_token_file,
        log_level=args.log_level,
        log_format=args.log_format,
        coordinator_args=tuple(coordinator_args),
        worker_args=tuple(worker_args),
        tls_cert=args.tls_cert or None,
        tls_key=args.tls_key or None,
        metrics_port=args.metrics_port,
        grace=args.grace,
        backoff=BackoffPolicy(initial=args.restart_delay, cap=args.max_restart_delay),
        coordinator_module=args.coordinator_module,
        workers_module=args.workers_module,
    )


# --------------------------------------------------------------------------- processes


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child if the launcher dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class NotifySocket:
    """The receiving end of one child's ``NOTIFY_SOCKET``: a non-blocking datagram
    socket, in Linux's abstract namespace under a random name (nothing to clean up), or
    elsewhere a file in a private temporary directory that :meth:`close` removes."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._dir: str | None = None
        name = f"presence-cluster-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            if sys.platform.startswith("linux"):
                self.sock.bind("\0" + name)
                self.address = "@" + name
            else:
                self._dir = tempfile.mkdtemp(prefix="cluster-notify-")
                self.address = os.path.join(self._dir, "sock")
                self.sock.bind(self.address)
        except OSError:
            self.close()
            raise

    def datagrams(self) -> list[bytes]:
        """Everything queued now (never blocks)."""
        got: list[bytes] = []
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                got.append(self.sock.recv(4096))
        return got

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def notify_supervisor(state: str, status: str = "") -> str | None:
    """Send ``state`` (and ``STATUS``) to this launcher's own ``$NOTIFY_SOCKET``, if it
    has one: the sending half of ``shared.notify``, inline. Never raises: returns why it
    could not send, or None (also when there is nothing to send to)."""
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target:
        return None
    if not target.startswith(("/", "@")):
        return f"NOTIFY_SOCKET={target} is not a path or an @abstract name"
    address = "\0" + target[1:] if target.startswith("@") else target
    message = state + (f"\nSTATUS={status}" if status else "")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode(), address)
    except (OSError, ValueError) as exc:
        return f"could not notify NOTIFY_SOCKET={target}: {exc}"
    return None


class MetricsEndpoint:
    """``GET /metrics`` for every process of this machine, from a thread.

    The children write their metrics to memory-mapped files in a private directory
    (``PROMETHEUS_MULTIPROC_DIR``, ``prometheus_client``'s multiprocess mode); a scrape
    sums them. So one endpoint covers every process without any channel between them,
    and a process that died is dealt with where it is noticed: :meth:`process_died`.
    ``prometheus_client`` is imported here, and only here: the launcher starts without
    it when metrics are off."""

    def __init__(self, host: str, port: int) -> None:
        """Raises :class:`ImportError` without ``prometheus_client``, :class:`OSError`
        when the port cannot be bound."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

        self._mark_dead = mark_process_dead
        self.directory = tempfile.mkdtemp(prefix="presence-metrics-")  # mode 0700
        try:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self.url = connect_url(host, port, page=True) + "metrics"

    def process_died(self, pid: int) -> None:
        """Drop the live gauges of a child that exited (its counters stay: they count
        what happened, and the machine's totals must not go back)."""
        self._mark_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(slots=True)
class Slot:
    """One supervised position: the coordinator (``index`` 0) or worker ``index``."""

    index: int
    generation: int = 0
    fast_crashes: int = 0
    name: str = ""
    ready: bool = False
    ever_ready: bool = False
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def is_coordinator(self) -> bool:
        return self.index == 0


class Cluster:
    def __init__(self, config: Config, out: TextIO = sys.stdout) -> None:
        self.config = config
        self.out = out
        self.coordinator = Slot(0)
        count = config.workers if config.runs_workers else 0
        self.workers = [Slot(i) for i in range(1, count + 1)]
        self.exit_code = 0
        tls = config.tls_cert is not None
        self.url = connect_url(config.host, config.port, tls=tls)
        self.page = connect_url(config.host, config.port, tls=tls, page=True)
        self._stop = asyncio.Event()
        self._whole = False
        self._was_whole = False
        self._env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._preexec = _die_with_parent(os.getpid())
        self._metrics: MetricsEndpoint | None = None

    # ------------------------------------------------------------------ output

    def emit(self, name: str, text: str) -> None:
        """A line of a child's output: prefixed with its name, or as JSON."""
        if self.config.log_format != "json":
            self._write(f"{name:<{NAME_WIDTH}} | {text}")
        elif text.startswith("{"):
            self._write(text)  # the child's own JSON line
        else:  # a line the child's logging did not write (a crash before it was set up)
            role = "coordinator" if name == "coordinator" else "worker"
            self._write(_json_line("INFO", role, name, "output", text))

    def log(self, text: str, event: str, level: str = "INFO", **fields: Any) -> None:
        """A line of the launcher's own, named ``event`` with ``fields`` in JSON."""
        if self.config.log_format == "json":
            self._write(_json_line(level, "launcher", str(os.getpid()), event, text, **fields))
        else:
            self._write(f"{'cluster':<{NAME_WIDTH}} | {text}")

    def _write(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed or broken stdout
            self.out.write(line + "\n")
            self.out.flush()

    def _notify(self, state: str, status: str) -> None:
        problem = notify_supervisor(state, status)
        if problem is not None:
            self.log(problem, "notify_failed", "WARNING")

    # ------------------------------------------------------------------ running

    @property
    def slots(self) -> list[Slot]:
        """The processes this machine runs."""
        own = [self.coordinator] if self.config.runs_coordinator else []
        return own + self.workers

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self._start_metrics()
        try:
            return await self._run()
        finally:
            if self._metrics is not None:
                self._metrics.close()

    def _start_metrics(self) -> None:
        """Serve the metrics, and give the children the directory, or none at all."""
        for name in MULTIPROC_ENV:
            self._env.pop(name, None)  # ours, or no metrics files: never an inherited one
        port = self.config.metrics_port
        if not port:
            return
        try:
            self._metrics = MetricsEndpoint(self.config.host, port)
        except ImportError:
            self.log(
                "no metrics: prometheus_client is not installed (--metrics-port 0 to hush)",
                "metrics_off",
                "WARNING",
            )
            return
        except OSError as exc:
            self.log(
                f"no metrics: cannot serve {self.config.host}:{port}: {exc}",
                "metrics_off",
                "WARNING",
                port=port,
                error=str(exc),
            )
            return
        self._env[MULTIPROC_ENV[0]] = self._metrics.directory
        self.log(f"metrics at {self._metrics.url}", "metrics_serving", url=self._metrics.url)

    async def _run(self) -> int:
        config = self.config
        if config.role == "coordinator":
            assert config.backbone is not None
            backbone = tcp(*config.backbone)
            self.log(
                f"starting the coordinator with its backbone on {backbone} (CURVE)",
                "starting",
                runs=config.role,
                backbone=backbone,
            )
        elif config.role == "workers":
            assert config.coordinator is not None
            coordinator = tcp(*config.coordinator)
            self.log(
                f"starting {config.workers} workers on {config.host}:{config.port}, "
                f"joining the coordinator at {coordinator} (CURVE) as {config.advertise}",
                "starting",
                runs=config.role,
                workers=config.workers,
                host=config.host,
                port=config.port,
                coordinator=coordinator,
                advertise=config.advertise,
            )
        else:
            self.log(
                f"starting 1 coordinator and {config.workers} workers on "
                f"{config.host}:{config.port}",
                "starting",
                runs=config.role,
                workers=config.workers,
                host=config.host,
                port=config.port,
            )
        if config.runs_coordinator:
            await self._start_coordinator()
        if not self._stop.is_set():
            for slot in self.workers:
                slot.task = asyncio.create_task(self._supervise(slot))
        await self._stop.wait()
        self._notify("STOPPING=1", "stopping")
        await self._shutdown()
        self.log("stopped", "stopped")
        return self.exit_code

    async def _start_coordinator(self) -> None:
        """Start the coordinator and give it a moment to be ready before the workers."""
        self.coordinator.task = asyncio.create_task(self._supervise(self.coordinator))
        if not self.workers:
            return
        waiters = [
            asyncio.create_task(e.wait()) for e in (self.coordinator.ready_event, self._stop)
        ]
        await asyncio.wait(
            waiters, timeout=COORDINATOR_READY_WAIT, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in waiters:
            waiter.cancel()
        if not self._stop.is_set() and not self.coordinator.ready:
            self.log(
                f"coordinator not ready after {COORDINATOR_READY_WAIT:.0f}s; "
                "starting workers anyway",
                "coordinator_late",
                "WARNING",
            )

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._stop.is_set():
            hint = " (Ctrl-C again to kill at once)" if sig == signal.SIGINT else ""
            self.log(f"received {sig.name}; stopping{hint}", "stopping", signal=sig.name)
            self._stop.set()
            return
        if sig != signal.SIGINT:
            return  # a repeated SIGTERM (process managers) just lets the shutdown go on
        self.log("received SIGINT again; killing everything", "killing", "WARNING")
        for slot in self.slots:
            self._kill(slot, signal.SIGKILL)

    def _kill(self, slot: Slot, sig: int) -> None:
        proc = slot.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)  # its own session: take any children along
            else:
                os.kill(proc.pid, sig)

    async def _shutdown(self) -> None:
        for group in (self.workers, [self.coordinator]):
            tasks = [slot.task for slot in group if slot.task is not None]
            for slot in group:
                self._kill(slot, signal.SIGTERM)
            if not tasks:
                continue
            _, pending = await asyncio.wait(tasks, timeout=self.config.grace)
            if pending:
                for slot in group:
                    if slot.proc is not None and slot.proc.returncode is None:
                        self.log(
                            f"{slot.name} still running after {self.config.grace}s; SIGKILL",
                            "killed",
                            "WARNING",
                            process=slot.name,
                        )
                        self._kill(slot, signal.SIGKILL)
                await asyncio.wait(pending)

    def _command(self, slot: Slot) -> list[str]:
        if slot.is_coordinator:
            slot.name = "coordinator"
            return self.config.coordinator_command()
        slot.name = self.config.worker_name(slot.index, slot.generation)
        return self.config.worker_command(slot.name, slot.index)

    async def _supervise(self, slot: Slot) -> None:
        while not self._stop.is_set():
            slot.generation += 1
            command = self._command(slot)
            started = time.monotonic()
            returncode = await self._run_once(slot, command)
            uptime = time.monotonic() - started
            if self._stop.is_set():
                how = describe_exit(returncode)
                self.log(
                    f"{slot.name} stopped ({how})", "process_stopped", process=slot.name, exit=how
                )
                return
            if returncode == USAGE_ERROR and not slot.ever_ready:
                self.log(
                    f"{slot.name} refused its options ({describe_exit(returncode)}, see "
                    "above); restarting cannot help: stopping",
                    "process_refused_options",
                    "ERROR",
                    process=slot.name,
                    exit=describe_exit(returncode),
                )
                self.exit_code = USAGE_ERROR
                self._stop.set()
                return
            slot.fast_crashes = self.config.backoff.fast_crashes(slot.fast_crashes, uptime)
            delay = self.config.backoff.delay(slot.fast_crashes)
            following = (
                "coordinator"
                if slot.is_coordinator
                else self.config.worker_name(slot.index, slot.generation + 1)
            )
            self.log(
                f"{slot.name} died ({describe_exit(returncode)}) after {uptime:.1f}s; "
                f"restarting as {following} in {delay:.1f}s",
                "process_died",
                "WARNING",
                process=slot.name,
                exit=describe_exit(returncode),
                uptime=round(uptime, 3),
                next=following,
                delay=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_once(self, slot: Slot, command: list[str]) -> int | None:
        """Start one generation with its own notify socket, pump its output, return its
        exit status."""
        try:
            notify = NotifySocket()
        except OSError as exc:
            self.log(
                f"could not start {slot.name}: no notify socket: {exc}",
                "start_failed",
                "ERROR",
                process=slot.name,
            )
            return None
        loop = asyncio.get_running_loop()
        loop.add_reader(notify.sock.fileno(), self._on_notify, slot, notify)
        try:
            return await self._run_child(slot, command, notify.address)
        finally:
            loop.remove_reader(notify.sock.fileno())
            notify.close()

    async def _run_child(self, slot: Slot, command: list[str], notify: str) -> int | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                cwd=ROOT,
                env=dict(self._env, NOTIFY_SOCKET=notify),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._preexec,
                limit=1 << 20,
            )
        except OSError as exc:
            self.log(
                f"could not start {slot.name}: {exc}", "start_failed", "ERROR", process=slot.name
            )
            return None
        slot.proc = proc
        self.log(
            f"started {slot.name} pid {proc.pid}",
            "process_started",
            process=slot.name,
            pid=proc.pid,
        )
        if self._stop.is_set():
            self._kill(slot, signal.SIGTERM)
        assert proc.stdout is not None
        pump = asyncio.create_task(self._pump(slot, proc.stdout))
        returncode = await proc.wait()
        if self._metrics is not None:
            self._metrics.process_died(proc.pid)
        # Output still in the pipe belongs to this generation; a grandchild holding the
        # pipe open must not stall the restart, hence the bound.
        done, _ = await asyncio.wait([pump], timeout=2.0)
        if not done:
            pump.cancel()
        slot.ready = False
        self._whole = False
        slot.proc = None
        return returncode

    async def _pump(self, slot: Slot, stream: asyncio.StreamReader) -> None:
        name = slot.name
        while True:
            try:
                raw = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                raw = exc.partial
                if not raw:
                    return
            except asyncio.LimitOverrunError as exc:
                raw = await stream.readexactly(exc.consumed)
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.emit(name, line)

    def _on_notify(self, slot: Slot, notify: NotifySocket) -> None:
        """The child's notify socket is readable: a ``READY=1`` makes it ready."""
        for datagram in notify.datagrams():
            if is_ready(datagram) and not slot.ready:
                self._on_ready(slot)

    def _on_ready(self, slot: Slot) -> None:
        slot.ready = slot.ever_ready = True
        slot.ready_event.set()
        everyone = self.slots
        if self._whole or not all(s.ready for s in everyone):
            return
        self._whole = True
        again = " again" if self._was_whole else ""
        self._was_whole = True
        if self.config.role == "coordinator":
            assert self.config.backbone is not None
            port = self.config.backbone[1]
            status = (
                f"coordinator ready{again}: workers join with "
                f"make run ROLE=workers COORDINATOR=THIS_HOST:{port}"
            )
        else:
            status = f"all {len(everyone)} processes ready{again}: connect to {self.url}"
        self.log(status, "ready", processes=len(everyone), url=self.url, again=bool(again))
        if not again and self.workers:
            self.log(f"open the lobby page at {self.page}", "page", url=self.page)
        self._notify("READY=1", status)


def _json_line(level: str, role: str, ident: str, event: str, message: str, **fields: Any) -> str:
    """One JSON log line with the keys the coordinator and workers write (``shared.logs``,
    which the launcher does not load)."""
    line = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "role": role,
        "id": ident,
        "event": event,
        "message": message,
        "logger": "cluster",
        **fields,
    }
    return json.dumps(line)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(Cluster(config).run())


if __name__ == "__main__":
    sys.exit(main())
