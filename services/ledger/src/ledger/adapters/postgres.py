"""The ledger's repository: plain SQL over its own schema, inside the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ledger.domain.model import PROGRAM_ACCOUNTS, Account, Lot


@dataclass(frozen=True)
class EntryRow:
    account_id: str
    type: str
    points: int
    balance_after: int | None


class LedgerRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def lock_member(self, program_id: str, member_id: str) -> Account:
        """The member's account, created on first use, locked until the transaction ends."""
        await self.conn.execute(
            "INSERT INTO accounts (program_id, account_id, kind)"
            " SELECT $1, a, k FROM unnest($2::text[], $3::text[]) AS t(a, k)"
            " ON CONFLICT DO NOTHING",
            program_id, [member_id, *PROGRAM_ACCOUNTS], ["member", *PROGRAM_ACCOUNTS.values()])
        row = await self.conn.fetchrow(
            "SELECT balance, reserved, owed FROM accounts"
            " WHERE program_id = $1 AND account_id = $2 FOR UPDATE", program_id, member_id)
        return Account(row["balance"], row["reserved"], row["owed"])

    async def save_member(self, program_id: str, member_id: str, account: Account) -> None:
        await self.conn.execute(
            "UPDATE accounts SET balance = $3, reserved = $4, owed = $5, updated_at = now()"
            " WHERE program_id = $1 AND account_id = $2",
            program_id, member_id, account.balance, account.reserved, account.owed)

    async def add_entries(self, *, program_id: str, command_id: str, occurred_at: datetime,
                          reason: str, source_kind: str, source_id: str,
                          rows: list[EntryRow]) -> list[int]:
        records = await self.conn.fetch(
            "INSERT INTO entries (program_id, account_id, command_id, type, points,"
            " balance_after, reason, source_kind, source_id, occurred_at)"
            " SELECT $1, a, $2, t, p, b, $3, $4, $5, $6"
            " FROM unnest($7::text[], $8::text[], $9::bigint[], $10::bigint[]) AS x(a, t, p, b)"
            " RETURNING entry_id",
            program_id, command_id, reason, source_kind, source_id, occurred_at,
            [r.account_id for r in rows], [r.type for r in rows], [r.points for r in rows],
            [r.balance_after for r in rows])
        return [r["entry_id"] for r in records]

    async def add_lot(self, *, program_id: str, member_id: str, command_id: str, points: int,
                      earned_at: datetime, expires_at: datetime | None) -> None:
        await self.conn.execute(
            "INSERT INTO lots (program_id, member_id, command_id, points, remaining, earned_at,"
            " expires_at) VALUES ($1, $2, $3, $4, $4, $5, $6)",
            program_id, member_id, command_id, points, earned_at, expires_at)

    async def open_lots(self, program_id: str, member_id: str) -> list[Lot]:
        rows = await self.conn.fetch(
            "SELECT lot_id, remaining, expires_at, earned_at FROM lots"
            " WHERE program_id = $1 AND member_id = $2 AND remaining > 0",
            program_id, member_id)
        return [Lot(r["lot_id"], r["remaining"], r["expires_at"], r["earned_at"]) for r in rows]

    async def take_from_lots(self, taken: list[tuple[int, int]]) -> None:
        await self.conn.execute(
            "UPDATE lots SET remaining = remaining - t.points"
            " FROM unnest($1::bigint[], $2::bigint[]) AS t(lot_id, points)"
            " WHERE lots.lot_id = t.lot_id",
            [lot_id for lot_id, _ in taken], [points for _, points in taken])

    async def save_identifiers(self, program_id: str, member_id: str,
                               identifiers: dict[str, str]) -> None:
        await self.conn.execute(
            "INSERT INTO identifiers (program_id, kind, value, member_id)"
            " SELECT $1, k, v, $2 FROM unnest($3::text[], $4::text[]) AS t(k, v)"
            " ON CONFLICT (program_id, kind, value) DO UPDATE SET member_id = EXCLUDED.member_id",
            program_id, member_id, list(identifiers), list(identifiers.values()))


class LedgerQueries:
    """Reads for the HTTP routes (outside any command transaction)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def resolve(self, program_id: str, kind: str, value: str) -> str | None:
        return await self.pool.fetchval(
            "SELECT member_id FROM identifiers WHERE program_id = $1 AND kind = $2 AND value = $3",
            program_id, kind, value)

    async def member(self, program_id: str, member_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            "SELECT balance, reserved, owed FROM accounts"
            " WHERE program_id = $1 AND account_id = $2 AND kind = 'member'",
            program_id, member_id)
        if row is None:
            return None
        expiring = await self.pool.fetch(
            "SELECT sum(remaining) AS points, expires_at FROM lots"
            " WHERE program_id = $1 AND member_id = $2 AND remaining > 0"
            " AND expires_at IS NOT NULL GROUP BY expires_at ORDER BY expires_at",
            program_id, member_id)
        return {
            "member_id": member_id,
            "balance": row["balance"],
            "reserved": row["reserved"],
            "available": row["balance"] - row["reserved"],
            "owed": row["owed"],
            "expiring": [{"points": int(r["points"]), "expires_at": r["expires_at"].isoformat()}
                         for r in expiring],
        }
