"""The pure ledger domain: spend order, and inactivity expiry refused after newer activity."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from ledger.domain.model import Book, Changes, Ledger, Refused
from loyalty.ledger_commands import Credit, Debit, Expire, ExpireLot

AT = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
SOURCE = {"kind": "purchase", "id": "A-1"}


def ledger() -> Ledger:
    ids = itertools.count(1)
    return Ledger(Changes(), lambda: next(ids))


def credit(n: int, points: int, at: datetime, expires_at: datetime | None) -> Credit:
    return Credit(command_id=f"c{n}", program_id="p", member_id="m", occurred_at=at,
                  reason="purchase", source=SOURCE, points=points, expires_at=expires_at)


def test_spending_takes_the_soonest_expiring_lot_first_and_never_expiring_last() -> None:
    book, led = Book("p", "m"), ledger()
    led.apply(book, credit(1, 100, AT, None), AT, {})
    led.apply(book, credit(2, 100, AT, AT + timedelta(days=90)), AT, {})
    led.apply(book, credit(3, 100, AT, AT + timedelta(days=30)), AT, {})
    led.apply(book, Debit(command_id="d", program_id="p", member_id="m", occurred_at=AT,
                          reason="reward", source={"kind": "redemption", "id": "R"},
                          points=150), AT, {})
    remaining = {lot.command_id: lot.remaining for lot in book.lots.values()}
    assert remaining == {"c3": 0, "c2": 50, "c1": 100}
    assert book.balance == 150


@pytest.mark.parametrize(("watermark_days", "expired"), [(0, None), (20, 200)])
def test_an_inactivity_expiry_loses_to_newer_activity(watermark_days: int,
                                                      expired: int | None) -> None:
    book, led = Book("p", "m"), ledger()
    led.apply(book, credit(1, 100, AT, AT + timedelta(days=365)), AT, {})
    led.apply(book, credit(2, 100, AT + timedelta(days=10), AT + timedelta(days=365)),
              AT, {})
    due = AT + timedelta(days=400)
    expire = Expire(command_id="x", program_id="p", member_id="m", occurred_at=due,
                    reason="12 months without activity", source={"kind": "expiry", "id": "x"},
                    lots=[ExpireLot(lot_id=i, points=1000) for i in (1, 2)],
                    watermark=AT + timedelta(days=watermark_days), inactivity=True)
    if expired is None:  # the scheduler had not seen the second earning
        with pytest.raises(Refused) as refused:
            led.apply(book, expire, due, {})
        assert refused.value.code == "member_active" and book.balance == 200
    else:
        led.apply(book, expire, due, {})
        assert book.balance == 200 - expired


def expire(lot_ids: list[int], *, at: datetime, kind: str = "expiry",
           inactivity: bool = False) -> Expire:
    return Expire(command_id=f"x-{kind}", program_id="p", member_id="m", occurred_at=at,
                  reason="expired", source={"kind": kind, "id": "x"},
                  lots=[ExpireLot(lot_id=i, points=1000) for i in lot_ids], watermark=AT,
                  inactivity=inactivity)


@pytest.mark.parametrize(("kind", "inactivity", "expired"), [
    ("expiry", False, 0),       # neither lot is due by its own expiry
    ("expiry", True, 250),      # the member's inactivity deadline ends every lot
    ("sunset", False, 250),     # the program's deadline ends every lot
])
def test_only_inactivity_and_sunset_expire_lots_that_are_not_due_themselves(
        kind: str, inactivity: bool, expired: int) -> None:
    book, led = Book("p", "m"), ledger()
    led.apply(book, credit(1, 100, AT, None), AT, {})
    led.apply(book, credit(2, 150, AT, AT + timedelta(days=365)), AT, {})
    led.apply(book, expire([1, 2], at=AT + timedelta(days=30), kind=kind,
                           inactivity=inactivity), AT, {})
    assert book.balance == 250 - expired


def test_movements_name_the_lots_they_create_and_take() -> None:
    """The expiry scheduler keeps each lot's remaining points from these fields alone."""
    book, led = Book("p", "m"), ledger()
    led.apply(book, credit(1, 100, AT, AT + timedelta(days=30)), AT, {})
    led.apply(book, credit(2, 100, AT, None), AT, {})
    led.apply(book, Debit(command_id="d", program_id="p", member_id="m", occurred_at=AT,
                          reason="reward", source={"kind": "redemption", "id": "R"},
                          points=150), AT, {})
    credited, _, debited = led.changes.events
    assert (credited["lot_id"], credited["lot_points"]) == (1, 100)
    assert debited["lots"] == [{"lot_id": 1, "points": 100}, {"lot_id": 2, "points": 50}]
    led.apply(book, expire([1, 2], at=AT + timedelta(days=31)), AT, {})
    assert led.changes.events[-1]["lots"] == []  # lot 1 is empty, lot 2 never expires
