"""Which addresses a worker listens on for its host.

A browser that opens ``http://localhost:PORT/`` tries ``[::1]`` first. A worker that
held only ``127.0.0.1:PORT`` left ``[::1]:PORT`` to anyone on the machine: another
local user listening there got the visitors (and could relay them to the real server,
acting as them). So on a loopback host (``127.0.0.1``, ``localhost``, ``::1``) every
worker holds both loopback addresses of its port, and a worker that cannot bind one of
them (another user holds it: ``SO_REUSEPORT`` shares a port with the same user alone)
refuses to start, naming it. ``0.0.0.0`` (every IPv4 address, loopback included) gets
``::1`` beside it for the same reason. A machine without an IPv6 loopback has nothing
there to take, and the worker holds the IPv4 address alone. Other hosts (``::``, which
on Linux takes IPv4 too, or one address) are taken as given."""

from __future__ import annotations

import errno
import socket
from typing import Final

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
NO_IPV6: Final = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})


def hosts(host: str, *, ipv6_loopback: bool) -> list[str]:
    """The addresses to listen on for ``host`` (see the module docstring)."""
    if host == "0.0.0.0":
        return [host, "::1"] if ipv6_loopback else [host]
    if host not in LOOPBACK_HOSTS:
        return [host]
    return ["127.0.0.1", "::1"] if ipv6_loopback else ["127.0.0.1"]


def ipv6_loopback() -> bool:
    """Whether this machine has ``::1`` (a socket can be bound to it)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        if exc.errno in NO_IPV6:
            return False
        raise
    return True


def address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unbindable(hosts_: list[str], port: int) -> str:
    """Which of ``hosts_`` cannot be bound on ``port`` now (as ``host:port``, for the
    error of a worker that could not listen): the first that fails a trial bind with
    ``SO_REUSEPORT``, as the worker's own sockets have; all of them if none fails."""
    for host in hosts_:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as trial:
                trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    trial.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                trial.bind((host, port))
        except OSError:
            return address(host, port)
    return ", ".join(address(host, port) for host in hosts_)
