"""The ledger's pure domain: a member's book (account, lots, holds) and what each command does.

No I/O. The handlers load the books a batch touches, apply its commands here one by one, and
persist the `Changes` in bulk. Every function checks first and mutates after, so a refused
command leaves the book untouched.

Spending takes lots soonest-expiring first (never-expiring last), then oldest first. Every
entry is a transfer between the member's account and a program account (`@issued`,
`@redeemed`, `@expired`, `@adjusted`) that takes the other side, so the entries of a program
sum to zero by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from loyalty.clock import stable_id
from loyalty.ledger_commands import (
    AnyCommand,
    Capture,
    Credit,
    Debit,
    Expire,
    Release,
    Reserve,
    Reverse,
    is_due,
)

ISSUED, REDEEMED, EXPIRED, ADJUSTED = "@issued", "@redeemed", "@expired", "@adjusted"
PROGRAM_ACCOUNTS = {ISSUED: "issued", REDEEMED: "redeemed", EXPIRED: "expired",
                    ADJUSTED: "adjusted"}
# Movements that count as the member's activity (earning or spending) for inactivity expiry.
ACTIVITY = {"credit", "debit", "capture"}
# The commands that read a member's open lots: to spend them, expire them or give points
# back. The others add a lot or change only the account, so the books of a batch without
# these are loaded without their lots (a member's lots grow with every purchase).
READS_LOTS = (Debit, Capture, Expire, Reverse)
COUNTER_ACCOUNT = {"purchase": ISSUED, "return": ISSUED, "activity": ISSUED,
                   "adjustment": ADJUSTED, "redemption": REDEEMED, "expiry": EXPIRED,
                   "sunset": EXPIRED}


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Lot:
    lot_id: int
    points: int
    remaining: int
    earned_at: datetime
    expires_at: datetime | None
    command_id: str


@dataclass
class Hold:
    hold_id: str
    points: int
    status: str  # active | captured | released | expired
    expires_at: datetime
    created_at: datetime
    reason: str
    source_kind: str
    source_id: str
    settled_at: datetime | None = None
    settled_by: str | None = None


@dataclass
class Movement:
    """What an applied command did to a member, kept so a reversal can undo exactly that."""

    command_id: str
    program_id: str
    member_id: str
    type: str
    points: int  # signed, from the member's side: + credit, - debit/capture/expiry
    owed: int
    reversed: int
    counter_account: str
    occurred_at: datetime
    lot_id: int | None = None  # the lot a credit created
    lot_moves: list[tuple[int, int]] = field(default_factory=list)  # (lot, points taken)


@dataclass
class Book:
    """One member's account in one program, with its open lots and holds."""

    program_id: str
    member_id: str
    balance: int = 0
    reserved: int = 0
    owed: int = 0
    lots: dict[int, Lot] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    last_activity_at: datetime | None = None  # the newest earning or spending

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass(frozen=True)
class Entry:
    """A transfer: `points` to the member's account (negative: from it), `-points` to
    `counter_account`, the program's account on the other side."""

    program_id: str
    account_id: str
    counter_account: str
    type: str
    points: int
    balance_after: int
    command_id: str
    occurred_at: datetime
    reason: str
    source_kind: str
    source_id: str


@dataclass
class Changes:
    """Everything a batch did, for the adapter to persist and the outbox to publish."""

    entries: list[Entry] = field(default_factory=list)
    new_lots: list[tuple[Book, Lot]] = field(default_factory=list)
    lot_moves: list[tuple[str, int, int]] = field(default_factory=list)
    touched_lots: dict[int, Lot] = field(default_factory=dict)
    touched_holds: dict[str, tuple[Book, Hold]] = field(default_factory=dict)
    new_holds: set[str] = field(default_factory=set)  # of touched_holds, those reserved now
    new_movements: list[Movement] = field(default_factory=list)
    reversed_movements: dict[str, int] = field(default_factory=dict)
    touched_books: dict[tuple[str, str], Book] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


def spend_order(lots: list[Lot]) -> list[Lot]:
    """Soonest-expiring first, never-expiring last, then oldest first."""
    return sorted(lots, key=lambda lot: (lot.expires_at is None, lot.expires_at or lot.earned_at,
                                         lot.earned_at, lot.lot_id))


class Ledger:
    """Applies commands to books, recording every change. `new_lot_id` numbers new lots."""

    def __init__(self, changes: Changes, new_lot_id: Callable[[], int]) -> None:
        self.changes = changes
        self.new_lot_id = new_lot_id

    # The commands -------------------------------------------------------------------------

    def apply(self, book: Book, command: AnyCommand, now: datetime,
              movements: dict[str, Movement]) -> None:
        """Apply one command (raises `Refused`, leaving the book as it was)."""
        self.time_out_holds(book, now)
        handler = {
            "credit": self._credit, "debit": self._debit, "reserve": self._reserve,
            "capture": self._capture, "release": self._release, "expire": self._expire,
        }.get(command.type)
        if handler is not None:
            handler(book, command, now)
        else:
            assert isinstance(command, Reverse)
            self._reverse(book, command, movements)
        if command.type in ACTIVITY:
            book.last_activity_at = max(filter(None, (book.last_activity_at,
                                                      command.occurred_at)))
        self._touch(book)  # owed alone may have changed

    def time_out_holds(self, book: Book, now: datetime) -> None:
        for hold in list(book.holds.values()):
            if hold.status == "active" and hold.expires_at <= now:
                book.reserved -= hold.points
                self._settle(book, hold, "expired", now, "timeout")
                self._event(book, "points.released", hold.points, hold.hold_id + ":timeout",
                            now, f"hold timed out: {hold.reason}", hold.source_kind,
                            hold.source_id, hold_id=hold.hold_id)

    def _credit(self, book: Book, c: Credit, now: datetime) -> None:
        settled = min(book.owed, c.points)
        net = c.points - settled
        counter = COUNTER_ACCOUNT[c.source.kind]
        book.balance += c.points
        self._entries(book, c, "points.credited", c.points, counter)
        if settled:
            # Owed points (a return after the points were spent) are paid back first.
            book.owed -= settled
            book.balance -= settled
            self._entries(book, c, "points.debited", -settled, counter,
                          reason=f"{c.reason} (pays back {settled} owed points)")
        lot_id = self._new_lot(book, net, c.occurred_at, c.expires_at, c.command_id)
        self._movement(book, c, "credit", c.points, counter, lot_id=lot_id)
        self._emit(book, c, "points.credited", c.points,
                   expires_at=c.expires_at.isoformat() if c.expires_at else None,
                   owed_settled=settled, lot_id=lot_id, lot_points=net if lot_id else 0)

    def _debit(self, book: Book, c: Debit, now: datetime) -> None:
        take = min(c.points, book.available)
        if take < c.points and not c.allow_owed:
            raise Refused("insufficient_points",
                          f"{c.points} points asked, {book.available} available")
        owed = c.points - take
        counter = COUNTER_ACCOUNT[c.source.kind]
        moves = self._take_lots(book, take, c.command_id)
        if take:
            self._entries(book, c, "points.debited", -take, counter)
        book.owed += owed
        self._movement(book, c, "debit", -take, counter, owed=owed, moves=moves)
        self._emit(book, c, "points.debited", -take, owed=owed, lots=_lot_list(moves))

    def _reserve(self, book: Book, c: Reserve, now: datetime) -> None:
        if c.points > book.available:
            raise Refused("insufficient_points",
                          f"{c.points} points asked, {book.available} available")
        book.reserved += c.points
        hold = Hold(c.command_id, c.points, "active", now + timedelta(seconds=c.timeout_s), now,
                    c.reason, c.source.kind, c.source.id)
        book.holds[hold.hold_id] = hold
        self.changes.touched_holds[hold.hold_id] = (book, hold)
        self.changes.new_holds.add(hold.hold_id)
        self._touch(book)
        self._emit(book, c, "points.reserved", c.points, hold_id=hold.hold_id,
                   hold_expires_at=hold.expires_at.isoformat())

    def _active_hold(self, book: Book, hold_id: str) -> Hold:
        hold = book.holds.get(hold_id)
        if hold is None:
            raise Refused("unknown_hold", f"no hold {hold_id} for this member")
        if hold.status == "expired":
            raise Refused("hold_expired", f"hold {hold_id} timed out at "
                          f"{hold.expires_at.isoformat()}")
        if hold.status != "active":
            raise Refused("hold_not_active", f"hold {hold_id} is already {hold.status}")
        return hold

    def _capture(self, book: Book, c: Capture, now: datetime) -> None:
        hold = self._active_hold(book, c.hold_id)
        points = hold.points if c.points is None else c.points
        if points > hold.points:
            raise Refused("insufficient_points",
                          f"capture of {points} exceeds the hold of {hold.points}")
        book.reserved -= hold.points
        moves = self._take_lots(book, points, c.command_id)
        counter = COUNTER_ACCOUNT[c.source.kind]
        self._entries(book, c, "points.captured", -points, counter)
        self._settle(book, hold, "captured", now, c.command_id)
        self._movement(book, c, "capture", -points, counter, moves=moves)
        self._emit(book, c, "points.captured", -points, hold_id=hold.hold_id,
                   released=hold.points - points, lots=_lot_list(moves))

    def _release(self, book: Book, c: Release, now: datetime) -> None:
        hold = self._active_hold(book, c.hold_id)
        book.reserved -= hold.points
        self._settle(book, hold, "released", now, c.command_id)
        self._emit(book, c, "points.released", hold.points, hold_id=hold.hold_id)

    def _expire(self, book: Book, c: Expire, now: datetime) -> None:
        if c.inactivity and book.last_activity_at and book.last_activity_at > c.watermark:
            raise Refused("member_active", f"the member was active at "
                          f"{book.last_activity_at.isoformat()}, after the watermark")
        budget = book.available  # held points are never expired
        # An inactivity expiry or a program's sunset ends every named lot, whatever its own
        # expiry: the deadline is the member's (or the program's), not the lot's.
        every_lot_due = c.inactivity or c.source.kind == "sunset"
        moves: list[tuple[int, int]] = []
        for item in c.lots:
            lot = book.lots.get(item.lot_id)
            if lot is None or not (every_lot_due or is_due(lot.expires_at, c.occurred_at)):
                continue
            already = sum(p for lot_id, p in moves if lot_id == lot.lot_id)
            take = min(item.points - already, lot.remaining, budget)
            if take > 0:
                self._move_lot(book, lot, take, c.command_id)
                moves.append((lot.lot_id, take))
                budget -= take
        total = sum(p for _, p in moves)
        if total:
            self._entries(book, c, "points.expired", -total, EXPIRED)
        self._movement(book, c, "expire", -total, EXPIRED, moves=moves)
        self._emit(book, c, "points.expired", -total, lots=_lot_list(moves))

    def _reverse(self, book: Book, c: Reverse, movements: dict[str, Movement]) -> None:
        target = movements.get(c.target_id)
        if target is None or target.member_id != book.member_id:
            raise Refused("unknown_command", f"no applied command {c.target_id} for this member")
        if target.type in ("reverse",):
            raise Refused("not_reversible", "a reversal cannot be reversed")
        room = abs(target.points) + target.owed - target.reversed
        points = room if c.points is None else c.points
        if points > room or room == 0:
            raise Refused("reversal_exceeds_original",
                          f"{points} asked, {room} left to reverse of {target.command_id}")
        target.reversed += points
        self.changes.reversed_movements[target.command_id] = target.reversed
        if target.type == "credit":
            self._reverse_credit(book, c, target, points)
        else:
            self._reverse_spend(book, c, target, points)

    def _reverse_credit(self, book: Book, c: Reverse, target: Movement, points: int) -> None:
        take = min(points, book.available)
        owed = points - take
        moves: list[tuple[int, int]] = []
        own = book.lots.get(target.lot_id) if target.lot_id is not None else None
        if own is not None and take:
            first = min(own.remaining, take)
            if first:
                self._move_lot(book, own, first, c.command_id)
                moves.append((own.lot_id, first))
        moves += self._take_lots(book, take - sum(p for _, p in moves), c.command_id)
        if take:
            self._entries(book, c, "points.debited", -take, target.counter_account)
        book.owed += owed
        self._movement(book, c, "reverse", -take, target.counter_account, owed=owed, moves=moves)
        self._emit(book, c, "points.debited", -take, owed=owed, reverses=target.command_id,
                   lots=_lot_list(moves))

    def _reverse_spend(self, book: Book, c: Reverse, target: Movement, points: int) -> None:
        """Give back the lots the target took, in the order it took them; beyond those, forgive
        the owed points it recorded (or, if later credits already paid them, return them)."""
        before = target.reversed - points
        taken = sum(p for _, p in target.lot_moves)
        skip = min(before, taken)
        restore = min(points, taken - skip)
        moves: list[tuple[int, int]] = []
        budget = restore
        for lot_id, took in target.lot_moves:
            already = min(skip, took)  # given back by an earlier partial reversal
            skip -= already
            give = min(took - already, budget)
            if give > 0:
                self._move_lot(book, book.lots[lot_id], -give, c.command_id)
                moves.append((lot_id, -give))
                budget -= give
        rest = points - restore
        forgiven = min(rest, book.owed)
        book.owed -= forgiven
        repaid = rest - forgiven
        lot_id = self._new_lot(book, repaid, c.occurred_at, None, c.command_id)
        book.balance += repaid
        credited = restore + repaid
        if credited:
            self._entries(book, c, "points.credited", credited, target.counter_account)
        self._movement(book, c, "reverse", credited, target.counter_account, moves=moves,
                       lot_id=lot_id)
        self._emit(book, c, "points.credited", credited, reverses=target.command_id,
                   owed_forgiven=forgiven, lots=_lot_list(moves), lot_id=lot_id,
                   lot_points=repaid if lot_id else 0)

    # Building blocks ----------------------------------------------------------------------

    def _take_lots(self, book: Book, points: int, command_id: str) -> list[tuple[int, int]]:
        moves: list[tuple[int, int]] = []
        left = points
        for lot in spend_order([lot for lot in book.lots.values() if lot.remaining > 0]):
            if left == 0:
                break
            take = min(lot.remaining, left)
            self._move_lot(book, lot, take, command_id)
            moves.append((lot.lot_id, take))
            left -= take
        if left:  # lots always hold the balance; reaching here is a bug, not bad input
            raise AssertionError(f"lots of {book.member_id} short by {left} points")
        return moves

    def _new_lot(self, book: Book, points: int, earned_at: datetime,
                 expires_at: datetime | None, command_id: str) -> int | None:
        if points <= 0:
            return None
        lot = Lot(self.new_lot_id(), points, points, earned_at, expires_at, command_id)
        book.lots[lot.lot_id] = lot
        self.changes.new_lots.append((book, lot))
        return lot.lot_id

    def _move_lot(self, book: Book, lot: Lot, points: int, command_id: str) -> None:
        lot.remaining -= points
        book.balance -= points
        self.changes.lot_moves.append((command_id, lot.lot_id, points))
        self.changes.touched_lots[lot.lot_id] = lot
        self._touch(book)

    def _entries(self, book: Book, c: AnyCommand, type_: str, points: int, counter: str,
                 reason: str | None = None) -> None:
        """The transfer between the member (after the balance changed) and the program's
        counter account: both sides of the double entry in one row."""
        self.changes.entries.append(Entry(book.program_id, book.member_id, counter, type_,
                                          points, book.balance, c.command_id, c.occurred_at,
                                          reason or c.reason, c.source.kind, c.source.id))
        self._touch(book)

    def _movement(self, book: Book, c: AnyCommand, type_: str, points: int, counter: str, *,
                  owed: int = 0, moves: list[tuple[int, int]] | None = None,
                  lot_id: int | None = None) -> None:
        self.changes.new_movements.append(Movement(
            c.command_id, book.program_id, book.member_id, type_, points, owed, 0, counter,
            c.occurred_at, lot_id, list(moves or [])))

    def _settle(self, book: Book, hold: Hold, status: str, now: datetime, by: str) -> None:
        hold.status, hold.settled_at, hold.settled_by = status, now, by
        self.changes.touched_holds[hold.hold_id] = (book, hold)
        self._touch(book)

    def _touch(self, book: Book) -> None:
        self.changes.touched_books[(book.program_id, book.member_id)] = book

    def _emit(self, book: Book, c: AnyCommand, type_: str, points: int, **extra: Any) -> None:
        self._event(book, type_, points, c.command_id, c.occurred_at, c.reason, c.source.kind,
                    c.source.id, command_id=c.command_id, **extra)

    def _event(self, book: Book, type_: str, points: int, fact: str, at: datetime, reason: str,
               source_kind: str, source_id: str, **extra: Any) -> None:
        self.changes.events.append({
            "event_id": stable_id("ledger", fact, type_),
            "type": type_,
            "occurred_at": at.isoformat(),
            "program_id": book.program_id,
            "member_id": book.member_id,
            "points": points,
            "balance_after": book.balance,
            "reason": reason,
            "source": {"kind": source_kind, "id": source_id},
            **extra,
        })


def _lot_list(moves: list[tuple[int, int]]) -> list[dict[str, int]]:
    """The lots a movement changed, as published: points taken from each (negative: given
    back), so a follower (the expiry scheduler) can keep every lot's remaining points."""
    return [{"lot_id": lot_id, "points": points} for lot_id, points in moves]


def rejection_event(command: AnyCommand, book: Book, refusal: Refused) -> dict[str, Any]:
    return {
        "event_id": stable_id("ledger", command.command_id, "command.rejected"),
        "type": "command.rejected",
        "occurred_at": command.occurred_at.isoformat(),
        "program_id": command.program_id,
        "member_id": command.member_id,
        "points": 0,
        "balance_after": book.balance,
        "reason": command.reason,
        "source": command.source.model_dump(),
        "command_id": command.command_id,
        "command_type": command.type,
        "error.code": refusal.code,
        "error.message": refusal.message,
    }
