"""Authentication in protocol version 2: the server identity and the signed payload.

A v2 signature covers the server's identity as well as the nonce, so an ``auth`` made
for one server is worthless to any other (a relay cannot replay it elsewhere). The
identity is the canonical text of the URL the client dialed; the client computes it,
the server canonicalises its public URLs the same way and compares strings. Both sides
must agree on every byte, hence the rules below, shared with workers/static/
protocol_v2.js (which gets most of them from the WHATWG URL parser) and held to
tests/vectors/auth_v2.json.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from nacl.signing import SigningKey

from shared.protocol import AuthFailure, verify_signed

AUTH_CONTEXT_V2: Final = b"presence-auth-v2\n"
DEFAULT_PORTS: Final = {"ws": 80, "wss": 443}
MAX_IDENTITY_CHARS: Final = 1024
"""The longest ``server`` an ``auth`` may carry (longer is malformed)."""


class AuthFailureV2(enum.Enum):
    """``reason`` of ``auth_failed`` in version 2: version 1's and four more."""

    MALFORMED = AuthFailure.MALFORMED.value
    INVALID_PUBLIC_KEY = AuthFailure.INVALID_PUBLIC_KEY.value
    INVALID_SIGNATURE = AuthFailure.INVALID_SIGNATURE.value
    UNEXPECTED_MESSAGE = AuthFailure.UNEXPECTED_MESSAGE.value
    WRONG_SERVER = "wrong_server"
    BAD_RECORD = "bad_record"
    BAD_FOLLOW = "bad_follow"
    BAD_RESUME = "bad_resume"


# ------------------------------------------------------------ server identity

# Characters the WHATWG URL parser percent-encodes in a path, beyond controls and
# non-ASCII: what a path may hold as is is everything else of printable ASCII.
_PATH_SAFE: Final = "!$&'()*+,-./:;=@_~[]\\^|%"
_PERCENT: Final = re.compile(r"%[0-9a-fA-F]{2}")
_HOST_CHARS: Final = re.compile(r"[a-z0-9_.-]+")
# IDNA 2003 (Python's codec) and UTS 46 (browsers) map these differently.
_DEVIATIONS: Final = frozenset("\u00df\u03c2\u200c\u200d")


def server_identity(url: str) -> str:
    """The canonical identity of a ``ws``/``wss`` URL: ``scheme://host:port/path``.

    Lowercase scheme and host; an IDN host in punycode; no trailing dot; IPv4 in dotted
    decimal (also when written the WHATWG ways, ``127.1`` or ``0x7f.0.0.1``); IPv6 in
    brackets, RFC 5952 form (hexadecimal groups, as browsers write them); the port
    always (80 for ``ws``, 443 for ``wss`` by default); the path with dot segments
    removed, characters outside printable ASCII percent-encoded, hex after ``%``
    uppercase, ``/`` when empty; no user information, query or fragment.

    Raises :class:`ValueError` naming the problem for anything else: another scheme, no
    host, a bad port, a host that is not a domain or address."""
    if not isinstance(url, str):
        raise ValueError(f"a server URL must be a string, not {type(url).__name__}")
    if "\\" in url:
        raise ValueError(f"server URL {url!r}: a backslash is not allowed")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"server URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"server URL {url!r}: the scheme must be ws or wss, not {scheme!r}")
    netloc = parts.netloc.rpartition("@")[2]
    if netloc.startswith("["):
        end = netloc.find("]")
        if netloc[end + 1 : end + 2] not in ("", ":"):
            raise ValueError(f"server URL {url!r}: text after the IPv6 address")
        host = _ipv6_host(netloc[1:end], url)
    else:
        host = _domain_host(netloc.rpartition(":")[0] if ":" in netloc else netloc, url)
    if port is None:
        port = DEFAULT_PORTS[scheme]
    return f"{scheme}://{host}:{port}{_path(parts.path)}"


def _ipv6_host(text: str, url: str) -> str:
    if "%" in text:
        raise ValueError(f"server URL {url!r}: an IPv6 zone is not allowed")
    try:
        packed = ipaddress.IPv6Address(text).packed
    except ValueError as exc:
        raise ValueError(f"server URL {url!r}: {exc}") from None
    groups = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    # RFC 5952: the longest run of two or more zero groups (the first of equals) is "::".
    best_start, best_len, i = -1, 1, 0
    while i < 8:
        if groups[i] == 0:
            j = i
            while j < 8 and groups[j] == 0:
                j += 1
            if j - i > best_len:
                best_start, best_len = i, j - i
            i = j
        else:
            i += 1
    hexes = [f"{g:x}" for g in groups]
    if best_start < 0:
        return "[" + ":".join(hexes) + "]"
    head = ":".join(hexes[:best_start])
    tail = ":".join(hexes[best_start + best_len :])
    return f"[{head}::{tail}]"


def _domain_host(text: str, url: str) -> str:
    try:
        host = unquote(text, errors="strict").lower()
    except UnicodeDecodeError:
        raise ValueError(f"server URL {url!r}: the host is not UTF-8") from None
    if _DEVIATIONS.intersection(host):
        raise ValueError(
            f"server URL {url!r}: the host has a character IDNA versions map differently "
            "(ß, ς, ZWJ, ZWNJ): write the host in its ASCII (xn--) form"
        )
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise ValueError(f"server URL {url!r}: no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"server URL {url!r}: the host is not a valid IDN: {exc}") from None
    empty_label = ".." in host or host.startswith(".") or host.endswith(".")
    if not _HOST_CHARS.fullmatch(host) or empty_label:
        raise ValueError(f"server URL {url!r}: {host!r} is not a host name or address")
    labels = host.split(".")
    if _is_number(labels[-1]):
        return _ipv4(labels, url)
    for label in labels:
        if label.startswith("xn--") and not _is_punycode(label):
            raise ValueError(f"server URL {url!r}: {label!r} is not valid punycode")
    return host


def _is_punycode(label: str) -> bool:
    """True when an ``xn--`` label decodes to a name that encodes back to it."""
    try:
        name = label[4:].encode("ascii").decode("punycode")
        return bool(name) and name.encode("idna").decode("ascii") == label
    except UnicodeError:
        return False


def _is_number(label: str) -> bool:
    return bool(re.fullmatch(r"[0-9]+|0x[0-9a-f]*", label))


def _ipv4(labels: list[str], url: str) -> str:
    """The WHATWG IPv4 parser: up to four numbers (decimal, 0x hex, 0 octal), the last
    filling the remaining bytes."""
    if len(labels) > 4:
        raise ValueError(f"server URL {url!r}: not an IPv4 address")
    numbers = []
    for label in labels:
        if not _is_number(label) and not re.fullmatch(r"0[0-7]+", label):
            raise ValueError(f"server URL {url!r}: not an IPv4 address")
        if label.startswith("0x"):
            numbers.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            try:
                numbers.append(int(label, 8))
            except ValueError:
                raise ValueError(f"server URL {url!r}: not an IPv4 address") from None
        else:
            numbers.append(int(label))
    *first, last = numbers
    if any(n > 255 for n in first) or last >= 256 ** (5 - len(numbers)):
        raise ValueError(f"server URL {url!r}: an IPv4 number is out of range")
    value = last
    for index, n in enumerate(first):
        value += n << (8 * (3 - index))
    return ".".join(str((value >> shift) & 255) for shift in (24, 16, 8, 0))


def _path(raw: str) -> str:
    path = quote(raw, safe=_PATH_SAFE, encoding="utf-8", errors="strict")
    path = _PERCENT.sub(lambda m: m.group(0).upper(), path)
    out: list[str] = []
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    for index, segment in enumerate(segments):
        dot = segment.lower().replace("%2e", ".")
        last = index == len(segments) - 1
        if dot == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif dot == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


# ------------------------------------------------------------ signing and checking


def signed_payload_v2(identity: str, nonce_hex: str) -> bytes:
    """The bytes a v2 client signs: the context, the identity, a newline, the nonce."""
    return AUTH_CONTEXT_V2 + identity.encode("ascii") + b"\n" + bytes.fromhex(nonce_hex)


def sign_challenge_v2(signing_key: SigningKey, identity: str, nonce_hex: str) -> str:
    """The ``signature`` of a v2 ``auth`` (128 lowercase hex) for the server ``identity``
    (see :func:`server_identity`) answering the challenge ``nonce_hex``."""
    return signing_key.sign(signed_payload_v2(identity, nonce_hex)).signature.hex()


def verify_auth_v2(
    nonce: bytes, public_key: str, signature: str, identity: str
) -> AuthFailureV2 | None:
    """Why a v2 ``auth`` does not prove ``public_key`` for the challenge of the raw
    ``nonce`` and the server ``identity`` (the ``server`` it names, which the server has
    already found among its own), or None when it does. Never raises: an identity that
    is not ASCII cannot have been signed, so it is ``invalid_signature``."""
    if not identity.isascii():
        failure = verify_signed(b"", public_key, "")  # the key's failure, else the signature's
    else:
        payload = AUTH_CONTEXT_V2 + identity.encode("ascii") + b"\n" + nonce
        failure = verify_signed(payload, public_key, signature)
    return None if failure is None else AuthFailureV2(failure.value)
