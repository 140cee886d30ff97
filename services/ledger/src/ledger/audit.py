"""The ledger's invariants, checked over the whole schema (`loyalty audit`).

Each invariant is one SQL query that returns a human-readable line per violation, so a check
reads as the rule it enforces and a failure says where to look. The database constraints
(CHECK, UNIQUE, the immutability trigger) already make most of these impossible; the audit is
the independent proof, and catches what a constraint cannot state (sums across tables) or
what a migration, a manual fix or a restore may have broken.

All checks run in one read-only REPEATABLE READ transaction, so a ledger that keeps writing
meanwhile is seen at a single instant and cannot produce false alarms. The caller's connection
must have the ledger schema on its search_path.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# Per check: a corrupted ledger can break one rule on millions of rows; say how many, list some.
VIOLATIONS_PER_CHECK_MAX = 20


@dataclass(frozen=True)
class Check:
    name: str
    sql: str  # one text column: the violation, described


CHECKS: tuple[Check, ...] = (
    Check("balance_equals_entries", """
        SELECT format('%s/%s: balance %s, but its entries sum to %s',
                      a.program_id, a.account_id, a.balance, coalesce(e.points, 0))
        FROM accounts a
        LEFT JOIN (SELECT program_id, account_id, sum(points) AS points
                   FROM entries GROUP BY program_id, account_id) e
            USING (program_id, account_id)
        WHERE a.kind = 'member' AND a.balance <> coalesce(e.points, 0)"""),
    Check("latest_balance_after_equals_balance", """
        SELECT format('%s/%s: balance %s, but its latest entry %s says balance_after %s',
                      a.program_id, a.account_id, a.balance, e.entry_id,
                      coalesce(e.balance_after::text, 'NULL'))
        FROM accounts a
        JOIN (SELECT DISTINCT ON (program_id, account_id)
                     program_id, account_id, entry_id, balance_after
              FROM entries ORDER BY program_id, account_id, entry_id DESC) e
            USING (program_id, account_id)
        WHERE a.kind = 'member' AND e.balance_after IS DISTINCT FROM a.balance"""),
    Check("balance_after_is_running_sum", """
        SELECT format('%s/%s: entry %s says balance_after %s, but the entries up to it sum to %s',
                      program_id, account_id, entry_id, coalesce(balance_after::text, 'NULL'),
                      running)
        FROM (SELECT e.program_id, e.account_id, e.entry_id, e.balance_after,
                     sum(e.points) OVER (PARTITION BY e.program_id, e.account_id
                                         ORDER BY e.entry_id) AS running
              FROM entries e JOIN accounts a USING (program_id, account_id)
              WHERE a.kind = 'member') x
        WHERE balance_after IS DISTINCT FROM running"""),
    Check("transfers_between_member_and_program", """
        SELECT format('%s: entry %s of command %s moves points between %s and %s, not between'
                      ' a member and a program account',
                      e.program_id, e.entry_id, e.command_id, e.account_id, e.counter_account)
        FROM entries e
        LEFT JOIN accounts m ON m.program_id = e.program_id AND m.account_id = e.account_id
        LEFT JOIN accounts p ON p.program_id = e.program_id AND p.account_id = e.counter_account
        WHERE m.kind IS DISTINCT FROM 'member' OR p.kind IS NULL OR p.kind = 'member'"""),
    Check("entries_match_their_movement", """
        SELECT format('%s: entry %s of command %s (%s, %s) matches no movement',
                      e.program_id, e.entry_id, e.command_id, e.account_id, e.counter_account)
        FROM entries e
        WHERE NOT EXISTS (SELECT 1 FROM movements m
                          WHERE m.command_id = e.command_id AND m.program_id = e.program_id
                            AND m.member_id = e.account_id
                            AND m.counter_account = e.counter_account)"""),
    Check("lots_add_up_to_balance", """
        SELECT format('%s/%s: balance %s, but its lots hold %s',
                      a.program_id, a.account_id, a.balance, coalesce(l.remaining, 0))
        FROM accounts a
        LEFT JOIN (SELECT program_id, member_id AS account_id, sum(remaining) AS remaining
                   FROM lots GROUP BY program_id, member_id) l
            USING (program_id, account_id)
        WHERE a.kind = 'member' AND a.balance <> coalesce(l.remaining, 0)"""),
    Check("lot_remaining_within_points", """
        SELECT format('lot %s of %s/%s: remaining %s is outside 0..%s',
                      lot_id, program_id, member_id, remaining, points)
        FROM lots WHERE remaining < 0 OR remaining > points"""),
    Check("lot_moves_explain_lot", """
        SELECT format('lot %s of %s/%s: %s taken (points %s - remaining %s), lot_moves say %s',
                      l.lot_id, l.program_id, l.member_id, l.points - l.remaining, l.points,
                      l.remaining, coalesce(m.points, 0))
        FROM lots l
        LEFT JOIN (SELECT lot_id, sum(points) AS points FROM lot_moves GROUP BY lot_id) m
            USING (lot_id)
        WHERE l.points - l.remaining <> coalesce(m.points, 0)"""),
    Check("reserved_equals_active_holds", """
        SELECT format('%s/%s: reserved %s, but its active holds total %s',
                      a.program_id, a.account_id, a.reserved, coalesce(h.points, 0))
        FROM accounts a
        LEFT JOIN (SELECT program_id, member_id AS account_id, sum(points) AS points
                   FROM holds WHERE status = 'active' GROUP BY program_id, member_id) h
            USING (program_id, account_id)
        WHERE a.kind = 'member' AND a.reserved <> coalesce(h.points, 0)"""),
    Check("reserved_within_balance", """
        SELECT format('%s/%s: reserved %s exceeds balance %s (negative available points)',
                      program_id, account_id, reserved, balance)
        FROM accounts WHERE kind = 'member' AND reserved > balance"""),
    Check("member_amounts_not_negative", """
        SELECT format('%s/%s: negative amount (balance %s, reserved %s, owed %s)',
                      program_id, account_id, balance, reserved, owed)
        FROM accounts
        WHERE kind = 'member' AND (balance < 0 OR reserved < 0 OR owed < 0)"""),
    Check("program_accounts_keep_no_balance", """
        SELECT format('%s/%s: a program account with balance %s, reserved %s, owed %s'
                      ' (its balance is the sum of its entries only)',
                      program_id, account_id, balance, reserved, owed)
        FROM accounts
        WHERE kind <> 'member' AND (balance <> 0 OR reserved <> 0 OR owed <> 0)"""),
    Check("no_duplicate_credits", """
        SELECT format('command %s: %s member %s entries (%s): the same input moved points twice',
                      e.command_id, count(*), e.type,
                      string_agg(e.program_id || '/' || e.account_id || ' entry ' || e.entry_id,
                                 ', ' ORDER BY e.entry_id))
        FROM entries e JOIN accounts a USING (program_id, account_id)
        WHERE a.kind = 'member' AND e.points > 0
        GROUP BY e.command_id, e.type HAVING count(*) > 1"""),
)


async def audit(conn: asyncpg.Connection) -> list[str]:
    """Every violation of the ledger invariants, as `[check] what is wrong` lines; [] if clean.

    Opens its own read-only snapshot unless the caller is already in a transaction (then it
    sees what that transaction sees, e.g. uncommitted changes in a test).
    """
    if conn.is_in_transaction():
        return await _run_checks(conn)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _run_checks(conn)


async def census(conn: asyncpg.Connection) -> dict[str, int]:
    """How much the audit looked at: accounts, entries and lots."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM accounts) AS accounts,"
        " (SELECT count(*) FROM entries) AS entries, (SELECT count(*) FROM lots) AS lots")
    return dict(row)


async def _run_checks(conn: asyncpg.Connection) -> list[str]:
    violations: list[str] = []
    for check in CHECKS:
        rows = await conn.fetch(
            f"SELECT v.violation, count(*) OVER () AS found"
            f" FROM ({check.sql}) AS v(violation) ORDER BY v.violation LIMIT $1",
            VIOLATIONS_PER_CHECK_MAX)
        violations += [f"[{check.name}] {r['violation']}" for r in rows]
        if rows and rows[0]["found"] > len(rows):
            violations.append(f"[{check.name}] ... and {rows[0]['found'] - len(rows)} more")
    return violations
