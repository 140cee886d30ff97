"""Expiry date arithmetic shared by the earn service and the expiry scheduler.

Pure functions, no I/O and no clock: callers pass every instant in. One module, so that the
date the earn service stamps on a lot and the date the scheduler acts on can never disagree.

Conventions (DOMAIN.md "Expiry"):
- Policies: ``none`` | ``rolling`` | ``fixed`` | ``inactivity``; rounding for rolling:
  ``none`` | ``end_of_month`` | ``end_of_quarter`` | ``end_of_half_year`` | ``end_of_year``.
- Calendar arithmetic uses the *local date in the program's time zone*: a purchase at
  01:30 on 1 April in Vilnius is an April earning even though it is still 31 March in UTC.
- Month arithmetic clamps to the end of the month: 31 Jan + 1 month = 28 (or 29) Feb,
  29 Feb + 12 months = 28 Feb.
- An expiry *date* becomes an expiry *instant* at the end of that local day: the last whole
  second of the day, normally 23:59:59 local time, returned as an aware datetime in UTC.
  Points stay usable through the whole expiry date; a lot is due once ``now >= expires_at``.
  It is computed as "next local midnight minus one second", so it stays the true last second
  of the day even in zones whose DST changes happen at midnight (e.g. America/Santiago).
- ``fixed`` ("MM-DD"): the next occurrence of that month-day strictly after the local earning
  date; "02-29" falls on 28 Feb in non-leap years. ``round_to`` applies to rolling only.
- ``inactivity`` gives lots no expiry of their own: all of a member's points expire together,
  N months after the member's last earning or spending (``inactivity_expires_at``).
"""

from __future__ import annotations

import calendar
import functools
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

POLICIES = ("none", "rolling", "fixed", "inactivity")
ROUND_TO = ("none", "end_of_month", "end_of_quarter", "end_of_half_year", "end_of_year")

# Length of each rounding period in months; periods start in January.
_PERIOD_MONTHS = {"end_of_month": 1, "end_of_quarter": 3, "end_of_half_year": 6, "end_of_year": 12}


def add_months(d: date, months: int) -> date:
    """`d` plus `months` calendar months (may be negative), clamped to the end of the month."""
    month_index = d.year * 12 + (d.month - 1) + months
    year, month0 = divmod(month_index, 12)
    return _clamped_date(year, month0 + 1, d.day)


def round_up_to_period(d: date, round_to: str) -> date:
    """The last day of the `round_to` period containing `d` (`d` itself for "none")."""
    if round_to == "none":
        return d
    if round_to not in _PERIOD_MONTHS:
        raise ValueError(f"unknown round_to {round_to!r}; expected one of {ROUND_TO}")
    period = _PERIOD_MONTHS[round_to]
    last_month = ((d.month - 1) // period + 1) * period
    return date(d.year, last_month, calendar.monthrange(d.year, last_month)[1])


@functools.lru_cache(maxsize=4096)  # a day's purchases share the answer
def end_of_day(d: date, tz: str) -> datetime:
    """The last whole second of local day `d` in IANA zone `tz`, as an aware UTC datetime."""
    zone = _zone(tz)
    # fold=0 maps a midnight that falls in a DST gap to the instant the day really starts,
    # and an ambiguous midnight to its first occurrence: both are the start of the next day.
    next_midnight = datetime.combine(d + timedelta(days=1), time(0), tzinfo=zone)
    return next_midnight.astimezone(UTC) - timedelta(seconds=1)


def lot_expires_at(
    earned_at: datetime,
    policy: str,
    *,
    months: int | None = None,
    round_to: str | None = "none",
    fixed_date: str | None = None,
    time_zone: str,
) -> datetime | None:
    """When a lot earned at `earned_at` expires under the program's policy; None if never.

    None also for "inactivity": there the whole balance expires together, see
    `inactivity_expires_at`.
    """
    return _lot_expires_on(_local_date(earned_at, time_zone), policy, months, round_to,
                           fixed_date, time_zone)


@functools.lru_cache(maxsize=4096)
def _lot_expires_on(local_date: date, policy: str, months: int | None, round_to: str | None,
                    fixed_date: str | None, time_zone: str) -> datetime | None:
    """`lot_expires_at` by the local day of earning, which is all it depends on: a program's
    lots of one day share their expiry, so it is worked out once (earn asks per purchase)."""
    if policy in ("none", "inactivity"):
        return None
    if policy == "rolling":
        if months is None or months < 1:
            raise ValueError(f"rolling expiry needs months >= 1, got {months!r}")
        expiry_date = round_up_to_period(add_months(local_date, months), round_to or "none")
        return end_of_day(expiry_date, time_zone)
    if policy == "fixed":
        return end_of_day(_next_fixed_date(local_date, fixed_date), time_zone)
    raise ValueError(f"unknown expiry policy {policy!r}; expected one of {POLICIES}")


def inactivity_expires_at(
    last_activity_at: datetime, inactivity_months: int, time_zone: str
) -> datetime:
    """When all of a member's points expire if nothing happens after `last_activity_at`."""
    if inactivity_months < 1:
        raise ValueError(f"inactivity expiry needs months >= 1, got {inactivity_months!r}")
    local_date = _local_date(last_activity_at, time_zone)
    return end_of_day(add_months(local_date, inactivity_months), time_zone)


def warning_instants(
    expires_at: datetime, warn_days_before: list[int]
) -> list[tuple[int, datetime]]:
    """Each warning threshold with its instant (`expires_at` minus that many days), in UTC.

    Earliest warning first; a threshold listed twice gives one warning. Days are exact
    24-hour days, so a warning instant may land an hour off local end of day across DST:
    harmless for a reminder, and it keeps "N days before" a plain subtraction.
    """
    expires_utc = _require_aware(expires_at, "expires_at").astimezone(UTC)
    for days in warn_days_before:
        if days < 0:
            raise ValueError(f"warn_days_before must not be negative, got {days!r}")
    return [
        (days, expires_utc - timedelta(days=days))
        for days in sorted(set(warn_days_before), reverse=True)
    ]


def expires_at_for(policy_obj: Any, time_zone: str, earned_at: datetime) -> datetime | None:
    """`lot_expires_at` for a program's expiry settings object.

    Duck-typed (attributes policy, months, round_to, fixed_date, inactivity_months) so the
    earn service's and the scheduler's program models both fit without importing either.
    """
    return lot_expires_at(
        earned_at,
        _text(policy_obj.policy),
        months=getattr(policy_obj, "months", None),
        round_to=_text(getattr(policy_obj, "round_to", None) or "none"),
        fixed_date=getattr(policy_obj, "fixed_date", None),
        time_zone=time_zone,
    )


def _next_fixed_date(after: date, fixed_date: str | None) -> date:
    """The first date strictly after `after` falling on month-day `fixed_date` ("MM-DD")."""
    month, day = _parse_month_day(fixed_date)
    candidate = _clamped_date(after.year, month, day)
    if candidate <= after:
        candidate = _clamped_date(after.year + 1, month, day)
    return candidate


def _clamped_date(year: int, month: int, day: int) -> date:
    # A day past the month's end becomes its last day: 31 Jan + 1 month is 28 Feb, and a
    # fixed "02-29" falls on 28 Feb in a non-leap year.
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _parse_month_day(fixed_date: str | None) -> tuple[int, int]:
    parts = (fixed_date or "").split("-")
    if len(parts) != 2 or not all(len(p) == 2 and p.isdigit() for p in parts):
        raise ValueError(f"fixed_date must be 'MM-DD', got {fixed_date!r}")
    month, day = int(parts[0]), int(parts[1])
    # 2000 is a leap year, so "02-29" is accepted and "02-30" is not.
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(2000, month)[1]:
        raise ValueError(f"fixed_date is not a calendar day: {fixed_date!r}")
    return month, day


def _local_date(instant: datetime, tz: str) -> date:
    return _require_aware(instant, "instant").astimezone(_zone(tz)).date()


def _require_aware(value: datetime, name: str) -> datetime:
    # A naive datetime would be read in the host's zone: the bug this module exists to avoid.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown IANA time zone {tz!r}") from error


def _text(value: Any) -> str:
    # Program models may hold str enums; their value is the policy name.
    return str(getattr(value, "value", value))
