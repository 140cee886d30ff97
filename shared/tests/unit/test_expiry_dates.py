"""Expiry date arithmetic: the market's real policies (DOMAIN.md "Expiry") as tables, plus
properties that must hold for every date, zone and period."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty.expiry import (
    ROUND_TO,
    add_months,
    end_of_day,
    expires_at_for,
    inactivity_expires_at,
    lot_expires_at,
    round_up_to_period,
    warning_instants,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (date(2021, 1, 31), 1, date(2021, 2, 28)),  # DOMAIN.md: clamps to the month end
        (date(2024, 1, 31), 1, date(2024, 2, 29)),  # ... which is the 29th in a leap year
        (date(2024, 2, 29), 12, date(2025, 2, 28)),  # DOMAIN.md: 29 Feb + 12 months
        (date(2024, 2, 29), 48, date(2028, 2, 29)),
        (date(2024, 5, 31), 1, date(2024, 6, 30)),
        (date(2024, 8, 31), 6, date(2025, 2, 28)),
        (date(2024, 12, 15), 1, date(2025, 1, 15)),  # year rollover
        (date(2024, 1, 15), 0, date(2024, 1, 15)),
        (date(2024, 3, 31), -1, date(2024, 2, 29)),
        (date(2024, 1, 15), -13, date(2022, 12, 15)),
    ],
)
def test_add_months_clamps_to_the_end_of_the_month(start, months, expected):
    assert add_months(start, months) == expected


@pytest.mark.parametrize(
    ("day", "round_to", "expected"),
    [
        (date(2025, 2, 10), "none", date(2025, 2, 10)),
        (date(2025, 2, 10), "end_of_month", date(2025, 2, 28)),
        (date(2024, 2, 10), "end_of_month", date(2024, 2, 29)),
        (date(2025, 2, 10), "end_of_quarter", date(2025, 3, 31)),
        (date(2025, 4, 1), "end_of_quarter", date(2025, 6, 30)),
        (date(2025, 9, 30), "end_of_quarter", date(2025, 9, 30)),
        (date(2025, 11, 2), "end_of_quarter", date(2025, 12, 31)),
        (date(2025, 6, 30), "end_of_half_year", date(2025, 6, 30)),
        (date(2025, 7, 1), "end_of_half_year", date(2025, 12, 31)),
        (date(2025, 1, 1), "end_of_year", date(2025, 12, 31)),
    ],
)
def test_round_up_to_period_gives_the_last_day_of_the_period(day, round_to, expected):
    assert round_up_to_period(day, round_to) == expected


@pytest.mark.parametrize(
    ("day", "tz", "expected"),
    [
        ("2024-02-29", "UTC", "2024-02-29T23:59:59+00:00"),
        # Vilnius: EET (+02:00) in winter, EEST (+03:00) in summer.
        ("2024-03-30", "Europe/Vilnius", "2024-03-30T21:59:59+00:00"),
        ("2024-03-31", "Europe/Vilnius", "2024-03-31T20:59:59+00:00"),  # clocks go forward
        ("2024-10-26", "Europe/Vilnius", "2024-10-26T20:59:59+00:00"),
        ("2024-10-27", "Europe/Vilnius", "2024-10-27T21:59:59+00:00"),  # clocks go back
        ("2024-06-01", "Asia/Bangkok", "2024-06-01T16:59:59+00:00"),
        ("2024-06-01", "Pacific/Kiritimati", "2024-06-01T09:59:59+00:00"),  # UTC+14
        ("2024-12-31", "America/Los_Angeles", "2025-01-01T07:59:59+00:00"),
        # Chile changes clocks at midnight: 23:00-24:00 happens twice on 6 Apr 2024, and
        # 8 Sep 2024 starts at 01:00. The last second is still 23:59:59 local.
        ("2024-04-06", "America/Santiago", "2024-04-07T03:59:59+00:00"),
        ("2024-09-07", "America/Santiago", "2024-09-08T03:59:59+00:00"),
    ],
)
def test_end_of_day_is_the_last_local_second_in_utc(day, tz, expected):
    instant = end_of_day(date.fromisoformat(day), tz)
    assert instant == datetime.fromisoformat(expected)
    assert instant.tzinfo is UTC


# (case, earned_at, policy settings, time zone, expected expiry instant or None)
LOT_CASES = [
    (
        "Starbucks: rolling 6 months",
        "2024-01-15T10:00:00-08:00",
        {"policy": "rolling", "months": 6},
        "America/Los_Angeles",
        "2024-07-15T23:59:59-07:00",
    ),
    (
        "McDonald's: rolling 6 months from the 31st clamps to 28 Feb",
        "2024-08-31T12:00:00+00:00",
        {"policy": "rolling", "months": 6},
        "UTC",
        "2025-02-28T23:59:59+00:00",
    ),
    (
        "H&M: rolling 24 months from 29 Feb",
        "2024-02-29T12:00:00+01:00",
        {"policy": "rolling", "months": 24},
        "Europe/Stockholm",
        "2026-02-28T23:59:59+01:00",
    ),
    (
        "month-end clamping: 31 Jan + 1 month",
        "2021-01-31T09:00:00+00:00",
        {"policy": "rolling", "months": 1},
        "UTC",
        "2021-02-28T23:59:59+00:00",
    ),
    (
        "Ulta: end of the quarter one year after earning (after US DST started)",
        "2024-02-10T15:00:00-06:00",
        {"policy": "rolling", "months": 12, "round_to": "end_of_quarter"},
        "America/Chicago",
        "2025-03-31T23:59:59-05:00",
    ),
    (
        "Ulta: New Year's Eve in Chicago is already 1 Jan in UTC; the local date counts",
        "2024-12-31T18:00:00-06:00",
        {"policy": "rolling", "months": 12, "round_to": "end_of_quarter"},
        "America/Chicago",
        "2025-12-31T23:59:59-06:00",
    ),
    (
        "01:30 on 1 April in Vilnius is still 31 March in UTC; the local date counts",
        "2024-03-31T22:30:00+00:00",
        {"policy": "rolling", "months": 1},
        "Europe/Vilnius",
        "2024-05-01T23:59:59+03:00",
    ),
    (
        "rolling 3, end of month",
        "2024-11-15T12:00:00+00:00",
        {"policy": "rolling", "months": 3, "round_to": "end_of_month"},
        "UTC",
        "2025-02-28T23:59:59+00:00",
    ),
    (
        "rolling 12, end of half-year",
        "2024-07-01T12:00:00+00:00",
        {"policy": "rolling", "months": 12, "round_to": "end_of_half_year"},
        "UTC",
        "2025-12-31T23:59:59+00:00",
    ),
    (
        "rolling 12, end of year",
        "2024-01-01T12:00:00+00:00",
        {"policy": "rolling", "months": 12, "round_to": "end_of_year"},
        "UTC",
        "2025-12-31T23:59:59+00:00",
    ),
    (
        "MAC / Urban Outfitters: fixed at the start of the year",
        "2024-06-15T12:00:00+03:00",
        {"policy": "fixed", "fixed_date": "01-01"},
        "Europe/Vilnius",
        "2025-01-01T23:59:59+02:00",
    ),
    (
        "fixed 01-01, earned on 1 Jan: the next occurrence strictly after, a year on",
        "2024-01-01T10:00:00+02:00",
        {"policy": "fixed", "fixed_date": "01-01"},
        "Europe/Vilnius",
        "2025-01-01T23:59:59+02:00",
    ),
    (
        "fixed 01-01, earned on New Year's Eve: the next day",
        "2023-12-31T23:30:00+02:00",
        {"policy": "fixed", "fixed_date": "01-01"},
        "Europe/Vilnius",
        "2024-01-01T23:59:59+02:00",
    ),
    (
        "fixed 01-01: 22:30 UTC on 31 Dec is already 1 Jan in Vilnius",
        "2023-12-31T22:30:00+00:00",
        {"policy": "fixed", "fixed_date": "01-01"},
        "Europe/Vilnius",
        "2025-01-01T23:59:59+02:00",
    ),
    (
        "fixed at the end of the year",
        "2024-05-05T12:00:00+00:00",
        {"policy": "fixed", "fixed_date": "12-31"},
        "UTC",
        "2024-12-31T23:59:59+00:00",
    ),
    (
        "fixed 12-31, earned on 31 Dec: next year's",
        "2024-12-31T10:00:00+00:00",
        {"policy": "fixed", "fixed_date": "12-31"},
        "UTC",
        "2025-12-31T23:59:59+00:00",
    ),
    (
        "fixed 02-29 in a leap year",
        "2023-03-01T12:00:00+00:00",
        {"policy": "fixed", "fixed_date": "02-29"},
        "UTC",
        "2024-02-29T23:59:59+00:00",
    ),
    (
        "fixed 02-29 falls on 28 Feb in a non-leap year",
        "2024-03-01T12:00:00+00:00",
        {"policy": "fixed", "fixed_date": "02-29"},
        "UTC",
        "2025-02-28T23:59:59+00:00",
    ),
    (
        "fixed 02-29, earned on 28 Feb of a non-leap year: that day is not after it",
        "2023-02-28T12:00:00+00:00",
        {"policy": "fixed", "fixed_date": "02-29"},
        "UTC",
        "2024-02-29T23:59:59+00:00",
    ),
    (
        "fixed 02-29, earned on 28 Feb of a leap year: the next day",
        "2024-02-28T12:00:00+00:00",
        {"policy": "fixed", "fixed_date": "02-29"},
        "UTC",
        "2024-02-29T23:59:59+00:00",
    ),
    (
        "airlines: never",
        "2024-02-28T12:00:00+00:00",
        {"policy": "none"},
        "UTC",
        None,
    ),
    (
        "inactivity: the lot has no date of its own",
        "2024-02-28T12:00:00+00:00",
        {"policy": "inactivity"},
        "UTC",
        None,
    ),
]


@pytest.mark.parametrize(
    ("earned_at", "settings", "tz", "expected"),
    [case[1:] for case in LOT_CASES],
    ids=[case[0] for case in LOT_CASES],
)
def test_lot_expires_at_real_world_policies(earned_at, settings, tz, expected):
    got = lot_expires_at(datetime.fromisoformat(earned_at), time_zone=tz, **settings)
    assert got == (None if expected is None else utc(expected))
    if got is not None:
        assert got.tzinfo is UTC


@pytest.mark.parametrize(
    ("case", "last_activity_at", "months", "tz", "expected"),
    [
        (
            "Nordstrom / Sephora: 12 months, from 29 Feb",
            "2024-02-29T10:00:00-08:00",
            12,
            "America/Los_Angeles",
            "2025-02-28T23:59:59-08:00",
        ),
        (
            "12 months, expiry day after US DST started",
            "2024-03-10T12:00:00-04:00",
            12,
            "America/New_York",
            "2025-03-10T23:59:59-04:00",
        ),
        (
            "Burger King: 6 months from the 31st",
            "2024-08-31T08:00:00+00:00",
            6,
            "UTC",
            "2025-02-28T23:59:59+00:00",
        ),
        (
            "Nissan: 24 months, the local date in Bangkok is the next day",
            "2024-01-15T23:30:00+00:00",
            24,
            "Asia/Bangkok",
            "2026-01-16T23:59:59+07:00",
        ),
    ],
)
def test_inactivity_expires_at(case, last_activity_at, months, tz, expected):
    got = inactivity_expires_at(datetime.fromisoformat(last_activity_at), months, tz)
    assert got == utc(expected), case


def test_inactivity_any_activity_pushes_the_date_out():
    first = inactivity_expires_at(utc("2024-01-10T12:00:00+00:00"), 12, "Europe/Vilnius")
    later = inactivity_expires_at(utc("2024-05-20T12:00:00+00:00"), 12, "Europe/Vilnius")
    assert first == utc("2025-01-10T23:59:59+02:00")
    assert later == utc("2025-05-20T23:59:59+03:00")


def test_warning_instants_are_days_before_the_expiry_earliest_first():
    expires_at = utc("2025-03-31T20:59:59+00:00")
    assert warning_instants(expires_at, [7, 30]) == [
        (30, utc("2025-03-01T20:59:59+00:00")),
        (7, utc("2025-03-24T20:59:59+00:00")),
    ]


def test_warning_instants_come_in_utc_and_once_per_threshold():
    expires_at = datetime(2025, 3, 31, 23, 59, 59, tzinfo=ZoneInfo("Europe/Vilnius"))
    warnings = warning_instants(expires_at, [7, 7])
    assert warnings == [(7, utc("2025-03-24T20:59:59+00:00"))]
    assert warnings[0][1].tzinfo is UTC
    assert warning_instants(expires_at, []) == []


def test_expires_at_for_reads_the_program_policy_object():
    ulta = SimpleNamespace(
        policy="rolling",
        months=12,
        round_to="end_of_quarter",
        fixed_date=None,
        inactivity_months=None,
    )
    got = expires_at_for(ulta, "America/Chicago", utc("2024-02-10T21:00:00+00:00"))
    assert got == utc("2025-03-31T23:59:59-05:00")


def test_expires_at_for_fits_the_program_definition_model():
    from loyalty.programs import ExpiryPolicy

    nordstrom = ExpiryPolicy(policy="inactivity", inactivity_months=12)
    mac = ExpiryPolicy(policy="fixed", fixed_date="01-01")
    earned_at = utc("2024-06-15T09:00:00+00:00")
    assert expires_at_for(nordstrom, "UTC", earned_at) is None
    assert expires_at_for(mac, "UTC", earned_at) == utc("2025-01-01T23:59:59+00:00")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"policy": "yearly"}, "unknown expiry policy"),
        ({"policy": "rolling", "months": None}, "months"),
        ({"policy": "rolling", "months": 0}, "months"),
        ({"policy": "rolling", "months": 6, "round_to": "end_of_week"}, "round_to"),
        ({"policy": "fixed", "fixed_date": None}, "MM-DD"),
        ({"policy": "fixed", "fixed_date": "1-1"}, "MM-DD"),
        ({"policy": "fixed", "fixed_date": "12/31"}, "MM-DD"),
        ({"policy": "fixed", "fixed_date": "02-30"}, "not a calendar day"),
        ({"policy": "fixed", "fixed_date": "13-01"}, "not a calendar day"),
    ],
)
def test_lot_expires_at_rejects_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        lot_expires_at(utc("2024-06-15T09:00:00+00:00"), time_zone="UTC", **settings)


def test_naive_datetimes_and_unknown_zones_are_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        lot_expires_at(datetime(2024, 6, 15, 9), "rolling", months=6, time_zone="UTC")
    with pytest.raises(ValueError, match="time zone"):
        lot_expires_at(utc("2024-06-15T09:00:00+00:00"), "none", time_zone="Europe/Atlantis")
    with pytest.raises(ValueError, match="time zone"):
        end_of_day(date(2024, 6, 15), "")
    with pytest.raises(ValueError, match="timezone-aware"):
        warning_instants(datetime(2025, 3, 31), [7])


def test_other_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="months"):
        inactivity_expires_at(utc("2024-06-15T09:00:00+00:00"), 0, "UTC")
    with pytest.raises(ValueError, match="negative"):
        warning_instants(utc("2025-03-31T20:59:59+00:00"), [30, -1])


# --- properties -----------------------------------------------------------------------------

# Zones with DST, half- and quarter-hour offsets, UTC+14, and DST changes at midnight.
ZONES = [
    "UTC",
    "Europe/Vilnius",
    "America/Los_Angeles",
    "America/Santiago",
    "Asia/Bangkok",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Kiritimati",
]

dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 12, 31))
instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(dates, st.integers(min_value=-1200, max_value=1200))
def test_add_months_never_raises_and_keeps_or_shortens_the_day(start, months):
    result = add_months(start, months)
    assert result.day <= start.day
    assert result.year * 12 + result.month == start.year * 12 + start.month + months
    if start.day <= 28:
        assert result.day == start.day
    else:  # clamped only when the day does not exist in the target month
        assert result.day == start.day or (result + timedelta(days=1)).day == 1


@given(dates, st.sampled_from(ROUND_TO))
def test_round_up_to_period_ends_a_period_containing_the_day(day, round_to):
    result = round_up_to_period(day, round_to)
    assert day <= result <= date(day.year, 12, 31)
    assert round_up_to_period(result, round_to) == result
    if round_to != "none":
        assert (result + timedelta(days=1)).day == 1


@given(dates, st.sampled_from(ZONES))
def test_end_of_day_is_the_last_second_of_that_local_day(day, tz):
    zone = ZoneInfo(tz)
    instant = end_of_day(day, tz)
    local = instant.astimezone(zone)
    assert local.date() == day
    assert local.time() == time(23, 59, 59)
    assert (instant + timedelta(seconds=1)).astimezone(zone).date() == day + timedelta(days=1)


@given(
    instants,
    st.integers(min_value=1, max_value=36),
    st.sampled_from(ROUND_TO),
    st.sampled_from(ZONES),
)
def test_rolling_expiry_is_always_after_earning(earned_at, months, round_to, tz):
    expires_at = lot_expires_at(
        earned_at, "rolling", months=months, round_to=round_to, time_zone=tz
    )
    assert expires_at is not None
    assert expires_at > earned_at
    local_earned = earned_at.astimezone(ZoneInfo(tz)).date()
    local_expiry = expires_at.astimezone(ZoneInfo(tz)).date()
    assert local_expiry >= add_months(local_earned, months)
    if round_to == "none":
        assert local_expiry == add_months(local_earned, months)


def _happened(day: date, tz: str) -> bool:
    """Whether the local `day` existed in `tz` (a zone crossing the date line skipped one)."""
    noon = datetime.combine(day, time(12), tzinfo=ZoneInfo(tz))
    return noon.astimezone(UTC).astimezone(ZoneInfo(tz)).date() == day


@given(
    instants,
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=31),
    st.sampled_from(ZONES),
)
def test_fixed_expiry_is_the_next_occurrence_within_a_year(earned_at, month, day, tz):
    day = min(day, (date(2000, month % 12 + 1, 1) - timedelta(days=1)).day)  # a real month-day
    expires_at = lot_expires_at(
        earned_at, "fixed", fixed_date=f"{month:02d}-{day:02d}", time_zone=tz
    )
    assert expires_at is not None
    local_earned = earned_at.astimezone(ZoneInfo(tz)).date()
    local_expiry = expires_at.astimezone(ZoneInfo(tz)).date()
    if not _happened(local_expiry + timedelta(days=1), tz):
        # The date was skipped there (Pacific/Kiritimati had no 31 December 1994): its end is
        # the end of the day before, the same instant.
        local_expiry += timedelta(days=1)
    assert local_earned < local_expiry <= local_earned + timedelta(days=366)
    assert local_expiry.month == month
    assert local_expiry.day == day or (month, day, local_expiry.day) == (2, 29, 28)


@given(instants, instants, st.integers(min_value=1, max_value=36), st.sampled_from(ZONES))
def test_later_activity_never_brings_inactivity_expiry_closer(first, second, months, tz):
    earlier, later = sorted((first, second))
    assert inactivity_expires_at(earlier, months, tz) <= inactivity_expires_at(later, months, tz)


@given(instants, st.lists(st.integers(min_value=1, max_value=365), max_size=5))
def test_warnings_come_before_the_expiry_in_time_order(expires_at, days):
    warnings = warning_instants(expires_at, days)
    assert [d for d, _ in warnings] == sorted(set(days), reverse=True)
    at = [instant for _, instant in warnings]
    assert at == sorted(at)
    assert all(instant < expires_at for instant in at)
