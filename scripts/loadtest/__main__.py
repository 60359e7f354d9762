"""Load-test a presence server and check it stays correct under load.

    python -m scripts.loadtest [options] SCENARIO [scenario options]
    make load ARGS="[options] SCENARIO ..."

Targets: by default the server at --url (what ``make run`` starts). ``--start cluster``
(or ``baseline``, ``bare``, ``node``: the Node.js peer of --peer-dir, protocol version 1,
its window fixed at 20 ms) starts one on a free port instead and stops it at the end,
also on failure or Ctrl-C; only then (or with --pid) are server CPU time and memory
measured, from /proc (Linux).

Scenarios:
  mass-join N        N clients authenticate at once: auths/s, convergence, join-to-seen
  churn              watchers stay while others join/leave/drop/reconnect at --rate
  reconnect-storm N  N clients drop at once and reconnect: time until the lobby is whole
  messages           cross-worker direct message pairs: throughput, round trip
  idle N             N idle connections: server memory per connection, and flatness
  fanout             server CPU per delivered lobby frame (--start bare: the limit)
  watchlists N       version 2: N clients watching K keys each under status changes,
                     then some following the whole lobby: server CPU per change of each
  status-churn       version 2: status changes against joins and leaves, same rate
  blip               (v2) probes drop for a few seconds and resume: bytes against a snapshot
  kill-worker        (v2) a worker is SIGKILLed: its clients back by snapshots, then resuming
  auth-rate N        (v2) N watchlist clients, then a modest whole lobby, authenticate at
                     once: the worker's CPU per auth and auths/s per worker core
  scale N            (v2) N users watching their contacts under presence changes, then a
                     worker killed: the cost curve; checks the system's limits first

CPUs: ``--server-cpus 0 --client-cpus 1`` runs the server and the generator on
separate CPUs, so that the generator's own work does not show up as server latency
(see scripts/loadtest/cpus.py); the result records which CPUs each side had.

A table is printed at the end and the same result written with --json. The exit
status is 1 when any correctness check failed (sequence gaps, wrong views, lost
messages, unexpected closes): a fast wrong answer is not a result.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.loadtest import authrate, cpus, idle, resume, scale, scenarios, scopes
from scripts.loadtest.agent import raise_fd_limit
from scripts.loadtest.backend import Feeds
from scripts.loadtest.client import WS_CLIENTS, resolve_ws_client
from scripts.loadtest.cpus import CpuSet
from scripts.loadtest.pool import AgentPool, LoadTestError, default_procs
from scripts.loadtest.report import table, write_json
from scripts.loadtest.target import (
    PEER_BATCH_MS,
    PEER_DIR,
    Server,
    external,
    node_peer_missing,
    start_bare,
    start_baseline,
    start_cluster,
    start_node,
)
from scripts.procfs import free_port
from shared.client import DEFAULT_URL
from shared.v2 import MAX_WATCH_KEYS

DEFAULT_SAMPLE = 0.05
FILES_SPARE = 64
"""Open files a generator process needs besides its clients' sockets."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        default=os.environ.get("LOADTEST_URL", DEFAULT_URL),
        help="server to load when nothing is started (%(default)s)",
    )
    target.add_argument(
        "--start",
        choices=("cluster", "baseline", "bare", "node"),
        help="start this server on a free port for the run, stop it after",
    )
    target.add_argument(
        "--peer-dir",
        type=Path,
        default=PEER_DIR,
        help="with --start node: the Node.js peer's directory, copied (with npm ci) "
        "to .cache/ before its first run (%(default)s)",
    )
    target.add_argument(
        "--workers", type=int, default=2, help="workers of a started cluster (%(default)s)"
    )
    target.add_argument(
        "--batch-window",
        type=float,
        help="coordinator --batch-window of a started cluster (0 = off; "
        "default: the coordinator's own, 5 ms)",
    )
    target.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="X",
        help="extra word for every worker of a started cluster (repeatable)",
    )
    target.add_argument(
        "--server-cpus",
        metavar="LIST",
        help="run the server on these CPUs (e.g. 0, 0-1, 0,2): a started server's "
        "processes, or with --url the --pid processes and their children "
        "(default: anywhere)",
    )
    target.add_argument(
        "--pid",
        type=int,
        action="append",
        default=[],
        help="with --url: a server process (and its children) whose CPU and "
        "memory to measure (repeatable)",
    )
    target.add_argument(
        "--api-consumers",
        type=int,
        default=0,
        metavar="N",
        help="with --start cluster: turn the backend API on and follow its event stream "
        "with N consumers beside the scenario (scripts/loadtest/backend.py) (%(default)s)",
    )
    target.add_argument(
        "--webhooks",
        action="store_true",
        help="with --start cluster: turn the API and the webhooks on, to a receiver in "
        "the generator that checks and times every delivery",
    )
    gen = parser.add_argument_group("generator")
    gen.add_argument(
        "--client-cpus",
        metavar="LIST",
        help="run the generator (this process and its generator processes) on these "
        "CPUs; must not overlap --server-cpus (default: anywhere)",
    )
    gen.add_argument(
        "--procs",
        type=int,
        help=f"generator processes (default: one per --client-cpus CPU, else one per "
        f"CPU and at least 2: {default_procs()} here)",
    )
    gen.add_argument(
        "--concurrency",
        type=int,
        default=500,
        help="connection attempts in flight per generator process "
        "(%(default)s: close to all at once, as a real storm is, and still within the "
        "listen backlog of 1024 that the workers and the baseline keep; more would "
        "measure TCP retransmit timers instead of the server)",
    )
    gen.add_argument(
        "--source-addresses",
        default="",
        help="comma-separated loopback addresses to bind client sockets to, "
        "round robin (e.g. 127.0.0.2,127.0.0.3), to pass one address's "
        "~28k ephemeral ports; default: let the OS choose",
    )
    gen.add_argument(
        "--verify-sample",
        type=float,
        default=DEFAULT_SAMPLE,
        metavar="F",
        help="fraction of watchers that apply every lobby update as it arrives and "
        "time it (at least 2 per generator process); the other clients check each "
        "update's sequence number on arrival and apply it later, before any view is "
        "read (1 = all on arrival) (%(default)s)",
    )
    gen.add_argument(
        "--ws-client",
        choices=WS_CLIENTS,
        default="auto",
        help="the generator's WebSocket library: picows (the bench extra; parses "
        "frames in C, so the generator needs less CPU per frame) or websockets "
        "(auto: picows when installed) (%(default)s)",
    )
    gen.add_argument(
        "--protocol",
        type=int,
        choices=(1, 2),
        default=1,
        help="the protocol version the clients speak: 2 offers presence.v2 and follows "
        "the whole lobby in binary frames (%(default)s)",
    )
    gen.add_argument(
        "--settle-timeout",
        type=float,
        default=30.0,
        help="seconds views may take to settle to the true set (%(default)s)",
    )
    gen.add_argument("--json", metavar="PATH", help="also write the result as JSON here")
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    gen.add_argument(
        "--server-log",
        metavar="PATH",
        help="write the output of a server started here (--start) to PATH, all of it",
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    p = sub.add_parser("mass-join", help="N clients authenticate at once")
    p.add_argument("clients", type=int)
    p = sub.add_parser("churn", help="watchers stay while others change at a paced rate")
    p.add_argument("--watchers", type=int, default=2000, help="(%(default)s)")
    p.add_argument("--rate", type=float, default=200.0, help="changes per second (%(default)s)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds (%(default)s)")
    p.add_argument(
        "--watch",
        type=int,
        default=0,
        metavar="K",
        help="with --protocol 2: each watcher follows a watchlist of K keys of the "
        "changing clients (0: the whole lobby) (%(default)s)",
    )
    p = sub.add_parser("reconnect-storm", help="N clients drop and reconnect at once")
    p.add_argument("clients", type=int)
    p = sub.add_parser("messages", help="direct messages between pairs on different workers")
    p.add_argument("--pairs", type=int, default=100, help="(%(default)s)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (%(default)s)")
    p.add_argument(
        "--rate",
        type=float,
        default=40.0,
        help="messages per second per direction of a pair; keep it under the "
        "server's per-connection limit (workers --msg-rate, 50) (%(default)s)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=8,
        help="unanswered sends per direction of a pair at most (%(default)s)",
    )
    p.add_argument("--body-bytes", type=int, default=64, help="(%(default)s)")
    p = sub.add_parser("idle", help="hold N idle connections, measure server memory")
    p.add_argument("clients", type=int)
    p.add_argument("--hold", type=float, default=10.0, help="seconds to hold (%(default)s)")
    p.add_argument(
        "--watch",
        type=int,
        default=0,
        metavar="K",
        help="with --protocol 2: each client follows a watchlist of K of the others "
        "(0: the whole lobby) (%(default)s)",
    )
    p.add_argument(
        "--count", action="store_true", help="with --protocol 2: each client follows the count"
    )
    p = sub.add_parser("fanout", help="server CPU per delivered lobby frame")
    p.add_argument("--watchers", type=int, default=1000, help="(%(default)s)")
    p.add_argument("--changes", type=int, default=1000, help="(%(default)s)")
    p.add_argument("--rate", type=float, default=100.0, help="changes per second (%(default)s)")
    p.add_argument(
        "--frame-bytes",
        type=int,
        default=120,
        help="bare server frame size; a one-key lobby_update is ~120 (%(default)s)",
    )
    p = sub.add_parser("watchlists", help="version 2 watchlists against the whole lobby")
    p.add_argument("clients", type=int)
    p.add_argument("--watch", type=int, default=50, help="keys per watchlist (%(default)s)")
    p.add_argument("--rate", type=float, default=200.0, help="status changes/s (%(default)s)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds a load (%(default)s)")
    p.add_argument(
        "--lobby-watchers",
        type=int,
        default=200,
        help="clients that follow the whole lobby in the second load (%(default)s)",
    )
    p = sub.add_parser("status-churn", help="version 2 status changes against joins/leaves")
    p.add_argument("--users", type=int, default=2000, help="(%(default)s)")
    p.add_argument(
        "--every",
        type=float,
        default=10.0,
        help="seconds between two status changes of a user; keep it within the "
        "server's record rate (workers --record-rate, 1/s, --record-burst 5) (%(default)s)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds a load (%(default)s)")
    p = sub.add_parser("blip", help="(v2) probes blip and resume in a lobby of N users")
    p.add_argument("users", type=int, help="users in the lobby, the probes included")
    p.add_argument("--probes", type=int, default=4, help="probes of each scope (%(default)s)")
    p.add_argument("--watch", type=int, default=50, help="keys of a watchlist probe (%(default)s)")
    p.add_argument("--blips", type=int, default=3, help="(%(default)s)")
    p.add_argument("--seconds", type=float, default=5.0, help="one blip (%(default)s)")
    p.add_argument(
        "--rate", type=float, default=15.0, help="background changes per second (%(default)s)"
    )
    p = sub.add_parser("kill-worker", help="(v2) kill a worker; its clients come back twice")
    p.add_argument("users", type=int)
    p.add_argument(
        "--whole", type=int, default=200, help="users following the whole lobby (%(default)s)"
    )
    p.add_argument(
        "--watch", type=int, default=50, help="keys of the others' watchlists (%(default)s)"
    )
    p = sub.add_parser("auth-rate", help="(v2) the worker's CPU per auth")
    p.add_argument("clients", type=int, help="clients following a watchlist")
    p.add_argument("--watch", type=int, default=20, help="keys a watchlist (%(default)s)")
    p.add_argument(
        "--lobby", type=int, default=200, help="whole-lobby clients after them (%(default)s)"
    )
    scale.add_parser(sub)
    return parser


def start_server(
    args: argparse.Namespace, cpus: CpuSet | None = None, feeds: Feeds | None = None
) -> Server:
    if args.start is None:
        return external(args.url, args.pid, cpus)
    port = free_port()
    if args.start == "baseline":
        return start_baseline(port, cpus=cpus)
    if args.start == "bare":
        return start_bare(port, cpus=cpus)
    if args.start == "node":
        return start_node(port, args.peer_dir, cpus=cpus)
    extra = [w for arg in args.worker_arg for w in ("--worker-arg", arg)]
    extra += feeds.cluster_args() if feeds is not None else []
    return start_cluster(args.workers, port, args.batch_window, extra, cpus=cpus)


def run_scenario(ctx: scenarios.Context, args: argparse.Namespace) -> scenarios.Result:
    name = args.scenario
    if args.start == "bare" and name != "fanout":
        raise LoadTestError("the bare broadcast server only serves the fanout scenario")
    if name == "mass-join":
        return scenarios.mass_join(ctx, args.clients)
    if name == "churn":
        return scenarios.churn(ctx, args.watchers, args.rate, args.duration, watch=args.watch)
    if name == "reconnect-storm":
        return scenarios.reconnect_storm(ctx, args.clients)
    if name == "messages":
        return scenarios.messages(
            ctx, args.pairs, args.duration, args.rate, args.window, args.body_bytes
        )
    if name == "watchlists":
        return scopes.watchlists(
            ctx, args.clients, args.watch, args.rate, args.duration, args.lobby_watchers
        )
    if name == "status-churn":
        return scopes.status_churn(ctx, args.users, args.every, args.duration)
    if name == "idle":
        return idle.idle(ctx, args.clients, args.hold, args.watch, args.count)
    if name == "blip":
        return resume.blip(
            ctx, args.users, args.probes, args.watch, args.blips, args.seconds, args.rate
        )
    if name == "kill-worker":
        return resume.kill_worker(ctx, args.users, args.whole, args.watch)
    if name == "auth-rate":
        return authrate.auth_rate(ctx, args.clients, args.watch, args.lobby)
    if name == "scale":
        return scale.scale(ctx, args, args.plan)
    return scenarios.fanout(
        ctx, args.watchers, args.changes, args.rate, args.frame_bytes, bare=args.start == "bare"
    )


def describe(args: argparse.Namespace, server: Server) -> str:
    if args.start == "cluster":
        window = "default" if args.batch_window is None else f"{args.batch_window}s"
        return f"cluster, {args.workers} workers, batch window {window}"
    if args.start == "node":
        return f"node peer ({args.peer_dir.name}), batch window {PEER_BATCH_MS} ms"
    return args.start or server.url


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the same cleanup as Ctrl-C


def choose_cpus(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[CpuSet | None, CpuSet | None]:
    """``--server-cpus`` and ``--client-cpus``, checked (exits with a usage error)."""
    try:
        server_cpus, client_cpus = cpus.choose(args.server_cpus, args.client_cpus)
    except ValueError as exc:
        parser.error(str(exc))
    if server_cpus is not None and args.start is None and not args.pid:
        parser.error("--server-cpus: with --url, name the server's processes with --pid")
    return server_cpus, client_cpus


def check_resume_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The resume scenarios' options, checked (exits with a usage error)."""
    if args.protocol != 2:
        parser.error(f"{args.scenario}: resuming needs --protocol 2")
    if args.scenario == "kill-worker" and (args.start != "cluster" or args.workers < 2):
        parser.error("kill-worker: needs --start cluster with --workers 2 or more")
    if args.scenario == "blip" and (args.probes < 1 or args.blips < 1 or args.seconds < 0):
        parser.error("blip: --probes and --blips at least 1, --seconds at least 0")
    if args.scenario == "blip" and args.users < 2 * args.probes + args.watch:
        parser.error("blip: users must be at least 2 x --probes + --watch")
    if args.scenario == "kill-worker" and not 0 <= args.whole <= args.users:
        parser.error("kill-worker: --whole from 0 to the users")
    if args.scenario == "kill-worker" and args.watch > args.users:
        parser.error("kill-worker: --watch at most the users")


def check_idle(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.watch or args.count) and args.protocol != 2:
        parser.error("idle: --watch and --count need --protocol 2")
    if args.watch and args.count:
        parser.error("idle: --watch or --count, not both")
    if not 0 <= args.watch <= min(MAX_WATCH_KEYS, args.clients - 1):
        parser.error(f"idle: --watch from 0 to {MAX_WATCH_KEYS} keys, fewer than the clients")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    server_cpus, client_cpus = choose_cpus(parser, args)
    procs = args.procs if args.procs is not None else default_procs(client_cpus)
    watch = args.watch if args.scenario == "churn" else 0
    if watch and args.protocol != 2:
        parser.error("--watch: watchlists need --protocol 2")
    if not 0 <= watch <= MAX_WATCH_KEYS:
        parser.error(f"--watch: from 0 to {MAX_WATCH_KEYS} keys")
    if args.scenario == "idle":
        check_idle(parser, args)
    if args.scenario in ("watchlists", "status-churn") and args.protocol != 2:
        parser.error(f"{args.scenario}: needs --protocol 2")
    if args.scenario == "watchlists":
        if not 1 <= args.watch <= MAX_WATCH_KEYS:
            parser.error(f"--watch: from 1 to {MAX_WATCH_KEYS} keys")
        if args.clients < 1 or args.rate <= 0 or args.duration <= 0:
            parser.error("watchlists: clients, --rate and --duration must be positive")
        if not 0 < args.lobby_watchers <= args.clients:
            parser.error("--lobby-watchers: from 1 to the number of clients")
    if args.scenario == "status-churn" and min(args.users, args.every, args.duration) <= 0:
        parser.error("status-churn: --users, --every and --duration must be positive")
    if args.scenario in ("blip", "kill-worker"):
        check_resume_options(parser, args)
    if args.scenario == "auth-rate" and (
        args.protocol != 2
        or not 1 <= args.watch <= min(MAX_WATCH_KEYS, args.clients)
        or args.lobby < 1
    ):
        parser.error("auth-rate: needs --protocol 2, --watch from 1 to the clients, --lobby >= 1")
    if args.scenario == "scale":
        scale.check_options(parser, args)
    if not 0.0 <= args.verify_sample <= 1.0:
        parser.error("--verify-sample: a fraction from 0 to 1")
    if args.start == "node":
        missing = node_peer_missing(args.peer_dir)
        if missing:
            parser.error(f"--start node: missing {', '.join(missing)}")
        if args.protocol != 1:
            parser.error("--start node: the Node.js peer speaks protocol version 1 only")
    if args.api_consumers < 0:
        parser.error("--api-consumers: a number of consumers, 0 or more")
    if (args.api_consumers or args.webhooks) and args.start != "cluster":
        parser.error("--api-consumers, --webhooks: only with --start cluster")
    try:
        ws_client = resolve_ws_client(args.ws_client)
    except ValueError as exc:
        parser.error(f"--ws-client: {exc}")
    signal.signal(signal.SIGTERM, _terminate)
    files = raise_fd_limit()
    clients = getattr(args, "clients", None)  # the scenarios of N clients
    if isinstance(clients, int) and clients // max(procs, 1) + FILES_SPARE > files:
        parser.error(
            f"{args.scenario}: {clients} clients over {procs} generator processes need "
            f"more open files per process than the limit ({files}): use more --procs"
        )
    if args.scenario == "scale":  # its limits, checked before anything starts
        args.plan = scale.prepare(args, procs)
        if not args.plan.ok:
            print(args.plan.refusal(), file=sys.stderr)
            if args.json:
                write_json(scale.refused(args, args.plan), args.json)
            return 2
        procs = args.procs
    sources = [a.strip() for a in args.source_addresses.split(",") if a.strip()]
    server: Server | None = None
    feeds: Feeds | None = None
    cpu_info: dict[str, Any] | None = None
    ctx: scenarios.Context | None = None
    own_cpus = frozenset(os.sched_getaffinity(0))
    if client_cpus is not None:
        # This thread only (what it forks and starts inherits it); restored at the end.
        os.sched_setaffinity(0, client_cpus)
    try:
        if args.api_consumers or args.webhooks:
            feeds = Feeds(args.api_consumers, args.webhooks)
        server = start_server(args, server_cpus, feeds)
        if args.server_log:
            server.log_to(args.server_log)
        with AgentPool(
            procs,
            server.url,
            os.urandom(16),
            sources,
            client_cpus,
            args.verify_sample,
            ws_client,
            args.protocol,
        ) as pool:
            ctx = scenarios.Context(pool, server, args.concurrency, args.settle_timeout, args.quiet)
            try:
                if feeds is not None:
                    feeds.start()
                result = run_scenario(ctx, args)
                result.causes = ctx.all_causes()
                if feeds is not None:
                    feeds.finish(result, ctx.window)
            finally:
                cpu_info = cpus.placement(
                    server_cpus,
                    client_cpus,
                    server.pids(),
                    [os.getpid(), *pool.pids()],
                    own_cpus,
                )
        report: dict[str, Any] = {
            "target": describe(args, server),
            **result.to_dict(),
            "cpus": cpu_info,
            "verify_sample": args.verify_sample,
            "ws_client": ws_client,
            "protocol": args.protocol,
        }
    except LoadTestError as exc:
        print(f"load test failed: {exc}", file=sys.stderr)
        report = {
            "target": args.start or args.url,
            "scenario": args.scenario,
            "params": {},
            "metrics": {},
            "failures": [str(exc)],
            "notes": [],
            "connect": {"causes": ctx.all_causes() if ctx is not None else {}},
            "ok": False,
            "cpus": cpu_info,
        }
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
        if feeds is not None:
            feeds.close()
        if client_cpus is not None:
            os.sched_setaffinity(0, own_cpus)
    table(report, sys.stdout)
    if args.json:
        write_json(report, args.json)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
