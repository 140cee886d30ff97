"""A command redelivered after its inbox row was pruned (`loyalty.retention`) moves no point
twice: its keys in the ledger are kept forever, so it is dead-lettered (`constraint_violation`)
and the ledger stays as it was (real PostgreSQL, the service's own consumer and handler)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger import handlers
from ledger.adapters.postgres import LedgerRepository
from ledger.audit import audit
from ledger.entrypoints.consumers import decode_command
from loyalty import topics
from loyalty.messaging import BatchConsumer
from loyalty.testing import command_record, scratch_service_db

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
NOW = datetime(2026, 10, 20, 10, 0, tzinfo=UTC)


def command(type_: str, command_id: str, member: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "command_id": command_id, "program_id": "p1", "member_id": member,
            "occurred_at": NOW.isoformat(), "reason": "r",
            "source": {"kind": "redemption", "id": "o1"}, **fields}


@pytest.fixture(scope="module")
async def ledger(infra):
    async with scratch_service_db(infra.pg_dsn, "ledger", MIGRATIONS) as (_, pool):
        yield pool


@pytest.mark.parametrize("late", ["credit", "debit", "reserve"])
async def test_a_command_redelivered_after_its_inbox_row_is_gone_moves_nothing(
        ledger, late: str) -> None:
    async def on_commands(conn, envs, outbox) -> None:
        await handlers.apply_commands(LedgerRepository(conn), [e.message for e in envs], NOW,
                                      outbox)

    consumer = BatchConsumer(service="ledger", topic=topics.LEDGER_COMMANDS, pool=ledger,
                             decode=decode_command, handle_batch=on_commands,
                             retry_backoff_max_s=0.01)
    member = f"m-{uuid.uuid4().hex[:8]}"
    credit = command("credit", f"c-{member}", member, points=100)
    debit = command("debit", f"d-{member}", member, points=10)
    reserve = command("reserve", f"h-{member}", member, points=30)
    capture = command("capture", f"k-{member}", member, hold_id=reserve["command_id"])
    await consumer([command_record(c, i) for i, c in enumerate([credit, debit, reserve, capture])])
    before = await ledger.fetchrow("SELECT balance, reserved FROM accounts"
                                   " WHERE account_id = $1", member)
    assert tuple(before) == (60, 0)

    await ledger.execute("DELETE FROM inbox")  # as `prune_inbox` does, past the window
    again = {"credit": credit, "debit": debit, "reserve": reserve}[late]
    await consumer([command_record(again, 4)])

    after = await ledger.fetchrow("SELECT balance, reserved FROM accounts"
                                  " WHERE account_id = $1", member)
    assert tuple(after) == (60, 0)
    assert await ledger.fetchval("SELECT status FROM holds WHERE hold_id = $1",
                                 reserve["command_id"]) == "captured"
    dead = await ledger.fetch("SELECT headers FROM outbox WHERE topic = $1",
                              topics.dlq(topics.LEDGER_COMMANDS))
    assert [r["headers"]["error.code"] for r in dead] == ["constraint_violation"]
    async with ledger.acquire() as conn:
        assert await audit(conn) == []
    await ledger.execute("DELETE FROM outbox")

