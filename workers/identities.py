"""The worker's public identities in protocol version 2: the server identities
(:func:`shared.v2.server_identity`) a client's ``auth`` may name in ``server``.

Theory of operation
-------------------
A version 2 signature covers the identity of the server the client dialed, so the
worker must know every URL its clients dial. The operator lists them
(``--public-url``, repeatable; behind a reverse proxy, the proxy's URL), each
canonicalised here as a client canonicalises the URL it was given. Without the option
the worker derives them from the address it listens on, its port, ``/ws`` and ``wss``
with TLS (else ``ws``):

* a loopback host (``127.0.0.1``, ``localhost``, ``::1``): the identities of
  ``127.0.0.1``, ``localhost`` and ``[::1]``, the three ways a local client names it;
* a wildcard (``0.0.0.0``, ``::``): the machine's host name and fully qualified name
  and every address of its interfaces (IPv6 link-local addresses aside: a URL cannot
  name them without a zone);
* any other host: that host.

:func:`identities` decides (pure, the machine's names passed in); :func:`machine_names`
reads them from the system, once at start.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from shared.listen import LOOPBACK_HOSTS
from shared.protocol import WS_PATH
from shared.v2 import server_identity

WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})
LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "::1")


def url_of(host: str, port: int, tls: bool) -> str:
    """The URL of ``/ws`` on ``host:port`` (an IPv6 address in brackets)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{'wss' if tls else 'ws'}://{shown}:{port}{WS_PATH}"


def check_public_urls(urls: tuple[str, ...]) -> str | None:
    """Why ``urls`` are not all server URLs (naming the first bad one), or None."""
    for url in urls:
        try:
            server_identity(url)
        except ValueError as exc:
            return f"has a URL that is not a ws:// or wss:// server URL ({exc})"
    return None


def identities(
    public_urls: Iterable[str],
    host: str,
    port: int,
    tls: bool,
    names: Iterable[str] = (),
) -> frozenset[str]:
    """The worker's public identities: the canonical ``public_urls`` if any, else those
    of ``host`` (``names``: the machine's names and addresses, for a wildcard host).
    Raises :class:`ValueError` for a URL that is not a server URL (the settings
    refused it already)."""
    given = frozenset(server_identity(url) for url in public_urls)
    if given:
        return given
    if host in LOOPBACK_HOSTS:
        hosts: Iterable[str] = LOOPBACK_NAMES
    elif host in WILDCARD_HOSTS:
        hosts = names
    else:
        hosts = (host,)
    found: set[str] = set()
    for name in hosts:
        try:
            found.add(server_identity(url_of(name, port, tls)))
        except ValueError:
            continue  # a name no URL can hold (an interface's odd name): not dialable
    return frozenset(found)


def machine_names() -> list[str]:
    """This machine's host name, fully qualified name, the addresses they resolve to,
    and its interfaces' addresses (Linux's /proc; elsewhere only the names')."""
    names = [socket.gethostname(), socket.getfqdn()]
    for name in list(names):
        try:
            names += [str(info[4][0]) for info in socket.getaddrinfo(name, None)]
        except OSError:
            continue
    names += _proc_addresses()
    return [name for name in dict.fromkeys(names) if _dialable(name)]


def _dialable(name: str) -> bool:
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return bool(name)
    return not (address.is_link_local or address.is_unspecified)


def _proc_addresses() -> list[str]:
    """The interfaces' addresses from /proc (IPv4 local routes, IPv6 addresses)."""
    found: list[str] = []
    try:
        previous = ""
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            text = line.strip()
            if text.startswith("/32 host LOCAL"):
                found.append(previous)
            elif text.startswith(("|--", "+--")):
                previous = text[3:].strip().split()[0]
    except (OSError, IndexError):
        pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.append(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    except (OSError, IndexError, ValueError):
        pass
    return found
