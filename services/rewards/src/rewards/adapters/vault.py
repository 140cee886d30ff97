"""Codes at rest: encrypted with Fernet keys (MultiFernet: rotation) and found by HMAC.

A code is stored only as a Fernet token (AES-128-CBC + HMAC-SHA256, from `cryptography`) and
as HMAC-SHA256(hmac_key, code) for de-duplication; the clear code exists only in memory, on
its way into the member's `reward_fulfilled` message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from rewards.settings import CodeSecrets

log = structlog.get_logger(__name__)

# Local development only (documented, therefore secret to no one).
DEV_KEY_SEED = b"loyalty-local-development-code-key"
DEV_HMAC_SEED = b"loyalty-local-development-code-hmac-key"


class VaultError(Exception):
    """A key setting that cannot be used, or a token no configured key opens."""


class CodeVault:
    def __init__(self, fernet_keys: list[bytes], hmac_key: bytes) -> None:
        if not fernet_keys:
            raise VaultError("no encryption key")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in fernet_keys])
        except (ValueError, TypeError) as exc:
            raise VaultError(f"LOYALTY_REWARDS_CODE_KEYS: not a Fernet key ({exc})") from None
        if len(hmac_key) < 16:
            raise VaultError("LOYALTY_REWARDS_CODE_HMAC_KEY: at least 16 bytes")
        self._hmac_key = hmac_key

    @classmethod
    def from_settings(cls, secrets: CodeSecrets | None = None) -> CodeVault:
        secrets = secrets or CodeSecrets()
        if not secrets.code_keys or not secrets.code_hmac_key:
            log.warning("codes.dev_keys", detail="LOYALTY_REWARDS_CODE_KEYS or "
                        "LOYALTY_REWARDS_CODE_HMAC_KEY is not set: using the local development "
                        "keys, which protect nothing; set both in production")
        keys = [k.strip().split(":", 1)[-1].encode() for k in secrets.code_keys.split(",")
                if k.strip()] or [base64.urlsafe_b64encode(hashlib.sha256(DEV_KEY_SEED).digest())]
        hmac_key = (secrets.code_hmac_key.encode() if secrets.code_hmac_key
                    else hashlib.sha256(DEV_HMAC_SEED).digest())
        return cls(keys, hmac_key)

    def fingerprint(self, code: str) -> bytes:
        """The keyed hash that identifies a code without revealing it (32 bytes)."""
        return hmac.new(self._hmac_key, code.encode(), hashlib.sha256).digest()

    def encrypt(self, code: str) -> bytes:
        return self._fernet.encrypt(code.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken:
            raise VaultError("no configured key opens this code (a key was dropped too "
                             "early?)") from None

    def rotate(self, token: bytes) -> bytes:
        """The token re-encrypted with the newest key (MultiFernet.rotate)."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken:
            raise VaultError("no configured key opens this code") from None
