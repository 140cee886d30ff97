"""The scheduler's use cases: keep its view from events, and sweep what is due.

Consuming (each inside the consumer's batch transaction, set-based):
- `apply_program`: the latest definition per program; an inactivity rule recomputes every
  member's deadline.
- `apply_member_events`: contact data (locale, channel, phone and e-mail from `identifiers`)
  and identifiers for `{ref}` lookups, from `loyalty.members.v1`.
- `apply_ledger_events`: lots and their remaining points, balances, last activity, the
  ledger's answers to our expire commands, and the `points_expired` notice.

Sweeping (`sweep`): expiries first (by each lot's own expiry, then inactivity, then program
sunset), then warnings and closing notices, each in bounded batches of one transaction each.
What a batch picks it marks in the same transaction (pending lots, decided notices), so the
sweep is idempotent and a crash at any line loses or doubles nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from expiry.adapters.postgres import ExpiryRepository, NewLot, NoticeCandidate
from expiry.domain.schedule import (
    ExpireOrder,
    Program,
    expire_reason,
    notice_due,
    plan_expire_orders,
)
from loyalty import metrics, topics
from loyalty.contracts import MemberEvent
from loyalty.ledger_commands import EXPIRE_LOTS_MAX, Expire, ExpireLot
from loyalty.messaging import Outbox
from loyalty.notifications import build_notification, choose_channel
from loyalty.programs import ProgramDefinition

log = structlog.get_logger(__name__)

INACTIVITY_RECOMPUTE_BATCH_MEMBERS = 5_000
# Movements that are the member's own earning or spending (the ledger's ACTIVITY commands).
ACTIVITY_TYPES = ("points.credited", "points.debited", "points.captured")
HOLD_ENDED_TYPES = ("points.released", "points.captured")
OUR_SOURCE_KINDS = ("expiry", "sunset")


def program_view(definition: ProgramDefinition) -> Program:
    return Program(
        program_id=definition.id, name=definition.name, time_zone=definition.time_zone,
        default_locale=definition.default_locale, policy=definition.expiry.policy,
        inactivity_months=definition.expiry.inactivity_months,
        warn_days_before=tuple(definition.expiry.warn_days_before),
        redemption_closes_at=definition.lifecycle.redemption_closes_at,
        closing_notice_days=tuple(definition.lifecycle.closing_notice_days))


async def apply_program(repo: ExpiryRepository, definition: ProgramDefinition) -> None:
    program = program_view(definition)
    await repo.save_program(program, definition.to_message())
    if program.policy != "inactivity":
        await repo.clear_inactivity_dues(program.program_id)
        return
    after = ""
    while batch := await repo.members_with_activity(program.program_id, after,
                                                    INACTIVITY_RECOMPUTE_BATCH_MEMBERS):
        await repo.set_inactivity_dues([(program.program_id, member, program.inactivity_due_at(at))
                                        for member, at in batch])
        after = batch[-1][0]


async def apply_member_events(repo: ExpiryRepository, events: list[MemberEvent]) -> None:
    """A batch of member events, merged per member (a member enrolled and linked in one batch
    is one row) and per identifier (the latest link wins)."""
    await repo.save_contacts(events)
    await repo.save_identifiers(events)


@dataclass
class LedgerMove:
    """The fields of a `loyalty.ledger.v1` event the scheduler uses (see entrypoints)."""

    event_id: str
    type: str
    occurred_at: datetime
    program_id: str
    member_id: str
    points: int
    balance_after: int
    source_kind: str
    expires_at: datetime | None
    lot_id: int | None
    lot_points: int
    lots: list[tuple[int, int]]
    command_id: str | None
    command_type: str | None
    reverses: str | None
    error_code: str | None


async def apply_ledger_events(repo: ExpiryRepository, events: list[LedgerMove],
                              outbox: Outbox) -> None:
    programs = await repo.programs({e.program_id for e in events})
    new_lots: list[NewLot] = []
    taken: dict[int, int] = defaultdict(int)
    members: dict[tuple[str, str], tuple[int, datetime | None]] = {}
    answers: dict[str, tuple[int | None, str | None]] = {}
    holds_ended: set[tuple[str, str]] = set()
    reversals: list[tuple[str, list[int]]] = []
    expired: list[LedgerMove] = []
    for e in events:
        key = (e.program_id, e.member_id)
        if e.type == "command.rejected":
            if e.command_type == "expire" and e.command_id:
                answers[e.command_id] = (None, e.error_code)
            continue
        _, activity = members.get(key, (0, None))
        if e.type in ACTIVITY_TYPES and e.reverses is None:
            activity = max(filter(None, (activity, e.occurred_at)))
        members[key] = (e.balance_after, activity)
        if e.lot_id is not None and e.lot_points > 0:
            program = programs.get(e.program_id)
            policy = program.policy if program and e.expires_at else (
                "none" if e.expires_at is None else "expiry")
            new_lots.append(NewLot(e.lot_id, e.program_id, e.member_id, e.lot_points,
                                   e.occurred_at, e.expires_at, policy))
        for lot_id, points in e.lots:
            taken[lot_id] += points
        if e.type == "points.expired" and e.command_id:
            answers[e.command_id] = (-e.points, None)
            if e.points and e.source_kind in OUR_SOURCE_KINDS:
                expired.append(e)
        if e.type in HOLD_ENDED_TYPES:
            holds_ended.add(key)
        if e.reverses is not None:
            reversals.append((e.reverses, [lot for lot, points in e.lots if points < 0]))
    await repo.insert_lots(new_lots)
    await repo.move_lots({lot: n for lot, n in taken.items() if n})
    activity = await repo.save_movements(
        [(p, m, balance, at) for (p, m), (balance, at) in members.items()])
    await repo.set_inactivity_dues([
        (p, m, programs[p].inactivity_due_at(at)) for (p, m), at in activity.items()
        if p in programs and programs[p].policy == "inactivity"
        and members[(p, m)][1] is not None])
    await repo.settle_requests(answers)
    await repo.release_held_back(holds_ended)
    await repo.exempt_reversed([r for r in reversals if r[1]])
    await _notify_expired(repo, programs, expired, outbox)


async def _notify_expired(repo: ExpiryRepository, programs: dict[str, Program],
                          events: list[LedgerMove], outbox: Outbox) -> None:
    """The member hears what expired and what is left, once per ledger event."""
    if not events:
        return
    contacts = await repo.contacts((e.program_id, e.member_id) for e in events)
    for e in events:
        program = programs.get(e.program_id)
        sent = program is not None and _notify(
            outbox, program, contacts.get((e.program_id, e.member_id)), e.member_id,
            "points_expired", {"points": abs(e.points), "balance": e.balance_after},
            fact_id=e.event_id, at=e.occurred_at)
        metrics.count("expiry", "expired_notice_sent" if sent else "expired_notice_unreachable")


def _notify(outbox: Outbox, program: Program, contact: Any, member_id: str, template: str,
            params: dict[str, Any], *, fact_id: str, at: datetime) -> bool:
    """Render `template` for the member's channel and language; False if unreachable."""
    route = contact and choose_channel(contact.channel, contact.phone, contact.email)
    if not route:
        return False
    channel, to = route
    message = build_notification(
        template=template, locale=contact.locale or program.default_locale, channel=channel,
        to=to, program_id=program.program_id, member_id=member_id,
        params={**params, "program_name": program.name, "time_zone": program.time_zone},
        fact_id=fact_id, occurred_at=at)
    topic = topics.NOTIFICATIONS_SMS if channel == "sms" else topics.NOTIFICATIONS_EMAIL
    outbox.add(topic, member_id, message)
    return True


# The sweep ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepLimits:
    lots_per_batch_max: int = 1_000
    members_per_batch_max: int = 500
    notices_per_batch_max: int = 1_000
    lots_per_command_max: int = EXPIRE_LOTS_MAX
    batches_per_sweep_max: int = 100_000


@dataclass
class SweepReport:
    as_of: datetime
    run_id: str = ""  # names this sweep's commands (see `expire_command_id`)
    commands: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lots: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    points: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    notices: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    forecast: list[str] = field(default_factory=list)  # one line per decision (dry runs)
    forecast_max: int = 0
    due_lots_after: tuple[datetime, int] | None = None  # where the next batch starts

    def note(self, line: str) -> None:
        if len(self.forecast) < self.forecast_max:
            self.forecast.append(line)

    @property
    def empty(self) -> bool:
        return not self.commands and not any(
            n for k, n in self.notices.items() if k.endswith(":sent"))

    def summary(self) -> str:
        parts = [f"{self.commands.get(k, 0)} {k} command(s) for {self.lots.get(k, 0)} lot(s),"
                 f" {self.points.get(k, 0)} points" for k in ("expiry", "inactivity", "sunset")]
        notices = ", ".join(f"{k} {n}" for k, n in sorted(self.notices.items())) or "none"
        return f"as of {self.as_of.isoformat()}: " + "; ".join(parts) + f"; notices: {notices}"


Transaction = Callable[[], AbstractAsyncContextManager[Any]]


async def sweep(repo: ExpiryRepository, transaction: Transaction, as_of: datetime, *,
                limits: SweepLimits, on_commit: Callable[[], None] = lambda: None,
                report: SweepReport | None = None) -> SweepReport:
    """Everything due as of `as_of`, in bounded batches, one transaction each.

    `transaction()` opens one batch's transaction on `repo`'s connection (a savepoint in a
    dry run, whose outer transaction is rolled back).
    """
    report = report or SweepReport(as_of)
    programs = await repo.programs()
    steps: list[Callable[[], Any]] = [
        lambda: _expire_due_lots(repo, programs, as_of, limits, report),
        lambda: _expire_inactive(repo, programs, as_of, limits, report),
        lambda: _expire_sunset(repo, programs, as_of, limits, report),
        lambda: _warn_lots(repo, programs, as_of, limits, report),
        lambda: _warn_inactive(repo, programs, as_of, limits, report),
        lambda: _closing_notices(repo, programs, as_of, limits, report),
    ]
    for step in steps:
        for _ in range(limits.batches_per_sweep_max):
            with metrics.staging() as counts:
                async with transaction():
                    more = await step()
                metrics.commit_counts(counts)  # counted once committed
            on_commit()
            if not more:
                break
        else:
            log.warning("sweep.batches_exhausted", batches=limits.batches_per_sweep_max)
    return report


async def _expire_due_lots(repo: ExpiryRepository, programs: dict[str, Program],
                           as_of: datetime, limits: SweepLimits, report: SweepReport) -> bool:
    lots = await repo.due_lots(as_of, limits.lots_per_batch_max, report.due_lots_after)
    full = len(lots) == limits.lots_per_batch_max
    if lots:
        last = lots[-1]
        assert last.expires_at is not None
        report.due_lots_after = (last.expires_at, last.lot_id)
        keys = list(dict.fromkeys((lot.program_id, lot.member_id) for lot in lots))
        # Up to as many again: the same members' other due lots join their commands.
        lots += await repo.more_due_lots_of(keys, as_of, [lot.lot_id for lot in lots],
                                            limits.lots_per_batch_max)
        watermarks = await repo.last_activity(keys)
        await _send_orders(repo, programs, plan_expire_orders(
            lots, kind="expiry", as_of=as_of, last_activity=watermarks,
            lots_per_command_max=limits.lots_per_command_max, run_id=report.run_id), report)
    return full


async def _expire_inactive(repo: ExpiryRepository, programs: dict[str, Program],
                           as_of: datetime, limits: SweepLimits, report: SweepReport) -> bool:
    members = await repo.inactive_members(as_of, limits.members_per_batch_max)
    if members:
        keys = [(p, m) for p, m, _, _ in members]
        lots = await repo.open_lots_of(keys, include_exempt=False)
        await _send_orders(repo, programs, plan_expire_orders(
            lots, kind="inactivity", as_of=as_of,
            last_activity={(p, m): at for p, m, at, _ in members},
            due_at={(p, m): due for p, m, _, due in members},
            lots_per_command_max=limits.lots_per_command_max, run_id=report.run_id), report)
    return len(members) == limits.members_per_batch_max


async def _expire_sunset(repo: ExpiryRepository, programs: dict[str, Program],
                         as_of: datetime, limits: SweepLimits, report: SweepReport) -> bool:
    lots, closes = await repo.sunset_lots(as_of, limits.lots_per_batch_max)
    if lots:
        watermarks = await repo.last_activity(closes)
        await _send_orders(repo, programs, plan_expire_orders(
            lots, kind="sunset", as_of=as_of, last_activity=watermarks, due_at=closes,
            lots_per_command_max=limits.lots_per_command_max, run_id=report.run_id), report)
    return len(lots) == limits.lots_per_batch_max


async def _send_orders(repo: ExpiryRepository, programs: dict[str, Program],
                       orders: list[ExpireOrder], report: SweepReport) -> None:
    outbox = Outbox()
    for order in orders:
        program = programs[order.program_id]
        command = Expire(
            command_id=order.command_id, program_id=order.program_id,
            member_id=order.member_id, occurred_at=order.as_of,
            reason=expire_reason(order, program),
            source={"kind": "sunset" if order.kind == "sunset" else "expiry",
                    "id": order.command_id},
            lots=[ExpireLot(lot_id=lot, points=points) for lot, points in order.lots],
            watermark=order.watermark, inactivity=order.kind == "inactivity")
        outbox.add(topics.LEDGER_COMMANDS, order.member_id, command.model_dump(mode="json"))
        report.commands[order.kind] += 1
        report.lots[order.kind] += len(order.lots)
        report.points[order.kind] += order.points
        report.note(f"expire {order.points} points of member {order.member_id} in "
                    f"{order.program_id} ({len(order.lots)} lots, {order.kind}, due "
                    f"{order.due_at.isoformat()})")
        metrics.count("expiry", f"expire_requested_{order.kind}")
    await repo.record_orders(orders)
    await outbox.flush(repo.conn)


async def _warn_lots(repo: ExpiryRepository, programs: dict[str, Program], as_of: datetime,
                     limits: SweepLimits, report: SweepReport) -> bool:
    horizon = await repo.max_warn_days()
    found = await repo.lot_warnings(as_of, horizon, limits.notices_per_batch_max)
    await _send_notices(repo, programs, found, "expiry_warning", as_of, report)
    return len(found) == limits.notices_per_batch_max


async def _warn_inactive(repo: ExpiryRepository, programs: dict[str, Program],
                         as_of: datetime, limits: SweepLimits, report: SweepReport) -> bool:
    horizon = await repo.max_warn_days()
    found = await repo.inactivity_warnings(as_of, horizon, limits.notices_per_batch_max)
    await _send_notices(repo, programs, found, "expiry_warning", as_of, report)
    return len(found) == limits.notices_per_batch_max


async def _closing_notices(repo: ExpiryRepository, programs: dict[str, Program],
                           as_of: datetime, limits: SweepLimits, report: SweepReport) -> bool:
    found = await repo.closing_notices(as_of, limits.notices_per_batch_max)
    await _send_notices(repo, programs, found, "program_closing", as_of, report)
    return len(found) == limits.notices_per_batch_max


async def _send_notices(repo: ExpiryRepository, programs: dict[str, Program],
                        found: list[NoticeCandidate], template: str, as_of: datetime,
                        report: SweepReport) -> None:
    """Decide each candidate once (the notices table's key), then send what was decided."""
    if not found:
        return
    contacts = await repo.contacts((c.program_id, c.member_id) for c in found)
    rows, sends = [], []
    for c in found:
        program = programs[c.program_id]
        days = (program.closing_notice_days if template == "program_closing"
                else program.warn_days_before)
        decision = notice_due(c.due_at, days, as_of)
        if decision is None:  # the SQL and the rule disagree: the rule wins, nothing is sent
            log.warning("sweep.notice_not_due", program_id=c.program_id, template=template)
            continue
        contact = contacts.get((c.program_id, c.member_id))
        reachable = bool(contact and choose_channel(contact.channel, contact.phone,
                                                    contact.email))
        status = "sent" if reachable else "unreachable"
        rows.append((c.program_id, c.member_id, template, c.due_at, decision.send_days, status,
                     c.points, as_of))
        rows += [(c.program_id, c.member_id, template, c.due_at, d, "superseded", c.points,
                  as_of) for d in decision.superseded_days]
        if reachable:
            sends.append((c, decision.send_days, contact))
    inserted = await repo.record_notices(rows)
    for row in rows:
        if (row[:5]) in inserted:
            report.notices[f"{template}:{row[5]}"] += 1
    outbox = Outbox()
    for c, days, contact in sends:
        if (c.program_id, c.member_id, template, c.due_at, days) not in inserted:
            continue  # another sweep decided it first
        program = programs[c.program_id]
        params = ({"points": c.points, "expires_at": c.due_at} if template == "expiry_warning"
                  else {"balance": c.points, "closes_at": c.due_at})
        _notify(outbox, program, contact, c.member_id, template, params,
                fact_id=f"{template}:{c.program_id}:{c.member_id}:{c.due_at.isoformat()}:{days}",
                at=as_of)
        report.note(f"{template} ({days} days before) to member {c.member_id} in "
                    f"{c.program_id}: {c.points} points, due {c.due_at.isoformat()}")
        metrics.count("expiry", f"{template}_sent")
    await outbox.flush(repo.conn)

