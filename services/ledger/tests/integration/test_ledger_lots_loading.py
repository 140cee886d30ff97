"""A batch loads a member's open lots only when one of its commands reads them
(`model.READS_LOTS`): each such command, alone in its batch, still spends, expires or gives
back the lots that earlier batches made, soonest-expiring first (real PostgreSQL, the
service's own consumer and handler)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger import handlers
from ledger.adapters.postgres import LedgerRepository
from ledger.audit import audit
from ledger.domain.model import READS_LOTS
from ledger.entrypoints.consumers import decode_command
from loyalty import topics
from loyalty.ledger_commands import Capture, Credit, Debit, Expire, Release, Reserve, Reverse
from loyalty.messaging import BatchConsumer
from loyalty.testing import command_record, scratch_service_db

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
NOW = datetime(2026, 10, 20, 10, 0, tzinfo=UTC)
SOON, LATER = NOW + timedelta(days=30), NOW + timedelta(days=300)


@pytest.fixture(scope="module")
async def ledger(infra):
    async with scratch_service_db(infra.pg_dsn, "ledger", MIGRATIONS) as (_, pool):
        yield pool


class Member:
    """One member's commands, each sent as a batch of its own."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.id = f"m-{uuid.uuid4().hex[:8]}"
        self.sent = 0

        async def on_commands(conn, envs, outbox) -> None:
            await handlers.apply_commands(LedgerRepository(conn), [e.message for e in envs],
                                          NOW + timedelta(days=60), outbox)

        self.consumer = BatchConsumer(service="ledger", topic=topics.LEDGER_COMMANDS,
                                      pool=pool, decode=decode_command,
                                      handle_batch=on_commands, retry_backoff_max_s=0.01,
                                      isolate_after_failures=1, record_tries_max=1)

    async def send(self, type_: str, name: str, **fields: Any) -> str:
        command_id = f"{name}-{self.id}"
        kind = "redemption" if type_ in ("reserve", "capture", "release") else "purchase"
        record = command_record({
            "type": type_, "command_id": command_id, "program_id": "p1",
            "member_id": self.id, "occurred_at": NOW.isoformat(), "reason": name,
            "source": {"kind": "expiry" if type_ == "expire" else kind, "id": name},
            **fields}, self.sent)
        self.sent += 1
        await self.consumer([record])
        return command_id

    async def remaining(self) -> dict[str, int]:
        """Each lot's remaining points, by the command that made it."""
        return {r["command_id"].split("-m-")[0]: r["remaining"] for r in await self.pool.fetch(
            "SELECT command_id, remaining FROM lots WHERE member_id = $1", self.id)}

    async def balance(self) -> tuple[int, int, int]:
        row = await self.pool.fetchrow("SELECT balance, reserved, owed FROM accounts"
                                       " WHERE account_id = $1", self.id)
        return tuple(row)

    async def lot_id(self, name: str) -> int:
        return await self.pool.fetchval("SELECT lot_id FROM lots WHERE command_id = $1",
                                        f"{name}-{self.id}")


async def earned(pool) -> Member:
    """A member with two lots from two earlier batches: 100 expiring later, 50 sooner."""
    member = Member(pool)
    await member.send("credit", "later", points=100, expires_at=LATER.isoformat())
    await member.send("credit", "sooner", points=50, expires_at=SOON.isoformat())
    return member


def test_the_commands_that_read_lots_are_the_ones_that_spend_expire_or_give_back() -> None:
    assert set(READS_LOTS) == {Debit, Capture, Expire, Reverse}
    assert not {Credit, Reserve, Release} & set(READS_LOTS)


async def test_a_debit_alone_spends_the_soonest_expiring_lot_first(ledger) -> None:
    member = await earned(ledger)
    await member.send("debit", "spend", points=70)
    assert await member.remaining() == {"later": 80, "sooner": 0}
    assert await member.balance() == (80, 0, 0)


async def test_a_capture_alone_spends_the_lots_of_earlier_batches(ledger) -> None:
    member = await earned(ledger)
    hold = await member.send("reserve", "hold", points=60)
    await member.send("capture", "take", hold_id=hold)
    assert await member.remaining() == {"later": 90, "sooner": 0}
    assert await member.balance() == (90, 0, 0)


async def test_an_expiry_alone_expires_a_lot_of_an_earlier_batch(ledger) -> None:
    member = await earned(ledger)
    due = (SOON + timedelta(days=1)).isoformat()
    await member.send("expire", "expiry", occurred_at=due, watermark=due,
                      lots=[{"lot_id": await member.lot_id("sooner"), "points": 50}])
    assert await member.remaining() == {"later": 100, "sooner": 0}
    assert await member.balance() == (100, 0, 0)


async def test_reversals_alone_take_back_a_credit_and_give_back_a_debit(ledger) -> None:
    member = await earned(ledger)
    spend = await member.send("debit", "spend", points=70)  # sooner 50, later 20
    await member.send("credit", "more", points=10)  # a batch of credits reads no lots
    await member.send("reverse", "undo-spend", target_id=spend)
    assert await member.remaining() == {"later": 100, "sooner": 50, "more": 10}
    await member.send("reverse", "undo-later", target_id=f"later-{member.id}", points=30)
    assert await member.remaining() == {"later": 70, "sooner": 50, "more": 10}
    assert await member.balance() == (130, 0, 0)
    async with ledger.acquire() as conn:
        assert await audit(conn) == []
