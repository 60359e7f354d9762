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
  ``http://H:M/metrics`` (``--metrics-port``, default 9765, and 9766 with ``--role
  coordinator`` so that a machine running both roles has both; 0 turns it off):
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
named ``NAME-wSLOT-GEN`` after ``--name`` (default: the machine name that ``make keys``
wrote in the key directory's ``name`` file, else the host name) so worker ids are unique
across machines. ``make keys`` (``scripts/backbone_keys.py --cluster DIR HOST...``)
makes one such key directory per machine, and adds machines to an existing DIR.

A child that exits with code 2 before it was ever ready refused its options or could not
listen (a taken port, a host that does not resolve, a backbone another cluster holds):
restarting it cannot help, so the launcher stops everything and exits with code 2 too,
quoting the child's last line as the reason, and again as its own last line.

Children run in their own session so a terminal's Ctrl-C reaches only the launcher,
which then stops them in order; on Linux they also get SIGTERM if the launcher itself
dies without cleaning up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.launcher.config import (
    COORDINATOR_METRICS_PORT,
    DEFAULT_BACKBONE,
    DEFAULT_METRICS_PORT,
    ROLES,
    BackoffPolicy,
    Config,
    Keys,
    default_metrics_port,
    host_port,
    local_address_towards,
    split_forwarded,
)
from scripts.launcher.supervise import Cluster
from shared.defaults import HOST as DEFAULT_HOST
from shared.defaults import PORT as DEFAULT_PORT


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
        "(default: the machine name in --keys DIR/name, else the host name)",
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
        help="serve GET /metrics (Prometheus) for every process of this machine on this "
        f"port of --host; 0 turns it off ({DEFAULT_METRICS_PORT}; "
        f"{COORDINATOR_METRICS_PORT} with --role coordinator)",
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
    if args.metrics_port is None:
        args.metrics_port = default_metrics_port(args.role)
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
                "(make keys, or .venv/bin/python scripts/backbone_keys.py --cluster DIR HOST...)"
            )
    name = args.name or ""
    if args.role == "workers" and not name:
        assert keys is not None
        try:
            name = keys.machine_name() or socket.gethostname().split(".")[0]
        except ValueError as exc:
            parser.error(f"--keys {args.keys}: {exc}; give --name NAME")
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
        name=name,
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


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(Cluster(config).run())


if __name__ == "__main__":
    sys.exit(main())
