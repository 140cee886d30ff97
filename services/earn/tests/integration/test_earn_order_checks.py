"""The statement-level checks that replaced the per-row foreign keys of orders and
identifiers (0003_statement_order_checks.sql) refuse what the foreign keys refused, and the
members and program versions they rely on stay put (real PostgreSQL, the rows written as the
batch repository writes them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from earn.adapters.batch import IDENTIFIER_COLUMNS, ORDER_COLUMNS
from loyalty.db import insert_many
from loyalty.testing import scratch_service_db

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
AT = datetime(2026, 10, 20, 10, 0, tzinfo=UTC)


@pytest_asyncio.fixture(scope="module")
async def earn(infra) -> AsyncIterator[asyncpg.Pool]:
    async with scratch_service_db(infra.pg_dsn, "earn", MIGRATIONS) as (_, pool):
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


def order(order_id: str, member_id: str = "m1", version: int = 1) -> tuple:
    return ("p1", order_id, f"ev-{order_id}", member_id, version, "pos", "EUR", 10, 100,
            [{"rule": "base"}], 0, 0, AT)


async def insert(pool: asyncpg.Pool, table: str, columns, rows) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_many(conn, table, columns, rows)


async def test_an_order_needs_its_member_and_program_version(earn) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=r"orders names no member \(m2\)"):
        await insert(earn, "orders", ORDER_COLUMNS, [order("A-1"), order("A-2", member_id="m2")])
    missing_version = r"order A-3 names no program version \(p1, 2\)"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=missing_version):
        await insert(earn, "orders", ORDER_COLUMNS, [order("A-3", version=2)])
    await insert(earn, "orders", ORDER_COLUMNS, [order("A-4")])
    assert await earn.fetchval(
        "SELECT array_agg(order_id ORDER BY order_id) FROM orders") == ["A-0", "A-4"]
    assert await earn.fetchval(
        "SELECT breakdown FROM orders WHERE order_id = 'A-4'") == [{"rule": "base"}]


async def test_an_identifier_needs_its_member(earn) -> None:
    missing_member = r"identifiers names no member \(m2\)"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=missing_member):
        await insert(earn, "identifiers", IDENTIFIER_COLUMNS,
                     [("p1", "phone", "+1", "m1", AT), ("p1", "phone", "+2", "m2", AT)])
    await insert(earn, "identifiers", IDENTIFIER_COLUMNS, [("p1", "phone", "+1", "m1", AT)])


@pytest.mark.parametrize("statement", [
    "DELETE FROM members",
    "UPDATE members SET member_id = 'm9'",
    "TRUNCATE members CASCADE",
    "DELETE FROM program_versions",
    "UPDATE program_versions SET version = 7",
    "TRUNCATE program_versions CASCADE",
    "UPDATE orders SET member_id = 'm9'",
    "UPDATE identifiers SET member_id = 'm9'",
])
async def test_what_the_checks_rely_on_cannot_change(earn, statement: str) -> None:
    with pytest.raises(asyncpg.RestrictViolationError):
        await earn.execute(statement)
