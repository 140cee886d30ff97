"""Codes at rest: encrypted (never the clear bytes), found by a keyed hash, rotatable."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from rewards.adapters.vault import CodeVault, VaultError

HMAC_KEY = b"k" * 32


def test_a_code_is_stored_encrypted_and_comes_back() -> None:
    vault = CodeVault([Fernet.generate_key()], HMAC_KEY)
    token = vault.encrypt("GIFT-123")
    assert b"GIFT-123" not in token
    assert vault.decrypt(token) == "GIFT-123"


def test_the_fingerprint_is_keyed_and_stable() -> None:
    key = Fernet.generate_key()
    a, b = CodeVault([key], HMAC_KEY), CodeVault([Fernet.generate_key()], HMAC_KEY)
    assert a.fingerprint("X") == b.fingerprint("X") != a.fingerprint("Y")
    assert CodeVault([key], b"z" * 32).fingerprint("X") != a.fingerprint("X")


def test_rotation_keeps_old_codes_readable_then_drops_the_old_key() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    token = CodeVault([old], HMAC_KEY).encrypt("GIFT-1")
    both = CodeVault([new, old], HMAC_KEY)
    assert both.decrypt(token) == "GIFT-1"
    rotated = both.rotate(token)
    assert CodeVault([new], HMAC_KEY).decrypt(rotated) == "GIFT-1"
    with pytest.raises(VaultError):
        CodeVault([new], HMAC_KEY).decrypt(token)


def test_a_bad_key_is_refused_at_start() -> None:
    with pytest.raises(VaultError):
        CodeVault([b"not-a-key"], HMAC_KEY)
    with pytest.raises(VaultError):
        CodeVault([Fernet.generate_key()], b"short")
