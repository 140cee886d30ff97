"""The ledger's command stream (internal topic, keyed by member): what producers may ask.

Not public: only our services write it (earn, expiry-scheduler, reward-fulfilment), so the
schema lives here, once, for the producers and the ledger alike. Every command has a
`command_id`: the same id twice has no further effect; the same id with another payload is a
conflict.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from loyalty.contracts import Id, Source, Timestamp

POINTS_MAX = 1_000_000_000


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: Id
    program_id: Id
    member_id: Id
    occurred_at: Timestamp
    reason: Annotated[str, Field(min_length=1, max_length=1000)]
    source: Source


class Credit(_Command):
    """Add points as a new lot expiring at `expires_at` (None: never)."""

    type: Literal["credit"] = "credit"
    points: Annotated[int, Field(gt=0, le=POINTS_MAX)]
    expires_at: Timestamp | None = None


class Debit(_Command):
    """Take points, soonest-expiring lots first. `allow_owed`: take what is available and
    record the rest as owed (returns and negative adjustments), instead of refusing."""

    type: Literal["debit"] = "debit"
    points: Annotated[int, Field(gt=0, le=POINTS_MAX)]
    allow_owed: bool = False


LedgerCommand = Annotated[Credit | Debit, Field(discriminator="type")]
