"""The statement-level checks that replaced the per-row foreign keys of entries and lots
(0004_statement_account_checks.sql; for entries, both sides of the transfer since
0005_entries_are_transfers.sql) refuse what the foreign keys refused, and the accounts they
rely on stay put (real PostgreSQL, the rows written as the repository writes them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from ledger.adapters.postgres import ENTRY_COLUMNS, LOT_COLUMNS
from loyalty.db import insert_many
from loyalty.testing import scratch_service_db

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
AT = datetime(2026, 10, 20, 10, 0, tzinfo=UTC)


@pytest_asyncio.fixture(scope="module")
async def ledger(infra) -> AsyncIterator[asyncpg.Pool]:
    async with scratch_service_db(infra.pg_dsn, "ledger", MIGRATIONS) as (_, pool):
        await pool.execute("INSERT INTO accounts (program_id, account_id, kind) VALUES"
                           " ('p1', 'm1', 'member'), ('p1', '@issued', 'issued');"
                           "INSERT INTO lots (program_id, member_id, command_id, points,"
                           " remaining, earned_at) VALUES ('p1', 'm1', 'c0', 5, 5, now())")
        yield pool


def entry(account_id: str, command_id: str, points: int, counter: str = "@issued") -> tuple:
    return ("p1", account_id, counter, command_id, "points.credited", points, points, "r",
            "order", "o", AT)


def lot(lot_id: int, member_id: str, command_id: str) -> tuple:
    return (lot_id, "p1", member_id, command_id, 5, 5, AT, None)


async def insert(pool: asyncpg.Pool, table: str, columns, rows) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_many(conn, table, columns, rows)


async def test_a_batch_naming_one_missing_account_is_refused_whole(ledger) -> None:
    missing_member = r"entries names no account \(program p1, account m2\)"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=missing_member):
        await insert(ledger, "entries", ENTRY_COLUMNS,
                     [entry("m1", "c1", 5), entry("m2", "c2", 5)])
    missing_counter = r"entries names no program account \(program p1, account @redeemed\)"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=missing_counter):
        await insert(ledger, "entries", ENTRY_COLUMNS,
                     [entry("m1", "c1", 5), entry("m1", "c2", -5, counter="@redeemed")])
    missing_owner = r"lots names no account \(program p1, account ghost\)"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=missing_owner):
        await insert(ledger, "lots", LOT_COLUMNS, [lot(103, "m1", "c3"), lot(104, "ghost", "c4")])
    assert await ledger.fetchval(
        "SELECT count(*) FROM entries WHERE command_id IN ('c1', 'c2')") == 0
    assert await ledger.fetchval(
        "SELECT count(*) FROM lots WHERE command_id IN ('c3', 'c4')") == 0


@pytest.mark.parametrize(("account", "counter"), [
    ("@issued", "@issued"),  # the program on both sides
    ("@issued", "m1"),  # the sides swapped
    ("m1", "m1"),  # a member on both sides
])  # (a program account on the member's side alone: `program_rows_static`, as before)
async def test_a_transfer_runs_between_a_member_and_a_program_account(
        ledger, account: str, counter: str) -> None:
    with pytest.raises((asyncpg.ForeignKeyViolationError, asyncpg.CheckViolationError)):
        await insert(ledger, "entries", ENTRY_COLUMNS, [entry(account, "c6", 5, counter)])


async def test_rows_naming_existing_accounts_go_in(ledger) -> None:
    await insert(ledger, "entries", ENTRY_COLUMNS, [entry("m1", "c5", 5)])
    await insert(ledger, "lots", LOT_COLUMNS, [lot(105, "m1", "c5")])
    assert await ledger.fetchval(
        "SELECT counter_account FROM entries WHERE command_id = 'c5'") == "@issued"
    await ledger.execute("UPDATE lots SET remaining = 2 WHERE command_id = 'c5'")


@pytest.mark.parametrize("statement", [
    "DELETE FROM accounts WHERE account_id = 'm1'",
    "UPDATE accounts SET account_id = 'm9' WHERE account_id = 'm1'",
    "TRUNCATE accounts CASCADE",
    "UPDATE lots SET member_id = '@issued'",
])
async def test_what_the_checks_rely_on_cannot_change(ledger, statement: str) -> None:
    with pytest.raises(asyncpg.RestrictViolationError):
        await ledger.execute(statement)
