"""The load generator survives servers that misbehave while it connects: each failed
attempt is counted by cause, retried, and the run ends with a result."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from scripts.loadtest import fastws, scenarios
from scripts.loadtest.pool import AgentPool
from scripts.loadtest.target import Server, start_baseline
from scripts.procfs import free_port
from tests.scripts.misbehaving import Misbehaving
from tests.support import until

pytestmark = pytest.mark.process

NEEDS_PICOWS = pytest.mark.skipif(not fastws.AVAILABLE, reason="picows is not installed")
WS_CLIENTS = ["websockets", pytest.param("picows", marks=NEEDS_PICOWS)]
CLIENTS = 8


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    server = start_baseline(free_port())
    yield server
    server.stop()


def run_mass_join(server: Server, proxy: Misbehaving, ws_client: str) -> scenarios.Result:
    with AgentPool(1, proxy.url, os.urandom(16), ws_client=ws_client) as pool:
        ctx = scenarios.Context(pool, server, concurrency=4, settle_timeout=5.0, quiet=True)
        return scenarios.mass_join(ctx, CLIENTS)


@pytest.mark.parametrize("ws_client", WS_CLIENTS)
def test_connections_dropped_before_the_upgrade_are_counted_and_retried(
    server: Server, ws_client: str
) -> None:
    with Misbehaving(server.url, "drop") as proxy:
        result = run_mass_join(server, proxy, ws_client)
    assert result.ok, result.failures
    assert proxy.misbehaved >= CLIENTS // 3
    assert result.causes == {"dropped_before_upgrade": proxy.misbehaved}
    assert result.to_dict()["connect"]["causes"] == result.causes
    assert result.metrics["retried_other"] == proxy.misbehaved


@pytest.mark.parametrize("ws_client", WS_CLIENTS)
def test_connections_reset_after_the_upgrade_are_counted_and_retried(
    server: Server, ws_client: str
) -> None:
    with Misbehaving(server.url, "reset") as proxy:
        result = run_mass_join(server, proxy, ws_client)
    assert result.ok, result.failures
    assert proxy.misbehaved >= CLIENTS // 3
    assert result.causes == {"reset_after_upgrade": proxy.misbehaved}
    assert result.metrics["retried_other"] == proxy.misbehaved


def test_clients_reset_mid_run_are_counted_and_fail_the_checks(server: Server) -> None:
    with (
        Misbehaving(server.url, "drop", every=1_000) as proxy,
        AgentPool(1, proxy.url, os.urandom(16), ws_client="websockets") as pool,
    ):
        ctx = scenarios.Context(pool, server, concurrency=4, settle_timeout=2.0, quiet=True)
        scenarios.connect(ctx, range(4), "connecting", watch=False)
        assert proxy.reset_open() == 4
        asyncio.run(until(lambda: not any(ctx.pool.call("online")), "the clients see it"))
        result = scenarios.Result("mid-run", {})
        scenarios.settle(ctx, result)
    assert ctx.all_causes() == {"reset_mid_run": 4}
    assert any("4 clients were closed by the server" in f for f in result.failures)
