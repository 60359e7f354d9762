"""Identities: Ed25519 signing keys, stored as the hex of their 32-byte seed."""

from __future__ import annotations

import os
from pathlib import Path

from nacl.signing import SigningKey

from shared import protocol


def generate_signing_key() -> SigningKey:
    """A fresh Ed25519 identity."""
    return SigningKey.generate()


def public_key_hex(signing_key: SigningKey) -> str:
    """The identity's public key as the protocol writes it: 64 lowercase hex chars."""
    return bytes(signing_key.verify_key).hex()


def save_signing_key(signing_key: SigningKey, path: str | os.PathLike[str]) -> None:
    """Write the 32-byte seed as hex to ``path`` with mode 0600 (only the owner can
    read a secret key), replacing any existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(bytes(signing_key).hex() + "\n")


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Read a key written by :func:`save_signing_key` (64 hex chars; whitespace ignored).

    Raises :class:`ValueError` naming the file when the contents are not a seed.
    """
    text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    if not protocol.is_hex_key(text):
        raise ValueError(f"{path}: expected the 64-hex seed of an Ed25519 key")
    return SigningKey(bytes.fromhex(text))


def load_or_create_signing_key(path: str | os.PathLike[str]) -> tuple[SigningKey, bool]:
    """Load the key at ``path``, or create and save a new one; returns (key, created)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_signing_key(path), False
    key = generate_signing_key()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(bytes(key).hex() + "\n")
    return key, True
