"""HAProxy (Debian's) with the shipped docs/deploy/haproxy.cfg (its ports, certificate
and servers changed; a ``global`` section of the test's own adds a stats socket) in
front of two worker machines: ``web1``, a launched one-worker cluster, and ``web2``, a
lone worker whose coordinator never answers, so that its ``/healthz`` says 503.

HAProxy's checks of ``/healthz`` take ``web2`` out (the stats socket says DOWN, ``web1``
UP). Then every client signs in through it over ``wss://`` and all see each other in
one lobby: none could have signed in on ``web2``, and leastconn would have sent one
there. And an ``X-Forwarded-For`` a client writes does not reach the worker, as in the
nginx test (``--max-pending-auth 2``, ``--challenge-grace`` long): two connections
from the proxy's own address (trusted), each naming another address in the header,
then one from 127.0.0.3, which evicts one of the two. Had HAProxy passed the header on,
the worker would have counted two sources holding one each, and refused the newcomer
with 503.
"""

from __future__ import annotations

import contextlib
import csv
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.client import LobbyClient
from tests.deploy.conftest import deploy_file, forged_forwarded_for_is_not_believed, tool
from tests.support import (
    Launched,
    ManagedProcess,
    free_port,
    health_until,
    http,
    run,
    tls_files,
    until,
    wait_until,
)

pytestmark = pytest.mark.process

SHIPPED_CERT = "/etc/haproxy/certs/lobby.example.pem"
SHIPPED_BIND = "bind :443 ssl "
SHIPPED_BIND_V6 = (
    f"    bind :::443 v6only ssl crt {SHIPPED_CERT} ssl-min-ver TLSv1.2 alpn http/1.1\n"
)
SHIPPED_SERVER = "    server web1 127.0.0.1:8765\n"
CLIENTS = 3


class HAProxy:
    """Debian's haproxy in the foreground, its stats socket and log in ``tmp``."""

    def __init__(self, haproxy: str, tmp: Path, servers: dict[str, int], pem: Path) -> None:
        self.port = free_port()
        self.stats = tmp / "haproxy.sock"
        cfg = deploy_file("haproxy.cfg").read_text()
        lines = "".join(f"    server {name} 127.0.0.1:{port}\n" for name, port in servers.items())
        for old, new in (
            (SHIPPED_BIND_V6, ""),
            (SHIPPED_BIND, f"bind 127.0.0.1:{self.port} ssl "),
            (SHIPPED_CERT, str(pem)),
            (SHIPPED_SERVER, lines),
        ):
            assert cfg.count(old) == 1, f"the shipped config no longer has {old!r}"
            cfg = cfg.replace(old, new)
        (tmp / "presence.cfg").write_text(cfg)
        (tmp / "global.cfg").write_text(f"global\n    stats socket {self.stats} mode 600\n")
        self.log_file = tmp / "haproxy.log"
        files = ["-f", str(tmp / "global.cfg"), "-f", str(tmp / "presence.cfg")]
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(
                [haproxy, "-db", *files],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_file.read_text()

    def states(self) -> dict[str, tuple[str, str, str]]:
        """Each server's status (UP, DOWN...), last check's result (L7OK: the status
        expected; L7STS: another) and HTTP status, from the stats socket; none until it
        listens."""
        assert self.proc.poll() is None, self.log()
        with socket.socket(socket.AF_UNIX) as s:
            if s.connect_ex(str(self.stats)) != 0:
                return {}
            s.settimeout(5)
            s.sendall(b"show stat\n")
            raw = b"".join(iter(lambda: s.recv(65536), b"")).decode()
        rows = csv.DictReader(raw.removeprefix("# ").splitlines())
        servers = (r for r in rows if r["pxname"] == "presence" and r["type"] == "2")
        return {r["svname"]: (r["status"], r["check_status"], r["check_code"]) for r in servers}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def lone_worker(tmp: Path) -> tuple[ManagedProcess, int]:
    """A worker whose backbone endpoints nobody binds: it never hears a coordinator."""
    backbone = tmp / "nobody"
    backbone.mkdir(mode=0o700)
    port = free_port()
    endpoints = ["--events-endpoint", f"ipc://{backbone}/events"]
    endpoints += ["--updates-endpoint", f"ipc://{backbone}/updates"]
    worker = ManagedProcess("workers", ["--port", str(port), "--worker-id", "lone", *endpoints])
    return worker, port


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Launched, HAProxy, ssl.SSLContext]]:
    haproxy = tool("haproxy", "haproxy")
    cert, key, client_ssl = tls_files(tmp_path)
    pem = tmp_path / "proxy.pem"  # HAProxy reads the chain and the key from one file
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    lone, lone_port = lone_worker(tmp_path)
    launched: Launched | None = None
    proxy: HAProxy | None = None
    try:
        worker = ("--trusted-proxies", "127.0.0.1", "--max-pending-auth", "2")
        worker += ("--challenge-grace", "30")
        launched = Launched(tmp_path, 1, worker=worker, extra=("--metrics-port", "0"))

        async def lone_says_503() -> bool:
            with contextlib.suppress(OSError):
                return (await http(lone_port))[0] == 503
            return False

        run(until(lone_says_503, "the lone worker's /healthz to answer 503", timeout=10))
        proxy = HAProxy(haproxy, tmp_path, {"web1": launched.port, "web2": lone_port}, pem)
        yield launched, proxy, client_ssl
    finally:
        # The lone worker lingers a second on its goodbye to nobody: told first.
        lone.signal(signal.SIGTERM)
        if proxy is not None:
            proxy.stop()
        if launched is not None:
            launched.stop()
        assert lone.stop() == 0, lone.output()
        lone.assert_no_traceback()


def test_haproxy_takes_the_unhealthy_machine_out_and_sets_forwarded_for(
    proxied: tuple[Launched, HAProxy, ssl.SSLContext],
) -> None:
    launched, proxy, client_ssl = proxied
    wanted = {"web1": ("UP", "L7OK", "200"), "web2": ("DOWN", "L7STS", "503")}
    seen: list[dict[str, tuple[str, str, str]]] = []

    def checked() -> bool:
        seen.append(proxy.states())
        return seen[-1] == wanted

    try:
        wait_until(checked, f"HAProxy's checks to say {wanted}", 10)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; they said {seen[-1]}:\n{proxy.log()}") from None
    url = f"wss://127.0.0.1:{proxy.port}/ws"

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(LobbyClient.connect(url, ssl=client_ssl))
                for _ in range(CLIENTS)
            ]
            keys = {c.public_key for c in clients}
            for client in clients:
                await client.wait_for_view(keys)
        await health_until(launched.port, lambda h: h["challenged"] == 0, "no handshake open")
        await forged_forwarded_for_is_not_believed(url, client_ssl)

    run(scenario(), timeout=30)
    assert proxy.states() == wanted
    assert "[ALERT]" not in proxy.log(), proxy.log()
