"""The ledger's command stream (internal topic, keyed by member): what producers may ask.

Not public: only our services write it (earn, expiry-scheduler, reward-fulfilment), so the
schema lives here, once, for the producers and the ledger alike. Every command has a
`command_id`: the same id twice has no further effect; the same id with another payload is a
conflict (dead-lettered).

Refusal codes, in precedence order (the first that applies is reported):
`unknown_hold`, `hold_not_active`, `hold_expired`, `unknown_command`, `not_reversible`,
`reversal_exceeds_original`, `member_active`, `insufficient_points`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from loyalty.contracts import ID_LEN_MAX, POINTS_MAX, Id, Source, Timestamp

HOLD_TIMEOUT_S_MAX = 7 * 24 * 3600
# A command id is a requester's prefix and the id of what caused it (`purchase:<event_id>`,
# `adjustment:<event_id>`, ...): a contract id may take all of its 200 characters, and a
# valid purchase must never be refused because the command it causes has a longer id.
COMMAND_ID_LEN_MAX = ID_LEN_MAX + 56
REASON_LEN_MAX = 1000
CommandId = Annotated[str, Field(min_length=1, max_length=COMMAND_ID_LEN_MAX)]
EXPIRE_LOTS_MAX = 1000


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: CommandId
    program_id: Id
    member_id: Id
    occurred_at: Timestamp
    reason: Annotated[str, Field(min_length=1, max_length=REASON_LEN_MAX)]
    source: Source


Points = Annotated[int, Field(gt=0, le=POINTS_MAX)]


class Notify(BaseModel):
    """Whom to tell about the movement once it is applied, and how: the requester knows the
    member's address and language, the ledger knows the balance after the movement. The
    ledger renders the message and writes it to its outbox in the movement's transaction,
    so a purchase needs no second pass through earn to become an SMS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: Literal["points_earned", "points_returned", "points_adjusted"]
    channel: Literal["sms", "email"]
    to: Annotated[str, Field(min_length=1, max_length=320)]
    locale: Annotated[str, Field(min_length=1, max_length=20)]
    program_name: Annotated[str, Field(min_length=1, max_length=200)]


class Credit(_Command):
    """Add points as a new lot expiring at `expires_at` (None: never). Owed points are paid
    back first."""

    type: Literal["credit"] = "credit"
    points: Points
    expires_at: Timestamp | None = None
    notify: Notify | None = None


class Debit(_Command):
    """Take points, soonest-expiring lots first. `allow_owed`: take what is available and
    record the rest as owed (negative adjustments), instead of refusing."""

    type: Literal["debit"] = "debit"
    points: Points
    allow_owed: bool = False
    notify: Notify | None = None


class Reserve(_Command):
    """Hold points for a redemption; the hold id is this command's id. Held points cannot be
    spent; the hold times out after `timeout_s` (processing time) unless captured."""

    type: Literal["reserve"] = "reserve"
    points: Points
    timeout_s: Annotated[int, Field(gt=0, le=HOLD_TIMEOUT_S_MAX)] = 900


class Capture(_Command):
    """Spend a hold (all of it, or `points` of it; the rest is released)."""

    type: Literal["capture"] = "capture"
    hold_id: CommandId
    points: Points | None = None


class Release(_Command):
    """Give a hold's points back to the member's available points."""

    type: Literal["release"] = "release"
    hold_id: CommandId


class ExpireLot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lot_id: int
    points: Points


class Expire(_Command):
    """Expire what is left of the named lots (never more than `points` of each).

    `watermark` is the instant of the newest movement the requester had seen: a lot only
    expires if it is due by `occurred_at`, and a spend after the watermark has already taken
    from these lots (soonest-expiring first), so only their remaining points go: the newer
    spend wins. With `inactivity`, any earning or spending after the watermark refuses the
    whole expiry (`member_active`): the activity pushed the date out. Held points are never
    expired."""

    type: Literal["expire"] = "expire"
    lots: Annotated[list[ExpireLot], Field(min_length=1, max_length=EXPIRE_LOTS_MAX)]
    watermark: Timestamp
    inactivity: bool = False


class Reverse(_Command):
    """Undo an earlier command (`target_id`), all of it or `points` of it (pro rata returns).

    A credit is taken back (from its own lot first, then others); what is not available is
    recorded as owed. A debit, capture or expiry gives back exactly the lots it used."""

    type: Literal["reverse"] = "reverse"
    target_id: CommandId
    points: Points | None = None
    notify: Notify | None = None


LedgerCommand = Annotated[Credit | Debit | Reserve | Capture | Release | Expire | Reverse,
                          Field(discriminator="type")]
AnyCommand = Credit | Debit | Reserve | Capture | Release | Expire | Reverse


def is_due(expires_at: datetime | None, at: datetime) -> bool:
    return expires_at is not None and expires_at <= at
