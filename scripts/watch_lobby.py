#!/usr/bin/env python3
"""Join the lobby and watch people come and go, live.

    python scripts/watch_lobby.py [--url ws://127.0.0.1:8765/ws] [--key-file PATH]
                                  [--send PUBLIC_KEY BODY]

Prints who is online when it joins, then every join and leave with a timestamp and the
online count, and every direct message that arrives. It keeps the same identity across
runs: the hex seed of an Ed25519 key in ``--key-file``, by default
``$XDG_CONFIG_HOME/presence-lobby/watch.key`` (``~/.config/...``), created with mode 0600
if missing; ``--throwaway`` uses a new identity, saved nowhere. ``--send`` sends one
direct message once connected and prints its result. Ctrl-C leaves cleanly.

Exit status: 0 after Ctrl-C, 1 when the server closes the connection or refuses it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import scripts  # noqa: F401  (first: this Python has the dependencies, or it says so)

# isort: split
from nacl.signing import SigningKey

from shared.client import (
    DEFAULT_URL,
    ConnectionClosedError,
    LobbyChange,
    LobbyClient,
    LobbyClientError,
    generate_signing_key,
    load_or_create_signing_key,
)

MAX_SHOWN_BODY = 500


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences a peer could
    use to rewrite the screen) are shown escaped, and long bodies are cut."""
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text[:MAX_SHOWN_BODY])
    if len(text) > MAX_SHOWN_BODY:
        shown += f"... ({len(text)} characters)"
    return shown


def default_key_file() -> Path:
    """Where the watcher keeps its identity between runs."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "presence-lobby" / "watch.key"


def identity(key_file: Path | None) -> SigningKey:
    """The key in ``key_file`` (made if missing, with its directory); a new, unsaved
    one when ``key_file`` is None."""
    if key_file is None:
        return generate_signing_key()
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key, created = load_or_create_signing_key(key_file)
    if created:
        say(f"created a new identity in {key_file}")
    return key


def stamp() -> str:
    return time.strftime("%H:%M:%S")


def say(text: str) -> None:
    print(f"{stamp()} {text}", flush=True)


class Watcher:
    """Prints lobby changes and messages; notices new client errors as they appear."""

    def __init__(self, client: LobbyClient) -> None:
        self.client = client
        self.errors_shown = 0

    def me(self, key: str) -> str:
        return f"{key} (you)" if key == self.client.public_key else key

    def on_change(self, change: LobbyChange) -> None:
        if change.kind == "snapshot":
            say(f"snapshot seq {change.seq}: {change.online} online")
            for key in sorted(change.joined):
                print(f"         {self.me(key)}", flush=True)
        else:
            rejoined = set(change.joined) & set(change.left)
            for key in change.left:
                if key not in rejoined:
                    say(f"- left     {self.me(key)}")
            for key in change.joined:
                label = "~ rejoined" if key in rejoined else "+ joined  "
                say(f"{label} {self.me(key)}")
            say(f"  {change.online} online (seq {change.seq})")
        self.show_errors()

    def show_errors(self) -> None:
        for error in self.client.errors[self.errors_shown :]:
            say(f"! client error: {printable(str(error))}")
        self.errors_shown = len(self.client.errors)

    async def print_messages(self) -> None:
        while True:
            try:
                message = await self.client.next_message(timeout=None)
            except ConnectionClosedError:
                return
            say(
                f"> message from {message.sender} (id {printable(message.id)}): "
                f"{printable(message.body)}"
            )


async def watch(url: str, key_file: Path | None, send: Sequence[str] | None) -> int:
    key = identity(key_file)
    try:
        client = await LobbyClient.connect(url, key)
    except (LobbyClientError, OSError, TimeoutError) as exc:
        say(f"could not join {url}: {exc}")
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    watcher = Watcher(client)
    say(f"joined {url} as {client.public_key}")
    watcher.on_change(
        LobbyChange(
            "snapshot", client.view.seq or 0, tuple(client.view.online), (), len(client.view)
        )
    )
    client.lobby_listeners.append(watcher.on_change)
    messages = asyncio.create_task(watcher.print_messages())

    if send is not None:
        to, body = send
        try:
            result = await client.send(to, body)
            say(f"send to {to}: {result.outcome}")
        except (LobbyClientError, TimeoutError) as exc:
            say(f"send to {to} failed: {exc}")

    stopped = asyncio.create_task(stop.wait())
    closed = asyncio.create_task(client.wait_closed(timeout=None))
    await asyncio.wait([stopped, closed], return_when=asyncio.FIRST_COMPLETED)
    by_us = stop.is_set()
    stopped.cancel()
    await client.close()
    closed.cancel()
    await messages
    watcher.show_errors()
    if by_us:
        say("left the lobby")
        return 0
    say(f"the server closed the connection: {client.close_code} {client.close_reason or ''}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="watch_lobby.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="lobby URL (%(default)s)")
    parser.add_argument(
        "--key-file",
        type=Path,
        help="identity file (hex seed), created with mode 0600 if missing "
        "(default: $XDG_CONFIG_HOME/presence-lobby/watch.key, ~/.config/... without it)",
    )
    parser.add_argument(
        "--throwaway",
        action="store_true",
        help="a new identity for this run, saved nowhere (not with --key-file)",
    )
    parser.add_argument(
        "--send",
        nargs=2,
        metavar=("PUBLIC_KEY", "BODY"),
        help="send one direct message once connected",
    )
    args = parser.parse_args(argv)
    if args.throwaway and args.key_file is not None:
        parser.error("--throwaway and --key-file exclude each other")
    key_file = None if args.throwaway else (args.key_file or default_key_file())
    try:
        return asyncio.run(watch(args.url, key_file, args.send))
    except KeyboardInterrupt:  # Ctrl-C before the lobby was joined
        return 0
    except (ValueError, OSError) as exc:  # an unreadable or unwritable key file
        print(f"watch_lobby.py: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
