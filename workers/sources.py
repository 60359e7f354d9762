"""Who a connection is from: admission sources and forwarded client addresses (pure).

Theory of operation
-------------------
The door (:class:`~workers.admission.Admission`) shares its room fairly between
*sources*. A source is a network address as the server sees it, made coarse where one
party usually owns many addresses:

* IPv4: the address itself.
* IPv6: its /64 prefix. One host (or one home network) is handed a whole /64 and picks
  addresses from it at will, so per-address fairness over IPv6 would give an attacker
  2**64 sources.
* IPv4-mapped IPv6 (``::ffff:1.2.3.4``, what a dual-stack socket reports for an IPv4
  client): the IPv4 address, so one client is one source on either kind of socket.
* Anything that is not an IP address (a Unix socket path, ``""``): the text itself.

Behind a reverse proxy every TCP peer is the proxy, so :func:`client_address` takes the
client's address from the proxy's forwarding headers, but only when the TCP peer is in a
network the operator listed as trusted (:func:`parse_trusted`, e.g. ``--trusted-proxies
10.0.0.0/8,::1``): anyone else can write any header. The forwarding list is read from
the right (each proxy appends the address it saw), skipping trusted proxies; the first
address that is not trusted is the client. Entries further left were written by the
client or by proxies nobody vouches for, so a spoofed leftmost entry is never believed.
If every entry is a trusted proxy, the leftmost is the client.

``X-Forwarded-For`` wins over RFC 7239 ``Forwarded``: ``Forwarded`` is read only when no
``X-Forwarded-For`` line has any content. Nearly every proxy (nginx, HAProxy, Envoy,
Traefik, Caddy, cloud load balancers) appends to ``X-Forwarded-For`` and passes a
client's ``Forwarded`` through untouched, so preferring ``Forwarded`` would let clients
behind such a proxy choose their source. The reverse holds for a proxy that writes only
``Forwarded``: it must be set to drop ``X-Forwarded-For`` from clients.

``X-Forwarded-For`` has no quoting; ``Forwarded`` quotes end with their header line, so
a quote a client leaves open can swallow what a proxy appends to that line (then no
client is named and the peer is used) but can never make the client's own entry win.

Malformed input never raises. Reading from the right, an entry that cannot be parsed,
an obfuscated identifier (``_hidden``) or ``unknown`` stops the walk: the client is then
the last good address (the hop that reported it), or the peer. Addresses from headers are
returned in canonical form (``str(ipaddress.ip_address(...))``, IPv4-mapped as IPv4),
ports stripped; the peer is returned as given.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final, Protocol, TypeAlias, runtime_checkable

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

IPV6_SOURCE_PREFIX: Final = 64
"""IPv6 addresses in one /64 are one source."""
SOURCE_KEYS: Final = 4096
"""Addresses whose admission source a worker remembers (a few hundred kB at most)."""
_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_STOP: Final = None  # a node that ends the walk (malformed, obfuscated or unknown)


@runtime_checkable
class HeaderLines(Protocol):
    """Multi-valued, case-insensitive headers, e.g. ``websockets.datastructures.Headers``."""

    def get_all(self, key: str) -> list[str]: ...


AnyHeaders: TypeAlias = HeaderLines | Mapping[str, str]
"""What :func:`client_address` reads: multi-valued headers, or a plain mapping (one line
per name; names compared case-insensitively)."""


@functools.lru_cache(maxsize=SOURCE_KEYS)
def source_key(address: str) -> str:
    """The admission source of ``address`` (see the module docstring). Never raises.
    A pure function of the string, remembered for the last :data:`SOURCE_KEYS`
    addresses: a storm's clients come from few of them, and each is parsed once."""
    ip = _parse_ip(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        host_bits = 128 - IPV6_SOURCE_PREFIX
        prefix = int(ip) >> host_bits << host_bits
        return str(ipaddress.IPv6Network((prefix, IPV6_SOURCE_PREFIX)))
    return str(ip)


def parse_trusted(specs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Trusted proxy networks from ``specs``, each an address or a network, several
    separated by commas (``["10.0.0.0/8,127.0.0.1", "::1"]``). Empty entries are
    skipped. Raises ``ValueError`` naming a bad entry, including a network with host bits
    set (``10.0.0.1/8``: a typo that would trust more or less than meant). IPv4-mapped
    IPv6 networks are turned into IPv4 ones, as peers are compared in that form."""
    networks: list[IPNetwork] = []
    for spec in specs:
        for raw in spec.split(","):
            entry = raw.strip()
            if not entry:
                continue
            try:
                network = ipaddress.ip_network(entry)
            except ValueError as exc:
                raise ValueError(f"bad trusted proxy {entry!r}: {exc}") from None
            if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
                v4 = int(network.network_address) & 0xFFFF_FFFF
                networks.append(ipaddress.IPv4Network((v4, network.prefixlen - 96)))
            else:
                networks.append(network)
    return tuple(networks)


def client_address(peer: str | None, headers: AnyHeaders, trusted: Sequence[IPNetwork]) -> str:
    """The address a connection is from: ``peer`` (the TCP peer's address) unless it is
    in a ``trusted`` network, then the client named by its forwarding headers (see the
    module docstring). ``None`` (no IP peer) is never trusted and gives ``""``."""
    if peer is None:
        return ""
    peer_ip = _parse_ip(peer)
    if peer_ip is None or not _is_trusted(peer_ip, trusted):
        return peer
    lines = _lines(headers, "x-forwarded-for")
    if any(line.strip() for line in lines):
        entries = (entry for line in lines for entry in line.split(","))  # no quoting
        nodes = [_parse_node(entry) for entry in entries if entry.strip()]
    else:
        nodes = list(_forwarded_for(_lines(headers, "forwarded")))
    last = peer
    for node in reversed(nodes):
        if node is _STOP:
            return last
        last = str(node)
        if not _is_trusted(node, trusted):
            return last
    return last


# ---------------------------------------------------------------------- parsing


def _parse_ip(text: str) -> IPAddress | None:
    """An IP address (IPv4-mapped IPv6 as IPv4), or ``None``."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_trusted(ip: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(ip in network for network in trusted)  # False across IP versions


def _is_port(text: str) -> bool:
    """RFC 7239 ``node-port``: up to 5 digits, or ``_`` and an obfuscated port."""
    if text.isascii() and text.isdigit():
        return len(text) <= 5
    rest = text[1:]
    return (
        text[:1] == "_"
        and bool(rest)
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in rest)
    )


def _parse_node(text: str) -> IPAddress | None:
    """One forwarded node (an address, optionally bracketed, with an optional port), or
    ``None`` for anything else: obfuscated identifiers, ``unknown``, garbage."""
    node = text.strip()
    if len(node) >= 2 and node[0] == node[-1] == '"':
        node = node[1:-1]
    if node.startswith("["):
        host, bracket, port = node[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and _is_port(port[1:]))):
            return None
        ip = _parse_ip(host)
        return ip if ip is not None and ":" in host else None
    ip = _parse_ip(node)
    if ip is not None:
        return ip
    host, colon, port = node.partition(":")
    if colon and _is_port(port):  # IPv4 with a port (IPv6 with a port needs brackets)
        v4 = _parse_ip(host)
        return v4 if isinstance(v4, ipaddress.IPv4Address) else None
    return None


def _lines(headers: AnyHeaders, name: str) -> list[str]:
    if isinstance(headers, HeaderLines):
        return list(headers.get_all(name))
    return [value for key, value in headers.items() if key.lower() == name]


def _split(lines: Iterable[str], separators: str) -> Iterator[str]:
    """Split header lines (in order) at ``separators`` outside quoted strings."""
    for line in lines:
        start, quoted, escaped = 0, False, False
        for i, char in enumerate(line):
            if escaped:
                escaped = False
            elif quoted and char == "\\":
                escaped = True
            elif char == '"':
                quoted = not quoted
            elif not quoted and char in separators:
                yield line[start:i]
                start = i + 1
        yield line[start:]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner, out, escaped = value[1:-1], [], False
        for char in inner:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def _forwarded_for(lines: list[str]) -> Iterator[IPAddress | None]:
    """The ``for=`` node of each RFC 7239 forwarded-element, left to right; an element
    without one is ``None`` (that hop did not say whom it forwarded for)."""
    for element in _split(lines, ","):
        if not element.strip():
            continue
        node: IPAddress | None = _STOP
        for pair in _split([element], ";"):
            name, equals, value = pair.partition("=")
            if equals and name.strip().lower() == "for":
                node = _parse_node(_unquote(value))
                break
        yield node
