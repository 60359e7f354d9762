"""Machines for tests: Linux network namespaces joined by a bridge.

Each *host* is a network namespace with one interface, ``eth0``, addressed from
198.18.0.0/15 (a range set aside for benchmarking, which exists only inside the
namespaces made here); a *switch* namespace holds the bridge that joins them, so the
machine's own network is never touched. :func:`machines` makes them and removes them
(killing whatever still runs inside) when the ``with`` block ends, failed or not.

Processes run on a host with ``ip netns exec HOST ...`` (:meth:`Machines.prefix`); the
test's own network code runs on a host in a thread that entered the namespace
(:meth:`Machines.run_on`); :meth:`Machines.partition` blackholes the routes between two
hosts (both ways) while each keeps every other path.

Needs root (``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN``) and the ``ip`` command;
:func:`unavailable` says why not, for a skip message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
SUBNET = "198.18.0"
CLONE_NEWNET = 0x40000000


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2) to create network namespaces"
    probe = f"presence-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    """Run ``ip ARGS``; a failure raises with ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Machines:
    """Hosts by name, each with its namespace and address."""

    tag: str
    addresses: dict[str, str] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)
    _blackholes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.tag}-switch"

    def address(self, host: str) -> str:
        return self.addresses[host]

    def prefix(self, host: str) -> list[str]:
        """Words that run a command on ``host``."""
        return ["ip", "netns", "exec", self.namespaces[host]]

    def add(self, host: str, number: int) -> None:
        namespace = f"{self.tag}-{host}"
        outside = f"{self.tag[-8:]}{number}"  # interface names are at most 15 bytes
        ip("netns", "add", namespace)
        self.namespaces[host] = namespace
        self.addresses[host] = f"{SUBNET}.{number}"
        ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("link", "set", outside, "netns", self.switch)
        ip("-n", self.switch, "link", "set", outside, "master", "br0", "up")
        ip("-n", namespace, "addr", "add", f"{SUBNET}.{number}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")

    def partition(self, a: str, b: str) -> None:
        """Cut ``a`` and ``b`` off from each other (a blackhole route on each side)."""
        for here, there in ((a, b), (b, a)):
            ip(
                "-n",
                self.namespaces[here],
                "route",
                "add",
                "blackhole",
                f"{self.address(there)}/32",
            )
            self._blackholes.append((here, there))

    def heal(self) -> None:
        """Remove every blackhole :meth:`partition` made."""
        while self._blackholes:
            here, there = self._blackholes.pop()
            ip(
                "-n",
                self.namespaces[here],
                "route",
                "del",
                "blackhole",
                f"{self.address(there)}/32",
            )

    def run_on(self, host: str, coro: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
        """Run ``coro()`` in a new event loop, in a thread inside ``host``'s namespace
        (every socket it opens is that host's), and return its result or raise its
        error. The thread, and with it the namespace change, ends with the call."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                enter(f"/var/run/netns/{self.namespaces[host]}")
                outcome["value"] = asyncio.run(asyncio.wait_for(coro(), timeout))
            except BaseException as exc:  # handed to the caller's thread
                outcome["error"] = exc

        thread = threading.Thread(target=target, name=f"on-{host}", daemon=True)
        thread.start()
        thread.join(timeout + 30)
        if thread.is_alive():
            raise TimeoutError(f"the code on {host} did not end within {timeout + 30}s")
        if "error" in outcome:
            raise outcome["error"]
        value: T = outcome["value"]
        return value

    def remove(self) -> None:
        """Kill every process left on the hosts and delete the namespaces (best effort:
        each step runs even if another failed)."""
        for namespace in [*self.namespaces.values(), self.switch]:
            pids = subprocess.run(
                ["ip", "netns", "pids", namespace], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def enter(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def machines(hosts: Sequence[str]) -> Iterator[Machines]:
    """Hosts ``hosts`` on one bridge, numbered 198.18.0.1, .2, ... in order; removed on
    exit, also when the block fails."""
    made = Machines(tag=f"pm{os.getpid() % 100_000}")
    try:
        ip("netns", "add", made.switch)
        ip("-n", made.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", made.switch, "link", "set", "br0", "up")
        for number, host in enumerate(hosts, start=1):
            made.add(host, number)
        yield made
    finally:
        made.remove()
