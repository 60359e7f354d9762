"""Webhook delivery under churn: lag, throughput, and what it costs the cluster.

    .venv/bin/python scripts/webhook_bench.py [--watchers 500] [--rate 200]
        [--duration 20] [--workers 2] [--sender-only]

First the sender alone, in this process: 5,000 updates of 1 key, then 2,000 of 100
keys (18 MB: within the outbox's bytes), offered as fast as possible, to measure what
an update costs the coordinator's thread (the offer) and how many events a second one
sender delivers. Then it runs the load generator's churn scenario (``python -m
scripts.loadtest --start cluster churn``) twice: with webhooks off, then on, to a
receiver in this process that checks every delivery's signature (as
``scripts/webhook_receiver.py`` does) and the order of its events. Reports, for the
run with webhooks: events and deliveries received, events per delivery, events a
second, the delivery lag (from an event's publication, its ``at``, to its delivery
being read here: p50, p99, max), and any gap or loss (there must be none); for both
runs, the load generator's lobby update latency and the server's CPU, so the webhooks'
cost shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import scripts  # noqa: F401  (first: it names the Python to use if a dependency lacks)

from coordinator.webhook_sender import WebhookSender
from coordinator.webhooks import WebhookOptions
from scripts.loadtest.feeds import Measuring, percentile
from shared import backbone as bb

SECRET = b"bench-secret-0123456789abcdef0123"


async def churn(args: argparse.Namespace, env: dict[str, str], out: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "scripts.loadtest", "--start", "cluster",
        "--workers", str(args.workers), "--json", str(out), "--quiet",
        "churn", "--watchers", str(args.watchers), "--rate", str(args.rate),
        "--duration", str(args.duration),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    await process.wait()
    result: dict[str, Any] = json.loads(out.read_text())
    return result


async def throughput(port: int, receiver: Measuring, updates: int, keys: int) -> dict[str, Any]:
    """Offer ``updates`` updates of ``keys`` joins each as fast as possible to a sender
    in this process: the coordinator's cost per update (the offer) and the delivery rate
    the sender reaches (one delivery in flight, batches of up to 100 events)."""
    options = WebhookOptions(
        webhook_url=f"http://127.0.0.1:{port}/hook", webhook_secret_file="(unread)"
    )
    sender = WebhookSender(options, SECRET)
    sender.start()
    epoch = bb.new_epoch()
    made = [
        bb.Update(epoch, seq, seq, [f"{seq:032x}{i:032x}" for i in range(keys)], [], time.time())
        for seq in range(1, updates + 1)
    ]
    before, deliveries = len(receiver.lags), receiver.deliveries
    began = time.perf_counter()
    for update in made:
        sender.offer(update)
    offered = time.perf_counter() - began
    while len(receiver.lags) - before < updates - sender.outbox.dropped:
        await asyncio.sleep(0.01)
    took = time.perf_counter() - began
    sender.stop()
    return {
        "keys_per_update": keys,
        "offer_us_per_update": round(1e6 * offered / updates, 1),
        "events_per_s": round(updates / took),
        "deliveries_per_s": round((receiver.deliveries - deliveries) / took),
        "dropped": sender.outbox.dropped,
    }


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--watchers", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0, help="changes a second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--sender-only", action="store_true", help="only the sender's own throughput"
    )
    args = parser.parse_args(argv)
    receiver = Measuring(SECRET)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    alone = [await throughput(port, receiver, n, keys) for n, keys in ((5000, 1), (2000, 100))]
    print(json.dumps({"sender": alone}, indent=1), flush=True)
    if args.sender_only:
        return 0
    receiver = Measuring(SECRET)
    server.close()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "secret"
        secret.write_bytes(SECRET)
        secret.chmod(0o600)
        off = await churn(args, dict(os.environ), Path(tmp) / "off.json")
        hooks = dict(
            os.environ,
            PRESENCE_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook",
            PRESENCE_WEBHOOK_SECRET_FILE=str(secret),
        )
        on = await churn(args, hooks, Path(tmp) / "on.json")
    server.close()
    lags = receiver.lags
    span = receiver.last_at - (receiver.first_at or receiver.last_at)
    report: dict[str, Any] = {
        "events": len(lags),
        "deliveries": receiver.deliveries,
        "events_per_delivery": round(len(lags) / max(1, receiver.deliveries), 2),
        "events_per_s": round(len(lags) / span, 1) if span else 0.0,
        "bytes_per_s": round(receiver.bytes / span) if span else 0,
        "lag_p50_ms": round(1000 * percentile(lags, 0.5), 1),
        "lag_p99_ms": round(1000 * percentile(lags, 0.99), 1),
        "lag_max_ms": round(1000 * max(lags, default=0.0), 1),
        "gaps": receiver.gaps,
        "lost": receiver.lost,
        "bad_signatures": receiver.bad,
    }
    for name, run in (("off", off), ("on", on)):
        m = run["metrics"]
        report[f"update_latency_p99_ms_webhooks_{name}"] = m["update_latency_p99_ms"]
        report[f"server_cpu_s_webhooks_{name}"] = m["server_cpu_s"]
        report[f"checks_webhooks_{name}"] = "passed" if run["ok"] else "FAILED"
    print(json.dumps(report, indent=1))
    ok = on["ok"] and off["ok"] and not (receiver.gaps or receiver.lost or receiver.bad)
    return 0 if ok and lags else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
