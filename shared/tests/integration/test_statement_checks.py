"""The checks that replaced per-row foreign keys on the hot tables (ledger entries and lots,
earn's orders and identifiers) refuse what the foreign keys refused, and the rows they name
stay put."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from loyalty.db import insert_many
from loyalty.testing import scratch_service_db

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
AT = datetime(2026, 10, 20, 10, 0, tzinfo=UTC)
ENTRY = (("program_id", "text"), ("account_id", "text"), ("command_id", "text"),
         ("type", "text"), ("points", "bigint"), ("balance_after", "bigint"), ("reason", "text"),
         ("source_kind", "text"), ("source_id", "text"), ("occurred_at", "timestamptz"))
LOT = (("program_id", "text"), ("member_id", "text"), ("command_id", "text"),
       ("points", "bigint"), ("remaining", "bigint"), ("earned_at", "timestamptz"))
ORDER = (("program_id", "text"), ("order_id", "text"), ("event_id", "text"),
         ("member_id", "text"), ("program_version", "integer"), ("channel", "text"),
         ("currency", "text"), ("total", "numeric"), ("points", "integer"),
         ("breakdown", "jsonb"), ("occurred_at", "timestamptz"))


@pytest_asyncio.fixture(scope="module")
async def ledger(infra) -> AsyncIterator[asyncpg.Pool]:
    async with scratch_service_db(infra.pg_dsn, "ledger",
                                  ROOT / "services/ledger/migrations") as (_, pool):
        await pool.execute("INSERT INTO accounts (program_id, account_id, kind) VALUES"
                           " ('p1', 'm1', 'member'), ('p1', '@issued', 'issued');"
                           "INSERT INTO lots (program_id, member_id, command_id, points,"
                           " remaining, earned_at) VALUES ('p1', 'm1', 'c0', 5, 5, now())")
        yield pool


@pytest_asyncio.fixture(scope="module")
async def earn(infra) -> AsyncIterator[asyncpg.Pool]:
    async with scratch_service_db(infra.pg_dsn, "earn",
                                  ROOT / "services/earn/migrations") as (_, pool):
        await pool.execute(
            "INSERT INTO program_versions (program_id, version, content_hash, definition)"
            " VALUES ('p1', 1, 'h', '{}');"
            "INSERT INTO members (member_id, program_id, locale, enrolled_at)"
            " VALUES ('m1', 'p1', 'en', now());"
            "INSERT INTO orders (program_id, order_id, event_id, member_id, program_version,"
            " channel, currency, total, points, breakdown, occurred_at)"
            " VALUES ('p1', 'A-0', 'ev-A-0', 'm1', 1, 'pos', 'EUR', 1, 10, '[]', now());"
            "INSERT INTO identifiers (program_id, kind, value, member_id, linked_at)"
            " VALUES ('p1', 'email', 'a@example.com', 'm1', now())")
        yield pool


@pytest_asyncio.fixture(scope="module")
async def pools(ledger, earn) -> dict[str, asyncpg.Pool]:
    return {"ledger": ledger, "earn": earn}


def entry(account_id: str, command_id: str, points: int) -> tuple:
    return ("p1", account_id, command_id, "points.credited", points, None, "r", "order", "o",
            AT)


def order(order_id: str, member_id: str = "m1", version: int = 1) -> tuple:
    return ("p1", order_id, f"ev-{order_id}", member_id, version, "pos", "EUR", 10, 100,
            [{"rule": "base"}], AT)


async def insert(pool: asyncpg.Pool, table: str, columns, rows) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_many(conn, table, columns, rows)


async def test_a_batch_naming_one_missing_account_is_refused_whole(ledger) -> None:
    missing_account = r"entries names no account \(program p1, account m2\)"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=missing_account):
        await insert(ledger, "entries", ENTRY,
                     [entry("m1", "c1", 5), entry("@issued", "c1", -5), entry("m2", "c2", 5)])
    missing_owner = r"lots names no account \(program p1, account ghost\)"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=missing_owner):
        await insert(ledger, "lots", LOT, [("p1", "m1", "c3", 5, 5, AT),
                                           ("p1", "ghost", "c4", 5, 5, AT)])
    assert await ledger.fetchval(
        "SELECT count(*) FROM entries WHERE command_id IN ('c1', 'c2')") == 0
    assert await ledger.fetchval(
        "SELECT count(*) FROM lots WHERE command_id IN ('c3', 'c4')") == 0


async def test_rows_naming_existing_accounts_go_in(ledger) -> None:
    await insert(ledger, "entries", ENTRY, [entry("m1", "c5", 5), entry("@issued", "c5", -5)])
    await insert(ledger, "lots", LOT, [("p1", "m1", "c5", 5, 5, AT)])
    assert await ledger.fetchval("SELECT sum(points) FROM entries WHERE command_id = 'c5'") == 0
    await ledger.execute("UPDATE lots SET remaining = 2 WHERE command_id = 'c5'")


async def test_an_order_needs_its_member_and_program_version(earn) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=r"orders names no member \(m2\)"):
        await insert(earn, "orders", ORDER, [order("A-1"), order("A-2", member_id="m2")])
    missing_version = r"order A-3 names no program version \(p1, 2\)"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=missing_version):
        await insert(earn, "orders", ORDER, [order("A-3", version=2)])
    await insert(earn, "orders", ORDER, [order("A-4")])
    assert await earn.fetchval("SELECT array_agg(order_id ORDER BY order_id) FROM orders"
                               " WHERE order_id LIKE 'A-%'") == ["A-0", "A-4"]
    assert await earn.fetchval(
        "SELECT breakdown FROM orders WHERE order_id = 'A-4'") == [{"rule": "base"}]


async def test_an_identifier_needs_its_member(earn) -> None:
    columns = (("program_id", "text"), ("kind", "text"), ("value", "text"),
               ("member_id", "text"), ("linked_at", "timestamptz"))
    missing_member = r"identifiers names no member \(m2\)"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=missing_member):
        await insert(earn, "identifiers", columns, [("p1", "phone", "+1", "m1", AT),
                                                    ("p1", "phone", "+2", "m2", AT)])
    await insert(earn, "identifiers", columns, [("p1", "phone", "+1", "m1", AT)])


@pytest.mark.parametrize(("service", "statement"), [
    ("ledger", "DELETE FROM accounts WHERE account_id = 'm1'"),
    ("ledger", "UPDATE accounts SET account_id = 'm9' WHERE account_id = 'm1'"),
    ("ledger", "TRUNCATE accounts CASCADE"),
    ("ledger", "UPDATE lots SET member_id = '@issued'"),
    ("earn", "DELETE FROM members"),
    ("earn", "UPDATE members SET member_id = 'm9'"),
    ("earn", "TRUNCATE members CASCADE"),
    ("earn", "DELETE FROM program_versions"),
    ("earn", "UPDATE program_versions SET version = 7"),
    ("earn", "TRUNCATE program_versions CASCADE"),
    ("earn", "UPDATE orders SET member_id = 'm9'"),
    ("earn", "UPDATE identifiers SET member_id = 'm9'"),
])
async def test_what_the_checks_rely_on_cannot_change(pools, service: str, statement: str) -> None:
    with pytest.raises(asyncpg.RestrictViolationError):
        await pools[service].execute(statement)
