"""The load generator's backend feeds (scripts/loadtest/feeds.py, backend.py) and their
benchmark set: how a consumer and the receiver judge what they get, how their figures
join a result, and one tiny churn with both feeds against a real cluster."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from scripts import bench, bench_events
from scripts.loadtest.__main__ import main
from scripts.loadtest.backend import behind, merge, summary
from scripts.loadtest.feeds import Measuring, Tally, consume, receive
from scripts.loadtest.scenarios import Result
from shared import events

EPOCH = "00000001765130000123456789-0a1b2c3d"


def _reset(seq: int, reason: str = "start") -> bytes:
    data = json.dumps({"epoch": EPOCH, "seq": seq, "reason": reason})
    return f"event: reset\ndata: {data}\n\n".encode()


def _event(seq: int, at: float) -> bytes:
    data = events.encode(events.Event(EPOCH, seq, at)).decode()
    return f"id: {EPOCH}:{seq}\ndata: {data}\n\n".encode()


def test_a_consumer_counts_consecutive_events_and_names_anything_else() -> None:
    tally = Tally()
    assert receive(tally, _reset(4), 100.0)
    for seq, now in ((5, 100.5), (6, 101.0)):
        assert receive(tally, _event(seq, now - 0.01), now)
    assert receive(tally, b": keep-alive\n\n", 101.5)
    assert (tally.events, tally.last, tally.problems) == (2, 6, [])
    assert [round(x, 3) for x in tally.latencies] == [0.01, 0.01]
    assert [at for at, _size in tally.arrivals] == [100.5, 101.0]
    assert receive(tally, _event(8, 102.0), 102.0)
    assert receive(tally, _reset(9, "too_old"), 102.0)
    assert not receive(tally, b'event: cut_off\ndata: {"reason":"slow_consumer"}\n\n', 103.0)
    assert tally.problems[0] == "gap: 6 then 8"
    assert "too_old" in tally.problems[1] and "cut_off" in tally.problems[2]


def test_a_consumer_reads_an_event_larger_than_a_default_stream_buffer() -> None:
    big = events.encode(events.Event(EPOCH, 1, 1.0, left=tuple(f"{i:064x}" for i in range(2000))))
    assert len(big) > 128 * 1024  # the leaves at the end of a churn of thousands

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + _reset(0) + b"data: " + big + b"\n\n")
        await writer.drain()
        writer.close()

    async def run() -> Tally:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        tally = Tally()
        async with server:
            await consume("127.0.0.1", server.sockets[0].getsockname()[1], "token", tally, 5.0)
        return tally

    tally = asyncio.run(run())
    assert (tally.events, tally.last) == (1, 1)
    assert tally.problems and tally.problems[0].startswith("the stream ended")


def _delivery(first: int, last: int, lost: int = 0) -> dict[str, Any]:
    return {
        "epoch": EPOCH,
        "lost": {"count": lost} if lost else None,
        "events": [{"epoch": EPOCH, "seq": s, "at": 10.0} for s in range(first, last + 1)],
    }


def test_the_receiver_skips_a_retry_and_counts_gaps_and_losses() -> None:
    receiver = Measuring(b"secret")
    receiver.record(_delivery(1, 3), 10.1, 100)
    receiver.record(_delivery(2, 4), 10.2, 100)  # a retry's 2 and 3, then 4
    assert (len(receiver.lags), receiver.gaps, receiver.position) == (4, 0, (EPOCH, 4))
    assert receiver.arrivals == [(10.1, 3), (10.2, 1)]
    receiver.record(_delivery(6, 6, lost=1), 10.3, 100)
    assert (receiver.gaps, receiver.lost, receiver.deliveries) == (1, 1, 3)


def test_the_feeds_figures_are_taken_within_the_window_and_their_faults_fail_the_run() -> None:
    good, late = Tally(), Tally()
    for tally in (good, late):
        receive(tally, _reset(0), 0.0)
    for seq in range(1, 11):  # one a second; the window holds 5 of them
        receive(good, _event(seq, seq - 0.002), float(seq))
    receive(late, _event(1, 0.5), 1.0)
    receive(late, _event(3, 2.5), 3.0)
    receiver = Measuring(b"secret")
    receiver.record(_delivery(1, 10), 10.5, 1000)
    assert behind([good, late], receiver, EPOCH, 10) == ["consumer 2 (at 3)"]
    assert behind([good], receiver, "another-epoch", 10) == ["the webhook receiver (at 10)"]
    metrics, failures = summary([good], receiver, (3.0, 8.0))
    assert metrics["stream_events_per_s_per_consumer"] == 1.2  # 3 to 8 in 5 s
    assert metrics["stream_latency_p50_ms"] == 2.0
    assert metrics["webhook_events_per_delivery"] == 10
    assert metrics["webhook_deliveries_per_s"] == 0  # outside the window
    assert failures == []
    receiver.record(_delivery(12, 12), 10.6, 100)
    metrics, failures = summary([good, late], receiver, None)
    assert failures == [
        "event stream 2: 1 problems: gap: 1 then 3",
        "webhooks: 1 gaps between events",
    ]
    result = Result("churn", {}, {"changes": 1})
    merge(result, metrics, failures)
    assert not result.ok and result.metrics["webhook_gaps"] == 1
    assert summary([Tally()], Measuring(b"s"), None)[1] == [
        "event stream 1 received no event",
        "webhooks: no event delivered",
    ]


def test_the_events_set_judges_the_feeds_and_their_cost_on_the_pinned_pair() -> None:
    names = [run.name for run in bench_events.runs()]
    assert all(name.endswith(" pinned") for name in names)
    figures = {"stream_events_per_s_per_consumer": 150.0, "stream_latency_p99_ms": 9.0}
    figures |= {"webhook_deliveries_per_s": 40.0, "webhook_lag_p99_ms": 20.0}
    on = {"ok": True, "metrics": {"server_cpu_s": 12.0, **figures}}
    off = {"ok": True, "metrics": {"server_cpu_s": 10.0}}
    met = [row[2] for row in bench_events.targets({names[0]: on, names[1]: off})]
    assert met == [True, True, True]  # 1.2x the CPU
    off["metrics"]["server_cpu_s"] = 9.0
    assert [row[2] for row in bench_events.targets({names[0]: on, names[1]: off})][2] is False
    failed = {"ok": False, "metrics": {}}
    assert [row[2] for row in bench_events.targets({names[0]: failed, names[1]: off})] == [
        None,
        None,
        None,
    ]
    assert (bench.cell(on, "stream_latency_p99_ms"), bench.cell(off, "webhook_lag_p99_ms")) == (
        "9",
        "-",
    )


def test_the_cli_refuses_feeds_without_a_started_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["--webhooks", "idle", "1"], ["--start", "baseline", "--api-consumers", "1"]):
        with pytest.raises(SystemExit) as info:
            main([*argv, "idle", "1"] if argv[0] == "--start" else argv)
        assert info.value.code == 2
        assert "only with --start cluster" in capsys.readouterr().err


@pytest.mark.process
def test_a_load_with_both_feeds_against_a_cluster(tmp_path: Path) -> None:
    out = tmp_path / "feeds.json"
    argv = ["--start", "cluster", "--workers", "1", "--procs", "1", "--quiet"]
    argv += ["--api-consumers", "2", "--webhooks", "--json", str(out)]
    argv += ["mass-join", "6"]
    assert main(argv) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["stream_consumers"] == 2 and m["stream_events"] > 0 and m["webhook_events"] > 0
