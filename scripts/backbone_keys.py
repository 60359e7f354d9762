#!/usr/bin/env python3
"""Make ZeroMQ CURVE key pairs for the backbone (coordinator and workers).

    python scripts/backbone_keys.py DIR coordinator worker1 worker2 ...

writes ``DIR/NAME.key`` (public: copy freely) and ``DIR/NAME.key_secret`` (secret: mode
0600, keep on the machine that uses it) for each NAME. Then:

* coordinator: ``--curve-secret-key DIR/coordinator.key_secret --curve-clients WORKERS``
  where WORKERS is a directory holding the workers' ``.key`` files;
* each worker: ``--curve-secret-key DIR/workerN.key_secret
  --curve-server-key DIR/coordinator.key``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import zmq.auth


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write the key files (created 0700)")
    parser.add_argument("names", nargs="+", help="one key pair per name")
    args = parser.parse_args(argv)
    os.makedirs(args.directory, mode=0o700, exist_ok=True)
    for name in args.names:
        public, secret = zmq.auth.create_certificates(args.directory, name)
        os.chmod(secret, 0o600)
        print(f"{name}: public {public}, secret {secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
