"""Each service's role works in its own schema and cannot read another's (real PostgreSQL)."""

from __future__ import annotations

import asyncpg
import pytest

from loyalty import db
from loyalty.testing import scratch_database

pytestmark = pytest.mark.integration


async def test_each_role_is_confined_to_its_own_schema(infra) -> None:
    earn_dsn = await db.provision_service(infra.pg_dsn, "earn")
    ledger_dsn = await db.provision_service(infra.pg_dsn, "ledger")
    await db.provision_service(infra.pg_dsn, "earn")  # idempotent

    earn = await asyncpg.connect(earn_dsn)
    ledger = await asyncpg.connect(ledger_dsn)
    try:
        await earn.execute("CREATE TABLE IF NOT EXISTS earn.role_probe (x int)")
        await ledger.execute("CREATE TABLE IF NOT EXISTS ledger.role_probe (x int)")
        assert await earn.fetchval("SELECT count(*) FROM role_probe") == 0  # own search_path

        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await earn.fetch("SELECT * FROM ledger.role_probe")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await ledger.fetch("SELECT * FROM earn.role_probe")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await earn.execute("CREATE TABLE public.sneaky (x int)")
    finally:
        await earn.close()
        await ledger.close()


async def test_migrations_apply_once_and_refuse_a_changed_file(infra, tmp_path) -> None:
    # A database of its own: the suite's other tests migrate the shared one's schemas.
    async with scratch_database(infra.pg_dsn, "migrations") as own:
        dsn = await db.provision_service(own, "rewards")
        (tmp_path / "0001_probe.sql").write_text("CREATE TABLE probe (id int PRIMARY KEY);")
        pool = await db.create_pool(dsn, schema="rewards")
        try:
            first = await db.apply_migrations(pool, "rewards", tmp_path)
            again = await db.apply_migrations(pool, "rewards", tmp_path)
            assert first == ["0000_messaging.sql", "0000_messaging_retention.sql",
                             "0000_outbox_wakeup.sql", "0000_permanent_rows.sql",
                             "0001_probe.sql"]
            assert again == []
            (tmp_path / "0001_probe.sql").write_text("CREATE TABLE probe (id bigint);")
            with pytest.raises(RuntimeError, match="changed after it was applied"):
                await db.apply_migrations(pool, "rewards", tmp_path)
        finally:
            await pool.close()
