"""`ledger.audit` and `loyalty audit` on real PostgreSQL: a consistent ledger is clean, and each
kind of corruption is named by the check that guards against it.

The module gets a database of its own (the ledger schema, migrated as the service migrates
it), seeded by plain SQL with a small consistent ledger. Each corruption runs inside a
transaction that is rolled back, so every case starts from the same clean ledger; the CLI
cases commit a corruption and undo it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from ledger import audit as audit_module
from ledger.audit import CHECKS, audit
from loyalty.testing import scratch_service_db

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
CLI_TIMEOUT_S = 60

# Program p1: m1 earned 100 (expiring) and 50 (never), spent 30 from the expiring lot and holds
# 20 for a reward; m2 earned 40. Program p2 has a member also called m1, with 10 points, so a
# check that forgets program_id in a join mixes the two up. Every entry is a transfer with a
# program account and belongs to its command's movement.
SEED = """
INSERT INTO accounts (program_id, account_id, kind, balance, reserved, owed) VALUES
    ('p1', 'm1', 'member', 120, 20, 0), ('p1', 'm2', 'member', 40, 0, 0),
    ('p1', '@issued', 'issued', 0, 0, 0), ('p1', '@redeemed', 'redeemed', 0, 0, 0),
    ('p2', 'm1', 'member', 10, 0, 0), ('p2', '@issued', 'issued', 0, 0, 0);
INSERT INTO entries (program_id, account_id, counter_account, command_id, type, points,
                     balance_after, reason, source_kind, source_id, occurred_at)
SELECT program_id, account_id, counter, command_id, type, points, balance_after, 'seed', kind,
       src, '2026-10-20T10:00:00Z'
FROM (VALUES
    ('p1', 'm1', '@issued', 'c1', 'points.credited', 100, 100, 'purchase', 'A-1'),
    ('p1', 'm1', '@issued', 'c2', 'points.credited', 50, 150, 'activity', 'survey'),
    ('p1', 'm1', '@redeemed', 'd1', 'points.debited', -30, 120, 'redemption', 'R-1'),
    ('p1', 'm2', '@issued', 'c3', 'points.credited', 40, 40, 'purchase', 'A-2'),
    ('p2', 'm1', '@issued', 'c4', 'points.credited', 10, 10, 'purchase', 'B-1')
) AS v(program_id, account_id, counter, command_id, type, points, balance_after, kind, src);
INSERT INTO movements (command_id, program_id, member_id, type, points, counter_account,
                       occurred_at)
SELECT command_id, program_id, member_id, type, points, counter, '2026-10-20T10:00:00Z'
FROM (VALUES
    ('c1', 'p1', 'm1', 'credit', 100, '@issued'), ('c2', 'p1', 'm1', 'credit', 50, '@issued'),
    ('d1', 'p1', 'm1', 'debit', -30, '@redeemed'), ('c3', 'p1', 'm2', 'credit', 40, '@issued'),
    ('c4', 'p2', 'm1', 'credit', 10, '@issued')
) AS v(command_id, program_id, member_id, type, points, counter);
INSERT INTO lots (program_id, member_id, command_id, points, remaining, earned_at, expires_at)
VALUES ('p1', 'm1', 'c1', 100, 70, '2026-10-20T10:00:00Z', '2027-10-31T21:59:59Z'),
       ('p1', 'm1', 'c2', 50, 50, '2026-10-20T10:00:00Z', NULL),
       ('p1', 'm2', 'c3', 40, 40, '2026-10-20T10:00:00Z', '2027-10-31T21:59:59Z'),
       ('p2', 'm1', 'c4', 10, 10, '2026-10-20T10:00:00Z', NULL);
INSERT INTO lot_moves (command_id, lot_id, points)
SELECT 'd1', lot_id, 30 FROM lots WHERE command_id = 'c1';
INSERT INTO holds (hold_id, program_id, member_id, points, status, expires_at, created_at,
                   reason, source_kind, source_id)
VALUES ('h1', 'p1', 'm1', 20, 'active', '2026-10-20T10:15:00Z', '2026-10-20T10:00:00Z',
        'reward mug', 'redemption', 'R-2');
"""


# The CHECKs on lots forbid the corruption the audit must still catch; their names are
# Postgres's choice, so find them rather than guess.
DROP_LOT_CHECKS = """
DO $$ DECLARE c text; BEGIN
    FOR c IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'lots'::regclass AND contype = 'c' LOOP
        EXECUTE format('ALTER TABLE lots DROP CONSTRAINT %I', c);
    END LOOP;
END $$"""


class Scratch:
    def __init__(self, admin_dsn: str, pool: asyncpg.Pool) -> None:
        self.admin_dsn = admin_dsn  # superuser, on the scratch database
        self.pool = pool  # the ledger's own role, search_path = ledger


@pytest_asyncio.fixture(scope="module")
async def scratch(infra) -> AsyncIterator[Scratch]:
    async with scratch_service_db(infra.pg_dsn, "ledger", MIGRATIONS) as (admin_dsn, pool):
        await pool.execute(SEED)
        yield Scratch(admin_dsn, pool)


async def violations_after(pool: asyncpg.Pool, *statements: str) -> list[str]:
    """The audit of the ledger with `statements` applied, then rolled back."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            for statement in statements:
                await conn.execute(statement)
            return await audit(conn)
        finally:
            await tx.rollback()


def checks_named(violations: list[str]) -> set[str]:
    return {v[1:v.index("]")] for v in violations}


async def test_a_consistent_ledger_is_clean(scratch: Scratch) -> None:
    async with scratch.pool.acquire() as conn:
        assert await audit(conn) == []


# (statements, the checks that must fire, a line one of them must print)
CORRUPTIONS = [
    pytest.param(
        ["UPDATE accounts SET balance = balance + 5 WHERE program_id = 'p1' AND account_id = 'm2'"],
        {"balance_equals_entries", "latest_balance_after_equals_balance",
         "lots_add_up_to_balance"},
        "p1/m2: balance 45, but its entries sum to 40", id="balance-bumped"),
    pytest.param(
        ["ALTER TABLE entries DISABLE TRIGGER entries_immutable",
         "UPDATE entries SET points = 90 WHERE command_id = 'c1' AND account_id = 'm1'"],
        {"balance_equals_entries", "balance_after_is_running_sum"},
        "p1/m1: balance 120, but its entries sum to 110", id="entry-rewritten"),
    pytest.param(
        ["ALTER TABLE entries DISABLE TRIGGER entries_immutable",
         "UPDATE entries SET counter_account = 'm2' WHERE command_id = 'c1'"],
        {"transfers_between_member_and_program", "entries_match_their_movement"},
        "of command c1 moves points between m1 and m2, not between a member and a program"
        " account", id="transfer-between-members"),
    pytest.param(
        # Zero points, so that every sum still holds: only the movement check can see it.
        ["INSERT INTO entries (program_id, account_id, counter_account, command_id, type, points,"
         " balance_after, reason, source_kind, source_id, occurred_at) VALUES ('p1', 'm2',"
         " '@issued', 'x1', 'points.credited', 0, 40, 'stray', 'adjustment', 'x', now())"],
        {"entries_match_their_movement"},
        "of command x1 (m2, @issued) matches no movement", id="entry-without-movement"),
    pytest.param(
        ["UPDATE lots SET remaining = remaining - 10 WHERE command_id = 'c2'"],
        {"lots_add_up_to_balance", "lot_moves_explain_lot"},
        "p1/m1: balance 120, but its lots hold 110", id="lot-shrunk"),
    pytest.param(
        [DROP_LOT_CHECKS,
         "UPDATE lots SET remaining = -1 WHERE command_id = 'c3'"],
        {"lot_remaining_within_points", "lots_add_up_to_balance", "lot_moves_explain_lot"},
        "of p1/m2: remaining -1 is outside 0..40", id="lot-negative"),
    pytest.param(
        [DROP_LOT_CHECKS,
         "UPDATE lots SET remaining = 60 WHERE command_id = 'c2'"],
        {"lot_remaining_within_points", "lots_add_up_to_balance", "lot_moves_explain_lot"},
        "of p1/m1: remaining 60 is outside 0..50", id="lot-above-its-points"),
    pytest.param(
        ["DELETE FROM lot_moves WHERE command_id = 'd1'"],
        {"lot_moves_explain_lot"},
        "of p1/m1: 30 taken (points 100 - remaining 70), lot_moves say 0", id="lot-move-lost"),
    pytest.param(
        ["UPDATE holds SET status = 'released', settled_at = now(), settled_by = 'r1'"],
        {"reserved_equals_active_holds"},
        "p1/m1: reserved 20, but its active holds total 0", id="hold-settled-reserved-kept"),
    pytest.param(
        ["ALTER TABLE accounts DROP CONSTRAINT member_not_negative",
         "UPDATE accounts SET reserved = 130 WHERE program_id = 'p1' AND account_id = 'm1'",
         "UPDATE holds SET points = 130 WHERE hold_id = 'h1'"],
        {"reserved_within_balance"},
        "p1/m1: reserved 130 exceeds balance 120", id="reserved-above-balance"),
    pytest.param(
        ["ALTER TABLE accounts DROP CONSTRAINT member_not_negative",
         "UPDATE accounts SET owed = -3 WHERE program_id = 'p2' AND account_id = 'm1'"],
        {"member_amounts_not_negative"},
        "p2/m1: negative amount (balance 10, reserved 0, owed -3)", id="negative-owed"),
    pytest.param(
        ["ALTER TABLE accounts DROP CONSTRAINT program_rows_static",
         "UPDATE accounts SET balance = 5 WHERE program_id = 'p1' AND account_id = '@issued'"],
        {"program_accounts_keep_no_balance"},
        "p1/@issued: a program account with balance 5", id="program-account-balance"),
    pytest.param(
        # c1 credited again, to another member, with the balances and lots kept consistent:
        # the duplicate check sees it, and so does the movement check (c1 moved m1's points).
        ["ALTER TABLE entries DROP CONSTRAINT entries_command_type",
         "INSERT INTO entries (program_id, account_id, counter_account, command_id, type, points,"
         " balance_after, reason, source_kind, source_id, occurred_at) VALUES"
         " ('p1', 'm2', '@issued', 'c1', 'points.credited', 100, 140, 'dup', 'purchase', 'A-1',"
         " now())",
         "UPDATE accounts SET balance = 140 WHERE program_id = 'p1' AND account_id = 'm2'",
         "INSERT INTO lots (program_id, member_id, command_id, points, remaining, earned_at)"
         " VALUES ('p1', 'm2', 'c1-copy', 100, 100, now())"],
        {"no_duplicate_credits", "entries_match_their_movement"},
        "command c1: 2 member points.credited entries", id="credited-twice"),
]


@pytest.mark.parametrize(("statements", "expected_checks", "message"), CORRUPTIONS)
async def test_each_corruption_is_named(scratch: Scratch, statements: list[str],
                                        expected_checks: set[str], message: str) -> None:
    violations = await violations_after(scratch.pool, *statements)

    assert checks_named(violations) == expected_checks, violations
    assert any(message in v for v in violations), violations
    async with scratch.pool.acquire() as conn:
        assert await audit(conn) == []  # rolled back: the next case starts clean


def test_every_check_is_exercised() -> None:
    # A check no corruption above triggers could be one that never fires.
    exercised = set().union(*(case.values[1] for case in CORRUPTIONS))
    assert exercised == {check.name for check in CHECKS}


async def test_a_check_lists_a_bounded_number_of_violations(scratch: Scratch,
                                                            monkeypatch) -> None:
    monkeypatch.setattr(audit_module, "VIOLATIONS_PER_CHECK_MAX", 1)
    violations = await violations_after(
        scratch.pool, "UPDATE holds SET status = 'released', settled_at = now()",
        "UPDATE accounts SET reserved = 1"
        " WHERE (program_id, account_id) IN (('p1', 'm2'), ('p2', 'm1'))")

    assert [v for v in violations if v.startswith("[reserved_equals_active_holds]")] == [
        "[reserved_equals_active_holds] p1/m1: reserved 20, but its active holds total 0",
        "[reserved_equals_active_holds] ... and 2 more",
    ]


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    loyalty = Path(sys.executable).with_name("loyalty")
    command = [str(loyalty)] if loyalty.exists() else [sys.executable, "-m", "loyalty.cli"]
    proc = await asyncio.create_subprocess_exec(
        *command, *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    return proc.returncode or 0, out.decode()


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOYALTY_PG_DSN", "LOYALTY_LEDGER_PG_DSN")}
    return {**env, "LOYALTY_DATA_DIR": str(tmp_path), **extra}


async def test_cli_exits_0_on_a_clean_ledger_and_1_with_the_violations(
        scratch: Scratch, tmp_path: Path) -> None:
    env = cli_env(tmp_path, LOYALTY_PG_DSN=scratch.admin_dsn)

    code, out = await run_cli("audit", env=env)
    assert (code, out.strip()) == (0, "ledger audit: clean (6 accounts, 5 entries, 4 lots)")

    await scratch.pool.execute("UPDATE lots SET remaining = remaining - 1 WHERE command_id = 'c3'")
    try:
        code, out = await run_cli("audit", env=env)
    finally:
        await scratch.pool.execute(
            "UPDATE lots SET remaining = remaining + 1 WHERE command_id = 'c3'")
    assert code == 1, out
    assert "[lots_add_up_to_balance] p1/m2: balance 40, but its lots hold 39" in out
    assert "[lot_moves_explain_lot]" in out


async def test_cli_exits_2_without_a_database(tmp_path: Path) -> None:
    code, out = await run_cli("audit", env=cli_env(tmp_path))

    assert code == 2
    assert "LOYALTY_PG_DSN" in out
