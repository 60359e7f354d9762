"""Secrets read from files: the backend API's token and the webhooks' signing secret.

A secret never comes from the command line, where other local users can read it, but
from a file only its owner can read. One rule for every such file, checked at start
(:func:`read`), so a process refuses a bad one before it opens any socket: the file
must be a regular file, without mode bits for group or others (``chmod 600`` it), hold
one line of visible ASCII (what an HTTP header can carry) of at least
:data:`MIN_CHARS` characters and at most :data:`MAX_BYTES` bytes. Surrounding
whitespace (the newline an editor adds) is not part of the secret.
"""

from __future__ import annotations

import os
import stat
from typing import Final

MIN_CHARS: Final = 16
"""A shorter secret could be guessed; ``openssl rand -hex 32`` makes a good one."""
MAX_BYTES: Final = 4096


class SecretFileError(Exception):
    """The file is missing, unreadable, open to other users, or holds no good secret."""


def read(path: str, option: str) -> bytes:
    """The secret in ``path``; :class:`SecretFileError` names ``option`` and the file."""
    name = f"{option} {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretFileError(f"{name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError(f"{name} is not a regular file")
        if info.st_mode & 0o077:
            raise SecretFileError(
                f"{name} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                "chmod 600 it"
            )
        raw = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:
        raise SecretFileError(f"{name} is longer than {MAX_BYTES} bytes")
    secret = raw.strip()
    if not secret:
        raise SecretFileError(f"{name} is empty")
    if any(not 0x21 <= b <= 0x7E for b in secret):
        raise SecretFileError(f"{name} must hold one line of visible ASCII characters")
    if len(secret) < MIN_CHARS:
        raise SecretFileError(
            f"{name} holds {len(secret)} characters; at least {MIN_CHARS} are needed "
            "(openssl rand -hex 32 makes a good one)"
        )
    return secret
