"""Read side of the scheduler's schema for the HTTP routes: upcoming expirations (a page, or
streamed row by row through a server-side cursor) and liability by local expiry month."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg

from expiry.adapters.postgres import ExpiryRepository
from expiry.domain.schedule import Program

CSV_FETCH_ROWS = 2_000

# Upcoming expirations: per member, instant and rule, the points still in the lots.
_EXPIRATIONS = (
    "SELECT member_id, sum(points)::bigint AS points, expires_at, policy FROM upcoming"
    " WHERE program_id = $1 AND expires_at >= $2 AND ($3::timestamptz IS NULL"
    " OR expires_at < $3) AND ($4::text IS NULL OR member_id = $4)"
    " GROUP BY member_id, expires_at, policy")
_ORDER = " ORDER BY expires_at, member_id, policy"


class ExpiryReads:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def program(self, program_id: str) -> tuple[Program, dict[str, Any]] | None:
        async with self.pool.acquire() as conn:
            return await ExpiryRepository(conn).program_definition(program_id)

    async def resolve(self, program_id: str, kind: str, value: str) -> str | None:
        return await self.pool.fetchval(
            "SELECT member_id FROM identifiers WHERE program_id = $1 AND kind = $2"
            " AND value = $3", program_id, kind, value)

    async def member_known(self, program_id: str, member_id: str) -> bool:
        return bool(await self.pool.fetchval(
            "SELECT 1 FROM members WHERE program_id = $1 AND member_id = $2",
            program_id, member_id))

    async def expirations_page(self, program_id: str, start: datetime, end: datetime | None,
                               member_id: str | None, after: tuple[datetime, str, str] | None,
                               limit: int) -> list[asyncpg.Record]:
        if after is None:
            return await self.pool.fetch(_EXPIRATIONS + _ORDER + " LIMIT $5",
                                         program_id, start, end, member_id, limit)
        return await self.pool.fetch(
            f"SELECT * FROM ({_EXPIRATIONS}) g WHERE (expires_at, member_id, policy)"
            f" > ($6, $7, $8){_ORDER} LIMIT $5",
            program_id, start, end, member_id, limit, *after)

    async def expirations_stream(self, program_id: str, start: datetime, end: datetime | None,
                                 member_id: str | None) -> AsyncIterator[list[asyncpg.Record]]:
        """Every row, `CSV_FETCH_ROWS` at a time: memory stays flat whatever the size."""
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            cursor = await conn.cursor(_EXPIRATIONS + _ORDER, program_id, start, end, member_id)
            while rows := await cursor.fetch(CSV_FETCH_ROWS):
                yield rows

    async def liability(self, program: Program) -> dict[str, Any]:
        """Points outstanding by the month they expire in, in the program's own time zone."""
        rows = await self.pool.fetch(
            "SELECT to_char(expires_at AT TIME ZONE $2, 'YYYY-MM') AS month,"
            " sum(points)::bigint AS points FROM upcoming WHERE program_id = $1"
            " GROUP BY 1 ORDER BY 1 NULLS FIRST", program.program_id, program.time_zone)
        never = next((r["points"] for r in rows if r["month"] is None), 0)
        months = [{"month": r["month"], "points": r["points"]} for r in rows
                  if r["month"] is not None]
        return {"program_id": program.program_id, "time_zone": program.time_zone,
                "total": never + sum(m["points"] for m in months), "never_expiring": never,
                "by_expiry_month": months}
