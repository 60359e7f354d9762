"""A lobby client as its own process, for the multi-process integration test.

Prints ``VIEW <seq> <key,key,...>`` each time its view changes and ``ERRORS n`` if the
client library saw a contract violation; closes cleanly (code 1000) on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from shared.client import LobbyClient, LobbyView, load_or_create_signing_key


def _line(view: LobbyView) -> str:
    return f"VIEW {view.seq} {','.join(sorted(view.online))}"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key-file", required=True)
    args = parser.parse_args()
    key, _ = load_or_create_signing_key(args.key_file)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with LobbyClient.connect(args.url, key) as client:
        print(f"AUTHED {client.public_key}", flush=True)
        shown = ""
        while not stop.is_set():
            if (line := _line(client.view)) != shown:
                shown = line
                print(line, f"ERRORS {len(client.errors)}", flush=True)
            changed = asyncio.ensure_future(
                client.wait_for_view(lambda v, s=shown: _line(v) != s, timeout=3600)
            )
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in (changed, stopped):
                task.cancel()
    print("CLOSED", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
