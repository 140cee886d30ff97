"""Time and ids come from here, injected, so tests can move months in milliseconds."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock, always timezone-aware UTC. The only place the platform reads it."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that moves only when told to (tests, `loyalty expiry sweep --as-of`)."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._at = at.astimezone(UTC)

    def now(self) -> datetime:
        return self._at

    def advance(self, delta: timedelta) -> None:
        self._at += delta

    def set(self, at: datetime) -> None:
        self._at = at.astimezone(UTC)


class IdProvider(Protocol):
    def new_id(self) -> str: ...


class UuidIds:
    def new_id(self) -> str:
        return str(uuid.uuid4())


def stable_id(*parts: str) -> str:
    """A deterministic id for a business fact, so a re-run produces the same id."""
    return uuid5_text(uuid.NAMESPACE_URL, "loyalty:" + "|".join(parts))


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))`, the same text at a third of the cost: the ledger
    makes two for every movement, and building the `UUID` object was most of each."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
