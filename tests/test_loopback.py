"""On a loopback host the server holds both loopback addresses of its port: a browser
opening ``http://localhost:PORT/`` tries ``[::1]`` first, and another local user must not
be the one listening there (issue 15, item 5)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from shared import listen
from tests import netns
from tests.support import AS_ROOT, ROOT, ManagedProcess, another_user, free_port, http, wait_until

HAS_IPV6_LOOPBACK = listen.ipv6_loopback()


@pytest.mark.parametrize(
    ("host", "ipv6", "hosts"),
    [
        ("127.0.0.1", True, ["127.0.0.1", "::1"]),
        ("localhost", True, ["127.0.0.1", "::1"]),
        ("::1", True, ["127.0.0.1", "::1"]),
        ("127.0.0.1", False, ["127.0.0.1"]),  # no IPv6 loopback: nothing to squat
        ("localhost", False, ["127.0.0.1"]),
        ("0.0.0.0", True, ["0.0.0.0", "::1"]),  # every IPv4 address, loopback too
        ("0.0.0.0", False, ["0.0.0.0"]),
        ("::", True, ["::"]),
        ("192.0.2.7", True, ["192.0.2.7"]),
    ],
)
def test_a_loopback_host_means_both_loopback_addresses(
    host: str, ipv6: bool, hosts: list[str]
) -> None:
    assert listen.hosts(host, ipv6_loopback=ipv6) == hosts


def _squat(port: int) -> str:
    """As another user: listen on [::1]:port, as a squatter would."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(("::1", port))
    sock.listen()
    _squatter.append(sock)  # held until the child exits
    return "listening"


_squatter: list[socket.socket] = []


@pytest.mark.skipif(not HAS_IPV6_LOOPBACK, reason="this machine has no IPv6 loopback")
@pytest.mark.skipif(not AS_ROOT, reason="acting as another user needs root (as in CI)")
@pytest.mark.process
def test_a_cluster_refuses_to_start_when_another_user_holds_its_ipv6_loopback() -> None:
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="lo-") as runtime,
        another_user(lambda: _squat(port)) as squatting,
    ):
        assert squatting == "listening", squatting
        launcher = ManagedProcess(
            "scripts.cluster",
            ["--workers", "1", "--port", str(port), "--metrics-port", "0"],
            env={"XDG_RUNTIME_DIR": runtime},
        )
        try:
            wait_until(
                lambda: launcher.proc.poll() is not None or "processes ready" in launcher.output(),
                "the launcher to stop or to serve",
                60,
            )
            output = launcher.output()
            assert "processes ready" not in output, output
            assert launcher.proc.wait(30) == 2, output
            assert f"cannot listen on [::1]:{port}" in output, output
        finally:
            launcher.stop()


@pytest.mark.skipif(not HAS_IPV6_LOOPBACK, reason="this machine has no IPv6 loopback")
@pytest.mark.process
def test_a_worker_on_loopback_answers_on_both_loopback_addresses() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lo-") as runtime:
        env = {"XDG_RUNTIME_DIR": runtime}
        coordinator = ManagedProcess("coordinator", ["--port", str(port)], env=env)
        worker: ManagedProcess | None = None
        try:
            coordinator.wait_ready()
            worker = ManagedProcess("workers", ["--port", str(port), "--worker-id", "w1"], env=env)
            status = worker.wait_ready()
            assert f"ws://127.0.0.1:{port}/ws" in status, status

            async def both() -> None:
                for host in ("127.0.0.1", "::1", "localhost"):
                    status, _, body = await http(port, host=host)
                    assert status == 200, (host, body)

            asyncio.run(both())
        finally:
            for proc in (worker, coordinator):
                if proc is not None:
                    assert proc.stop() == 0


@pytest.fixture
def without_ipv6() -> Iterator[list[str]]:
    """A network namespace whose only interface is an IPv4 loopback (IPv6 disabled):
    the ``ip netns exec`` prefix that runs a process there."""
    why = netns.unavailable()
    if why is not None:
        pytest.skip(why)
    name = f"presence-nov6-{os.getpid()}"
    netns.ip("netns", "add", name)
    try:
        prefix = ["ip", "netns", "exec", name]
        disable = [f"net.ipv6.conf.{i}.disable_ipv6=1" for i in ("all", "default", "lo")]
        subprocess.run([*prefix, "sysctl", "-qw", *disable], check=True, timeout=30)
        subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True, timeout=30)
        yield prefix
    finally:
        netns.ip("netns", "del", name)


@pytest.mark.process
def test_without_an_ipv6_loopback_a_worker_holds_127_0_0_1_alone(without_ipv6: list[str]) -> None:
    """Nothing to squat, nothing to refuse: the cluster starts as before."""
    probe = subprocess.run(
        [
            *without_ipv6,
            sys.executable,
            "-c",
            "from shared import listen as l; print(l.ipv6_loopback())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.stdout.strip() == "False", probe.stderr
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lo-") as runtime:
        env = {"XDG_RUNTIME_DIR": runtime}
        coordinator = ManagedProcess("coordinator", ["--port", str(port)], env, prefix=without_ipv6)
        worker: ManagedProcess | None = None
        try:
            coordinator.wait_ready()
            args = ["--port", str(port), "--worker-id", "w1"]
            worker = ManagedProcess("workers", args, env, prefix=without_ipv6)
            status = worker.wait_ready()
            assert f"ready at ws://127.0.0.1:{port}/ws" in status, status
        finally:
            for proc in (worker, coordinator):
                if proc is not None:
                    assert proc.stop() == 0
