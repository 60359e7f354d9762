#!/usr/bin/env python3
"""The fan-out limit for ``make bench``: a bare ``websockets`` server that does nothing
but push one small frame to every connection with :func:`websockets.broadcast`.

    python scripts/bare_broadcast.py [--host H] [--port P]

Clients connect to ``/ws`` and only read. A control client connects to ``/control``
and sends ``push COUNT RATE SIZE``: the server then broadcasts COUNT frames of SIZE
bytes, RATE per second, to every ``/ws`` connection and answers ``done COUNT``. No
authentication, no JSON, no state: the CPU it spends per delivered frame is the floor
any Python server on websockets pays, which the cluster's fan-out is compared with.
Prints ``bare ready at ws://...`` once listening (and sends ``READY=1`` to
``$NOTIFY_SOCKET``, see ``shared.notify``); stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import scripts  # noqa: F401  (first: this Python has the dependencies, or it says so)

# isort: split
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from shared import defaults, notify

MAX_COUNT = 1_000_000
"""Upper bound on one ``push``: every loop here ends by itself."""


def frame_of(size: int) -> str:
    """A JSON-looking text frame of exactly ``size`` bytes (at least 2)."""
    return '"' + "x" * max(0, size - 2) + '"'


class Bare:
    def __init__(self) -> None:
        self.clients: set[ServerConnection] = set()

    async def handle(self, ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path == "/control":
            await self.control(ws)
            return
        self.clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            self.clients.discard(ws)

    async def control(self, ws: ServerConnection) -> None:
        try:
            async for command in ws:
                words = str(command).split()
                if len(words) != 4 or words[0] != "push":
                    await ws.send("error: expected 'push COUNT RATE SIZE'")
                    continue
                count = min(int(words[1]), MAX_COUNT)
                await self.push(count, float(words[2]), frame_of(int(words[3])))
                await ws.send(f"done {count}")
        except (ConnectionClosed, ValueError):
            pass

    async def push(self, count: int, rate: float, frame: str) -> None:
        started = time.monotonic()
        for n in range(count):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            websockets.broadcast(self.clients, frame)


async def run(host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(Bare().handle, host, port, compression=None, ping_interval=None):
        print(f"bare ready at ws://{host}:{port}/ws", flush=True)
        notify.ready(f"bare ready at ws://{host}:{port}/ws")
        await stop.wait()
        notify.stopping()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=defaults.HOST, help="interface (%(default)s)")
    parser.add_argument("--port", type=int, default=defaults.PORT, help="port (%(default)s)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(run(args.host, args.port))
    return uvloop.run(run(args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
