"""reward-fulfilment's repository: plain SQL over its own schema (asyncpg).

Allocation is where replicas meet: it first takes the inventory row of the pool (or the
physical reward) with a conditional UPDATE, which both decides "is there enough left?"
exactly and serialises allocators of that pool until commit; only then does it pick code rows
(`FOR UPDATE SKIP LOCKED`). `codes UNIQUE (order_id, unit)` backs "one code per unit" and a
code row belongs to one order at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from loyalty import member_copies
from loyalty.contracts import MemberEvent
from loyalty.member_copies import Contact
from loyalty.programs import ProgramDefinition
from rewards.domain.saga import AWAITING_LEDGER, Order, State

WAITING_STATES = [State.IDENTIFYING.value, *(s.value for s in AWAITING_LEDGER)]


class InventoryMismatch(Exception):
    """The inventory row promised codes the codes table does not have: a bug (retried, then
    alerted through the handler-error metric), never a member-facing failure."""


# A member as reward-fulfilment keeps it: its contact data, from loyalty.members.v1.
Member = Contact


@dataclass
class OrderRow:
    """An order as stored: the saga's state (`saga`) plus what the saga does not decide."""

    order_id: str
    program_id: str
    member_id: str | None
    identifiers: list[str]
    reward_id: str
    reward_name: str
    inventory: str | None
    quantity: int
    delivery_channel: str | None
    locale: str | None
    requested_at: datetime
    updated_at: datetime
    deadline_at: datetime | None
    attempts: int
    saga: Order
    commands: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.saga.kind

    @property
    def points(self) -> int:
        return self.saga.points


_ORDER_COLUMNS = (
    "order_id, program_id, member_id, identifiers, reward_id, reward_name, kind, inventory,"
    " quantity, points, state, status, outcome, reason_code, reason, cancel_requested,"
    " delivery_channel, locale, requested_at, updated_at, deadline_at, attempts, commands")


def _order(r: asyncpg.Record) -> OrderRow:
    saga = Order(order_id=r["order_id"], kind=r["kind"], points=r["points"],
                 state=State(r["state"]), status=r["status"], outcome=r["outcome"],
                 reason_code=r["reason_code"], reason=r["reason"],
                 cancel_requested=r["cancel_requested"])
    return OrderRow(
        order_id=r["order_id"], program_id=r["program_id"], member_id=r["member_id"],
        identifiers=list(r["identifiers"]), reward_id=r["reward_id"],
        reward_name=r["reward_name"], inventory=r["inventory"], quantity=r["quantity"],
        delivery_channel=r["delivery_channel"], locale=r["locale"],
        requested_at=r["requested_at"], updated_at=r["updated_at"],
        deadline_at=r["deadline_at"], attempts=r["attempts"], saga=saga,
        commands=dict(r["commands"] or {}))


class RewardsRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    # -- programs and inventory ---------------------------------------------------------------

    async def apply_program(self, program: ProgramDefinition, at: datetime) -> bool:
        """Store the definition; create its pools and set its physical stock. False if the
        same definition was already applied."""
        digest = program.content_hash()
        changed = await self.conn.fetchval(
            "INSERT INTO programs (program_id, definition, content_hash, applied_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (program_id) DO UPDATE"
            " SET definition = EXCLUDED.definition, content_hash = EXCLUDED.content_hash,"
            "     applied_at = EXCLUDED.applied_at"
            " WHERE programs.content_hash <> EXCLUDED.content_hash RETURNING 1",
            program.id, program.to_message(), digest, at)
        if not changed:
            return False
        rows = [(program.id, "pool", r.pool, 0) for r in program.rewards if r.kind == "code"]
        rows += [(program.id, "stock", r.id, r.stock or 0) for r in program.rewards
                 if r.kind == "physical"]
        # `stock` in the definition is the number of units ever available: re-applying with
        # a higher number restocks, the units already allocated stay allocated.
        await self.conn.executemany(
            "INSERT INTO inventory (program_id, kind, name, total) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (program_id, kind, name) DO UPDATE SET total ="
            " CASE WHEN inventory.kind = 'stock' THEN EXCLUDED.total ELSE inventory.total END",
            rows)
        return True

    async def program(self, program_id: str) -> ProgramDefinition | None:
        definition = await self.conn.fetchval(
            "SELECT definition FROM programs WHERE program_id = $1", program_id)
        return None if definition is None else ProgramDefinition.model_validate(definition)

    async def allocate_codes(self, order_id: str, program_id: str, pool: str,
                             quantity: int) -> bool:
        taken = await self.conn.fetchval(
            "UPDATE inventory SET allocated = allocated + $3"
            " WHERE program_id = $1 AND kind = 'pool' AND name = $2"
            "   AND total - allocated >= $3 RETURNING 1", program_id, pool, quantity)
        if not taken:
            return False
        status = await self.conn.execute(
            "WITH picked AS (SELECT id FROM codes WHERE program_id = $1 AND pool = $2"
            "                  AND status = 'available' ORDER BY id LIMIT $3"
            "                FOR UPDATE SKIP LOCKED),"
            "     numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS unit FROM picked)"
            " UPDATE codes SET status = 'allocated', order_id = $4, unit = numbered.unit"
            " FROM numbered WHERE codes.id = numbered.id", program_id, pool, quantity, order_id)
        if int(status.split()[-1]) != quantity:
            raise InventoryMismatch(f"pool {program_id}/{pool}: the inventory promised "
                                    f"{quantity} codes, found {status.split()[-1]}")
        return True

    async def allocate_stock(self, program_id: str, reward_id: str, quantity: int) -> bool:
        return bool(await self.conn.fetchval(
            "UPDATE inventory SET allocated = allocated + $3"
            " WHERE program_id = $1 AND kind = 'stock' AND name = $2"
            "   AND allocated + $3 <= total RETURNING 1", program_id, reward_id, quantity))

    async def return_units(self, row: OrderRow) -> None:
        """Allocated, never delivered: back to the pool (or the stock)."""
        if row.kind == "code":
            back = await self.conn.execute(
                "UPDATE codes SET status = 'available', order_id = NULL, unit = NULL"
                " WHERE order_id = $1 AND status = 'allocated'", row.order_id)
            count, kind = int(back.split()[-1]), "pool"
        else:
            count, kind = row.quantity, "stock"
        if count:
            await self.conn.execute(
                "UPDATE inventory SET allocated = allocated - $4"
                " WHERE program_id = $1 AND kind = $2 AND name = $3",
                row.program_id, kind, row.inventory, count)

    async def void_units(self, row: OrderRow) -> None:
        """Refunded: the codes are void and never reissued (physical units are not
        restocked: the item has left; an operator restocks by re-applying the program)."""
        await self.conn.execute(
            "UPDATE codes SET status = 'voided' WHERE order_id = $1"
            " AND status IN ('allocated', 'delivered')", row.order_id)

    async def codes_of(self, order_id: str) -> list[tuple[int, bytes]]:
        return [(r["unit"], bytes(r["ciphertext"])) for r in await self.conn.fetch(
            "SELECT unit, ciphertext FROM codes WHERE order_id = $1 AND status = 'allocated'"
            " ORDER BY unit", order_id)]

    async def codes_of_orders(self, order_ids: list[str]) -> dict[str, list[tuple[int, bytes]]]:
        found: dict[str, list[tuple[int, bytes]]] = {o: [] for o in order_ids}
        for r in await self.conn.fetch(
                "SELECT order_id, unit, ciphertext FROM codes WHERE order_id = ANY($1::text[])"
                " AND status = 'allocated' ORDER BY order_id, unit", order_ids):
            found[r["order_id"]].append((r["unit"], bytes(r["ciphertext"])))
        return found

    async def mark_delivered(self, order_ids: list[str]) -> None:
        await self.conn.execute(
            "UPDATE codes SET status = 'delivered' WHERE order_id = ANY($1::text[])"
            " AND status = 'allocated'", order_ids)

    # -- members --------------------------------------------------------------------------------

    async def save_members(self, events: list[MemberEvent]) -> None:
        """A batch of member events in one statement; None keeps what is known."""
        await member_copies.save_contacts(self.conn, events)

    async def save_identifiers(self, events: list[MemberEvent]) -> None:
        """In one statement. The first owner of an identifier keeps it (earn never moves one
        either)."""
        await member_copies.save_identifiers(self.conn, events, keep_first=True)

    async def find_member(self, program_id: str, identifiers: list[tuple[str, str]]
                          ) -> Member | None:
        """The member of the first known identifier, in precedence order."""
        if not identifiers:
            return None
        rows = await self.conn.fetch(
            "SELECT i.kind, i.value, m.* FROM identifiers i JOIN members m"
            " ON m.program_id = i.program_id AND m.member_id = i.member_id"
            " WHERE i.program_id = $1"
            " AND (i.kind, i.value) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            program_id, [k for k, _ in identifiers], [v for _, v in identifiers])
        owners = {(r["kind"], r["value"]): r for r in rows}
        r = next((owners[i] for i in identifiers if i in owners), None)
        return None if r is None else Member(r["program_id"], r["member_id"], r["locale"],
                                             r["channel"], r["phone"], r["email"])

    async def member(self, program_id: str, member_id: str) -> Member | None:
        r = await self.conn.fetchrow(
            "SELECT * FROM members WHERE program_id = $1 AND member_id = $2",
            program_id, member_id)
        return None if r is None else Member(r["program_id"], r["member_id"], r["locale"],
                                             r["channel"], r["phone"], r["email"])

    async def members(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Member]:
        rows = await self.conn.fetch(
            "SELECT * FROM members WHERE (program_id, member_id) IN"
            " (SELECT * FROM unnest($1::text[], $2::text[]))",
            [p for p, _ in keys], [m for _, m in keys])
        return {(r["program_id"], r["member_id"]): Member(
            r["program_id"], r["member_id"], r["locale"], r["channel"], r["phone"], r["email"])
            for r in rows}

    async def orders_waiting_for(self, identifiers: Sequence[tuple[str, str]]
                                 ) -> list[tuple[str, str, list[str]]]:
        """(order, program, its identifiers) of the orders still identifying that name any
        of `identifiers` ((program, 'kind:value') pairs), oldest request first. One query for
        a batch: the `&&` finds candidates through the partial GIN index, the EXISTS keeps
        those whose identifier was named in their own program."""
        if not identifiers:
            return []
        rows = await self.conn.fetch(
            "SELECT order_id, program_id, identifiers FROM orders o"
            " WHERE state = 'identifying' AND identifiers && $2::text[]"
            " AND EXISTS (SELECT 1 FROM unnest($1::text[], $2::text[]) AS t(p, i)"
            "             WHERE t.p = o.program_id AND t.i = ANY(o.identifiers))"
            " ORDER BY requested_at, order_id",
            [p for p, _ in identifiers], [i for _, i in identifiers])
        return [(r["order_id"], r["program_id"], list(r["identifiers"])) for r in rows]

    # -- orders ---------------------------------------------------------------------------------

    async def insert_order(self, row: OrderRow) -> bool:
        """False if the order already exists (the request was seen before)."""
        s = row.saga
        return bool(await self.conn.fetchval(
            f"INSERT INTO orders ({_ORDER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
            " $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
            " ON CONFLICT (order_id) DO NOTHING RETURNING 1",
            row.order_id, row.program_id, row.member_id, row.identifiers, row.reward_id,
            row.reward_name, s.kind, row.inventory, row.quantity, s.points, s.state.value,
            s.status, s.outcome, s.reason_code, s.reason, s.cancel_requested,
            row.delivery_channel, row.locale, row.requested_at, row.updated_at,
            row.deadline_at, row.attempts, row.commands))

    async def order(self, order_id: str, *, lock: bool = False) -> OrderRow | None:
        r = await self.conn.fetchrow(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = $1"
            + (" FOR UPDATE" if lock else ""), order_id)
        return None if r is None else _order(r)

    async def save_order(self, row: OrderRow) -> None:
        s = row.saga
        await self.conn.execute(
            "UPDATE orders SET member_id = $2, state = $3, status = $4, outcome = $5,"
            " reason_code = $6, reason = $7, cancel_requested = $8, updated_at = $9,"
            " deadline_at = $10, attempts = $11, commands = $12 WHERE order_id = $1",
            row.order_id, row.member_id, s.state.value, s.status, s.outcome, s.reason_code,
            s.reason, s.cancel_requested, row.updated_at, row.deadline_at, row.attempts,
            row.commands)

    async def add_history(self, order_id: str, status: str, reason_code: str | None,
                          reason: str | None, at: datetime) -> int:
        return await self.conn.fetchval(
            "INSERT INTO order_history (order_id, seq, status, reason_code, reason, at)"
            " SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5 FROM order_history"
            " WHERE order_id = $1 RETURNING seq", order_id, status, reason_code, reason, at)

    async def locked(self, where: str, args: list[Any], limit: int) -> list[OrderRow]:
        """Orders matching `where` that no other replica is working on (SKIP LOCKED)."""
        return [_order(r) for r in await self.conn.fetch(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE {where}"
            f" LIMIT {int(limit)} FOR UPDATE SKIP LOCKED", *args)]

    async def due_deliveries(self, limit: int) -> list[OrderRow]:
        return await self.locked("state = 'delivering' ORDER BY updated_at", [], limit)

    async def timed_out(self, now: datetime, limit: int) -> list[OrderRow]:
        return await self.locked(
            "state = ANY($1::text[]) AND deadline_at <= $2 ORDER BY deadline_at",
            [WAITING_STATES, now], limit)


class RewardsReads:
    """The HTTP routes' queries (pool-level, read-only)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def catalog(self, program_id: str) -> list[dict[str, Any]] | None:
        async with self.pool.acquire() as conn:
            definition = await conn.fetchval(
                "SELECT definition FROM programs WHERE program_id = $1", program_id)
            if definition is None:
                return None
            program = ProgramDefinition.model_validate(definition)
            left = {(r["kind"], r["name"]): max(r["total"] - r["allocated"], 0)
                    for r in await conn.fetch(
                        "SELECT kind, name, total, allocated FROM inventory"
                        " WHERE program_id = $1", program_id)}
        return [{"id": r.id, "name": r.name, "kind": r.kind, "points": r.points,
                 "stock_left": left.get(("pool", r.pool) if r.kind == "code"
                                        else ("stock", r.id), 0)}
                for r in program.rewards]

    async def order(self, order_id: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            r = await conn.fetchrow(
                "SELECT order_id, program_id, member_id, reward_id, quantity, points, status,"
                " reason_code, reason FROM orders WHERE order_id = $1", order_id)
            if r is None:
                return None
            history = await conn.fetch(
                "SELECT status, at, reason, reason_code FROM order_history WHERE order_id = $1"
                " ORDER BY seq", order_id)
        return {**dict(r), "history": [
            {"status": h["status"], "at": h["at"].isoformat(), "reason": h["reason"],
             "reason_code": h["reason_code"]} for h in history]}
