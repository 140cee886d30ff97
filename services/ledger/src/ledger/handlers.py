"""The ledger's use cases, set-based: a batch of commands in one unit of work.

The books the batch touches are loaded (and locked) in a few queries, the commands are applied
in order by the pure domain, and the changes are written back in bulk: this is where the
throughput comes from. A refused command is published as `command.rejected` (a fact the
requester needs), not dead-lettered; the others in the batch still apply.
"""

from __future__ import annotations

from datetime import datetime

import structlog

from ledger.adapters.postgres import LedgerRepository
from ledger.domain.model import Changes, Ledger, Refused, rejection_event
from loyalty import metrics, topics
from loyalty.ledger_commands import AnyCommand, Capture, Credit, Release, Reverse
from loyalty.messaging import Outbox

log = structlog.get_logger(__name__)

HOLD_SWEEP_MEMBERS_MAX = 500


async def apply_commands(repo: LedgerRepository, commands: list[AnyCommand], now: datetime,
                         outbox: Outbox) -> None:
    keys = sorted({(c.program_id, c.member_id) for c in commands})
    hold_ids = [c.hold_id for c in commands if isinstance(c, Capture | Release)]
    books = await repo.load_books(keys, hold_ids)
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
    for event in changes.events:
        outbox.add(topics.LEDGER, event["member_id"], event)


async def time_out_holds(repo: LedgerRepository, now: datetime, outbox: Outbox) -> int:
    """Release holds whose time is up (the consumer also does it lazily per member)."""
    keys = await repo.due_holds(now, HOLD_SWEEP_MEMBERS_MAX)
    if not keys:
        return 0
    books = await repo.load_books(sorted(keys), [])
    changes = Changes()
    ledger = Ledger(changes, lambda: 0)
    for book in books.values():
        ledger.time_out_holds(book, now)
    await repo.persist(changes)
    for event in changes.events:
        outbox.add(topics.LEDGER, event["member_id"], event)
    return len(changes.events)
