"""The scheduler against the real ledger on real PostgreSQL, time moved by `as_of`.

Each test states a rule of the issue: what is due expires (only the remainder of a lot, never
held points, a spend meanwhile wins), each warning goes once, a catch-up after months of
downtime does everything once and sends no stale warning, inactivity follows activity, and a
program's sunset notifies then expires everything.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from expiry.adapters.postgres import ExpiryRepository
from expiry.handlers import SweepLimits, apply_member_events
from loyalty.contracts import LedgerEvent, Notification
from loyalty.testing import member_event

pytestmark = pytest.mark.integration

T0 = datetime(2021, 1, 31, 12, 0, tzinfo=UTC)
END_OF_FEB = datetime(2021, 2, 28, 23, 59, 59, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def program(pid: str = "p1", **expiry) -> dict:
    return {"id": pid, "name": "Coffee Club", "currency": "EUR", "time_zone": "UTC",
            "default_locale": "en", "earning": {"points_per_unit": 10},
            "expiry": {"policy": "rolling", "months": 1, "warn_days_before": [30, 7]} | expiry}


async def test_a_lot_earned_on_31_january_expires_at_the_end_of_28_february(world) -> None:
    await world.program(program())
    await world.member("p1", "m1", phone="+37060000001", locale="lt")
    await world.earn("p1", "m1", 100, T0)
    await world.spend("p1", "m1", 30, T0 + timedelta(days=5))  # part spent before

    assert (await world.sweep(END_OF_FEB - SECOND)).commands == {}
    assert await world.balance("p1", "m1") == 70

    report = await world.sweep(END_OF_FEB)
    assert dict(report.points) == {"expiry": 70}
    assert await world.balance("p1", "m1") == 0  # only the remainder expired
    [expired] = [e for e in world.ledger_events if e["type"] == "points.expired"]
    LedgerEvent.model_validate(expired)
    assert expired["points"] == -70 and expired["source"]["kind"] == "expiry"
    assert "expired on 2021-02-28" in expired["reason"]
    [notice] = world.messages("points_expired", "m1")
    Notification.model_validate(notice)
    assert notice["locale"] == "lt" and "70" in notice["body"]

    again = await world.sweep(END_OF_FEB)  # idempotent: nothing left to do
    assert again.empty and len(world.messages("points_expired")) == 1
    assert len(world.commands) == 1


async def test_each_warning_goes_once_and_lots_due_the_same_day_share_it(world) -> None:
    await world.program(program())
    await world.member("p1", "m1", phone="+37060000001", locale="en")
    await world.earn("p1", "m1", 100, T0)
    await world.earn("p1", "m1", 50, T0 + timedelta(hours=3))  # due the same day
    thirty, seven = END_OF_FEB - timedelta(days=30), END_OF_FEB - timedelta(days=7)

    await world.sweep(thirty - SECOND)
    assert world.messages("expiry_warning") == []
    await world.sweep(thirty)
    await world.sweep(thirty + timedelta(hours=1))  # a second sweep sends nothing more
    [first] = world.messages("expiry_warning")
    assert "150 points to use by Feb 28, 2021" in first["body"]
    await world.sweep(seven)
    await world.sweep(seven)
    assert len(world.messages("expiry_warning")) == 2
    ids = {m["notification_id"] for m in world.messages("expiry_warning")}
    assert len(ids) == 2  # distinct facts, stable ids
    await world.sweep(END_OF_FEB)
    assert len(world.messages("expiry_warning")) == 2  # no warning once the points are due
    assert await world.balance("p1", "m1") == 0


async def test_a_three_month_catch_up_expires_everything_once_and_warns_only_the_future(
        world) -> None:
    await world.program(program())
    for n in range(30):  # lots due every few days over three months
        member = f"m{n % 7}"
        await world.member("p1", member, phone=f"+3706000{n % 7:04d}")
        await world.earn("p1", member, 10 + n, T0 + timedelta(days=3 * n))
    as_of = END_OF_FEB + timedelta(days=60)
    due = [T0 + timedelta(days=3 * n) for n in range(30)]

    # In batches of 4 lots, as of an instant given with an offset (as the CLI takes it).
    report = await world.sweep(as_of.astimezone(timezone(timedelta(hours=3))),
                               limits=SweepLimits(lots_per_batch_max=4))
    expired_lots = sum(1 for d in due if d + timedelta(days=29) <= as_of - timedelta(days=1))
    assert report.lots["expiry"] >= expired_lots
    again = await world.sweep(as_of)
    assert again.commands == {}
    moved = [lot["lot_id"] for e in world.ledger_events if e["type"] == "points.expired"
             for lot in e["lots"]]
    assert len(moved) == len(set(moved)) == report.lots["expiry"]
    # Only lots still in the future were warned about, each member and day once, with the
    # nearest threshold only.
    warned = world.messages("expiry_warning")
    keys = [(m["member_id"], m["body"]) for m in warned]
    assert len(keys) == len(set(keys))
    rows = await world.expiry_pool.fetch(
        "SELECT due_at, threshold_days, status FROM notices ORDER BY due_at")
    assert rows and all(r["due_at"] > as_of for r in rows)
    assert {r["status"] for r in rows if r["threshold_days"] == 30
            and r["due_at"] - timedelta(days=7) <= as_of} <= {"superseded"}


async def test_a_spend_the_scheduler_had_not_seen_wins(world) -> None:
    await world.program(program())
    await world.member("p1", "m1", phone="+37060000001")
    await world.earn("p1", "m1", 100, T0)
    await world.sweep(END_OF_FEB, pump=False)  # the command waits in the outbox
    # Meanwhile the member spends 60 (the ledger applies it before the expiry).
    await world.command(type="debit", program_id="p1", member_id="m1", points=60,
                        occurred_at=END_OF_FEB - SECOND,
                        source={"kind": "redemption", "id": "r1"})
    await world.pump()
    [expired] = [e for e in world.ledger_events if e["type"] == "points.expired"]
    assert expired["points"] == -40
    assert await world.balance("p1", "m1") == 0


async def test_held_points_are_never_expired_and_go_once_the_hold_is_released(world) -> None:
    await world.program(program())
    await world.member("p1", "m1", phone="+37060000001", locale="en")
    await world.earn("p1", "m1", 100, T0)
    world.clock.set(END_OF_FEB - timedelta(minutes=1))
    hold = await world.command(type="reserve", program_id="p1", member_id="m1", points=80,
                               occurred_at=END_OF_FEB - timedelta(minutes=1),
                               source={"kind": "redemption", "id": "o1"})
    await world.sweep(END_OF_FEB)
    assert await world.balance("p1", "m1") == 80  # only the 20 not held expired
    assert (await world.sweep(END_OF_FEB + SECOND)).commands == {}  # waits for the hold
    await world.command(type="release", program_id="p1", member_id="m1", hold_id=hold,
                        occurred_at=END_OF_FEB + timedelta(minutes=1),
                        source={"kind": "redemption", "id": "o1"})
    await world.sweep(END_OF_FEB + timedelta(minutes=2))
    assert await world.balance("p1", "m1") == 0
    assert [n["body"] for n in world.messages("points_expired")] == [
        "Coffee Club: we've removed 20 expired points. You now have 80 points.",
        "Coffee Club: we've removed 80 expired points. You now have 0 points."]


async def test_inactivity_counts_from_the_newest_purchase(world) -> None:
    await world.program(program(policy="inactivity", inactivity_months=12))
    await world.member("p1", "m1", email="m1@example.com", channel="email", locale="en")
    await world.earn("p1", "m1", 100, datetime(2021, 1, 10, 9, tzinfo=UTC))
    await world.earn("p1", "m1", 40, datetime(2021, 11, 20, 9, tzinfo=UTC))  # month 11
    twelve_months = datetime(2022, 1, 11, tzinfo=UTC)
    assert (await world.sweep(twelve_months)).commands == {}
    assert await world.balance("p1", "m1") == 140
    await world.sweep(datetime(2022, 10, 21, 23, 59, 59, tzinfo=UTC))  # 30 days before
    await world.sweep(datetime(2022, 11, 20, 23, 59, 58, tzinfo=UTC))  # the 7-day one
    assert await world.balance("p1", "m1") == 140
    report = await world.sweep(datetime(2022, 11, 20, 23, 59, 59, tzinfo=UTC))
    assert dict(report.points) == {"inactivity": 140}
    assert await world.balance("p1", "m1") == 0
    [warning_30, warning_7] = world.messages("expiry_warning")
    assert warning_30["channel"] == "email" and "140 points" in warning_30["body"]
    assert "Nov 20, 2022" in warning_7["body"]


async def test_activity_the_scheduler_had_not_seen_refuses_an_inactivity_expiry(world) -> None:
    await world.program(program(policy="inactivity", inactivity_months=1))
    await world.member("p1", "m1", phone="+37060000001")
    await world.earn("p1", "m1", 100, T0)
    await world.sweep(datetime(2021, 3, 1, tzinfo=UTC), pump=False)
    # A purchase reaches the ledger before the expire command does.
    await world.command(type="credit", program_id="p1", member_id="m1", points=5,
                        occurred_at=datetime(2021, 2, 28, 22, tzinfo=UTC), expires_at=None)
    await world.pump()
    assert await world.balance("p1", "m1") == 105
    [rejected] = [e for e in world.ledger_events if e["type"] == "command.rejected"]
    assert rejected["error.code"] == "member_active"
    # The deadline moved with the purchase: nothing is due on 1 March any more.
    assert (await world.sweep(datetime(2021, 3, 1, tzinfo=UTC))).commands == {}
    await world.sweep(datetime(2021, 3, 28, 23, 59, 59, tzinfo=UTC))
    assert await world.balance("p1", "m1") == 0


async def test_a_sunset_notifies_holders_then_expires_every_point(world) -> None:
    closes = datetime(2021, 6, 30, 21, 0, tzinfo=UTC)
    await world.program(program(policy="none") | {
        "lifecycle": {"earning_closes_at": "2021-05-31T21:00:00+00:00",
                      "redemption_closes_at": closes.isoformat()}})
    await world.member("p1", "holder", phone="+37060000001", locale="pl")
    await world.member("p1", "spent", phone="+37060000002")
    await world.earn("p1", "holder", 300, T0)
    await world.earn("p1", "spent", 50, T0)
    await world.spend("p1", "spent", 50, T0 + timedelta(days=1))

    await world.sweep(closes - timedelta(days=31))
    assert world.messages("program_closing") == []
    await world.sweep(closes - timedelta(days=30))
    await world.sweep(closes - timedelta(days=29))
    await world.sweep(closes - timedelta(days=7))
    notices = world.messages("program_closing")
    assert [(n["member_id"], n["locale"]) for n in notices] == [("holder", "pl")] * 2
    assert "300" in notices[0]["body"]
    await world.sweep(closes - SECOND)
    assert await world.balance("p1", "holder") == 300
    await world.sweep(closes)
    assert await world.balance("p1", "holder") == 0
    [expired] = [e for e in world.ledger_events if e["type"] == "points.expired"]
    assert expired["source"]["kind"] == "sunset" and expired["points"] == -300


async def test_a_program_chooses_its_own_closing_notice_days(world) -> None:
    closes = datetime(2021, 6, 30, 21, 0, tzinfo=UTC)
    await world.program(program(policy="none") | {
        "lifecycle": {"redemption_closes_at": closes.isoformat(),
                      "closing_notice_days": [14, 1]}})
    await world.member("p1", "holder", phone="+37060000001")
    await world.earn("p1", "holder", 120, T0)

    await world.sweep(closes - timedelta(days=30))  # the default days do not apply
    await world.sweep(closes - timedelta(days=15))
    assert world.messages("program_closing") == []
    await world.sweep(closes - timedelta(days=14))
    await world.sweep(closes - timedelta(days=2))
    assert len(world.messages("program_closing")) == 1
    await world.sweep(closes - timedelta(days=1))
    await world.sweep(closes - timedelta(hours=1))
    assert len(world.messages("program_closing")) == 2


async def test_a_dry_run_forecasts_and_changes_nothing(world) -> None:
    await world.program(program())
    await world.member("p1", "m1", phone="+37060000001")
    await world.earn("p1", "m1", 100, T0)
    forecast = await world.sweep(END_OF_FEB, dry_run=True)
    assert dict(forecast.points) == {"expiry": 100}
    assert any(line.startswith("expire 100 points of member m1") for line in forecast.forecast)
    assert await world.expiry_pool.fetchval("SELECT count(*) FROM expire_requests") == 0
    assert await world.expiry_pool.fetchval("SELECT count(*) FROM notices") == 0
    assert await world.balance("p1", "m1") == 100 and world.commands == []
    real = await world.sweep(END_OF_FEB)
    assert dict(real.points) == dict(forecast.points)


async def test_a_members_due_lots_go_in_one_command_even_when_others_are_due_between(
        world) -> None:
    await world.program(program())
    for member in ("a", "b"):
        await world.member("p1", member, phone="+37060000001")
    await world.earn("p1", "a", 10, T0)
    await world.earn("p1", "b", 20, T0 + timedelta(days=1))
    await world.earn("p1", "a", 30, T0 + timedelta(days=2))
    report = await world.sweep(END_OF_FEB + timedelta(days=3),
                               limits=SweepLimits(lots_per_batch_max=2))
    assert sorted((c["member_id"], len(c["lots"])) for c in world.commands) == [
        ("a", 2), ("b", 1)]
    assert report.lots["expiry"] == 3
    assert await world.balance("p1", "a") == await world.balance("p1", "b") == 0


async def test_points_all_held_at_the_due_instant_expire_once_released_even_as_of_then(
        world) -> None:
    await world.program(program())
    await world.member("p1", "m1", phone="+37060000001")
    await world.earn("p1", "m1", 100, T0)
    world.clock.set(END_OF_FEB - timedelta(minutes=1))
    hold = await world.command(type="reserve", program_id="p1", member_id="m1", points=100,
                               occurred_at=END_OF_FEB - timedelta(minutes=1),
                               source={"kind": "redemption", "id": "o1"})
    await world.sweep(END_OF_FEB)
    assert await world.balance("p1", "m1") == 100  # all of it held: nothing expired
    await world.command(type="release", program_id="p1", member_id="m1", hold_id=hold,
                        occurred_at=END_OF_FEB, source={"kind": "redemption", "id": "o1"})
    again = await world.sweep(END_OF_FEB)  # the same instant, the same lots and points
    assert dict(again.points) == {"expiry": 100}
    assert await world.balance("p1", "m1") == 0
    assert await world.expiry_pool.fetchval(
        "SELECT count(*) FROM lots WHERE pending_command_id IS NOT NULL") == 0


async def test_an_event_naming_a_known_lot_again_is_dead_lettered_and_its_batch_applies(
        world) -> None:
    """The inbox keeps an event from applying twice; a lot id seen again under another event
    id is a producer's bug: that event goes to the dead-letter topic, the rest of its batch
    takes effect (lots are written by COPY, without ON CONFLICT)."""
    await world.program(program())
    await world.earn("p1", "m1", 100, T0)
    [credited] = [e for e in world.ledger_events if e["type"] == "points.credited"]
    clone = credited | {"event_id": "another-id", "points": 999, "lot_points": 999}
    other = credited | {"event_id": "a-second-member", "member_id": "m2",
                        "lot_id": credited["lot_id"] + 1_000_000, "points": 40,
                        "lot_points": 40, "balance_after": 40}

    await world.on_ledger([world.record("loyalty.ledger.v1", clone),
                           world.record("loyalty.ledger.v1", other)])

    lots = {r["lot_id"]: (r["member_id"], r["remaining"]) for r in await world.expiry_pool.fetch(
        "SELECT lot_id, member_id, remaining FROM lots")}
    assert lots == {credited["lot_id"]: ("m1", 100), other["lot_id"]: ("m2", 40)}
    [dead] = await world.expiry_pool.fetch(
        "SELECT value, headers FROM outbox WHERE topic = 'loyalty.ledger.v1.dlq'")
    assert dead["headers"]["error.code"] == "constraint_violation"
    assert b"another-id" in bytes(dead["value"])


async def test_a_member_enrolled_and_linked_in_one_batch_is_one_row_at_the_first_try(
        world) -> None:
    """Two events of one member in one statement made the upsert fail ("cannot affect row a
    second time"): the batch was retried three times, then applied one event at a time."""
    async with world.expiry_pool.acquire() as conn, conn.transaction():
        await apply_member_events(ExpiryRepository(conn), [
            member_event(1, "m9", "p1", "lt", "sms", phone="+37060000009"),
            member_event(2, "m9", "p1", type_="member.identifier_linked",
                         email="m9@example.com")])
    row = await world.expiry_pool.fetchrow(
        "SELECT locale, channel, phone, email FROM members WHERE member_id = 'm9'")
    assert dict(row) == {"locale": "lt", "channel": "sms", "phone": "+37060000009",
                         "email": "m9@example.com"}


async def test_a_large_batch_of_enrolments_naming_a_member_already_known_still_applies(
        world) -> None:
    """Enrolments go in by COPY; one member the scheduler already had (its first ledger event
    came first) makes that batch take the upsert instead, and keeps what it knew."""
    await world.program(program())
    await world.earn("p1", "m-known", 100, T0)  # the scheduler knows m-known from the ledger
    enrolments = [member_event(i, f"m-{i}", "p1", phone=f"+3706100{i:04}") for i in range(80)]
    enrolments.append(member_event(80, "m-known", "p1", phone="+37069999999"))
    async with world.expiry_pool.acquire() as conn, conn.transaction():
        await apply_member_events(ExpiryRepository(conn), enrolments)
    assert await world.expiry_pool.fetchval("SELECT count(*) FROM members") == 81
    known = await world.expiry_pool.fetchrow(
        "SELECT phone, balance FROM members WHERE member_id = 'm-known'")
    assert dict(known) == {"phone": "+37069999999", "balance": 100}
    assert await world.expiry_pool.fetchval("SELECT count(*) FROM identifiers") == 81
