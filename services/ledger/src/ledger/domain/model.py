"""Pure ledger arithmetic: how a movement changes a member's account and lots.

Lots are spent soonest-expiring first (never-expiring last), then oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

PROGRAM_ISSUED = "@issued"
PROGRAM_REDEEMED = "@redeemed"
PROGRAM_EXPIRED = "@expired"
PROGRAM_ADJUSTED = "@adjusted"
PROGRAM_ACCOUNTS = {
    PROGRAM_ISSUED: "issued",
    PROGRAM_REDEEMED: "redeemed",
    PROGRAM_EXPIRED: "expired",
    PROGRAM_ADJUSTED: "adjusted",
}


@dataclass(frozen=True)
class Account:
    balance: int
    reserved: int
    owed: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass(frozen=True)
class Lot:
    lot_id: int
    remaining: int
    expires_at: datetime | None
    earned_at: datetime


def spend_order(lots: list[Lot]) -> list[Lot]:
    """Soonest-expiring first, never-expiring last, then oldest first."""
    return sorted(lots, key=lambda lot: (lot.expires_at is None,
                                         lot.expires_at or lot.earned_at, lot.earned_at,
                                         lot.lot_id))


def take_from_lots(lots: list[Lot], points: int) -> list[tuple[int, int]]:
    """(lot_id, points taken) consuming `points` in spend order. Needs enough in the lots."""
    taken: list[tuple[int, int]] = []
    left = points
    for lot in spend_order(lots):
        if left == 0:
            break
        take = min(lot.remaining, left)
        if take:
            taken.append((lot.lot_id, take))
            left -= take
    if left:
        raise ValueError(f"lots hold {points - left} points, {points} needed")
    return taken


@dataclass(frozen=True)
class CreditPlan:
    """A credit of `points`: `settled` of them pay back owed points, the rest is spendable."""

    points: int
    settled: int

    @property
    def net(self) -> int:
        return self.points - self.settled


def plan_credit(account: Account, points: int) -> CreditPlan:
    return CreditPlan(points=points, settled=min(account.owed, points))


@dataclass(frozen=True)
class DebitPlan:
    """A debit: `taken` from the available points, `owed` recorded for later credits."""

    taken: int
    owed: int


class InsufficientPoints(Exception):
    code = "insufficient_points"


def plan_debit(account: Account, points: int, *, allow_owed: bool) -> DebitPlan:
    if points <= account.available:
        return DebitPlan(taken=points, owed=0)
    if not allow_owed:
        raise InsufficientPoints(f"{points} points asked, {account.available} available")
    return DebitPlan(taken=account.available, owed=points - account.available)
