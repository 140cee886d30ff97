"""Key lookups stay key lookups as a table grows from empty (real PostgreSQL).

Postgres keeps one generic plan per prepared statement and connection. Planned with the
statistics of a table of a few hundred rows, `member_id = ANY($1)` was a sequential scan, and
stayed one, comparing every row with every key, as the table grew to 20,000 and until the next
ANALYZE: in a soak from an empty database, earn's dearest statement (`db.PLAN_CACHE_MODE`)."""

from __future__ import annotations

import uuid

import pytest

from loyalty import db
from loyalty.testing import scratch_database

pytestmark = pytest.mark.integration

LOOKUP = "SELECT member_id, phone FROM plan_probe WHERE member_id = ANY($1::text[])"


async def test_a_lookup_planned_on_an_empty_table_uses_the_index_once_it_has_grown(
        infra) -> None:
    async with scratch_database(infra.pg_dsn, "plans") as own:
        dsn = await db.provision_service(own, "earn")
        pool = await db.create_pool(dsn, size_max=2, schema="earn")
        try:
            async with pool.acquire() as conn:
                await conn.execute(
                    "CREATE TABLE plan_probe (member_id text PRIMARY KEY, phone text)")
                ids = [str(uuid.uuid4()) for _ in range(20_000)]
                await add(conn, ids[:300])  # the first members enrol,
                await conn.execute("ANALYZE plan_probe")  # and autovacuum comes by
                for _ in range(10):  # past the five custom plans before a generic one
                    assert len(await conn.fetch(LOOKUP, ids[:100])) == 100
                await add(conn, ids[300:])
                scans_before = await sequential_scans(conn)
                for _ in range(3):
                    assert len(await conn.fetch(LOOKUP, ids[:100])) == 100
                assert await sequential_scans(conn) == scans_before
        finally:
            await pool.close()


async def add(conn, ids: list[str]) -> None:
    await conn.copy_records_to_table("plan_probe", records=[(i, "+37060000000") for i in ids])


async def sequential_scans(conn) -> int:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    return await conn.fetchval(
        "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'plan_probe'")
