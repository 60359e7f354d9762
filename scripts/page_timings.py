#!/usr/bin/env python3
"""How fast the lobby page is with a big lobby, measured in headless Chromium.

    python scripts/page_timings.py [--users 5000] [--updates 50] [--per-update 4]

A scripted server (``scripts/fake_lobby.py``) serves the real page and shows it a lobby
of ``--users`` users, then publishes ``--updates`` updates, each with ``--per-update``
joins and as many leaves, one at a time, waiting for the page to draw each. It prints
the time from navigation to the lobby drawn (``loadToOnlineMs``, as the page measures
it) and the time the page took to apply each update to the DOM (``lastApplyMs``). The
server is scripted, so these are the page's own costs, not the cluster's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.chromium import chromium
from scripts.fake_lobby import FakeLobby, random_keys


async def measure(users: int, updates: int, per_update: int) -> dict[str, float]:
    fake = await FakeLobby(users=set(random_keys(users))).start()
    try:
        async with chromium() as browser:
            page = await (await browser.new_context()).new_page()
            await page.goto(f"http://127.0.0.1:{fake.port}/?key=memory")
            await page.wait_for_function("window.lobby && window.lobby.ready")
            await page.evaluate("window.lobby.ready")
            load = float(await page.evaluate("window.lobbyTimings.loadToOnlineMs"))
            applies = []
            for _ in range(updates):
                before = int(await page.evaluate("window.lobby.applied"))
                leaving = sorted(fake.users)[:per_update]
                fake.update(joined=random_keys(per_update), left=leaving)
                await page.wait_for_function(f"window.lobby.applied > {before}")
                applies.append(float(await page.evaluate("window.lobbyTimings.lastApplyMs")))
            shown = int(await page.text_content("#count") or 0)
            assert shown == len(fake.users), (shown, len(fake.users))
    finally:
        await fake.stop()
    return {
        "users": float(users + 1),
        "load_to_online_ms": round(load, 1),
        "apply_p50_ms": round(statistics.median(applies), 2),
        "apply_max_ms": round(max(applies), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--per-update", type=int, default=4)
    args = parser.parse_args()
    result = asyncio.run(measure(args.users, args.updates, args.per_update))
    for name, value in result.items():
        print(f"{name:20} {value:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
