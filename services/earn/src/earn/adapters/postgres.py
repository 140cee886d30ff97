"""earn's repository: plain SQL over its own schema, inside the caller's transaction.

Programs and notification lookups go through `EarnRepository`; the input events (purchases,
activities, adjustments) are applied a batch at a time over `adapters.batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from loyalty.programs import ProgramDefinition

# Definitions never change once applied under a version: parse each once per process.
_parsed: dict[tuple[str, int], ProgramDefinition] = {}


async def parsed_program(conn: asyncpg.Connection, program_id: str,
                         version: int) -> ProgramDefinition:
    key = (program_id, version)
    if key not in _parsed:
        definition = await conn.fetchval(
            "SELECT definition FROM program_versions WHERE program_id = $1 AND version = $2",
            program_id, version)
        _parsed[key] = ProgramDefinition.from_message(definition)
    return _parsed[key]


@dataclass(frozen=True)
class Member:
    member_id: str
    program_id: str
    locale: str
    preferred_channel: str | None
    phone: str | None
    email: str | None


@dataclass(frozen=True)
class Order:
    member_id: str
    event_id: str
    program_version: int
    total: Decimal
    points: int
    returned_amount: Decimal
    points_reversed: int


class EarnRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def current_program(self, program_id: str) -> tuple[int, ProgramDefinition] | None:
        version = await self.conn.fetchval(
            "SELECT version FROM programs WHERE program_id = $1", program_id)
        if version is None:
            return None
        return version, await parsed_program(self.conn, program_id, version)

    async def apply_program(self, program: ProgramDefinition) -> int | None:
        """Store a new version if the definition changed; return it (None: unchanged)."""
        digest = program.content_hash()
        current = await self.conn.fetchrow(
            "SELECT p.version, v.content_hash FROM programs p JOIN program_versions v"
            " USING (program_id, version) WHERE p.program_id = $1 FOR UPDATE OF p", program.id)
        if current is not None and current["content_hash"] == digest:
            return None
        version = 1 if current is None else current["version"] + 1
        await self.conn.execute(
            "INSERT INTO program_versions (program_id, version, content_hash, definition)"
            " VALUES ($1, $2, $3, $4)", program.id, version, digest, program.to_message())
        await self.conn.execute(
            "INSERT INTO programs (program_id, version) VALUES ($1, $2)"
            " ON CONFLICT (program_id) DO UPDATE SET version = EXCLUDED.version",
            program.id, version)
        return version

    async def members(self, member_ids: list[str]) -> dict[str, Member]:
        rows = await self.conn.fetch(
            "SELECT member_id, program_id, locale, preferred_channel, phone, email"
            " FROM members WHERE member_id = ANY($1::text[])", member_ids)
        return {r["member_id"]: Member(**dict(r)) for r in rows}



class EarnQueries:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def outcome(self, program_id: str, event_id: str) -> dict[str, Any] | None:
        """What earn did with an input event, and why (support: "where are my points?")."""
        row = await self.pool.fetchrow(
            "SELECT order_id, member_id, program_version, points, breakdown, returned_amount,"
            " points_reversed FROM orders WHERE program_id = $1 AND event_id = $2",
            program_id, event_id)
        if row is not None:
            return {"event_id": event_id, "status": "credited" if row["points"] else "no_points",
                    "order_id": row["order_id"], "member_id": row["member_id"],
                    "program_version": row["program_version"], "points": row["points"],
                    "breakdown": row["breakdown"],
                    "returned_amount": str(row["returned_amount"]),
                    "points_reversed": row["points_reversed"]}
        row = await self.pool.fetchrow(
            "SELECT order_id, points, amount FROM returns WHERE program_id = $1"
            " AND event_id = $2", program_id, event_id)
        if row is not None:
            return {"event_id": event_id, "status": "returned", "order_id": row["order_id"],
                    "amount": str(row["amount"]), "points_reversed": row["points"]}
        row = await self.pool.fetchrow(
            "SELECT member_id, kind, points, reason FROM awards WHERE program_id = $1"
            " AND event_id = $2", program_id, event_id)
        if row is not None:
            return {"event_id": event_id, "status": "credited" if row["points"] > 0
                    else "debited", "member_id": row["member_id"], "kind": row["kind"],
                    "points": row["points"], "reason": row["reason"]}
        row = await self.pool.fetchrow(
            "SELECT reason_code, reason FROM skipped WHERE program_id = $1 AND event_id = $2",
            program_id, event_id)
        if row is not None:
            return {"event_id": event_id, "status": "skipped", "reason_code": row["reason_code"],
                    "reason": row["reason"]}
        return None

    async def program(self, program_id: str) -> tuple[int, ProgramDefinition] | None:
        async with self.pool.acquire() as conn:
            return await EarnRepository(conn).current_program(program_id)
