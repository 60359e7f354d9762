"""Whether 32 bytes are a usable Ed25519 public key: a canonical point of the
prime-order subgroup (:func:`usable_key`), the check every ``auth`` makes of its key
before the signature (see :func:`shared.protocol.verify_signed`).

Theory of operation
-------------------
libsodium's verify (``crypto_sign_verify_detached``) already refuses a key that is not
a canonical encoding, not a point of the curve, or of small order (order 1, 2, 4 or
8), but only as a bad signature; and it accepts a *mixed-order* key, a point of the
prime-order group plus a small-order (torsion) one, whenever the signature's hash
happens to kill the torsion part (1 in 8 hashes, which a signer can grind). Such a key
proves nothing more than a fresh key would (it is another identity, and making one
needs the secret of its prime-order part), but it is a second spelling of that secret's
identity and the contract names it: a key outside the prime-order group is
``invalid_public_key`` in both protocol versions, for every signature. So the check
stays: ``crypto_core_ed25519_is_valid_point`` (canonical, on the curve, not of small
order, and in the prime-order subgroup: a scalar multiplication by the group's order,
about half as dear as the verify itself).

What it costs is paid once per key per worker: :class:`CheckedKeys` remembers the
last :data:`CHECKED_KEYS` keys that passed, so a client that comes back (a reconnect,
a resume after a blip) skips the subgroup check. The check is a pure function of the
32 bytes, so a remembered answer is the answer; only keys that passed are remembered,
so a refused key is checked in full every time and can never be let through by the
cache; and the cache is bounded (the oldest entry goes first), so clients presenting
fresh keys only make it forget, at the cost of the check they pay anyway.
"""

from __future__ import annotations

from typing import Final

from nacl.bindings import crypto_core_ed25519_is_valid_point

CHECKED_KEYS: Final = 16_384
"""Keys a worker remembers as usable: about 1.6 MB at most."""


class CheckedKeys:
    """The last ``capacity`` keys found usable (insertion order, oldest first out)."""

    def __init__(self, capacity: int = CHECKED_KEYS) -> None:
        self.capacity = capacity
        self._seen: dict[bytes, None] = {}

    def usable(self, key: bytes) -> bool:
        """True when ``key`` is a canonical point of the prime-order group."""
        if key in self._seen:
            return True
        if not crypto_core_ed25519_is_valid_point(key):
            return False
        seen = self._seen
        if len(seen) >= self.capacity:
            del seen[next(iter(seen))]
        seen[key] = None
        return True

    def __len__(self) -> int:
        return len(self._seen)


_CHECKED = CheckedKeys()


def usable_key(key: bytes) -> bool:
    """True when ``key`` (32 bytes) is a usable Ed25519 public key (this process's
    :class:`CheckedKeys`)."""
    return _CHECKED.usable(key)
