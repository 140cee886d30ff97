"""A batch's accounts: created on first use, with their final values, including one that
another transaction creates at the same moment (real PostgreSQL, two connections)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from ledger.adapters.postgres import LedgerRepository
from ledger.domain.model import Changes
from loyalty.messaging import ConcurrentWrite
from loyalty.testing import scratch_service_db

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@pytest.fixture(scope="module")
async def ledger(infra):
    async with scratch_service_db(infra.pg_dsn, "ledger", MIGRATIONS) as (_, pool):
        yield pool


async def test_an_account_another_transaction_creates_meanwhile_makes_the_batch_retry(
        ledger) -> None:
    """A new member's account is written once, at persist, with the batch's final values; if
    another transaction created it meanwhile, the insert waits for it, then fails as a
    `ConcurrentWrite` (the consumer retries the batch), and the retry finds the committed row
    and locks it: never a blank one over it."""
    member = f"m-{uuid.uuid4().hex[:8]}"
    async with ledger.acquire() as first, ledger.acquire() as second:
        tx = first.transaction()
        await tx.start()
        repo = LedgerRepository(first)
        books = await repo.load_books([("p1", member)], [], lots_of=set())
        assert repo.new_books == {("p1", member): books[("p1", member)]}
        books[("p1", member)].balance = 7
        await repo.persist(Changes())  # creates it with its final balance, uncommitted

        async def load_and_persist_in_second():
            async with second.transaction():
                repo = LedgerRepository(second)
                # It does not see the first one's account yet.
                books = await repo.load_books([("p1", member)], [], lots_of=set())
                await repo.persist(Changes())  # waits on the first's insert
                return books

        racing = asyncio.create_task(load_and_persist_in_second())
        await asyncio.sleep(0.3)
        assert not racing.done()
        await tx.commit()
        with pytest.raises(ConcurrentWrite):
            await asyncio.wait_for(racing, 10)
        async with second.transaction():  # the retry
            repo = LedgerRepository(second)
            books = await repo.load_books([("p1", member)], [], lots_of=set())
            assert repo.new_books == {}
    assert books[("p1", member)].balance == 7  # the committed row, not a blank one
    assert await ledger.fetchval(
        "SELECT count(*) FROM accounts WHERE program_id = 'p1' AND kind <> 'member'") == 4
