"""reward-fulfilment's use cases: one function per input, inside the caller's transaction.

Each loads the order (locked), asks the saga (`rewards.domain.saga`) what to do, and carries
out the effects here: ledger commands and status events into the outbox, allocation and
voiding in the database. Ledger command ids are derived from the order id and the step
(`command_id`), and each step's command is stored as sent, so a resend after a timeout or a
crash is byte-for-byte the same command: a no-op at the ledger's inbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from loyalty import metrics, topics
from loyalty.clock import Clock, stable_id
from loyalty.contracts import LedgerEvent, MemberEvent, RedemptionCancelled, RedemptionRequested
from loyalty.expiry import expires_at_for
from loyalty.identifiers import InvalidIdentifier
from loyalty.ledger_commands import POINTS_MAX, Capture, Credit, Release, Reserve
from loyalty.messaging import Outbox, Rejected
from loyalty.notifications import build_notification, choose_channel
from loyalty.programs import ProgramDefinition
from rewards.adapters.postgres import Member, OrderRow, RewardsRepository
from rewards.domain.saga import (
    AWAITING_LEDGER,
    Allocate,
    Deliver,
    Effect,
    Notify,
    Order,
    PublishStatus,
    Refused,
    ReturnUnits,
    SendLedgerCommand,
    State,
    VoidUnits,
    check_request,
)

log = structlog.get_logger(__name__)

SERVICE = "rewards"
STEPS = ("reserve", "capture", "release", "refund")
DELIVERY_CHANNEL = "rewards_delivery"  # NOTIFY channel: wakes the delivery job on commit
WAITING = AWAITING_LEDGER | {State.IDENTIFYING}
MEMBER_RECHECK_INTERVAL_S = 1.0
RESEND_DOUBLINGS_MAX = 5  # resends after 1, 2, 4 ... 32 step timeouts, then every 32


@dataclass(frozen=True)
class Deps:
    clock: Clock
    hold_timeout_s: int
    step_timeout_s: float
    member_wait_s: float


def command_id(order_id: str, step: str) -> str:
    """The ledger command id of a step: deterministic, so a resend is the same command.
    (A uuid5: order ids may be 200 characters, command ids may not be longer.)"""
    return f"redemption-{step}:{stable_id('redemption', order_id, step)}"


def step_of(order_id: str, ledger_command_id: str) -> str | None:
    return next((s for s in STEPS if command_id(order_id, s) == ledger_command_id), None)


# -- inputs -------------------------------------------------------------------------------------

async def redemption_requested(repo: RewardsRepository, deps: Deps, event: RedemptionRequested,
                               outbox: Outbox) -> None:
    try:
        identifiers = event.customer.identifiers.items()
    except InvalidIdentifier as exc:
        raise Rejected(exc.code, exc.message) from None
    program = await repo.program(event.program_id)
    reward = program.reward(event.reward_id) if program else None
    member = await repo.find_member(event.program_id, identifiers) if reward else None
    route = member and choose_channel(event.delivery.channel or member.channel, member.phone,
                                      member.email)
    # An unknown member may be one earn enrolled a moment ago: wait for loyalty.members.v1.
    member_known = True if member else (None if deps.member_wait_s > 0 else False)
    rejection = check_request(
        program_known=program is not None,
        redemption_open=program is None or program.is_redemption_open(event.occurred_at),
        closes_at=program and program.lifecycle.redemption_closes_at
        and program.lifecycle.redemption_closes_at.isoformat(),
        reward_known=reward is not None, reward_id=event.reward_id,
        program_id=event.program_id, member_known=member_known, reachable=bool(route),
        points=(reward.points if reward else 0) * event.quantity, points_max=POINTS_MAX)
    now = deps.clock.now()
    kind = reward.kind if reward else "code"
    saga = Order.request(event.event_id, kind, (reward.points if reward else 0) * event.quantity,
                         rejection, member_known=member is not None)
    row = OrderRow(
        order_id=event.event_id, program_id=event.program_id,
        member_id=member.member_id if member else None,
        identifiers=[f"{k}:{v}" for k, v in identifiers], reward_id=event.reward_id,
        reward_name=reward.name if reward else event.reward_id,
        inventory=(reward.pool if kind == "code" else reward.id) if reward else None,
        quantity=event.quantity, delivery_channel=event.delivery.channel,
        locale=event.locale or (member.locale if member else None),
        requested_at=event.occurred_at, updated_at=now,
        deadline_at=now + timedelta(seconds=min(MEMBER_RECHECK_INTERVAL_S, deps.member_wait_s)),
        attempts=0, saga=saga)
    effects = saga.take()
    if not await repo.insert_order(row):
        return  # the same request again (the inbox normally stops it before this)
    await _carry_out(repo, deps, row, effects, outbox, program)
    metrics.count(SERVICE, "redemption_requested")


async def redemption_cancelled(repo: RewardsRepository, deps: Deps, event: RedemptionCancelled,
                               outbox: Outbox) -> None:
    row = await repo.order(event.order_id, lock=True)
    if row is None or row.program_id != event.program_id:
        raise Rejected("unknown_order", f"no order {event.order_id!r} in {event.program_id}")
    try:
        effects = row.saga.cancel(event.reason)
    except Refused as refused:
        raise Rejected(refused.code, refused.message) from None
    await _carry_out(repo, deps, row, effects, outbox)
    metrics.count(SERVICE, "redemption_cancelled")


async def ledger_event(repo: RewardsRepository, deps: Deps, event: LedgerEvent,
                       outbox: Outbox) -> None:
    """The ledger's answer to one of our commands. Hold timeouts (no command id) are not
    acted on: the capture or release in flight for that hold is refused and says so."""
    cid = (event.model_extra or {}).get("command_id")
    if event.source.kind != "redemption" or not cid:
        return
    row = await repo.order(event.source.id, lock=True)
    step = row and step_of(row.order_id, cid)
    if row is None or step is None:
        return
    saga, refused = row.saga, event.type == "command.rejected"
    code = event.error_code or "refused"
    message = str((event.model_extra or {}).get("error.message") or event.reason)
    effects: list[Effect]
    if step == "reserve":
        effects = saga.reserve_refused(code, message) if refused else (
            saga.reserved() if event.type == "points.reserved" else [])
    elif step == "capture":
        effects = saga.capture_refused(code, message) if refused else (
            saga.captured() if event.type == "points.captured" else [])
    elif step == "release":
        effects = saga.released()
    else:
        if refused:
            log.error("refund.refused", order_id=row.order_id, error_code=code)
            metrics.count(SERVICE, "refund_refused")
            return
        effects = saga.refunded()
    if effects:
        await _carry_out(repo, deps, row, effects, outbox)


async def member_events(repo: RewardsRepository, deps: Deps, events: list[MemberEvent],
                        outbox: Outbox) -> None:
    """Keep our copy of a batch of members, set-based (one upsert of the members, one insert
    of their identifiers, one query for the orders waiting for them: 3 statements a batch,
    not 3 a member); start the orders that were waiting, each as its own event would have."""
    await repo.save_members(events)
    await repo.save_identifiers(events)
    waiting = await repo.orders_waiting_for(list(dict.fromkeys(
        (e.program_id, f"{k}:{v}") for e in events for k, v in e.identifiers.items())))
    if not waiting:
        return  # the usual case: nobody asked for these members before they were known
    adopters = waiting_adopters(events, waiting)
    members = await repo.members(set(adopters.values()))
    for order_id, key in adopters.items():
        row = await repo.order(order_id, lock=True)
        member = members.get(key)
        # Locked now: a timeout that found the member meanwhile has moved it on already.
        if row is None or member is None or row.saga.state != State.IDENTIFYING:
            continue
        _adopt(row, member)
        await _carry_out(repo, deps, row, row.saga.member_found(bool(route_of(row, member))),
                         outbox)


def waiting_adopters(events: list[MemberEvent], waiting: list[tuple[str, str, list[str]]]
                     ) -> dict[str, tuple[str, str]]:
    """order id -> the (program, member) it adopts: the first event of the batch naming one
    of its identifiers, in the order the events, then the orders' requests, came (so the
    orders start, and take codes, in the order one event at a time would have started
    them)."""
    adopters: dict[str, tuple[str, str]] = {}
    for e in events:
        named = {f"{k}:{v}" for k, v in e.identifiers.items()}
        for order_id, program_id, identifiers in waiting:
            if (order_id not in adopters and program_id == e.program_id
                    and not named.isdisjoint(identifiers)):
                adopters[order_id] = (e.program_id, e.member_id)
    return adopters


def _adopt(row: OrderRow, member: Member) -> None:
    row.member_id = member.member_id
    row.locale = row.locale or member.locale


async def time_out(repo: RewardsRepository, deps: Deps, row: OrderRow, outbox: Outbox) -> None:
    """A waiting step's deadline passed: look for the member again (its event may have
    committed while the request's transaction did not see it yet), give up on it after
    `member_wait_s`, or resend the ledger command."""
    if row.saga.state == State.IDENTIFYING:
        pairs = [tuple(i.split(":", 1)) for i in row.identifiers]
        member = await repo.find_member(row.program_id, pairs)  # type: ignore[arg-type]
        row.attempts += 1
        if member is not None:
            _adopt(row, member)
            effects = row.saga.member_found(bool(route_of(row, member)))
        elif row.attempts * MEMBER_RECHECK_INTERVAL_S >= deps.member_wait_s:
            effects = row.saga.member_wait_expired()
        else:
            row.deadline_at = deps.clock.now() + timedelta(seconds=MEMBER_RECHECK_INTERVAL_S)
            effects = []
    else:
        effects = row.saga.stalled()
        row.attempts += 1
        metrics.count(SERVICE, "step_resent")
        log.warning("saga.step_resent", order_id=row.order_id, state=row.saga.state.value,
                    attempts=row.attempts)
    await _carry_out(repo, deps, row, effects, outbox)


async def delivered(repo: RewardsRepository, deps: Deps, row: OrderRow, outbox: Outbox) -> None:
    """The delivery job handed the codes to the sender topic (and marks them delivered)."""
    await _carry_out(repo, deps, row, row.saga.delivered(), outbox)
    metrics.count(SERVICE, "reward_fulfilled")


# -- effects ------------------------------------------------------------------------------------

async def _carry_out(repo: RewardsRepository, deps: Deps, row: OrderRow, effects: list[Effect],
                     outbox: Outbox, program: ProgramDefinition | None = None) -> None:
    now = deps.clock.now()
    row.updated_at = now
    pending = list(effects)
    while pending:
        effect = pending.pop(0)
        if isinstance(effect, PublishStatus):
            await _publish_status(repo, row, effect, now, outbox)
        elif isinstance(effect, SendLedgerCommand):
            if effect.step == "refund":  # a refund expires as the program's earnings do
                program = program or await repo.program(row.program_id)
            if effect.step not in row.commands:
                row.attempts = 0  # a new step: its resends are counted from zero
            _send(row, effect.step, program, now, deps, outbox)
            # Resends back off: a ledger that is only behind needs time, not more commands.
            row.deadline_at = now + timedelta(
                seconds=deps.step_timeout_s * 2 ** min(row.attempts, RESEND_DOUBLINGS_MAX))
        elif isinstance(effect, Allocate):
            pending[:0] = await _allocate(repo, row)
        elif isinstance(effect, ReturnUnits):
            await repo.return_units(row)
        elif isinstance(effect, VoidUnits):
            await repo.void_units(row)
        elif isinstance(effect, Deliver):
            await repo.conn.execute(f"NOTIFY {DELIVERY_CHANNEL}")  # delivered on commit
        elif isinstance(effect, Notify):
            program = program or await repo.program(row.program_id)
            await _notify(repo, row, effect.template, program, now, outbox)
    if row.saga.state not in WAITING:
        row.deadline_at = None  # the waiting states keep the deadline set when they began
    await repo.save_order(row)


async def _allocate(repo: RewardsRepository, row: OrderRow) -> list[Effect]:
    if row.kind == "code":
        ok = await repo.allocate_codes(row.order_id, row.program_id, row.inventory or "",
                                       row.quantity)
        code, message = "pool_empty", f"no {row.reward_name} codes left"
    else:
        ok = await repo.allocate_stock(row.program_id, row.inventory or "", row.quantity)
        code, message = "out_of_stock", f"{row.reward_name} is out of stock"
    metrics.count(SERVICE, "allocated" if ok else code)
    return row.saga.allocated(ok, code, message)


def _send(row: OrderRow, step: str, program: ProgramDefinition | None, now: datetime,
          deps: Deps, outbox: Outbox) -> None:
    """The step's ledger command: the stored one if it was sent before, so a resend is the
    same payload (a different one under the same id would be an id conflict)."""
    if row.member_id is None:  # only orders of known members reach the ledger
        raise AssertionError(f"order {row.order_id}: ledger step {step} without a member")
    command = row.commands.get(step)
    if command is None:
        command = _command(row, step, program, now, deps).model_dump(mode="json")
        row.commands[step] = command
    outbox.add(topics.LEDGER_COMMANDS, row.member_id, command)


def _command(row: OrderRow, step: str, program: ProgramDefinition | None, now: datetime,
             deps: Deps) -> Reserve | Capture | Release | Credit:
    common: dict[str, Any] = {
        "command_id": command_id(row.order_id, step), "program_id": row.program_id,
        "member_id": row.member_id, "occurred_at": now,
        "source": {"kind": "redemption", "id": row.order_id}}
    what = f"{row.quantity} x {row.reward_name}"
    hold_id = command_id(row.order_id, "reserve")
    if step == "reserve":
        return Reserve(**common, points=row.points, timeout_s=deps.hold_timeout_s,
                       reason=f"redemption of {what}")
    if step == "capture":
        return Capture(**common, hold_id=hold_id, reason=f"redemption of {what}")
    if step == "release":
        return Release(**common, hold_id=hold_id,
                       reason=f"redemption of {what} not completed: {row.saga.reason}")
    expires = expires_at_for(program.expiry, program.time_zone, now) if program else None
    return Credit(**common, points=row.points, expires_at=expires,
                  reason=f"refund of cancelled redemption of {what}: {row.saga.reason}")


async def _publish_status(repo: RewardsRepository, row: OrderRow, effect: PublishStatus,
                          now: datetime, outbox: Outbox) -> None:
    seq = await repo.add_history(row.order_id, effect.status, effect.reason_code, effect.reason,
                                 now)
    outbox.add(topics.ORDERS, row.order_id, {
        "event_id": stable_id("order", row.order_id, str(seq), effect.status),
        "type": "order.status_changed", "occurred_at": now.isoformat(),
        "program_id": row.program_id, "order_id": row.order_id, "member_id": row.member_id,
        "reward_id": row.reward_id, "quantity": row.quantity, "points": row.points,
        "status": effect.status, "reason": effect.reason, "reason_code": effect.reason_code})
    metrics.count(SERVICE, f"order_{effect.status}")


def route_of(row: OrderRow, member: Member | None) -> tuple[str, str] | None:
    if member is None:
        return None
    return choose_channel(row.delivery_channel or member.channel, member.phone, member.email)


async def _notify(repo: RewardsRepository, row: OrderRow, template: str,
                  program: ProgramDefinition | None, now: datetime, outbox: Outbox) -> None:
    member = row.member_id and await repo.member(row.program_id, row.member_id)
    route = route_of(row, member or None)
    if route is None or program is None:
        return
    channel, to = route
    message = build_notification(
        template=template, locale=row.locale or program.default_locale, channel=channel,
        to=to, program_id=row.program_id, member_id=row.member_id or "",
        params={"program_name": program.name, "reward_name": row.reward_name,
                "points": row.points},
        fact_id=f"order:{row.order_id}", occurred_at=now)
    topic = topics.NOTIFICATIONS_SMS if channel == "sms" else topics.NOTIFICATIONS_EMAIL
    outbox.add(topic, row.member_id, message)
