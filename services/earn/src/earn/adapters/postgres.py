"""earn's repository: plain SQL over its own schema, inside the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from loyalty.programs import ProgramDefinition

# Definitions never change once applied under a version: parse each once per process.
_parsed: dict[tuple[str, int], ProgramDefinition] = {}


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

    # Programs
    async def current_program(self, program_id: str) -> tuple[int, ProgramDefinition] | None:
        version = await self.conn.fetchval(
            "SELECT version FROM programs WHERE program_id = $1", program_id)
        if version is None:
            return None
        return version, await self.program_version(program_id, version)

    async def program_version(self, program_id: str, version: int) -> ProgramDefinition:
        key = (program_id, version)
        if key not in _parsed:
            definition = await self.conn.fetchval(
                "SELECT definition FROM program_versions WHERE program_id = $1 AND version = $2",
                program_id, version)
            _parsed[key] = ProgramDefinition.from_message(definition)
        return _parsed[key]

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

    # Members
    async def find_members(self, program_id: str, identifiers: list[tuple[str, str]]
                           ) -> dict[tuple[str, str], Member]:
        """The members these identifiers point at (one query, members included)."""
        rows = await self.conn.fetch(
            "SELECT i.kind, i.value, m.member_id, m.program_id, m.locale, m.preferred_channel,"
            " m.phone, m.email FROM identifiers i JOIN members m USING (member_id)"
            " WHERE i.program_id = $1"
            " AND (i.kind, i.value) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            program_id, [k for k, _ in identifiers], [v for _, v in identifiers])
        return {(r["kind"], r["value"]): Member(
            r["member_id"], r["program_id"], r["locale"], r["preferred_channel"], r["phone"],
            r["email"]) for r in rows}

    async def members(self, member_ids: list[str]) -> dict[str, Member]:
        rows = await self.conn.fetch(
            "SELECT member_id, program_id, locale, preferred_channel, phone, email"
            " FROM members WHERE member_id = ANY($1::text[])", member_ids)
        return {r["member_id"]: Member(**dict(r)) for r in rows}

    async def add_member(self, member: Member, enrolled_at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO members (member_id, program_id, locale, preferred_channel, phone, email,"
            " enrolled_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            member.member_id, member.program_id, member.locale, member.preferred_channel,
            member.phone, member.email, enrolled_at)

    async def link(self, program_id: str, member_id: str, identifiers: list[tuple[str, str]],
                   at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO identifiers (program_id, kind, value, member_id, linked_at)"
            " SELECT $1, k, v, $2, $4 FROM unnest($3::text[], $5::text[]) AS t(k, v)",
            program_id, member_id, [k for k, _ in identifiers], at, [v for _, v in identifiers])
        contact = dict(identifiers)
        await self.conn.execute(
            "UPDATE members SET phone = coalesce(phone, $2), email = coalesce(email, $3)"
            " WHERE member_id = $1", member_id, contact.get("phone"), contact.get("email"))

    async def points_earned_since(self, member_id: str, since: datetime) -> int:
        """Points earned (purchases net of returns, activities, adjustments) since `since`."""
        return await self.conn.fetchval(
            "SELECT coalesce((SELECT sum(points - points_reversed) FROM orders"
            " WHERE member_id = $1 AND occurred_at >= $2), 0)"
            " + coalesce((SELECT sum(points) FROM awards"
            " WHERE member_id = $1 AND occurred_at >= $2), 0)", member_id, since)

    async def set_tier(self, member_id: str, tier_id: str) -> tuple[bool, str | None]:
        """Record the member's tier: (changed, previous tier), in one statement."""
        row = await self.conn.fetchrow(
            "WITH old AS (SELECT tier_id FROM members WHERE member_id = $1)"
            " UPDATE members m SET tier_id = $2 FROM old"
            " WHERE m.member_id = $1 AND old.tier_id IS DISTINCT FROM $2"
            " RETURNING old.tier_id", member_id, tier_id)
        return (row is not None, row["tier_id"] if row else None)

    async def add_award(self, *, event_id: str, program_id: str, member_id: str, kind: str,
                        points: int, reason: str, occurred_at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO awards (event_id, program_id, member_id, kind, points, reason,"
            " occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            event_id, program_id, member_id, kind, points, reason, occurred_at)

    async def order_for_update(self, program_id: str, order_id: str) -> Order | None:
        row = await self.conn.fetchrow(
            "SELECT member_id, event_id, program_version, total, points, returned_amount,"
            " points_reversed FROM orders WHERE program_id = $1 AND order_id = $2 FOR UPDATE",
            program_id, order_id)
        return Order(**dict(row)) if row else None

    async def add_return(self, *, event_id: str, program_id: str, order_id: str,
                         amount: Decimal, points: int, occurred_at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO returns (event_id, program_id, order_id, amount, points, occurred_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            event_id, program_id, order_id, amount, points, occurred_at)
        await self.conn.execute(
            "UPDATE orders SET returned_amount = returned_amount + $3,"
            " points_reversed = points_reversed + $4 WHERE program_id = $1 AND order_id = $2",
            program_id, order_id, amount, points)

    # Orders
    async def add_order(self, *, program_id: str, order_id: str, event_id: str, member_id: str,
                        program_version: int, channel: str, currency: str, total: Decimal,
                        points: int, breakdown: list[dict[str, Any]],
                        occurred_at: datetime) -> str | None:
        """Insert the order; if it exists already, return the event id that created it."""
        inserted = await self.conn.fetchval(
            "INSERT INTO orders (program_id, order_id, event_id, member_id, program_version,"
            " channel, currency, total, points, breakdown, occurred_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            " ON CONFLICT (program_id, order_id) DO NOTHING RETURNING true",
            program_id, order_id, event_id, member_id, program_version, channel, currency, total,
            points, breakdown, occurred_at)
        if inserted:
            return None
        return await self.conn.fetchval(
            "SELECT event_id FROM orders WHERE program_id = $1 AND order_id = $2",
            program_id, order_id)

    async def skip(self, *, event_id: str, program_id: str, reason_code: str, reason: str,
                   occurred_at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO skipped (event_id, program_id, reason_code, reason, occurred_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            event_id, program_id, reason_code, reason, occurred_at)


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
