"""0005_entries_are_transfers.sql on a ledger written before it (real PostgreSQL): each
movement's two rows become one transfer naming the program account, balances and the audit
unchanged; a member row without its counter-entry stops the migration."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest

from ledger.audit import audit
from loyalty import db
from loyalty.testing import scratch_service_db

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
TRANSFERS = "0005_entries_are_transfers.sql"

# As the ledger wrote it before 0005: m1 earned 100, spent 30, earned 50 of which 20 paid back
# what a return had left owed (a credited and a debited pair under one command).
TWO_ROW_LEDGER = """
INSERT INTO accounts (program_id, account_id, kind, balance, owed) VALUES
    ('p1', 'm1', 'member', 100, 0), ('p1', '@issued', 'issued', 0, 0),
    ('p1', '@redeemed', 'redeemed', 0, 0);
INSERT INTO entries (program_id, account_id, command_id, type, points, balance_after, reason,
                     source_kind, source_id, occurred_at)
SELECT 'p1', a, c, t, n, b, 'r', 'purchase', 's', '2026-10-20T10:00:00Z' FROM (VALUES
    ('m1', 'c1', 'points.credited', 100, 100), ('@issued', 'c1', 'points.credited', -100, NULL),
    ('m1', 'd1', 'points.debited', -30, 70), ('@redeemed', 'd1', 'points.debited', 30, NULL),
    ('m1', 'c2', 'points.credited', 50, 120), ('@issued', 'c2', 'points.credited', -50, NULL),
    ('m1', 'c2', 'points.debited', -20, 100), ('@issued', 'c2', 'points.debited', 20, NULL)
) AS v(a, c, t, n, b);
INSERT INTO movements (command_id, program_id, member_id, type, points, counter_account,
                       occurred_at) VALUES
    ('c1', 'p1', 'm1', 'credit', 100, '@issued', now()),
    ('d1', 'p1', 'm1', 'debit', -30, '@redeemed', now()),
    ('c2', 'p1', 'm1', 'credit', 50, '@issued', now());
INSERT INTO lots (program_id, member_id, command_id, points, remaining, earned_at) VALUES
    ('p1', 'm1', 'c1', 100, 70, now()), ('p1', 'm1', 'c2', 50, 30, now());
INSERT INTO lot_moves (command_id, lot_id, points)
SELECT 'd1', lot_id, 30 FROM lots WHERE command_id = 'c1'
UNION ALL SELECT 'c2', lot_id, 20 FROM lots WHERE command_id = 'c2';
"""


def before_transfers(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < TRANSFERS:
            shutil.copy(path, folder)
    return folder


async def test_each_pair_of_rows_becomes_one_transfer(infra, tmp_path: Path) -> None:
    async with scratch_service_db(infra.pg_dsn, "ledger", before_transfers(tmp_path)) as (
            _, pool):
        await pool.execute(TWO_ROW_LEDGER)
        assert await db.apply_migrations(pool, "ledger", MIGRATIONS) == [TRANSFERS]

        rows = await pool.fetch(
            "SELECT account_id, counter_account, command_id, type, points, balance_after"
            " FROM entries ORDER BY entry_id")
        assert [tuple(r) for r in rows] == [
            ("m1", "@issued", "c1", "points.credited", 100, 100),
            ("m1", "@redeemed", "d1", "points.debited", -30, 70),
            ("m1", "@issued", "c2", "points.credited", 50, 120),
            ("m1", "@issued", "c2", "points.debited", -20, 100),
        ]
        async with pool.acquire() as conn:
            assert await audit(conn) == []
        with pytest.raises(asyncpg.RaiseError, match="immutable"):
            await pool.execute("DELETE FROM entries")


async def test_a_member_row_without_its_counter_entry_stops_the_migration(
        infra, tmp_path: Path) -> None:
    async with scratch_service_db(infra.pg_dsn, "ledger", before_transfers(tmp_path)) as (
            _, pool):
        await pool.execute(TWO_ROW_LEDGER)
        await pool.execute(
            "ALTER TABLE entries DISABLE TRIGGER entries_immutable;"
            "DELETE FROM entries WHERE command_id = 'd1' AND account_id = '@redeemed';"
            "ALTER TABLE entries ENABLE TRIGGER entries_immutable")

        with pytest.raises(asyncpg.NotNullViolationError, match="counter_account"):
            await db.apply_migrations(pool, "ledger", MIGRATIONS)
        assert await pool.fetchval("SELECT count(*) FROM entries") == 7  # rolled back
