"""Tests of the shipped deployment files (docs/deploy/). Those that run a tool (nginx,
haproxy, promtool, systemd-analyze) skip where it is missing, saying why, except under
CI (``PRESENCE_REQUIRE_TOOLS=1``, set by ``.ci/run``, which installs them), where they
fail. The reverse proxies' tests share :func:`door` and :func:`evicted`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import ROOT

DEPLOY = ROOT / "docs" / "deploy"


def tool(name: str, package: str) -> str:
    """The path of the program ``name`` (from Debian's ``package``), or skip (fail
    under CI)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is not None:
        return found
    why = f"{name} is missing (Debian: apt-get install {package})"
    if os.environ.get("PRESENCE_REQUIRE_TOOLS"):
        pytest.fail(f"{why}; the deployment tests must run here: PRESENCE_REQUIRE_TOOLS")
    pytest.skip(why)


def deploy_file(name: str) -> Path:
    path = DEPLOY / name
    assert path.is_file(), path
    return path


async def door(
    url: str, client_ssl: ssl.SSLContext, source: str, **headers: str
) -> ClientConnection | int:
    """An upgrade from ``source`` through the proxy: the connection once it holds a
    challenge, or the HTTP status that refused it."""
    try:
        ws = await connect(
            url, ssl=client_ssl, local_addr=(source, 0), additional_headers=headers or None
        )
    except InvalidStatus as exc:
        return exc.response.status_code
    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "challenge"
    return ws


async def evicted(ws: ClientConnection) -> bool:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    return (ws.close_code, ws.close_reason) == (1013, "try_again_later")


async def forged_forwarded_for_is_not_believed(url: str, client_ssl: ssl.SSLContext) -> None:
    """A client on the proxy's own (trusted) address writes X-Forwarded-For naming
    others. A proxy that replaces the header leaves both connections 127.0.0.1's, so a
    newcomer from elsewhere evicts one; had the proxy appended to it, the worker would
    have believed the addresses written there, and refused the newcomer with 503.
    Needs a door of two places, empty."""
    c1 = await door(url, client_ssl, "127.0.0.1", **{"X-Forwarded-For": "198.51.100.3"})
    c2 = await door(url, client_ssl, "127.0.0.1", **{"X-Forwarded-For": "198.51.100.4"})
    assert not isinstance(c1, int) and not isinstance(c2, int)
    d1 = await door(url, client_ssl, "127.0.0.3")
    assert not isinstance(d1, int), f"refused with {d1}: a client's header was believed"
    assert await evicted(c1)
    for ws in (c2, d1):
        await ws.close()
