"""The usable-key check and its bounded memory of keys that passed (shared.keycheck)."""

from __future__ import annotations

from nacl.bindings import crypto_core_ed25519_add
from nacl.signing import SigningKey

from shared import protocol
from shared.keycheck import CheckedKeys
from shared.protocol import AuthFailure, signed_payload

ORDER_4 = bytes(32)
"""y = 0: a point of order 4 (small order, so refused alone and as a torsion part)."""
IDENTITY = b"\x01" + bytes(31)
NON_CANONICAL = b"\xed" + b"\xff" * 30 + b"\x7f"
"""y = p (not reduced): the non-canonical spelling of y = 0."""
NONCE = bytes(range(32))


def _key(seed: int) -> SigningKey:
    return SigningKey(bytes([seed]) * 32)


def test_a_fresh_key_passes_and_is_remembered() -> None:
    checked = CheckedKeys(capacity=4)
    key = bytes(_key(1).verify_key)
    assert checked.usable(key) and len(checked) == 1
    assert checked.usable(key) and len(checked) == 1


def test_small_order_non_canonical_and_torsion_keys_are_refused_every_time() -> None:
    checked = CheckedKeys(capacity=4)
    torsion = crypto_core_ed25519_add(bytes(_key(2).verify_key), ORDER_4)
    for bad in (ORDER_4, IDENTITY, NON_CANONICAL, torsion, b"\x02" * 32):
        assert not checked.usable(bad)
        assert not checked.usable(bad)  # never remembered
    assert len(checked) == 0


def test_the_memory_is_bounded_oldest_first() -> None:
    checked = CheckedKeys(capacity=2)
    keys = [bytes(_key(n).verify_key) for n in (3, 4, 5)]
    for key in keys:
        assert checked.usable(key)
    assert len(checked) == 2
    assert keys[0] not in checked._seen and keys[2] in checked._seen


def test_a_torsion_key_is_invalid_public_key_whatever_the_signature() -> None:
    # A mixed-order key A + T (libsodium's verify alone would answer "bad signature"
    # most times, and accept a signature whose hash kills T): the key's reason, always.
    signer = _key(6)
    torsion = crypto_core_ed25519_add(bytes(signer.verify_key), ORDER_4).hex()
    refusals = set()
    for n in range(64):
        nonce = bytes([n]) * 32
        signature = signer.sign(signed_payload(nonce.hex())).signature.hex()
        refusals.add(protocol.verify_auth(nonce, torsion, signature))
        # the same key checked again (a remembered key would be the bug)
        refusals.add(protocol.verify_auth(nonce, torsion, signature))
    assert refusals == {AuthFailure.INVALID_PUBLIC_KEY}


def test_small_order_and_non_canonical_keys_are_invalid_public_key() -> None:
    for bad in (ORDER_4, IDENTITY, NON_CANONICAL):
        assert protocol.verify_auth(NONCE, bad.hex(), "00" * 64) is AuthFailure.INVALID_PUBLIC_KEY
