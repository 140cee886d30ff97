"""The ledger's reads for its HTTP routes: members, their transactions, a program's liability.

Plain SQL on the pool, outside any command transaction; each answer comes from one statement
(one snapshot) so its numbers agree with each other. Nothing here writes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import asyncpg

TRANSACTIONS_PAGE_SIZE_DEFAULT = 50
TRANSACTIONS_PAGE_SIZE_MAX = 200
# Our own cursors are about 80 characters; anything much longer is not one of ours.
CURSOR_LENGTH_MAX_CHARS = 1024
_ENTRY_ID_MAX = 2**63 - 1  # entries.entry_id is a bigint
_CURSOR_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$")


class BadCursor(ValueError):
    """The caller's mistake: a `cursor` we did not issue, or issued for another member."""


def encode_cursor(program_id: str, member_id: str, before_entry_id: int) -> str:
    """Opaque to clients: urlsafe base64 (unpadded) of `{"before", "p", "m"}`.

    It is not signed: the program and member in it only stop a cursor being reused on another
    member's page (a client bug), they protect nothing. Editing `before` merely starts the
    page elsewhere in the same member's history, which the caller may read anyway.
    """
    raw = json.dumps({"before": before_entry_id, "p": program_id, "m": member_id},
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, program_id: str, member_id: str) -> int:
    """The entry id a cursor continues before; BadCursor unless we issued it for this member."""
    if not cursor or len(cursor) > CURSOR_LENGTH_MAX_CHARS or not _CURSOR_ALPHABET.match(cursor):
        raise BadCursor("cursor is not one this service issued")
    try:
        # b64decode skips characters outside its alphabet; the regex above refused those.
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError included
        raise BadCursor("cursor is not one this service issued") from None
    if not isinstance(data, dict) or set(data) != {"before", "p", "m"}:
        raise BadCursor("cursor is not one this service issued")
    before = data["before"]
    if isinstance(before, bool) or not isinstance(before, int) or not 0 < before <= _ENTRY_ID_MAX:
        raise BadCursor("cursor is not one this service issued")
    if data["p"] != program_id or data["m"] != member_id:
        raise BadCursor("cursor belongs to another member's transactions")
    return before


class LedgerReads:
    """Read models over the ledger schema (the pool's search_path is `ledger`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def resolve(self, program_id: str, kind: str, value: str) -> str | None:
        """The member_id an identifier (normal form, see loyalty.identifiers) belongs to."""
        return await self.pool.fetchval(
            "SELECT member_id FROM identifiers WHERE program_id = $1 AND kind = $2 AND value = $3",
            program_id, kind, value)

    async def member(self, program_id: str, member_id: str) -> dict[str, Any] | None:
        """CONTRACT's member view, or None when the program has no such member account.

        `expiring` lists open lots with an expiry, summed per instant, soonest first;
        never-expiring points are in the balance but not listed.
        """
        rows = await self.pool.fetch(
            "SELECT a.balance, a.reserved, a.owed, x.points, x.expires_at"
            " FROM accounts a"
            " LEFT JOIN LATERAL ("
            "   SELECT sum(l.remaining) AS points, l.expires_at FROM lots l"
            "   WHERE l.program_id = a.program_id AND l.member_id = a.account_id"
            "     AND l.remaining > 0 AND l.expires_at IS NOT NULL"
            "   GROUP BY l.expires_at) x ON true"
            " WHERE a.program_id = $1 AND a.account_id = $2 AND a.kind = 'member'"
            " ORDER BY x.expires_at",
            program_id, member_id)
        if not rows:
            return None
        first = rows[0]
        return {
            "member_id": member_id,
            "balance": first["balance"],
            "reserved": first["reserved"],
            "available": first["balance"] - first["reserved"],
            "owed": first["owed"],
            "expiring": [{"points": int(r["points"]), "expires_at": r["expires_at"].isoformat()}
                         for r in rows if r["expires_at"] is not None],
        }

    async def transactions(self, program_id: str, member_id: str, limit: int,
                           cursor: str | None) -> dict[str, Any] | None:
        """One page of the member's own entries, newest first; None for an unknown member.

        "Newest" is recording order (entry_id), the order `balance_after` runs in; a late
        event's `occurred_at` may be older than an entry listed after it. Entries are immutable
        and ids only grow, so keyset pages never skip or repeat an entry while new ones arrive.
        An unknown member is reported before a bad cursor. Raises BadCursor for a cursor not
        issued for this member, ValueError for a limit outside 1..TRANSACTIONS_PAGE_SIZE_MAX.
        """
        if not 1 <= limit <= TRANSACTIONS_PAGE_SIZE_MAX:
            raise ValueError(f"limit must be 1 to {TRANSACTIONS_PAGE_SIZE_MAX}")
        async with self.pool.acquire() as conn:
            exists = await conn.fetchval(
                "SELECT true FROM accounts"
                " WHERE program_id = $1 AND account_id = $2 AND kind = 'member'",
                program_id, member_id)
            if not exists:
                return None
            before = (_ENTRY_ID_MAX if cursor is None
                      else decode_cursor(cursor, program_id, member_id))
            # One row beyond the page tells whether there is a next page.
            rows = await conn.fetch(
                "SELECT entry_id, occurred_at, type, points, balance_after, reason,"
                " source_kind, source_id FROM entries"
                " WHERE program_id = $1 AND account_id = $2 AND entry_id < $3"
                " ORDER BY entry_id DESC LIMIT $4",
                program_id, member_id, before, limit + 1)
        page = rows[:limit]
        next_cursor = (encode_cursor(program_id, member_id, page[-1]["entry_id"])
                       if len(rows) > limit else None)
        return {
            "items": [{
                "entry_id": r["entry_id"],
                "occurred_at": r["occurred_at"].isoformat(),
                "type": r["type"],
                "points": r["points"],
                "balance_after": r["balance_after"],
                "reason": r["reason"],
                "source": {"kind": r["source_kind"], "id": r["source_id"]},
            } for r in page],
            "next_cursor": next_cursor,
        }

    async def liability(self, program_id: str) -> dict[str, Any] | None:
        """Outstanding points of a program by expiry month; None if it has no accounts.

        Counted from open lots (remaining > 0), so reserved points are included (still the
        member's until captured) and owed points are not subtracted (a claim on future
        earnings, not points anyone holds). `total` is the sum of the rows themselves, so
        `never_expiring` plus the months equals it by construction. The ledger invariant
        "a member's lots add up to its balance" (checked by `ledger.audit`) makes `total`
        equal the sum of the program's member balances too.

        Months are calendar months in UTC: the ledger does not know the program's time zone.
        Expiry instants are end of day in that zone, so for zones west of UTC the last day of
        a month lands in the next UTC month; zones at or east of UTC are unaffected.
        """
        async with self.pool.acquire() as conn:
            if not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM accounts WHERE program_id = $1)", program_id):
                return None
            rows = await conn.fetch(
                "SELECT to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month,"
                " sum(remaining) AS points"
                " FROM lots WHERE program_id = $1 AND remaining > 0"
                " GROUP BY 1 ORDER BY 1 NULLS FIRST",
                program_id)
        by_month = [{"month": r["month"], "points": int(r["points"])}
                    for r in rows if r["month"] is not None]
        never_expiring = sum(int(r["points"]) for r in rows if r["month"] is None)
        return {
            "program_id": program_id,
            "total": never_expiring + sum(m["points"] for m in by_month),
            "never_expiring": never_expiring,
            "by_expiry_month": by_month,
        }
