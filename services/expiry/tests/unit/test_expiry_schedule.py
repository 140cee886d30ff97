"""The scheduler's pure rules: due instants of every policy (through the shared module), which
warning to send when, the grouping of due lots into expire commands, and the `--as-of` rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from expiry.domain.schedule import (
    AsOfInFuture,
    LotDue,
    NoticeDecision,
    Program,
    check_as_of,
    expire_command_id,
    expire_reason,
    notice_due,
    plan_expire_orders,
    policy_summary,
)
from loyalty.expiry import lot_expires_at

VILNIUS = ZoneInfo("Europe/Vilnius")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def program(policy: str = "rolling", **fields) -> Program:
    base = dict(program_id="p", name="Coffee Club", time_zone="UTC", default_locale="en",
                policy=policy, inactivity_months=None, warn_days_before=(30, 7),
                redemption_closes_at=None)
    return Program(**(base | fields))


# Due instants: DOMAIN.md's examples -------------------------------------------------------

@pytest.mark.parametrize(("earned", "policy", "tz", "expected_local"), [
    # 31 Jan 2021 + 1 month, clamped: the end of 28 Feb 2021.
    (utc(2021, 1, 31, 12), dict(policy="rolling", months=1), "UTC",
     datetime(2021, 2, 28, 23, 59, 59)),
    # 29 Feb + 12 months is 28 Feb.
    (utc(2024, 2, 29, 12), dict(policy="rolling", months=12), "UTC",
     datetime(2025, 2, 28, 23, 59, 59)),
    # Ulta: 12 months, then the end of that quarter, in Vilnius. Earned on 1 April 01:30
    # local (still 31 March in UTC): an April earning, so Q2 of the next year, not Q1.
    (datetime(2021, 4, 1, 1, 30, tzinfo=VILNIUS),
     dict(policy="rolling", months=12, round_to="end_of_quarter"), "Europe/Vilnius",
     datetime(2022, 6, 30, 23, 59, 59)),
    # Ulta around the autumn DST change: earned 30 Oct 2021 -> end of Q4 2022, after the
    # clocks went back on 30 Oct 2022 (UTC+2, not +3).
    (datetime(2021, 10, 30, 12, 0, tzinfo=VILNIUS),
     dict(policy="rolling", months=12, round_to="end_of_quarter"), "Europe/Vilnius",
     datetime(2022, 12, 31, 23, 59, 59)),
    # A fixed 12-31: the next 31 Dec strictly after the earning day.
    (utc(2021, 6, 15), dict(policy="fixed", fixed_date="12-31"), "UTC",
     datetime(2021, 12, 31, 23, 59, 59)),
    (utc(2021, 12, 31, 10), dict(policy="fixed", fixed_date="12-31"), "UTC",
     datetime(2022, 12, 31, 23, 59, 59)),
])
def test_lots_expire_at_the_end_of_the_local_due_day(earned, policy, tz, expected_local):
    expires = lot_expires_at(earned, time_zone=tz, **policy)
    assert expires.tzinfo is not None
    assert expires.astimezone(ZoneInfo(tz)).replace(tzinfo=None) == expected_local


def test_the_ulta_instant_is_right_on_both_sides_of_dst():
    summer = lot_expires_at(datetime(2021, 4, 1, 1, 30, tzinfo=VILNIUS), "rolling", months=12,
                            round_to="end_of_quarter", time_zone="Europe/Vilnius")
    winter = lot_expires_at(datetime(2021, 10, 30, 12, tzinfo=VILNIUS), "rolling", months=12,
                            round_to="end_of_quarter", time_zone="Europe/Vilnius")
    assert summer == utc(2022, 6, 30, 20, 59, 59)   # EEST, UTC+3
    assert winter == utc(2022, 12, 31, 21, 59, 59)  # EET, UTC+2


@pytest.mark.parametrize(("last_activity", "expected"), [
    # Earned in January; a purchase in month 11 (November) pushes the deadline 12 months on.
    (utc(2021, 1, 10), utc(2022, 1, 10, 23, 59, 59)),
    (utc(2021, 11, 20), utc(2022, 11, 20, 23, 59, 59)),
])
def test_inactivity_deadline_follows_the_newest_activity(last_activity, expected):
    assert program("inactivity", inactivity_months=12).inactivity_due_at(last_activity) == \
        expected


def test_only_inactivity_programs_have_member_deadlines():
    assert program("rolling").inactivity_due_at(utc(2021, 1, 1)) is None
    assert program("inactivity", inactivity_months=12).inactivity_due_at(None) is None


# Warnings ---------------------------------------------------------------------------------

DUE = utc(2021, 2, 28, 23, 59, 59)


@pytest.mark.parametrize(("as_of", "expected"), [
    (DUE - timedelta(days=31), None),                               # nothing reached yet
    (DUE - timedelta(days=30), NoticeDecision(30, ())),             # exactly 30 days before
    (DUE - timedelta(days=20), NoticeDecision(30, ())),             # late, still the 30-day one
    (DUE - timedelta(days=7), NoticeDecision(7, (30,))),            # the 7-day one
    (DUE - timedelta(days=3), NoticeDecision(7, (30,))),            # catch-up: only the nearest
    (DUE - timedelta(seconds=1), NoticeDecision(7, (30,))),
    (DUE, None),                                                    # due: stale, not sent
    (DUE + timedelta(days=90), None),
])
def test_the_nearest_reached_threshold_is_sent_and_stale_ones_never(as_of, expected):
    assert notice_due(DUE, (30, 7), as_of) == expected


def test_three_thresholds_caught_up_at_once_send_one_and_supersede_two():
    assert notice_due(DUE, (60, 30, 7), DUE - timedelta(days=1)) == NoticeDecision(7, (60, 30))


# Expire orders ----------------------------------------------------------------------------

def lot(lot_id: int, member: str, remaining: int, expires: datetime | None = DUE) -> LotDue:
    return LotDue(lot_id, "p", member, remaining, utc(2021, 1, 31), expires)


def test_due_lots_become_one_command_per_member_with_each_lots_remaining_points():
    as_of = DUE + timedelta(seconds=1)
    orders = plan_expire_orders(
        [lot(1, "a", 100), lot(2, "b", 5), lot(3, "a", 20), lot(4, "a", 0)],
        kind="expiry", as_of=as_of, last_activity={("p", "a"): utc(2021, 2, 2)},
        lots_per_command_max=1000)
    assert [(o.member_id, o.lots, o.points) for o in orders] == [
        ("a", ((1, 100), (3, 20)), 120), ("b", ((2, 5),), 5)]
    a, b = orders
    assert a.watermark == utc(2021, 2, 2)
    assert b.watermark == utc(2021, 1, 31)  # no activity seen: the lot's own earning
    assert a.due_at == DUE and a.as_of == as_of


def test_a_member_with_more_lots_than_a_command_holds_gets_several():
    orders = plan_expire_orders([lot(i, "a", 1) for i in range(5)], kind="expiry",
                                as_of=DUE, last_activity={}, lots_per_command_max=2)
    assert [len(o.lots) for o in orders] == [2, 2, 1]
    assert len({o.command_id for o in orders}) == 3


def test_the_same_decision_has_the_same_command_id_and_another_does_not():
    key = ("p", "a")
    same = expire_command_id("expiry", key, DUE, [(1, 100)])
    assert same == expire_command_id("expiry", key, DUE, [(1, 100)])
    assert same != expire_command_id("expiry", key, DUE, [(1, 100)], "another sweep")
    assert same != expire_command_id("expiry", key, DUE, [(1, 99)])
    assert same != expire_command_id("sunset", key, DUE, [(1, 100)])
    assert same != expire_command_id("expiry", key, DUE + timedelta(seconds=1), [(1, 100)])


@pytest.mark.parametrize(("kind", "expected"), [
    ("expiry", "expired on 2021-03-01: points earned more than their validity ago"),
    ("inactivity", "expired on 2021-03-01: 12 months without earning or spending"),
    ("sunset", "Coffee Club closed: redemptions ended on 2021-03-01"),
])
def test_the_reason_states_the_local_due_day(kind, expected):
    [order] = plan_expire_orders([lot(1, "a", 1)], kind=kind, as_of=DUE, last_activity={},
                                 lots_per_command_max=10)
    vilnius = program(time_zone="Europe/Vilnius", inactivity_months=12)
    assert expire_reason(order, vilnius) == expected  # 23:59:59 UTC is 1 March in Vilnius


# The --as-of rule and the policy summary --------------------------------------------------

def test_a_future_as_of_is_refused_unless_it_is_a_dry_run():
    now = utc(2026, 11, 23)
    check_as_of(now, now, dry_run=False)
    check_as_of(now - timedelta(days=90), now, dry_run=False)
    check_as_of(now + timedelta(days=90), now, dry_run=True)
    with pytest.raises(AsOfInFuture):
        check_as_of(now + timedelta(seconds=1), now, dry_run=False)
    with pytest.raises(ValueError, match="offset"):
        check_as_of(datetime(2021, 1, 1), now, dry_run=True)


def test_the_policy_summary_names_only_the_fields_of_its_policy():
    rolling = program("rolling", redemption_closes_at=utc(2027, 1, 1))
    assert policy_summary(rolling, {"months": 12, "round_to": "end_of_quarter",
                                    "inactivity_months": 5}) == {
        "policy": "rolling", "time_zone": "UTC", "warn_days_before": [30, 7], "months": 12,
        "round_to": "end_of_quarter", "redemption_closes_at": "2027-01-01T00:00:00+00:00"}
    assert policy_summary(program("none"), {}) == {
        "policy": "none", "time_zone": "UTC", "warn_days_before": [30, 7]}
