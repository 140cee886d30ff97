"""earn's repository over one consumed batch: reads were loaded in bulk, writes are staged.

The handlers are written record by record against a repository; this one makes a whole batch
cost a handful of queries instead of several per record. Everything a batch can read is loaded
up front: programs, the members its identifiers name, the orders it returns, and what its
members earned in the 12 months before each of its events (one sum per member for what every
event's window holds, row by row only what some of them hold: a frequent shopper's year of
orders costs one number, not a row each). Each record's writes are staged and journalled: a
`Rejected` record is rolled back in memory, as a savepoint would be. At the end, `flush`
writes what the accepted records did with one statement per table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from earn.adapters.postgres import Member, Order, parsed_program
from earn.domain.rules import TIER_WINDOW
from loyalty.db import insert_many
from loyalty.programs import ProgramDefinition

# (column, SQL type) of the rows a batch writes, in the order the journal keeps them.
MEMBER_COLUMNS = (("member_id", "text"), ("program_id", "text"), ("locale", "text"),
                  ("preferred_channel", "text"), ("phone", "text"), ("email", "text"),
                  ("tier_id", "text"), ("enrolled_at", "timestamptz"))
IDENTIFIER_COLUMNS = (("program_id", "text"), ("kind", "text"), ("value", "text"),
                      ("member_id", "text"), ("linked_at", "timestamptz"))
ORDER_COLUMNS = (("program_id", "text"), ("order_id", "text"), ("event_id", "text"),
                 ("member_id", "text"), ("program_version", "integer"), ("channel", "text"),
                 ("currency", "text"), ("total", "numeric"), ("points", "integer"),
                 ("breakdown", "jsonb"), ("returned_amount", "numeric"),
                 ("points_reversed", "integer"), ("occurred_at", "timestamptz"))
RETURN_COLUMNS = (("event_id", "text"), ("program_id", "text"), ("order_id", "text"),
                  ("amount", "numeric"), ("points", "integer"), ("occurred_at", "timestamptz"))
AWARD_COLUMNS = (("event_id", "text"), ("program_id", "text"), ("member_id", "text"),
                 ("kind", "text"), ("points", "integer"), ("reason", "text"),
                 ("occurred_at", "timestamptz"))
SKIPPED_COLUMNS = (("event_id", "text"), ("program_id", "text"), ("reason_code", "text"),
                   ("reason", "text"), ("occurred_at", "timestamptz"))

# What a batch reads of an order: not its breakdown (jsonb, decoded for nothing).
ORDER_READ = ("program_id, order_id, event_id, member_id, program_version, total, points,"
              " returned_amount, points_reversed, occurred_at")

_MISSING = object()


@dataclass
class _Writes:
    members: list[tuple[Member, datetime]] = field(default_factory=list)
    identifiers: list[tuple[str, str, str, str, datetime]] = field(default_factory=list)
    orders: list[tuple[str, str]] = field(default_factory=list)  # keys into `orders`
    returns: list[tuple[str, str, str, Decimal, int, datetime]] = field(default_factory=list)
    awards: list[tuple[str, str, str, str, int, str, datetime]] = field(default_factory=list)
    skipped: list[tuple[str, str, str, str, datetime]] = field(default_factory=list)

    def lengths(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in vars(self).items()}

    def truncate(self, lengths: dict[str, int]) -> None:
        for name, n in lengths.items():
            del getattr(self, name)[n:]


class BatchEarnRepository:
    """The `EarnRepository` interface, in memory for one batch (see the module docstring)."""

    def __init__(self) -> None:
        self.programs: dict[str, tuple[int, ProgramDefinition]] = {}
        self.identifiers: dict[tuple[str, str, str], str] = {}
        self.members: dict[str, Member] = {}
        self.tiers: dict[str, str | None] = {}
        self.orders: dict[tuple[str, str], Order] = {}
        self.order_at: dict[tuple[str, str], datetime] = {}
        self.order_rows: dict[tuple[str, str], dict[str, Any]] = {}  # what a new order stores
        # Points each member earned from `settled_since` on, by orders the batch does not
        # load and by awards: every window of the batch (12 months before one of its events)
        # holds all of them. `member_orders` and `member_awards` hold the rest, row by row.
        self.settled_since: datetime | None = None
        self.earned_settled: dict[str, int] = {}
        self.member_orders: dict[str, tuple[tuple[str, str], ...]] = {}
        self.member_awards: dict[str, tuple[tuple[datetime, int], ...]] = {}
        self.dirty_members: dict[str, bool] = {}
        self.dirty_orders: dict[tuple[str, str], bool] = {}
        self.recorded_ids: set[str] = set()  # returns and awards recorded before the batch
        self.writes = _Writes()
        self._journal: list[tuple[dict[Any, Any], Any, Any]] = []
        self._marks: dict[str, int] = {}

    # Loading -------------------------------------------------------------------------------

    @classmethod
    async def load(cls, conn: asyncpg.Connection, *, program_ids: Iterable[str],
                   identifiers: Iterable[tuple[str, str, str]],
                   orders: Iterable[tuple[str, str]], earliest: datetime, latest: datetime,
                   returns: Iterable[str] = (), awards: Iterable[str] = ()
                   ) -> BatchEarnRepository:
        """Everything the records of a batch may read: `identifiers` are (program, kind,
        value), `orders` (program, order id); `earliest` and `latest` are its first and last
        event instants; `returns` and `awards` the event ids of the batch's returns and of its
        activities and adjustments, to know which of them were recorded before (see
        `recorded`)."""
        repo = cls()
        return_ids, award_ids = list(returns), list(awards)
        if return_ids or award_ids:
            repo.recorded_ids = {r["event_id"] for r in await conn.fetch(
                "SELECT event_id FROM returns WHERE event_id = ANY($1::text[])"
                " UNION ALL SELECT event_id FROM awards WHERE event_id = ANY($2::text[])",
                return_ids, award_ids)}
        for r in await conn.fetch("SELECT program_id, version FROM programs"
                                  " WHERE program_id = ANY($1::text[])", list(set(program_ids))):
            repo.programs[r["program_id"]] = (r["version"], await parsed_program(
                conn, r["program_id"], r["version"]))
        idents = list(set(identifiers))
        for r in await conn.fetch(
                "SELECT program_id, kind, value, member_id FROM identifiers"
                " WHERE (program_id, kind, value) IN"
                " (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))",
                [p for p, _, _ in idents], [k for _, k, _ in idents], [v for _, _, v in idents]):
            repo.identifiers[(r["program_id"], r["kind"], r["value"])] = r["member_id"]
        keys = list(set(orders))
        order_rows = await conn.fetch(
            f"SELECT {ORDER_READ} FROM orders WHERE (program_id, order_id) IN"
            " (SELECT * FROM unnest($1::text[], $2::text[]))",
            [p for p, _ in keys], [o for _, o in keys])
        member_ids = set(repo.identifiers.values()) | {r["member_id"] for r in order_rows}
        for r in await conn.fetch(
                "SELECT member_id, program_id, locale, preferred_channel, phone, email, tier_id"
                " FROM members WHERE member_id = ANY($1::text[])", list(member_ids)):
            repo.members[r["member_id"]] = Member(
                r["member_id"], r["program_id"], r["locale"], r["preferred_channel"],
                r["phone"], r["email"])
            repo.tiers[r["member_id"]] = r["tier_id"]
        # Every event's window starts between these two: what was earned from `settled` on
        # is in all of them, summed by the database; what was earned between the two is read
        # row by row, and so are the orders the batch returns (a return changes them).
        since, settled = earliest - TIER_WINDOW, latest - TIER_WINDOW
        repo.settled_since = settled
        members = list(member_ids)
        repo.earned_settled = {r["member_id"]: r["points"] for r in await conn.fetch(
            "SELECT member_id, sum(points)::bigint AS points FROM ("
            " SELECT member_id, points - points_reversed AS points FROM orders"
            "  WHERE member_id = ANY($1::text[]) AND occurred_at >= $2"
            "  AND (program_id, order_id) NOT IN"
            "   (SELECT * FROM unnest($3::text[], $4::text[]))"
            " UNION ALL SELECT member_id, points FROM awards"
            "  WHERE member_id = ANY($1::text[]) AND occurred_at >= $2) earned"
            " GROUP BY member_id",
            members, settled, [r["program_id"] for r in order_rows],
            [r["order_id"] for r in order_rows])}
        recent = await conn.fetch(
            f"SELECT {ORDER_READ} FROM orders WHERE member_id = ANY($1::text[])"
            " AND occurred_at >= $2 AND occurred_at < $3",
            members, since, settled) if since < settled else []
        for r in [*order_rows, *recent]:
            key = (r["program_id"], r["order_id"])
            if key in repo.orders:
                continue
            repo.orders[key] = Order(r["member_id"], r["event_id"], r["program_version"],
                                     r["total"], r["points"], r["returned_amount"],
                                     r["points_reversed"])
            repo.order_at[key] = r["occurred_at"]
            repo.member_orders[r["member_id"]] = (*repo.member_orders.get(r["member_id"], ()),
                                                  key)
        for r in await conn.fetch(
                "SELECT member_id, occurred_at, points FROM awards"
                " WHERE member_id = ANY($1::text[]) AND occurred_at >= $2 AND occurred_at < $3",
                members, since, settled) if since < settled else ():
            repo.member_awards[r["member_id"]] = (
                *repo.member_awards.get(r["member_id"], ()), (r["occurred_at"], r["points"]))
        return repo

    # One record at a time --------------------------------------------------------------------

    def begin(self) -> None:
        self._journal.clear()
        self._marks = self.writes.lengths()

    def rollback(self) -> None:
        for store, key, old in reversed(self._journal):
            if old is _MISSING:
                store.pop(key, None)
            else:
                store[key] = old
        self._journal.clear()
        self.writes.truncate(self._marks)

    def _set(self, store: dict[Any, Any], key: Any, value: Any) -> None:
        self._journal.append((store, key, store.get(key, _MISSING)))
        store[key] = value

    # The EarnRepository interface ----------------------------------------------------------

    async def current_program(self, program_id: str) -> tuple[int, ProgramDefinition] | None:
        return self.programs.get(program_id)

    async def find_members(self, program_id: str, identifiers: list[tuple[str, str]]
                           ) -> dict[tuple[str, str], Member]:
        found = {}
        for kind, value in identifiers:
            member_id = self.identifiers.get((program_id, kind, value))
            if member_id is not None:
                found[(kind, value)] = self.members[member_id]
        return found

    async def add_member(self, member: Member, enrolled_at: datetime) -> None:
        self._set(self.members, member.member_id, member)
        self._set(self.tiers, member.member_id, None)
        self.writes.members.append((member, enrolled_at))

    async def link(self, program_id: str, member_id: str, identifiers: list[tuple[str, str]],
                   at: datetime) -> None:
        for kind, value in identifiers:
            self._set(self.identifiers, (program_id, kind, value), member_id)
            self.writes.identifiers.append((program_id, kind, value, member_id, at))
        contact = dict(identifiers)
        member = self.members[member_id]
        updated = replace(member, phone=member.phone or contact.get("phone"),
                          email=member.email or contact.get("email"))
        if updated != member:
            self._set(self.members, member_id, updated)
            self._set(self.dirty_members, member_id, True)

    async def recorded(self, event_id: str) -> bool:
        """Whether a return, activity or adjustment with this event id was recorded by an
        earlier batch (the ids the batch was loaded with)."""
        return event_id in self.recorded_ids

    async def member(self, member_id: str) -> Member | None:
        return self.members.get(member_id)

    async def points_earned_since(self, member_id: str, since: datetime) -> int:
        """Points earned from `since` on: the start of the 12 months before one of the batch's
        events (no later than `settled_since`, which every such window includes)."""
        if self.settled_since is not None and since > self.settled_since:
            raise ValueError(f"{since} is after the window this batch loaded")
        orders = sum(self.orders[k].points - self.orders[k].points_reversed
                     for k in self.member_orders.get(member_id, ()) if self.order_at[k] >= since)
        awards = sum(p for at, p in self.member_awards.get(member_id, ()) if at >= since)
        return self.earned_settled.get(member_id, 0) + orders + awards

    async def set_tier(self, member_id: str, tier_id: str) -> tuple[bool, str | None]:
        previous = self.tiers.get(member_id)
        if previous == tier_id:
            return False, previous
        self._set(self.tiers, member_id, tier_id)
        self._set(self.dirty_members, member_id, True)
        return True, previous

    async def add_award(self, *, event_id: str, program_id: str, member_id: str, kind: str,
                        points: int, reason: str, occurred_at: datetime) -> None:
        self._set(self.member_awards, member_id,
                  (*self.member_awards.get(member_id, ()), (occurred_at, points)))
        self.writes.awards.append((event_id, program_id, member_id, kind, points, reason,
                                   occurred_at))

    async def order(self, program_id: str, order_id: str) -> Order | None:
        return self.orders.get((program_id, order_id))

    async def add_return(self, *, event_id: str, program_id: str, order_id: str,
                         amount: Decimal, points: int, occurred_at: datetime) -> None:
        key = (program_id, order_id)
        order = self.orders[key]
        self._set(self.orders, key, replace(
            order, returned_amount=order.returned_amount + amount,
            points_reversed=order.points_reversed + points))
        self._set(self.dirty_orders, key, True)
        self.writes.returns.append((event_id, program_id, order_id, amount, points,
                                    occurred_at))

    async def add_order(self, *, program_id: str, order_id: str, event_id: str, member_id: str,
                        program_version: int, channel: str, currency: str, total: Decimal,
                        points: int, breakdown: list[dict[str, Any]],
                        occurred_at: datetime) -> str | None:
        key = (program_id, order_id)
        if key in self.orders:
            return self.orders[key].event_id
        self._set(self.orders, key, Order(member_id, event_id, program_version, total, points,
                                          Decimal(0), 0))
        self._set(self.order_at, key, occurred_at)
        self._set(self.order_rows, key, {"channel": channel, "currency": currency,
                                         "breakdown": breakdown})
        self._set(self.member_orders, member_id, (*self.member_orders.get(member_id, ()), key))
        self.writes.orders.append(key)
        return None

    async def skip(self, *, event_id: str, program_id: str, reason_code: str, reason: str,
                   occurred_at: datetime) -> None:
        self.writes.skipped.append((event_id, program_id, reason_code, reason, occurred_at))

    # Writing ---------------------------------------------------------------------------------

    async def flush(self, conn: asyncpg.Connection) -> None:
        w = self.writes
        if w.members:  # as they are at the end of the batch
            await insert_many(conn, "members", MEMBER_COLUMNS, [
                (m.member_id, m.program_id, m.locale, m.preferred_channel, m.phone, m.email,
                 self.tiers.get(m.member_id), at)
                for m, at in ((self.members[n.member_id], at) for n, at in w.members)])
        await insert_many(conn, "identifiers", IDENTIFIER_COLUMNS, w.identifiers)
        new_members = {m.member_id for m, _ in w.members}
        dirty = [m for m in self.dirty_members if m not in new_members]
        if dirty:
            await conn.executemany(
                "UPDATE members SET phone = $2, email = $3, tier_id = $4 WHERE member_id = $1",
                [(m, self.members[m].phone, self.members[m].email, self.tiers.get(m))
                 for m in dirty])
        await insert_many(conn, "orders", ORDER_COLUMNS, [
            (p, o, order.event_id, order.member_id, order.program_version, row["channel"],
             row["currency"], order.total, order.points, row["breakdown"],
             order.returned_amount, order.points_reversed, self.order_at[(p, o)])
            for (p, o) in w.orders
            for order, row in [(self.orders[(p, o)], self.order_rows[(p, o)])]])
        new_orders = set(w.orders)
        existing = [k for k in self.dirty_orders if k not in new_orders]
        if existing:
            await conn.executemany(
                "UPDATE orders SET returned_amount = $3, points_reversed = $4"
                " WHERE program_id = $1 AND order_id = $2",
                [(p, o, self.orders[(p, o)].returned_amount, self.orders[(p, o)].points_reversed)
                 for p, o in existing])
        await insert_many(conn, "returns", RETURN_COLUMNS, w.returns)
        await insert_many(conn, "awards", AWARD_COLUMNS, w.awards)
        await insert_many(conn, "skipped", SKIPPED_COLUMNS, w.skipped,
                          suffix="ON CONFLICT DO NOTHING")
