"""The ledger's use cases, set-based: a batch of commands in one unit of work.

The books the batch touches are loaded (and locked) in a few queries, the commands are applied
in order by the pure domain, and the changes are written back in bulk: this is where the
throughput comes from. A refused command is published as `command.rejected` (a fact the
requester needs), not dead-lettered; the others in the batch still apply.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog

from ledger.adapters.postgres import LedgerRepository
from ledger.domain.model import READS_LOTS, Changes, Ledger, Refused, rejection_event
from loyalty import metrics, topics
from loyalty.ledger_commands import (
    AnyCommand,
    Capture,
    Credit,
    Debit,
    Notify,
    Release,
    Reverse,
)
from loyalty.messaging import Outbox, to_json_bytes
from loyalty.notifications import build_notification

log = structlog.get_logger(__name__)

HOLD_SWEEP_MEMBERS_MAX = 500


async def apply_commands(repo: LedgerRepository, commands: list[AnyCommand], now: datetime,
                         outbox: Outbox) -> None:
    keys = sorted({(c.program_id, c.member_id) for c in commands})
    hold_ids = [c.hold_id for c in commands if isinstance(c, Capture | Release)]
    books = await repo.load_books(keys, hold_ids, lots_of={
        (c.program_id, c.member_id) for c in commands if isinstance(c, READS_LOTS)})
    movements = await repo.load_movements(
        [c.target_id for c in commands if isinstance(c, Reverse)], books)
    lot_ids = iter(await repo.allocate_lot_ids(
        sum(1 for c in commands if isinstance(c, Credit | Reverse))))
    changes = Changes()
    ledger = Ledger(changes, lambda: next(lot_ids))
    for command in commands:
        book = books[(command.program_id, command.member_id)]
        applied = len(changes.new_movements)
        try:
            ledger.apply(book, command, now, movements)
        except Refused as refusal:
            changes.events.append(rejection_event(command, book, refusal))
            metrics.count("ledger", f"rejected_{refusal.code}")
            continue
        for movement in changes.new_movements[applied:]:
            movements[movement.command_id] = movement
    await repo.persist(changes)
    asked = {c.command_id: c.notify for c in commands
             if isinstance(c, Credit | Debit | Reverse) and c.notify is not None}
    for event in changes.events:
        publish(outbox, event)
        if (notify := asked.get(event.get("command_id", ""))) and event["points"] \
                and event["type"] in NOTIFIED_MOVEMENTS:
            _notify(outbox, notify, event)


NOTIFIED_MOVEMENTS = ("points.credited", "points.debited")


# Where the answers to a requester's commands also go, by the commands' source kind: the
# requester then reads its answers, not every movement of the platform.
REPLY_TOPICS = {"redemption": topics.LEDGER_REPLIES}


def publish(outbox: Outbox, event: dict[str, Any]) -> None:
    """A ledger event, keyed by member, with its type and source kind also as headers (a
    follower that wants only some skips the rest without parsing them); an answer to
    reward-fulfilment goes to its reply topic too, the same bytes."""
    headers = {"event.type": event["type"]}
    reply_topic = None
    if source := event.get("source"):
        headers["source.kind"] = source["kind"]
        reply_topic = REPLY_TOPICS.get(source["kind"])
    value = to_json_bytes(event)
    outbox.add(topics.LEDGER, event["member_id"], value, headers=headers)
    if reply_topic:
        outbox.add(reply_topic, event["member_id"], value, headers=headers)


def _notify(outbox: Outbox, notify: Notify, event: dict[str, Any]) -> None:
    """The message the requester asked for, with the balance this movement left."""
    message = build_notification(
        template=notify.template, locale=notify.locale, channel=notify.channel, to=notify.to,
        program_id=event["program_id"], member_id=event["member_id"],
        params={"points": abs(event["points"]), "balance": event["balance_after"],
                "program_name": notify.program_name, "reason": event["reason"]},
        fact_id=event["event_id"], occurred_at=datetime.fromisoformat(event["occurred_at"]))
    topic = topics.NOTIFICATIONS_SMS if notify.channel == "sms" else topics.NOTIFICATIONS_EMAIL
    outbox.add(topic, event["member_id"], message)


async def time_out_holds(repo: LedgerRepository, now: datetime, outbox: Outbox) -> int:
    """Release holds whose time is up (the consumer also does it lazily per member)."""
    keys = await repo.due_holds(now, HOLD_SWEEP_MEMBERS_MAX)
    if not keys:
        return 0
    books = await repo.load_books(sorted(keys), [], lots_of=set())
    changes = Changes()
    ledger = Ledger(changes, lambda: 0)
    for book in books.values():
        ledger.time_out_holds(book, now)
    await repo.persist(changes)
    for event in changes.events:
        publish(outbox, event)
    return len(changes.events)
