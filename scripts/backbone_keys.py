#!/usr/bin/env python3
"""Make ZeroMQ CURVE key pairs for the backbone (coordinator and workers).

    python scripts/backbone_keys.py --cluster DIR HOST...
    python scripts/backbone_keys.py DIR NAME...

``--cluster`` makes one key directory per machine, ready for ``make run ROLE=...
KEYS=...`` (``scripts/cluster.py --keys``): copy ``DIR/coordinator`` to the coordinator's
machine and ``DIR/HOST`` to each worker machine HOST, and nothing else anywhere:

* ``DIR/coordinator/``: ``coordinator.key_secret`` (and ``.key``), and ``workers/`` with
  the public key ``HOST.key`` of every worker machine, the only ones let in;
* ``DIR/HOST/``: ``worker.key_secret`` (and ``.key``), HOST's own pair,
  ``coordinator.key``, the coordinator's public key, which HOST's workers pin, and
  ``name``, the machine's name (HOST): its workers' ids begin with it (``HOST-w1-1``),
  so no two machines' workers share an id, whatever their host names.

To let a new machine in later, run ``--cluster`` again on the same DIR, naming only the
new machines: DIR/coordinator exists, so its key pair is kept and each new machine gets
its own pair, a copy of that coordinator's public key, and its public key in
``DIR/coordinator/workers/``. Nothing is ever overwritten (a machine named twice is
refused). Then copy ``DIR/HOST`` to the new machine and
``DIR/coordinator/workers/HOST.key`` into the coordinator machine's ``workers/``, and
restart the coordinator (it reads that directory at start; the workers keep their
clients through the restart). To shut a machine out, delete its ``.key`` there and
restart the coordinator.

The plain form writes ``DIR/NAME.key`` (public: copy freely) and ``DIR/NAME.key_secret``
(secret: keep on the machine that uses it) for each NAME, for wiring by hand:

* coordinator: ``--curve-secret-key DIR/coordinator.key_secret --curve-clients WORKERS``
  where WORKERS is a directory holding the workers' ``.key`` files;
* each worker: ``--curve-secret-key DIR/workerN.key_secret
  --curve-server-key DIR/coordinator.key``.

Every directory is made mode 0700 and every secret key file 0600.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import scripts  # noqa: F401  (first: this Python has the dependencies, or it says so)

# isort: split
import zmq.auth

if __package__ in (None, ""):  # run as a script: the repository's root is not on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.launcher.config import MACHINE_NAME, MACHINE_NAME_FILE


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """``directory/name.key`` and ``directory/name.key_secret`` (0600)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def make_cluster(directory: Path, hosts: Sequence[str]) -> list[Path]:
    """The per-machine layout described in the module docstring; returns the machine
    directories made or used (the coordinator's first). When ``directory/coordinator``
    exists its key pair is kept and the machines are added to it. Refuses to overwrite
    anything (:class:`ValueError`, before writing any file)."""
    for host in hosts:
        if not MACHINE_NAME.fullmatch(host) or host == "coordinator":
            raise ValueError(f"{host!r} cannot name a machine's key directory")
    if len(set(hosts)) != len(hosts):
        raise ValueError("each worker machine must be named once")
    coordinator = directory / "coordinator"
    coordinator_public = coordinator / "coordinator.key"
    adding = coordinator.exists()
    if adding and not (coordinator_public.is_file() and (coordinator / "workers").is_dir()):
        raise ValueError(
            f"{coordinator} exists but holds no coordinator.key and workers/: "
            "not a directory made by --cluster"
        )
    machines = [directory / host for host in hosts]
    for machine in [*machines, *(coordinator / "workers" / f"{h}.key" for h in hosts)]:
        if machine.exists():
            raise ValueError(f"{machine} exists already: keys are never overwritten")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not adding:
        make_pair(coordinator, "coordinator")
        (coordinator / "workers").mkdir(mode=0o700)
    for host, machine in zip(hosts, machines, strict=True):
        public, _ = make_pair(machine, "worker")
        shutil.copyfile(public, coordinator / "workers" / f"{host}.key")
        shutil.copyfile(coordinator_public, machine / "coordinator.key")
        (machine / MACHINE_NAME_FILE).write_text(f"{host}\n")
    return [coordinator, *machines]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (or docs/operating.md, Running on several machines).",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="make DIR/coordinator (unless it exists: then add to it) and one DIR/HOST per "
        "worker machine HOST",
    )
    parser.add_argument("directory", help="where to write the key files (created 0700)")
    parser.add_argument("names", nargs="+", help="key pair names (with --cluster: worker machines)")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    if args.cluster:
        adding = (directory / "coordinator").exists()
        try:
            machines = make_cluster(directory, args.names)
        except ValueError as exc:
            parser.error(str(exc))
        coordinator = machines[0]
        if adding:
            for machine in machines[1:]:
                print(
                    f"copy {coordinator}/workers/{machine.name}.key into the coordinator "
                    "machine's workers/ and restart its coordinator (make run "
                    "ROLE=coordinator ...; the workers keep their clients)"
                )
        else:
            print(
                f"copy {coordinator} to the coordinator's machine "
                "(make run ROLE=coordinator KEYS=...)"
            )
        for machine in machines[1:]:
            print(
                f"copy {machine} to worker machine {machine.name} (make run ROLE=workers KEYS=...)"
            )
        return 0
    for name in args.names:
        public, secret = make_pair(directory, name)
        print(f"{name}: public {public}, secret {secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
