"""earn's use cases: one function per input, inside the batch's unit of work.

Purchases identify (or enrol) the member, compute points under the program's current rules,
record the order with its rule version, and ask the ledger for a credit through the outbox.
Each command says how to tell the member (`notify`: channel, address, language): the ledger
renders the message with the balance it computed, in the movement's own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from earn.adapters.batch import BatchEarnRepository
from earn.adapters.postgres import EarnRepository, Member
from earn.domain.rules import (
    TIER_WINDOW,
    Line,
    Purchase,
    activity_points,
    compute_points,
    return_points,
)
from loyalty import metrics, topics
from loyalty.clock import Clock, IdProvider, stable_id
from loyalty.contracts import ActivityEvent, AdjustmentEvent, Customer, PurchaseEvent
from loyalty.expiry import expires_at_for
from loyalty.identifiers import Identifiers, InvalidIdentifier
from loyalty.ledger_commands import REASON_LEN_MAX, Credit, Debit, Notify, Reverse
from loyalty.messaging import Outbox, Rejected
from loyalty.notifications import choose_channel
from loyalty.programs import ProgramDefinition

log = structlog.get_logger(__name__)

# Which confirmed ledger movements earn tells the member about, and with which template.


@dataclass(frozen=True)
class Deps:
    clock: Clock
    ids: IdProvider


async def apply_program(repo: EarnRepository, program: ProgramDefinition) -> None:
    version = await repo.apply_program(program)
    if version is not None:
        log.info("program.applied", program_id=program.id, version=version)


async def _first_application(repo: BatchEarnRepository, event_id: str) -> None:
    """Refuse a return, activity or adjustment whose event an earlier batch recorded."""
    if await repo.recorded(event_id):
        raise _already_applied(event_id)


def _already_applied(event_id: str) -> Rejected:
    """A record applied by an earlier batch, redelivered after its inbox id was pruned
    (`LOYALTY_INBOX_RETENTION_DAYS`): its order, return or award is kept forever, so it has
    no effect again; it is dead-lettered at once rather than retried into a poison."""
    return Rejected("already_applied", f"event {event_id} was applied before; its inbox id is"
                    " past the retention window, and it has no further effect")


async def _program(repo: BatchEarnRepository, program_id: str) -> tuple[int, ProgramDefinition]:
    found = await repo.current_program(program_id)
    if found is None:
        raise Rejected("unknown_program", f"program {program_id!r} is not defined")
    return found


def _identifiers(customer: Customer) -> Identifiers:
    try:
        return customer.identifiers
    except InvalidIdentifier as exc:
        raise Rejected(exc.code, str(exc)) from None


async def identify(repo: BatchEarnRepository, deps: Deps, program: ProgramDefinition,
                   identifiers: Identifiers, locale: str | None, occurred_at: Any,
                   outbox: Outbox) -> Member | None:
    """The member these identifiers name, enrolling on first sight (None: enrolment closed).

    Identifiers that point at different members are never merged: the one first in precedence
    order (customer, card, phone, email) wins, and a metric counts the conflict.
    """
    wanted = identifiers.items()
    known = await repo.find_members(program.id, wanted)
    owners = [known[i].member_id for i in wanted if i in known]
    now = deps.clock.now()
    if not owners:
        if not program.is_enrolment_open(occurred_at):
            return None
        contact = dict(wanted)
        # The channel the shopper first reached us through: the till's phone, or the e-mail.
        channel = "sms" if "phone" in contact else "email" if "email" in contact else None
        member = Member(member_id=deps.ids.new_id(), program_id=program.id,
                        locale=locale or program.default_locale, preferred_channel=channel,
                        phone=contact.get("phone"), email=contact.get("email"))
        await repo.add_member(member, occurred_at)
        await repo.link(program.id, member.member_id, wanted, now)
        _member_event(outbox, "member.enrolled", member, wanted, occurred_at)
        metrics.count("earn", "member_enrolled")
        return member
    member_id = owners[0]
    if len(set(owners)) > 1:
        metrics.count("earn", "identifier_conflict")
        log.warning("member.identifier_conflict", program_id=program.id, chosen=member_id,
                    others=sorted(set(owners) - {member_id}))
    member = next(known[i] for i in wanted if i in known)
    new = [i for i in wanted if i not in known]
    if new:
        await repo.link(program.id, member_id, new, now)
        _member_event(outbox, "member.identifier_linked", member, new, occurred_at)
    return member


def _member_event(outbox: Outbox, type_: str, member: Member,
                  identifiers: list[tuple[str, str]], occurred_at: Any) -> None:
    """`member.enrolled` / `member.identifier_linked`, with the member's language and channel
    so the services that notify (expiry-scheduler, reward-fulfilment) need no other source."""
    program_id, member_id = member.program_id, member.member_id
    outbox.add(topics.MEMBERS, member_id, {
        "event_id": stable_id(type_, program_id, member_id, *(f"{k}:{v}" for k, v in identifiers)),
        "type": type_,
        "occurred_at": occurred_at.isoformat(),
        "program_id": program_id,
        "member_id": member_id,
        "identifiers": dict(identifiers),
        "locale": member.locale,
        "channel": member.preferred_channel,
    })


async def _earning_member(repo: BatchEarnRepository, deps: Deps, program: ProgramDefinition,
                          event: PurchaseEvent | ActivityEvent, outbox: Outbox) -> Member | None:
    """The member who earns from `event`, enrolled if new; None (recorded with the reason)
    when the program no longer awards points or no longer enrols."""
    identifiers = _identifiers(event.customer)
    if not program.is_earning_open(event.occurred_at):
        await _skip(repo, event, "earning_closed", "the program no longer awards points")
        return None
    member = await identify(repo, deps, program, identifiers, event.locale, event.occurred_at,
                            outbox)
    if member is None:
        await _skip(repo, event, "enrolment_closed", "the program no longer enrols members")
    return member


async def purchase_completed(repo: BatchEarnRepository, deps: Deps, event: PurchaseEvent,
                             outbox: Outbox) -> None:
    version, program = await _program(repo, event.program_id)
    recorded = await repo.order(event.program_id, event.order_id)
    if recorded is not None and recorded.event_id == event.event_id:
        raise _already_applied(event.event_id)
    if event.currency != program.currency:
        raise Rejected("currency_mismatch",
                       f"program {program.id} runs in {program.currency}, not {event.currency}")
    member = await _earning_member(repo, deps, program, event, outbox)
    if member is None:
        return
    recent = await repo.points_earned_since(member.member_id, event.occurred_at - TIER_WINDOW)
    purchase = Purchase(total=event.total, channel=event.channel, occurred_at=event.occurred_at,
                        items=tuple(Line(i.sku, i.category, i.quantity, i.unit_price)
                                    for i in event.items))
    earning = compute_points(program, purchase, recent)
    breakdown = [{"rule": b.rule, "points": str(b.points)} for b in earning.breakdown]
    clash = await repo.add_order(
        program_id=program.id, order_id=event.order_id, event_id=event.event_id,
        member_id=member.member_id, program_version=version, channel=event.channel,
        currency=event.currency, total=event.total, points=earning.points, breakdown=breakdown,
        occurred_at=event.occurred_at)
    if clash is not None:
        raise Rejected("duplicate_order",
                       f"order {event.order_id} was already recorded by event {clash}")
    if earning.points <= 0:
        return
    _credit(outbox, program, member, f"purchase:{event.event_id}", earning.points,
            earning.reason, "purchase", event.order_id, event.occurred_at)
    await _update_tier(repo, program, member.member_id, recent + earning.points,
                       event.occurred_at, outbox)


def _credit(outbox: Outbox, program: ProgramDefinition, member: Member, command_id: str,
            points: int, reason: str, kind: str, source_id: str, occurred_at: datetime) -> None:
    """Ask the ledger for a credit, expiring as the program's policy says, and to tell the
    member (`points_earned`, or `points_adjusted` for support's credits)."""
    template = "points_adjusted" if kind == "adjustment" else "points_earned"
    credit = Credit(
        command_id=command_id, program_id=program.id, member_id=member.member_id,
        occurred_at=occurred_at, points=points, reason=_clipped(reason),
        source={"kind": kind, "id": source_id},
        expires_at=expires_at_for(program.expiry, program.time_zone, occurred_at),
        notify=_notify(member, program, template))
    outbox.add(topics.LEDGER_COMMANDS, member.member_id, credit.model_dump(mode="json"))
    metrics.count("earn", f"points_awarded_{kind}")


def _clipped(reason: str) -> str:
    """A reason the ledger keeps whole, or its first characters: a purchase that crosses many
    category multipliers explains each, and must not be refused for its explanation (the order
    keeps the whole breakdown)."""
    return reason if len(reason) <= REASON_LEN_MAX else reason[:REASON_LEN_MAX - 1] + "\u2026"


def _notify(member: Member | None, program: ProgramDefinition, template: str) -> Notify | None:
    """How the ledger should tell the member about the movement: their channel and language
    (None when the member cannot be reached)."""
    route = member and choose_channel(member.preferred_channel, member.phone, member.email)
    if not route:
        return None
    channel, to = route
    return Notify(template=template, channel=channel, to=to, locale=member.locale,
                  program_name=program.name)


async def _update_tier(repo: BatchEarnRepository, program: ProgramDefinition, member_id: str,
                       points_last_12_months: int, at: datetime, outbox: Outbox) -> None:
    """Publish `member.tier_changed` when the points of the last 12 months cross a tier."""
    tier = program.tier_for(points_last_12_months)
    changed, previous = await repo.set_tier(member_id, tier.id)
    previous = previous or program.tiers[0].id  # before the first earning: the base tier
    if not changed or previous == tier.id:
        return
    outbox.add(topics.MEMBERS, member_id, {
        "event_id": stable_id("member.tier_changed", program.id, member_id, previous, tier.id,
                              at.isoformat()),
        "type": "member.tier_changed", "occurred_at": at.isoformat(),
        "program_id": program.id, "member_id": member_id, "identifiers": {},
        "tier": tier.id, "previous_tier": previous,
        "points_last_12_months": points_last_12_months,
    })
    metrics.count("earn", "tier_changed")


async def purchase_returned(repo: BatchEarnRepository, event: PurchaseEvent,
                            outbox: Outbox) -> None:
    """Take back what the order earned, pro rata to the returned amount, under the rules the
    order was earned with (its stored points); several partial returns never exceed it."""
    _, program = await _program(repo, event.program_id)
    await _first_application(repo, event.event_id)
    order = await repo.order(event.program_id, event.order_id)
    if order is None:
        raise Rejected("unknown_order", f"order {event.order_id} was never recorded as a "
                       f"purchase of program {event.program_id}")
    if order.returned_amount + event.total > order.total:
        raise Rejected("return_exceeds_purchase",
                       f"returns of {order.returned_amount + event.total} exceed the order "
                       f"total {order.total}")
    points = return_points(order.points, order.total, order.returned_amount,
                           order.points_reversed, event.total)
    await repo.add_return(event_id=event.event_id, program_id=event.program_id,
                          order_id=event.order_id, amount=event.total, points=points,
                          occurred_at=event.occurred_at)
    if points <= 0:
        return
    reverse = Reverse(
        command_id=f"return:{event.event_id}", program_id=event.program_id,
        member_id=order.member_id, occurred_at=event.occurred_at, points=points,
        target_id=f"purchase:{order.event_id}",
        reason=f"return of {event.total} {event.currency} of order {event.order_id}: "
               f"{points} of {order.points} points",
        source={"kind": "return", "id": event.order_id},
        notify=_notify(await repo.member(order.member_id), program, "points_returned"))
    outbox.add(topics.LEDGER_COMMANDS, order.member_id, reverse.model_dump(mode="json"))
    metrics.count("earn", "points_returned")


async def activity_completed(repo: BatchEarnRepository, deps: Deps, event: ActivityEvent,
                             outbox: Outbox) -> None:
    _, program = await _program(repo, event.program_id)
    await _first_application(repo, event.event_id)
    points = activity_points(program, event.activity)
    if points is None:
        raise Rejected("unknown_activity",
                       f"program {program.id} awards nothing for {event.activity!r}")
    member = await _earning_member(repo, deps, program, event, outbox)
    if member is None:
        return
    reason = f"{event.activity}: {points} points"
    await repo.add_award(event_id=event.event_id, program_id=program.id,
                         member_id=member.member_id, kind="activity", points=points,
                         reason=reason, occurred_at=event.occurred_at)
    if points:
        _credit(outbox, program, member, f"activity:{event.event_id}", points, reason,
                "activity", event.event_id, event.occurred_at)
        recent = await repo.points_earned_since(member.member_id,
                                                event.occurred_at - TIER_WINDOW)
        await _update_tier(repo, program, member.member_id, recent, event.occurred_at, outbox)


async def points_adjusted(repo: BatchEarnRepository, deps: Deps, event: AdjustmentEvent,
                          outbox: Outbox) -> None:
    """Support staff fixing a balance: a credit or a debit with the reason and the actor."""
    _, program = await _program(repo, event.program_id)
    await _first_application(repo, event.event_id)
    if event.points == 0:
        raise Rejected("invalid_field", "points: an adjustment of 0 points changes nothing")
    identifiers = _identifiers(event.customer)
    member = await identify(repo, deps, program, identifiers, None, event.occurred_at, outbox)
    if member is None:
        raise Rejected("unknown_member", "no such member, and the program no longer enrols")
    reason = f"{event.reason} (by {event.actor})"
    await repo.add_award(event_id=event.event_id, program_id=program.id,
                         member_id=member.member_id, kind="adjustment", points=event.points,
                         reason=reason, occurred_at=event.occurred_at)
    if event.points > 0:
        _credit(outbox, program, member, f"adjustment:{event.event_id}", event.points,
                reason, "adjustment", event.event_id, event.occurred_at)
        return
    debit = Debit(command_id=f"adjustment:{event.event_id}", program_id=program.id,
                  member_id=member.member_id, occurred_at=event.occurred_at,
                  points=-event.points, allow_owed=True, reason=reason,
                  source={"kind": "adjustment", "id": event.event_id},
                  notify=_notify(member, program, "points_adjusted"))
    outbox.add(topics.LEDGER_COMMANDS, member.member_id, debit.model_dump(mode="json"))
    metrics.count("earn", "points_adjusted_down")


async def _skip(repo: BatchEarnRepository, event: PurchaseEvent | ActivityEvent, code: str,
                reason: str) -> None:
    await repo.skip(event_id=event.event_id, program_id=event.program_id, reason_code=code,
                    reason=reason, occurred_at=event.occurred_at)
    metrics.count("earn", f"skipped_{code}")
    log.info("purchase.skipped", event_id=event.event_id, reason_code=code)
