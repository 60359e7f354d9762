"""Admission sources and forwarded client addresses (pure)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers

from workers.sources import SOURCE_KEYS, client_address, parse_trusted, source_key

PROXIES = parse_trusted(["10.0.0.0/8,127.0.0.1", "::1"])


class Lines:
    """Any multi-valued headers (websockets' ``Headers`` refuses control characters)."""

    def __init__(self, lines: list[tuple[str, str]]) -> None:
        self.lines = lines

    def get_all(self, key: str) -> list[str]:
        return [value for name, value in self.lines if name.lower() == key.lower()]


def _headers(*lines: tuple[str, str]) -> Headers:
    headers = Headers()
    for name, value in lines:
        headers[name] = value  # Headers appends: several lines of one name
    return headers


# --------------------------------------------------------------------------- source_key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # same /64, same source
        ("2001:DB8:1:3::1", "2001:db8:1:3::/64"),  # the next /64 is another
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:1.2.3.4", "1.2.3.4"),  # a dual-stack socket's IPv4 client
        ("::ffff:7f00:2", "127.0.0.2"),
        ("", ""),
        ("/run/lobby.sock", "/run/lobby.sock"),
        ("1.2.3.4:80", "1.2.3.4:80"),  # not an address: the text itself
        ("01.2.3.4", "01.2.3.4"),
    ],
)
def test_source_keys(address: str, key: str) -> None:
    assert source_key(address) == key


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_source_key_never_raises(text: str) -> None:
    assert isinstance(source_key(text), str)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1))
def test_addresses_in_one_slash_64_share_a_source(address: int, host: int) -> None:
    a = ipaddress.IPv6Address(address)
    b = ipaddress.IPv6Address(address >> 64 << 64 | host)
    if a.ipv4_mapped is None and b.ipv4_mapped is None:  # (mapped ones are IPv4)
        assert source_key(str(a)) == source_key(str(b))


def test_remembered_sources_are_bounded_and_answer_as_a_fresh_parse() -> None:
    assert source_key.cache_info().maxsize == SOURCE_KEYS
    for address in ("2001:db8::1", "::ffff:10.0.0.1", "not an address"):
        assert source_key(address) == source_key.__wrapped__(address)


# --------------------------------------------------------------------------- parse_trusted


def test_trusted_networks_from_an_option() -> None:
    assert parse_trusted(["10.0.0.0/8, 127.0.0.1,::1", "", "192.168.0.0/16,"]) == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv4Network("127.0.0.1/32"),
        ipaddress.IPv6Network("::1/128"),
        ipaddress.IPv4Network("192.168.0.0/16"),
    )
    assert parse_trusted([]) == ()
    # Peers on a dual-stack socket are compared as IPv4, so mapped entries become IPv4.
    assert parse_trusted(["::ffff:10.1.0.0/112"]) == (ipaddress.IPv4Network("10.1.0.0/16"),)


@pytest.mark.parametrize(
    "bad", ["10.0.0.1/8", "proxy.example", "10.0.0.0/33", "::1/129", "1.2.3", "10.0.0.0/8/8"]
)
def test_bad_trusted_entries_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match=f"bad trusted proxy '{bad}'"):
        parse_trusted([f"127.0.0.1,{bad}"])


# --------------------------------------------------------------------------- X-Forwarded-For


def test_an_untrusted_peer_is_the_client_whatever_its_headers_say() -> None:
    spoof = _headers(("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=5.6.7.8"))
    assert client_address("203.0.113.9", spoof, PROXIES) == "203.0.113.9"
    assert client_address("203.0.113.9", spoof, ()) == "203.0.113.9"
    assert client_address("not an address", spoof, PROXIES) == "not an address"
    assert client_address(None, spoof, PROXIES) == ""


def test_a_trusted_peer_without_headers_is_the_client() -> None:
    assert client_address("127.0.0.1", Headers(), PROXIES) == "127.0.0.1"
    assert client_address("127.0.0.1", {"X-Forwarded-For": " , "}, PROXIES) == "127.0.0.1"


def test_the_rightmost_untrusted_entry_is_the_client() -> None:
    # The client wrote "6.6.6.6" itself; our proxy appended the address it saw.
    headers = _headers(("X-Forwarded-For", "6.6.6.6, 198.51.100.7"))
    assert client_address("127.0.0.1", headers, PROXIES) == "198.51.100.7"


def test_several_proxies_and_header_lines_are_walked_from_the_right() -> None:
    # edge proxy (10.0.0.5) saw the client, inner proxy (127.0.0.1) saw the edge proxy;
    # the client itself sent a spoofed line first.
    headers = _headers(
        ("X-Forwarded-For", "9.9.9.9"),
        ("x-forwarded-for", "198.51.100.7, 10.0.0.5"),
    )
    assert client_address("127.0.0.1", headers, PROXIES) == "198.51.100.7"
    # A mapping (one line per name) works too, whatever the case of the name.
    plain = {"x-FORWARDED-for": "9.9.9.9, 198.51.100.7, 10.0.0.5"}
    assert client_address("127.0.0.1", plain, PROXIES) == "198.51.100.7"


def test_when_every_hop_is_trusted_the_leftmost_is_the_client() -> None:
    headers = _headers(("X-Forwarded-For", "10.9.9.9, 10.0.0.5"))
    assert client_address("127.0.0.1", headers, PROXIES) == "10.9.9.9"


def test_ports_brackets_and_mapped_addresses_are_normalised() -> None:
    for entry, client in [
        ("198.51.100.7:5123", "198.51.100.7"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("[2001:DB8::7]", "2001:db8::7"),
        ("2001:db8::7", "2001:db8::7"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ('"198.51.100.7"', "198.51.100.7"),
    ]:
        assert client_address("::1", {"X-Forwarded-For": entry}, PROXIES) == client, entry
    # The peer may itself be IPv4-mapped (a dual-stack socket) and still be trusted.
    assert client_address("::ffff:127.0.0.1", {"X-Forwarded-For": "1.2.3.4"}, PROXIES) == (
        "1.2.3.4"
    )


@pytest.mark.parametrize(
    ("xff", "client"),
    [
        ("198.51.100.7, garbage", "127.0.0.1"),  # our proxy wrote nonsense: the peer
        ("garbage, 10.0.0.5", "10.0.0.5"),  # the last good hop
        ("garbage, 198.51.100.7", "198.51.100.7"),  # never reached
        ("198.51.100.7, unknown, 10.0.0.5", "10.0.0.5"),
        ("198.51.100.7, _hidden", "127.0.0.1"),
        ("1.2.3.4:123456", "127.0.0.1"),  # not a port (at most 5 digits)
        ("1.2.3.4:", "127.0.0.1"),
        ("[2001:db8::7", "127.0.0.1"),
        ("[1.2.3.4]:80", "127.0.0.1"),
        ("198.51.100.7,, 10.0.0.5,", "198.51.100.7"),  # empty list elements are skipped
        ('"6.6.6.6, 198.51.100.7', "198.51.100.7"),  # no quoting: a quote hides nothing
        ('6.6.6.6, "198.51.100.7', "127.0.0.1"),
    ],
)
def test_malformed_entries_stop_at_the_last_good_address(xff: str, client: str) -> None:
    assert client_address("127.0.0.1", {"X-Forwarded-For": xff}, PROXIES) == client


# --------------------------------------------------------------------------- Forwarded


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        ("for=198.51.100.7", "198.51.100.7"),
        ("For=198.51.100.7;proto=https;by=10.0.0.5", "198.51.100.7"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ('for="198.51.100.7:4711"', "198.51.100.7"),
        ("for=6.6.6.6, for=198.51.100.7;proto=http, for=10.0.0.5", "198.51.100.7"),
        ('for="6.6.6.6;x,y", for=198.51.100.7', "198.51.100.7"),  # quoted separators
        ("for=198.51.100.7, for=_hidden", "127.0.0.1"),  # obfuscated: the proxy's address
        ("for=198.51.100.7, for=unknown, for=10.0.0.5", "10.0.0.5"),
        ('for="_gazonk", for=10.0.0.5', "10.0.0.5"),
        ("for=198.51.100.7, proto=https", "127.0.0.1"),  # a hop that names no client
        ("for=198.51.100.7, for", "127.0.0.1"),
        ('for="198.51.100.7', "127.0.0.1"),  # unterminated quote
        ('for="[2001:db8::1]:_port"', "2001:db8::1"),
        ("for=10.1.2.3, for=10.0.0.5", "10.1.2.3"),  # all trusted: the leftmost
    ],
)
def test_rfc_7239_forwarded(forwarded: str, client: str) -> None:
    assert client_address("127.0.0.1", {"Forwarded": forwarded}, PROXIES) == client


def test_forwarded_lines_are_joined_in_order() -> None:
    headers = _headers(("Forwarded", "for=6.6.6.6"), ("Forwarded", "for=198.51.100.7"))
    assert client_address("127.0.0.1", headers, PROXIES) == "198.51.100.7"


def test_a_clients_open_quote_never_makes_its_entry_the_client() -> None:
    """The client can open a quote that swallows what the proxy appends to its line;
    then no client is named (the proxy's address is used), never the client's pick."""
    one_line = {"Forwarded": 'for="6.6.6.6, for=198.51.100.7'}
    assert client_address("127.0.0.1", one_line, PROXIES) == "127.0.0.1"
    lines = _headers(("Forwarded", 'for="6.6.6.6'), ("Forwarded", "for=198.51.100.7"))
    assert client_address("127.0.0.1", lines, PROXIES) == "198.51.100.7"  # per line


def test_x_forwarded_for_wins_over_forwarded() -> None:
    """Most proxies append to X-Forwarded-For and pass a client's Forwarded through."""
    headers = _headers(("Forwarded", "for=6.6.6.6"), ("X-Forwarded-For", "198.51.100.7"))
    assert client_address("127.0.0.1", headers, PROXIES) == "198.51.100.7"
    empty = _headers(("X-Forwarded-For", ""), ("Forwarded", "for=198.51.100.7"))
    assert client_address("127.0.0.1", empty, PROXIES) == "198.51.100.7"


# --------------------------------------------------------------------------- properties

header_text = st.text(alphabet=st.sampled_from('0123456789abcdef.:[]",;=_ \\forFOR%x-\t'))
header_names = st.sampled_from(["X-Forwarded-For", "x-forwarded-for", "Forwarded", "Other"])
peers = st.one_of(
    st.sampled_from(["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.2.3.4", "203.0.113.9"]),
    st.text(max_size=20),
    st.none(),
)


@settings(max_examples=500, deadline=None)
@given(
    peer=peers,
    lines=st.lists(st.tuples(header_names, st.one_of(header_text, st.text())), max_size=6),
    trust_all=st.booleans(),
)
def test_client_address_never_raises_and_names_the_peer_or_an_address(
    peer: str | None, lines: list[tuple[str, str]], trust_all: bool
) -> None:
    trusted = parse_trusted(["0.0.0.0/0", "::/0"]) if trust_all else PROXIES
    for headers in (Lines(lines), dict(lines)):
        client = client_address(peer, headers, trusted)
        if client != (peer or ""):
            assert str(ipaddress.ip_address(client)) == client  # canonical, from a header
        if peer == "203.0.113.9" and not trust_all:
            assert client == peer  # untrusted: headers are ignored
