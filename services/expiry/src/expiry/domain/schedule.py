"""The scheduler's rules, pure: what is due, which warning to send, how to word an expiry.

No I/O, no clock: every instant comes in as an argument. The date arithmetic is the shared
`loyalty.expiry` module's (the same one earn stamps lots with), never a second copy.

- A lot is due once `as_of >= expires_at` (`expires_at` is the last second of the local due
  day, so points stay usable through the whole day).
- Warnings: at each `warn_days_before` threshold before a due instant, one message per
  member and due instant (so lots due the same day share it). When a sweep comes late (a
  catch-up after downtime) and several thresholds have passed, only the nearest is sent and
  the earlier ones are recorded as superseded: a member never gets "30 days left" and
  "7 days left" in one go. Once the points are due, a warning is stale and is not sent.
- Program sunset notices follow the same rule before `redemption_closes_at`.
- Expire orders: one per member and kind, naming at most `lots_per_command_max` lots, each
  with the points the scheduler believes remain. The ledger takes no more than what is left,
  so a spend it applied meanwhile wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from loyalty.clock import stable_id
from loyalty.expiry import inactivity_expires_at, warning_instants

ExpireKind = Literal["expiry", "inactivity", "sunset"]



class AsOfInFuture(ValueError):
    """A sweep as of an instant that has not happened yet, outside a dry run."""


@dataclass(frozen=True)
class Program:
    """What the scheduler needs of a program definition."""

    program_id: str
    name: str
    time_zone: str
    default_locale: str
    policy: str
    inactivity_months: int | None
    warn_days_before: tuple[int, ...]
    redemption_closes_at: datetime | None
    closing_notice_days: tuple[int, ...] = (30, 7)

    def inactivity_due_at(self, last_activity_at: datetime | None) -> datetime | None:
        """When all of a member's points expire under this program's inactivity rule (None
        under any other policy, or before any activity)."""
        if self.policy != "inactivity" or last_activity_at is None:
            return None
        assert self.inactivity_months is not None  # the program schema requires it
        return inactivity_expires_at(last_activity_at, self.inactivity_months, self.time_zone)


@dataclass(frozen=True)
class LotDue:
    """A lot with points left that an expire order may name."""

    lot_id: int
    program_id: str
    member_id: str
    remaining: int
    earned_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class ExpireOrder:
    """One expire command to send: these lots of one member, up to these points each."""

    command_id: str
    program_id: str
    member_id: str
    kind: ExpireKind
    lots: tuple[tuple[int, int], ...]
    watermark: datetime
    as_of: datetime
    due_at: datetime  # the earliest due instant among the lots (or the member's/program's)

    @property
    def points(self) -> int:
        return sum(points for _, points in self.lots)


@dataclass(frozen=True)
class NoticeDecision:
    """The threshold to notify at now, and the earlier ones it makes pointless."""

    send_days: int
    superseded_days: tuple[int, ...]


def check_as_of(as_of: datetime, now: datetime, *, dry_run: bool) -> None:
    """A real sweep only acts on what is already due: a T in the future is a forecast."""
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError("as_of must carry a UTC offset")
    if as_of > now and not dry_run:
        raise AsOfInFuture(
            f"{as_of.isoformat()} is in the future (now {now.isoformat()}); use --dry-run "
            "for a forecast")


def notice_due(due_at: datetime, days_before: Sequence[int], as_of: datetime
               ) -> NoticeDecision | None:
    """Which threshold to notify at as of `as_of`, or None (none reached yet, or stale)."""
    if as_of >= due_at:
        return None  # the points are due: a warning now would only confuse
    reached = [days for days, at in warning_instants(due_at, list(days_before)) if at <= as_of]
    if not reached:
        return None
    send = min(reached)
    return NoticeDecision(send, tuple(sorted((d for d in reached if d != send), reverse=True)))


def plan_expire_orders(lots: Iterable[LotDue], *, kind: ExpireKind, as_of: datetime,
                       last_activity: dict[tuple[str, str], datetime | None],
                       due_at: dict[tuple[str, str], datetime] | None = None,
                       lots_per_command_max: int, run_id: str = "") -> list[ExpireOrder]:
    """Group due lots into expire orders: one per member (split every
    `lots_per_command_max` lots), members in the order their first lot came.

    The watermark is the member's newest earning or spending the scheduler has seen: an
    inactivity expiry is refused by the ledger if the member was active after it.
    """
    if lots_per_command_max < 1:
        raise ValueError("lots_per_command_max must be at least 1")
    by_member: dict[tuple[str, str], list[LotDue]] = {}
    for lot in lots:
        if lot.remaining > 0:
            by_member.setdefault((lot.program_id, lot.member_id), []).append(lot)
    orders = []
    for key, member_lots in by_member.items():
        watermark = last_activity.get(key) or max(lot.earned_at for lot in member_lots)
        for start in range(0, len(member_lots), lots_per_command_max):
            chunk = member_lots[start:start + lots_per_command_max]
            named = tuple((lot.lot_id, lot.remaining) for lot in chunk)
            own = [lot.expires_at for lot in chunk if lot.expires_at is not None]
            due = (due_at or {}).get(key) or (min(own) if own else as_of)
            orders.append(ExpireOrder(
                command_id=expire_command_id(kind, key, as_of, named, run_id),
                program_id=key[0], member_id=key[1], kind=kind, lots=named,
                watermark=watermark, as_of=as_of, due_at=due))
    return orders


def expire_command_id(kind: str, member: tuple[str, str], as_of: datetime,
                      lots: Sequence[tuple[int, int]], run_id: str = "") -> str:
    """The id of one decision of one sweep run (`run_id`): kind, member, instant, lots and
    points. The run is part of it because a later sweep may rightly decide the same again
    (points that were held at the first attempt, released since): the ledger's inbox would
    drop a repeated id without an answer, and the lots would wait for one forever."""
    return stable_id("expire", run_id, kind, *member, as_of.isoformat(),
                     *(f"{lot}:{points}" for lot, points in lots))


def expire_reason(order: ExpireOrder, program: Program) -> str:
    """Why the points went, as the member's statement shows it (ledger `reason`)."""
    due = order.due_at.astimezone(ZoneInfo(program.time_zone)).date().isoformat()
    if order.kind == "sunset":
        return f"{program.name} closed: redemptions ended on {due}"
    if order.kind == "inactivity":
        return (f"expired on {due}: {program.inactivity_months} months without earning or "
                "spending")
    return f"expired on {due}: points earned more than their validity ago"


def policy_summary(program: Program, expiry: dict[str, object]) -> dict[str, object]:
    """The policy that applies to a program's members, for the HTTP routes."""
    summary: dict[str, object] = {"policy": program.policy, "time_zone": program.time_zone,
                                  "warn_days_before": list(program.warn_days_before)}
    fields = {"rolling": ("months", "round_to"), "fixed": ("fixed_date",),
              "inactivity": ("inactivity_months",)}.get(program.policy, ())
    summary.update({name: expiry.get(name) for name in fields})
    if program.redemption_closes_at is not None:
        summary["redemption_closes_at"] = program.redemption_closes_at.isoformat()
    return summary
