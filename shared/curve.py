"""Backbone security: who may connect to a coordinator.

The backbone is not an open door. By default it listens on ``ipc://`` in a directory
only its user can enter (mode 0700, see :mod:`shared.endpoints`). Over ``tcp://``
(loopback included: any local process can connect to a loopback port) both processes
refuse to start unless ZeroMQ CURVE is on: then every socket is encrypted, and only
workers whose public keys are in the coordinator's authorised directory get in (ZAP,
checked by pyzmq's authenticator thread). A worker also pins the coordinator's public
key. ``--plain-tcp`` lifts the refusal for a trusted test machine, with a warning at
every start.

Keys are ZeroMQ certificate files (``NAME.key`` public, ``NAME.key_secret`` secret), made
by ``python scripts/backbone_keys.py DIR NAME...``. Secret keys are read from files and
never logged.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85


class BackboneSecurityError(Exception):
    """The backbone configuration would let strangers in, or a key file is unusable."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"KeyPair(public={self.public.decode()!r})"


def load_keypair(path: str) -> KeyPair:
    """Read a ``.key_secret`` certificate (public and secret key). Refused, like the
    API's token file, when other users could read or write it (mode bits for group or
    others): whoever reads it can join the backbone as this process."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise BackboneSecurityError(f"cannot read the key pair {path}: {exc}") from None
    if mode & 0o077:
        raise BackboneSecurityError(
            f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}): anyone who "
            "read it can join the backbone as this process; chmod 600 it (and make new "
            "keys if others may have read it)"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise BackboneSecurityError(f"cannot read the key pair {path}: {exc}") from None
    if secret is None:
        raise BackboneSecurityError(f"{path} holds no secret key (use the .key_secret file)")
    return KeyPair(public, secret)


def load_public(path: str) -> bytes:
    """Read the public key of a certificate (``.key`` or ``.key_secret``)."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise BackboneSecurityError(f"cannot read the public key {path}: {exc}") from None
    return public


def check_exposure(endpoints: list[str], *, curve_on: bool, plain_tcp: bool) -> str | None:
    """Refuse a ``tcp://`` backbone without CURVE (unless ``plain_tcp``, then return the
    warning to log) and any transport other than ``ipc://`` and ``tcp://``."""
    for endpoint in endpoints:
        transport = endpoint.partition("://")[0]
        if transport not in ("ipc", "tcp"):
            raise BackboneSecurityError(f"unsupported backbone endpoint {endpoint}")
    plain = [e for e in endpoints if e.startswith("tcp://")] if not curve_on else []
    if not plain:
        return None
    where = ", ".join(plain)
    if not plain_tcp:
        raise BackboneSecurityError(
            f"refusing {where} without CURVE: any process that can reach it (on loopback: "
            "any local user) could join the lobby as a worker, read every message and kick "
            "anyone. Give CURVE keys (python scripts/backbone_keys.py makes them; see "
            "docs/operating.md), use ipc:// endpoints, or pass --plain-tcp on a trusted test "
            "machine."
        )
    return (
        f"INSECURE: the backbone uses {where} without CURVE (--plain-tcp): anyone who can "
        "reach it can join as a worker, read every message and kick anyone"
    )


def make_server(sock: zmq.Socket[Any] | zmq.asyncio.Socket, keys: KeyPair) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def make_client(
    sock: zmq.Socket[Any] | zmq.asyncio.Socket, keys: KeyPair, server_public: bytes
) -> None:
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server_public


def authorised_keys(path: str) -> list[str]:
    """The public keys (Z85 text) of the ``*.key`` files in ``path``, sorted: the
    workers the coordinator admits (what its authenticator loads)."""
    keys = zmq.auth.load_certificates(path)
    return sorted(key.decode("ascii") for key in keys)


def key_names(path: str) -> dict[str, str]:
    """The name of each public key (Z85 text) in ``path``: its file's name without
    ``.key`` (the machine's name in a directory made by ``backbone_keys.py --cluster``)."""
    names: dict[str, str] = {}
    for file in sorted(Path(path).glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(str(file))
        except (OSError, ValueError):
            continue
        names[public.decode("ascii", "replace")] = file.stem
    return names


class Gatekeeper(ThreadAuthenticator):
    """pyzmq's authenticator thread, telling whom it turns away: ``refused(address,
    key)`` is called on its thread for each CURVE client whose public key (Z85) it does
    not admit, with the address the connection comes from."""

    def __init__(
        self,
        context: zmq.Context[Any],
        log: logging.Logger,
        refused: Callable[[str, str], None],
    ) -> None:
        super().__init__(context, log=log)
        self._refused = refused
        self._address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            self._refused(self._address, z85.encode(client_key).decode("ascii", "replace"))
        return allowed, reason


def handshake_failure(event: int, value: int) -> str | None:
    """What a socket monitor's event says about a CURVE handshake that failed (``None``
    for any other event), from the side that saw it: a client refused by the server's
    authenticator, a client whose server did not answer as the key it pins, a server
    whose client did not encrypt to its key."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"refused by the authenticator (status {value}: the key is not admitted)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "the peer closed the handshake (it does not hold the key pinned here)"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return "the peer's handshake was not encrypted to this key (it pins another)"
        return f"protocol error {value:#x}"
    return None


def authorised_dir(path: str) -> str:
    """Check the directory of authorised worker public keys exists and holds some."""
    directory = Path(path)
    if not directory.is_dir():
        raise BackboneSecurityError(f"--curve-clients {path} is not a directory")
    if not list(directory.glob("*.key")):
        raise BackboneSecurityError(f"--curve-clients {path} holds no *.key public keys")
    return str(directory)
