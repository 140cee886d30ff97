"""The scheduler's repository: plain SQL over its own schema, inside the caller's transaction.

Bulk statements (`unnest`) throughout: a batch of ledger events or a sweep batch is a handful
of round trips, whatever its size. The sweep's selections lock what they pick
(`FOR UPDATE ... SKIP LOCKED`) and mark it in the same transaction (a lot's
`pending_command_id`, a notice's primary key), so two sweeps at once (a replica, the CLI)
never pick the same lot or send the same notice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from expiry.domain.schedule import ExpireOrder, LotDue, Program
from loyalty import member_copies
from loyalty.contracts import MemberEvent
from loyalty.db import insert_many


@dataclass(frozen=True)
class Contact:
    locale: str | None
    channel: str | None
    phone: str | None
    email: str | None
    balance: int


@dataclass(frozen=True)
class NoticeCandidate:
    program_id: str
    member_id: str
    due_at: datetime
    points: int


# The columns of a new lot, written by binary COPY (`insert_many`).
LOT_COLUMNS = (("lot_id", "bigint"), ("program_id", "text"), ("member_id", "text"),
               ("points", "bigint"), ("remaining", "bigint"), ("earned_at", "timestamptz"),
               ("expires_at", "timestamptz"), ("policy", "text"))


@dataclass(frozen=True)
class NewLot:
    lot_id: int
    program_id: str
    member_id: str
    points: int
    earned_at: datetime
    expires_at: datetime | None
    policy: str


# Selections the sweep shares: a lot an expire command may name.
_OPEN_LOT = ("l.remaining > 0 AND l.pending_command_id IS NULL AND NOT l.held_back")


class ExpiryRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    # Programs and members -----------------------------------------------------------------

    async def save_program(self, program: Program, definition: dict[str, Any]) -> None:
        await self.conn.execute(
            "INSERT INTO programs (program_id, name, time_zone, default_locale, policy,"
            " inactivity_months, warn_days_before, redemption_closes_at, definition,"
            " closing_notice_days)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            " ON CONFLICT (program_id) DO UPDATE SET name = EXCLUDED.name,"
            " time_zone = EXCLUDED.time_zone, default_locale = EXCLUDED.default_locale,"
            " policy = EXCLUDED.policy, inactivity_months = EXCLUDED.inactivity_months,"
            " warn_days_before = EXCLUDED.warn_days_before,"
            " redemption_closes_at = EXCLUDED.redemption_closes_at,"
            " closing_notice_days = EXCLUDED.closing_notice_days,"
            " definition = EXCLUDED.definition, updated_at = now()",
            program.program_id, program.name, program.time_zone, program.default_locale,
            program.policy, program.inactivity_months, list(program.warn_days_before),
            program.redemption_closes_at, definition, list(program.closing_notice_days))

    async def programs(self, program_ids: Iterable[str] | None = None) -> dict[str, Program]:
        if program_ids is None:
            rows = await self.conn.fetch("SELECT * FROM programs")
        else:
            rows = await self.conn.fetch("SELECT * FROM programs WHERE program_id = ANY($1)",
                                         list(set(program_ids)))
        return {r["program_id"]: _program(r) for r in rows}

    async def program_definition(self, program_id: str) -> tuple[Program, dict[str, Any]] | None:
        row = await self.conn.fetchrow("SELECT * FROM programs WHERE program_id = $1",
                                       program_id)
        return None if row is None else (_program(row), row["definition"])

    async def members_with_activity(self, program_id: str, after_member: str, limit: int
                                    ) -> list[tuple[str, datetime]]:
        rows = await self.conn.fetch(
            "SELECT member_id, last_activity_at FROM members WHERE program_id = $1"
            " AND member_id > $2 AND last_activity_at IS NOT NULL ORDER BY member_id LIMIT $3",
            program_id, after_member, limit)
        return [(r["member_id"], r["last_activity_at"]) for r in rows]

    async def clear_inactivity_dues(self, program_id: str) -> None:
        await self.conn.execute(
            "UPDATE members SET inactivity_due_at = NULL WHERE program_id = $1"
            " AND inactivity_due_at IS NOT NULL", program_id)

    async def set_inactivity_dues(self, dues: Sequence[tuple[str, str, datetime | None]]
                                  ) -> None:
        if not dues:
            return
        await self.conn.execute(
            "UPDATE members m SET inactivity_due_at = t.due FROM unnest($1::text[], $2::text[],"
            " $3::timestamptz[]) AS t(p, m, due) WHERE m.program_id = t.p AND m.member_id = t.m",
            *map(list, zip(*dues, strict=True)))

    async def save_contacts(self, events: list[MemberEvent]) -> None:
        await member_copies.save_contacts(self.conn, events)

    async def save_identifiers(self, events: list[MemberEvent]) -> None:
        """The latest link of an identifier wins."""
        await member_copies.save_identifiers(self.conn, events)

    async def contacts(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Contact]:
        keys = list(set(keys))
        if not keys:
            return {}
        rows = await self.conn.fetch(
            "SELECT program_id, member_id, locale, channel, phone, email, balance FROM members"
            " WHERE (program_id, member_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [k[0] for k in keys], [k[1] for k in keys])
        return {(r["program_id"], r["member_id"]): Contact(
            r["locale"], r["channel"], r["phone"], r["email"], r["balance"]) for r in rows}

    # Ledger movements ---------------------------------------------------------------------

    async def insert_lots(self, lots: Sequence[NewLot]) -> None:
        """New lots by binary COPY: the inbox already keeps a ledger event from being applied
        twice, so a lot id seen again is a bug, refused by the key (the batch is then replayed
        an event at a time and that one dead-lettered), not skipped by `ON CONFLICT`."""
        await insert_many(self.conn, "lots", LOT_COLUMNS, [
            (x.lot_id, x.program_id, x.member_id, x.points, x.points, x.earned_at, x.expires_at,
             x.policy) for x in lots])

    async def move_lots(self, taken: dict[int, int]) -> None:
        """Subtract the points each lot lost (negative: got back)."""
        if not taken:
            return
        await self.conn.execute(
            "UPDATE lots SET remaining = remaining - t.n FROM unnest($1::bigint[], $2::bigint[])"
            " AS t(i, n) WHERE lots.lot_id = t.i", list(taken), list(taken.values()))

    async def save_movements(self, rows: Sequence[tuple[str, str, int, datetime | None]]
                             ) -> dict[tuple[str, str], datetime | None]:
        """(program, member, balance after, activity instant or None) per member, in order;
        returns each member's newest activity now known."""
        if not rows:
            return {}
        result = await self.conn.fetch(
            "INSERT INTO members (program_id, member_id, balance, last_activity_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[])"
            " ON CONFLICT (program_id, member_id) DO UPDATE SET balance = EXCLUDED.balance,"
            " last_activity_at = GREATEST(members.last_activity_at, EXCLUDED.last_activity_at)"
            " RETURNING program_id, member_id, last_activity_at",
            *map(list, zip(*rows, strict=True)))
        return {(r["program_id"], r["member_id"]): r["last_activity_at"] for r in result}

    async def settle_requests(self, answers: dict[str, tuple[int | None, str | None]]) -> None:
        """The ledger answered these expire commands: (points expired, refusal code). Their
        lots may be named again; a lot the ledger kept points of (held for a redemption)
        waits for the hold to end (`held_back`)."""
        if not answers:
            return
        await self.conn.execute(
            "WITH a AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])"
            "  AS a(command_id, expired, refusal)),"
            " r AS (UPDATE expire_requests e SET expired = a.expired, refusal = a.refusal,"
            "  answered_at = now() FROM a WHERE e.command_id = a.command_id"
            "  RETURNING e.command_id, e.points, a.expired)"
            " UPDATE lots l SET pending_command_id = NULL, held_back = (l.remaining > 0"
            "  AND r.expired IS NOT NULL AND r.expired < r.points)"
            " FROM r WHERE l.pending_command_id = r.command_id",
            list(answers), [a[0] for a in answers.values()], [a[1] for a in answers.values()])

    async def release_held_back(self, keys: Iterable[tuple[str, str]]) -> None:
        keys = list(set(keys))
        if not keys:
            return
        await self.conn.execute(
            "UPDATE lots SET held_back = false WHERE held_back AND (program_id, member_id) IN"
            " (SELECT * FROM unnest($1::text[], $2::text[]))",
            [k[0] for k in keys], [k[1] for k in keys])

    async def exempt_reversed(self, reversals: Sequence[tuple[str, list[int]]]) -> None:
        """Lots given back by a reversal of one of our expire commands: support undid that
        expiry, so the sweep leaves them alone (a sunset still ends them)."""
        if not reversals:
            return
        await self.conn.execute(
            "UPDATE lots SET exempt = true FROM unnest($1::text[], $2::bigint[]) AS t(c, i)"
            " WHERE lots.lot_id = t.i AND EXISTS"
            " (SELECT 1 FROM expire_requests e WHERE e.command_id = t.c)",
            [c for c, lots in reversals for _ in lots], [i for _, lots in reversals for i in lots])

    # The sweep ----------------------------------------------------------------------------

    async def due_lots(self, as_of: datetime, limit: int,
                       after: tuple[datetime, int] | None = None) -> list[LotDue]:
        """Lots due by their own expiry (before any sunset of their program), soonest first,
        after `after` (the last lot a previous batch of the same sweep picked: each batch
        starts where the last ended instead of stepping over the lots it just marked)."""
        query = (
            "SELECT l.lot_id, l.program_id, l.member_id, l.remaining, l.earned_at, l.expires_at"
            " FROM lots l JOIN programs p USING (program_id)"
            f" WHERE l.expires_at <= $1 AND {_OPEN_LOT} AND NOT l.exempt{{after}}"
            " AND (p.redemption_closes_at IS NULL OR l.expires_at < p.redemption_closes_at)"
            " ORDER BY l.expires_at, l.lot_id LIMIT $2 FOR UPDATE OF l SKIP LOCKED")
        if after is None:
            rows = await self.conn.fetch(query.format(after=""), as_of, limit)
        else:
            rows = await self.conn.fetch(
                query.format(after=" AND (l.expires_at, l.lot_id) > ($3, $4)"), as_of, limit,
                *after)
        return [_lot(r) for r in rows]

    async def more_due_lots_of(self, keys: Sequence[tuple[str, str]], as_of: datetime,
                               picked: Sequence[int], limit: int) -> list[LotDue]:
        """The other due lots of these members, so each member's due lots go in one command
        even when other members' lots came between them in due order."""
        rows = await self.conn.fetch(
            "SELECT l.lot_id, l.program_id, l.member_id, l.remaining, l.earned_at, l.expires_at"
            " FROM lots l JOIN programs p USING (program_id)"
            " WHERE (l.program_id, l.member_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
            f" AND l.expires_at <= $3 AND {_OPEN_LOT} AND NOT l.exempt"
            " AND l.lot_id <> ALL($4::bigint[])"
            " AND (p.redemption_closes_at IS NULL OR l.expires_at < p.redemption_closes_at)"
            " ORDER BY l.expires_at, l.lot_id LIMIT $5 FOR UPDATE OF l SKIP LOCKED",
            [k[0] for k in keys], [k[1] for k in keys], as_of, list(picked), limit)
        return [_lot(r) for r in rows]

    async def inactive_members(self, as_of: datetime, limit: int
                               ) -> list[tuple[str, str, datetime | None, datetime]]:
        """Members of inactivity programs whose deadline passed and who still hold points."""
        rows = await self.conn.fetch(
            "SELECT m.program_id, m.member_id, m.last_activity_at, m.inactivity_due_at"
            " FROM members m JOIN programs p USING (program_id)"
            " WHERE p.policy = 'inactivity' AND m.inactivity_due_at <= $1"
            " AND (p.redemption_closes_at IS NULL OR m.inactivity_due_at < p.redemption_closes_at)"
            " AND EXISTS (SELECT 1 FROM lots l WHERE l.program_id = m.program_id"
            f"  AND l.member_id = m.member_id AND {_OPEN_LOT} AND NOT l.exempt)"
            " ORDER BY m.inactivity_due_at, m.member_id LIMIT $2 FOR UPDATE OF m SKIP LOCKED",
            as_of, limit)
        return [(r["program_id"], r["member_id"], r["last_activity_at"],
                 r["inactivity_due_at"]) for r in rows]

    async def open_lots_of(self, keys: Sequence[tuple[str, str]], *, include_exempt: bool
                           ) -> list[LotDue]:
        rows = await self.conn.fetch(
            "SELECT lot_id, program_id, member_id, remaining, earned_at, expires_at FROM lots l"
            " WHERE (program_id, member_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
            f" AND {_OPEN_LOT} AND ($3 OR NOT l.exempt)"
            " ORDER BY program_id, member_id, lot_id FOR UPDATE SKIP LOCKED",
            [k[0] for k in keys], [k[1] for k in keys], include_exempt)
        return [_lot(r) for r in rows]

    async def sunset_lots(self, as_of: datetime, limit: int
                          ) -> tuple[list[LotDue], dict[tuple[str, str], datetime]]:
        """Lots of programs whose redemption deadline passed, member by member."""
        rows = await self.conn.fetch(
            "SELECT l.lot_id, l.program_id, l.member_id, l.remaining, l.earned_at, l.expires_at,"
            " p.redemption_closes_at FROM lots l JOIN programs p USING (program_id)"
            f" WHERE p.redemption_closes_at <= $1 AND {_OPEN_LOT}"
            " ORDER BY l.program_id, l.member_id, l.lot_id LIMIT $2 FOR UPDATE OF l SKIP LOCKED",
            as_of, limit)
        return ([_lot(r) for r in rows],
                {(r["program_id"], r["member_id"]): r["redemption_closes_at"] for r in rows})

    async def last_activity(self, keys: Iterable[tuple[str, str]]
                            ) -> dict[tuple[str, str], datetime | None]:
        keys = list(set(keys))
        rows = await self.conn.fetch(
            "SELECT program_id, member_id, last_activity_at FROM members WHERE"
            " (program_id, member_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [k[0] for k in keys], [k[1] for k in keys])
        return {(r["program_id"], r["member_id"]): r["last_activity_at"] for r in rows}

    async def record_orders(self, orders: Sequence[ExpireOrder]) -> None:
        """The commands are on their way: their lots are pending until the ledger answers."""
        if not orders:
            return
        await self.conn.execute(
            "INSERT INTO expire_requests (command_id, program_id, member_id, kind, lots, points,"
            " as_of) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::int[], $6::bigint[], $7::timestamptz[]) ON CONFLICT DO NOTHING",
            [o.command_id for o in orders], [o.program_id for o in orders],
            [o.member_id for o in orders], [o.kind for o in orders],
            [len(o.lots) for o in orders], [o.points for o in orders],
            [o.as_of for o in orders])
        await self.conn.execute(
            "UPDATE lots SET pending_command_id = t.c FROM unnest($1::bigint[], $2::text[])"
            " AS t(i, c) WHERE lots.lot_id = t.i",
            [lot for o in orders for lot, _ in o.lots],
            [o.command_id for o in orders for _ in o.lots])

    async def max_warn_days(self) -> int:
        return await self.conn.fetchval(
            "SELECT COALESCE(max(d), 0) FROM programs, unnest(warn_days_before) d")

    async def lot_warnings(self, as_of: datetime, horizon_days: int, limit: int
                           ) -> list[NoticeCandidate]:
        """(member, due instant) groups of lots whose nearest reached warning threshold has
        not been decided yet."""
        rows = await self.conn.fetch(
            "SELECT l.program_id, l.member_id, l.expires_at AS due_at, sum(l.remaining) AS points"
            " FROM lots l JOIN programs p USING (program_id)"
            " CROSS JOIN LATERAL (SELECT min(d) AS days FROM unnest(p.warn_days_before) d"
            "  WHERE l.expires_at - make_interval(hours => 24 * d) <= $1) t"
            " WHERE l.remaining > 0 AND NOT l.exempt AND l.expires_at > $1"
            " AND l.expires_at <= $1 + make_interval(hours => 24 * $2) AND t.days IS NOT NULL"
            " AND (p.redemption_closes_at IS NULL OR l.expires_at < p.redemption_closes_at)"
            " AND NOT EXISTS (SELECT 1 FROM notices n WHERE n.program_id = l.program_id"
            "  AND n.member_id = l.member_id AND n.template = 'expiry_warning'"
            "  AND n.due_at = l.expires_at AND n.threshold_days = t.days)"
            " GROUP BY 1, 2, 3 ORDER BY 3, 2 LIMIT $3", as_of, horizon_days, limit)
        return [_candidate(r) for r in rows]

    async def inactivity_warnings(self, as_of: datetime, horizon_days: int, limit: int
                                  ) -> list[NoticeCandidate]:
        rows = await self.conn.fetch(
            "SELECT m.program_id, m.member_id, m.inactivity_due_at AS due_at, m.balance AS points"
            " FROM members m JOIN programs p USING (program_id)"
            " CROSS JOIN LATERAL (SELECT min(d) AS days FROM unnest(p.warn_days_before) d"
            "  WHERE m.inactivity_due_at - make_interval(hours => 24 * d) <= $1) t"
            " WHERE p.policy = 'inactivity' AND m.balance > 0 AND m.inactivity_due_at > $1"
            " AND m.inactivity_due_at <= $1 + make_interval(hours => 24 * $2)"
            " AND t.days IS NOT NULL"
            " AND (p.redemption_closes_at IS NULL OR m.inactivity_due_at < p.redemption_closes_at)"
            " AND NOT EXISTS (SELECT 1 FROM notices n WHERE n.program_id = m.program_id"
            "  AND n.member_id = m.member_id AND n.template = 'expiry_warning'"
            "  AND n.due_at = m.inactivity_due_at AND n.threshold_days = t.days)"
            " ORDER BY 3, 2 LIMIT $3", as_of, horizon_days, limit)
        return [_candidate(r) for r in rows]

    async def closing_notices(self, as_of: datetime, limit: int) -> list[NoticeCandidate]:
        """Members still holding points of a program whose redemption deadline is near (each
        program's own `closing_notice_days`)."""
        rows = await self.conn.fetch(
            "SELECT m.program_id, m.member_id, p.redemption_closes_at AS due_at,"
            " m.balance AS points FROM programs p JOIN members m USING (program_id)"
            " CROSS JOIN LATERAL (SELECT min(d) AS days FROM unnest(p.closing_notice_days) d"
            "  WHERE p.redemption_closes_at - make_interval(hours => 24 * d) <= $1) t"
            " WHERE p.redemption_closes_at > $1 AND t.days IS NOT NULL AND m.balance > 0"
            " AND NOT EXISTS (SELECT 1 FROM notices n WHERE n.program_id = m.program_id"
            "  AND n.member_id = m.member_id AND n.template = 'program_closing'"
            "  AND n.due_at = p.redemption_closes_at AND n.threshold_days = t.days)"
            " ORDER BY 1, 2 LIMIT $2", as_of, limit)
        return [_candidate(r) for r in rows]

    async def record_notices(self, rows: Sequence[tuple[str, str, str, datetime, int, str, int,
                                                        datetime]]
                             ) -> set[tuple[str, str, str, datetime, int]]:
        """(program, member, template, due, days, status, points, as_of); returns the keys
        this call inserted (a concurrent sweep may have decided some first)."""
        if not rows:
            return set()
        inserted = await self.conn.fetch(
            "INSERT INTO notices (program_id, member_id, template, due_at, threshold_days,"
            " status, points, as_of) SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
            " $4::timestamptz[], $5::int[], $6::text[], $7::bigint[], $8::timestamptz[])"
            " ON CONFLICT DO NOTHING"
            " RETURNING program_id, member_id, template, due_at, threshold_days",
            *map(list, zip(*rows, strict=True)))
        return {(r["program_id"], r["member_id"], r["template"], r["due_at"],
                 r["threshold_days"]) for r in inserted}


def _program(r: asyncpg.Record) -> Program:
    return Program(r["program_id"], r["name"], r["time_zone"], r["default_locale"], r["policy"],
                   r["inactivity_months"], tuple(r["warn_days_before"]),
                   r["redemption_closes_at"], tuple(r["closing_notice_days"]))


def _lot(r: asyncpg.Record) -> LotDue:
    return LotDue(r["lot_id"], r["program_id"], r["member_id"], r["remaining"], r["earned_at"],
                  r["expires_at"])


def _candidate(r: asyncpg.Record) -> NoticeCandidate:
    return NoticeCandidate(r["program_id"], r["member_id"], r["due_at"], int(r["points"]))
