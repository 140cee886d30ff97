"""The ledger's use cases: one function per command, inside the batch's unit of work.

Each returns nothing and writes its events to the outbox; a refusal is published as
`command.rejected` (it is a fact worth telling the requester), not dead-lettered.
"""

from __future__ import annotations

from typing import Any

from ledger.adapters.postgres import EntryRow, LedgerRepository
from ledger.domain.model import (
    PROGRAM_ISSUED,
    Account,
    InsufficientPoints,
    plan_credit,
    plan_debit,
    take_from_lots,
)
from loyalty import topics
from loyalty.clock import stable_id
from loyalty.ledger_commands import Credit, Debit
from loyalty.messaging import Outbox


def _event(command: Credit | Debit, type_: str, points: int, balance_after: int,
           **extra: Any) -> dict[str, Any]:
    return {
        "event_id": stable_id("ledger", command.command_id, type_),
        "type": type_,
        "occurred_at": command.occurred_at.isoformat(),
        "program_id": command.program_id,
        "member_id": command.member_id,
        "points": points,
        "balance_after": balance_after,
        "reason": command.reason,
        "source": command.source.model_dump(),
        **extra,
    }


async def credit(repo: LedgerRepository, command: Credit, outbox: Outbox) -> None:
    account = await repo.lock_member(command.program_id, command.member_id)
    plan = plan_credit(account, command.points)
    after = Account(account.balance + plan.net, account.reserved, account.owed - plan.settled)
    rows = [EntryRow(command.member_id, "points.credited", command.points,
                     account.balance + command.points),
            EntryRow(PROGRAM_ISSUED, "points.credited", -command.points, None)]
    if plan.settled:
        # Owed points (a return after the points were spent) are paid back first.
        rows += [EntryRow(command.member_id, "points.debited", -plan.settled, after.balance),
                 EntryRow(PROGRAM_ISSUED, "points.debited", plan.settled, None)]
    await _record(repo, command, rows)
    await repo.save_member(command.program_id, command.member_id, after)
    if plan.net:
        await repo.add_lot(program_id=command.program_id, member_id=command.member_id,
                           command_id=command.command_id, points=plan.net,
                           earned_at=command.occurred_at, expires_at=command.expires_at)
    expires = command.expires_at.isoformat() if command.expires_at else None
    outbox.add(topics.LEDGER, command.member_id,
               _event(command, "points.credited", command.points,
                      account.balance + command.points, expires_at=expires))
    if plan.settled:
        outbox.add(topics.LEDGER, command.member_id,
                   _event(command, "points.debited", -plan.settled, after.balance,
                          owed_settled=plan.settled))


async def debit(repo: LedgerRepository, command: Debit, outbox: Outbox) -> None:
    account = await repo.lock_member(command.program_id, command.member_id)
    try:
        plan = plan_debit(account, command.points, allow_owed=command.allow_owed)
    except InsufficientPoints as exc:
        outbox.add(topics.LEDGER, command.member_id,
                   _event(command, "command.rejected", 0, account.balance,
                          **{"error.code": exc.code, "error.message": str(exc)}))
        return
    after = Account(account.balance - plan.taken, account.reserved, account.owed + plan.owed)
    if plan.taken:
        taken = take_from_lots(await repo.open_lots(command.program_id, command.member_id),
                               plan.taken)
        await repo.take_from_lots(taken)
        await _record(repo, command, [
            EntryRow(command.member_id, "points.debited", -plan.taken, after.balance),
            EntryRow(PROGRAM_ISSUED, "points.debited", plan.taken, None)])
    await repo.save_member(command.program_id, command.member_id, after)
    outbox.add(topics.LEDGER, command.member_id,
               _event(command, "points.debited", -plan.taken, after.balance, owed=plan.owed))


async def _record(repo: LedgerRepository, command: Credit | Debit, rows: list[EntryRow]) -> None:
    await repo.add_entries(program_id=command.program_id, command_id=command.command_id,
                           occurred_at=command.occurred_at, reason=command.reason,
                           source_kind=command.source.kind, source_id=command.source.id,
                           rows=rows)
