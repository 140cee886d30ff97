"""A batch's accounts: created on first use and locked, including one that another
transaction creates at the same moment (real PostgreSQL, two connections)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from ledger.adapters.postgres import LedgerRepository
from loyalty.testing import scratch_service_db

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@pytest.fixture(scope="module")
async def ledger(infra):
    async with scratch_service_db(infra.pg_dsn, "ledger", MIGRATIONS) as (_, pool):
        yield pool


async def test_an_account_another_transaction_creates_meanwhile_is_found_and_locked(
        ledger) -> None:
    member = f"m-{uuid.uuid4().hex[:8]}"
    async with ledger.acquire() as first, ledger.acquire() as second:
        tx = first.transaction()
        await tx.start()
        await LedgerRepository(first).load_books([("p1", member)], [])  # creates it, uncommitted
        await first.execute("UPDATE accounts SET balance = 7 WHERE account_id = $1", member)

        async def load_in_second():
            async with second.transaction():
                return await LedgerRepository(second).load_books([("p1", member)], [])

        loading = asyncio.create_task(load_in_second())  # waits on the first's insert
        await asyncio.sleep(0.3)
        assert not loading.done()
        await tx.commit()
        books = await asyncio.wait_for(loading, 10)
    assert books[("p1", member)].balance == 7  # the committed row, locked, not a blank one
