"""The shipped nginx configuration (docs/deploy/nginx.conf) in front of a real cluster:
Debian's nginx, started by the test with the shipped file (only its addresses, ports and
certificate paths changed), terminates TLS and passes the WebSocket upgrade; a client
through it authenticates and sees the lobby; and fair admission counts each client by
its own address (not the proxy's), while an X-Forwarded-For a client writes never
reaches the worker.

Admission is made observable with a challenge phase of two places (``--max-pending-auth
2``): a newcomer from an address holding none evicts the oldest waiting connection of
an address holding two (1013), and is refused (503) when the two belong to addresses
holding one each. ``--challenge-grace`` is long, so no connection is evicted for having
waited. Clients pick their source among loopback addresses: 127.0.0.1 is the proxy's own
(trusted: the workers get ``--trusted-proxies 127.0.0.1``), 127.0.0.2 and .3 are not.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.client import LobbyClient
from tests.deploy.conftest import (
    deploy_file,
    door,
    evicted,
    forged_forwarded_for_is_not_believed,
    tool,
)
from tests.support import Launched, free_port, health, health_until, run, tls_files, until

pytestmark = pytest.mark.process

SHIPPED_UPSTREAM = "server 127.0.0.1:8765 "
SHIPPED_CERT = "/etc/letsencrypt/live/lobby.example/fullchain.pem"
SHIPPED_KEY = "/etc/letsencrypt/live/lobby.example/privkey.pem"


class Nginx:
    """Debian's nginx in the foreground, every path it writes in ``tmp``."""

    def __init__(self, tmp: Path, upstream_port: int, cert: Path, key: Path) -> None:
        nginx = tool("nginx", "nginx")
        self.port = free_port()
        site = deploy_file("nginx.conf").read_text()
        for old, new in (
            ("listen 443 ssl;", f"listen 127.0.0.1:{self.port} ssl;"),
            ("listen [::]:443 ssl;", ""),
            (SHIPPED_UPSTREAM, f"server 127.0.0.1:{upstream_port} "),
            (SHIPPED_CERT, str(cert)),
            (SHIPPED_KEY, str(key)),
        ):
            assert site.count(old) == 1, f"the shipped config no longer has {old!r}"
            site = site.replace(old, new)
        (tmp / "presence.conf").write_text(site)
        temp = "".join(
            f"{kind}_temp_path {tmp / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (tmp / "nginx.conf").write_text(
            ("user root;\n" if os.getuid() == 0 else "")  # its workers read files in tmp
            + f"worker_processes 1;\npid {tmp / 'nginx.pid'};\n"
            + f"error_log {tmp / 'error.log'} info;\n"
            + "events { worker_connections 256; }\n"
            + f"http {{\naccess_log {tmp / 'access.log'};\n{temp}"
            + f"include {tmp / 'presence.conf'};\n}}\n"
        )
        self.error_log = tmp / "error.log"
        files = ["-p", str(tmp), "-e", str(self.error_log), "-c", str(tmp / "nginx.conf")]
        self.proc = subprocess.Popen(
            [nginx, *files, "-g", "daemon off;"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def listening(self) -> bool:
        assert self.proc.poll() is None, self.log()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        return self.error_log.read_text() if self.error_log.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Launched, Nginx, ssl.SSLContext]]:
    cert, key, client_ssl = tls_files(tmp_path)
    worker = ("--trusted-proxies", "127.0.0.1", "--max-pending-auth", "2")
    worker += ("--challenge-grace", "30")
    launched = Launched(tmp_path, 1, worker=worker, extra=("--metrics-port", "0"))
    proxy: Nginx | None = None
    try:
        proxy = Nginx(tmp_path, launched.port, cert, key)
        run(until(proxy.listening, "nginx to listen", timeout=10))
        yield launched, proxy, client_ssl
    finally:
        if proxy is not None:
            proxy.stop()
        launched.stop()


def test_through_nginx_a_client_signs_in_and_admission_sees_its_own_address(
    proxied: tuple[Launched, Nginx, ssl.SSLContext],
) -> None:
    launched, proxy, client_ssl = proxied
    url = f"wss://127.0.0.1:{proxy.port}/ws"

    async def scenario() -> None:
        # TLS at nginx, the upgrade passed through: authenticated, and in the lobby.
        async with LobbyClient.connect(url, ssl=client_ssl) as me:
            assert me.public_key in me.view.online
        # Each connection is counted by the address nginx saw: 127.0.0.2 holds two (the
        # headers it wrote name two others), so a newcomer from 127.0.0.3 evicts one. Had
        # the worker counted the proxy's address, all three would be one source: 503.
        a1 = await door(url, client_ssl, "127.0.0.2", **{"X-Forwarded-For": "198.51.100.1"})
        a2 = await door(url, client_ssl, "127.0.0.2", **{"X-Forwarded-For": "198.51.100.2"})
        assert not isinstance(a1, int) and not isinstance(a2, int)
        b1 = await door(url, client_ssl, "127.0.0.3")
        assert not isinstance(b1, int), f"refused with {b1}: the proxy's address was counted"
        assert await evicted(a1)
        for ws in (a2, b1):
            await ws.close()
        await health_until(launched.port, lambda h: h["challenged"] == 0, "the room to empty")
        await forged_forwarded_for_is_not_believed(url, client_ssl)
        assert (await health(launched.port))["evicted"] == 2

    run(scenario(), timeout=60)
    assert "[emerg]" not in proxy.log() and "[crit]" not in proxy.log(), proxy.log()
