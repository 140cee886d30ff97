"""Time and ids come from here, injected, so tests can move months in milliseconds."""

from __future__ import annotations

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
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "loyalty:" + "|".join(parts)))
