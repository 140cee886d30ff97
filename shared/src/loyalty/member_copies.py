"""The copies of the members that services keep from `loyalty.members.v1`: identifiers (for
`{ref}` lookups: the ledger, the expiry scheduler, reward-fulfilment) and contact data (the
services that notify: the scheduler and reward-fulfilment).

A batch of member events is merged first (an upsert cannot touch a row twice, and a member
enrolled and linked within one batch is two events of one row), then written in one statement
per table. Rows that are new, nearly all of them when shoppers enrol, go in by COPY
(`db.copy_if_new`); only a batch that names one already there takes the upsert.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from loyalty.contracts import MemberEvent
from loyalty.db import copy_if_new, insert_many

IDENTIFIER_COLUMNS = (("program_id", "text"), ("kind", "text"), ("value", "text"),
                      ("member_id", "text"))
CONTACT_COLUMNS = (("program_id", "text"), ("member_id", "text"), ("locale", "text"),
                   ("channel", "text"), ("phone", "text"), ("email", "text"))
# None keeps what is known.
_CONTACT_UPSERT = ("ON CONFLICT (program_id, member_id) DO UPDATE SET"
                   " locale = COALESCE(EXCLUDED.locale, members.locale),"
                   " channel = COALESCE(EXCLUDED.channel, members.channel),"
                   " phone = COALESCE(EXCLUDED.phone, members.phone),"
                   " email = COALESCE(EXCLUDED.email, members.email)")


@dataclass
class Contact:
    """A member's contact data, as the services that notify keep it."""

    program_id: str
    member_id: str
    locale: str | None
    channel: str | None
    phone: str | None
    email: str | None


def merge_contacts(events: list[MemberEvent]) -> list[Contact]:
    """One row per member, as applying the events one after another would leave it: a later
    value wins, a None keeps the earlier one. Sorted by key, so two batches lock the rows
    they share in the same order."""
    merged: dict[tuple[str, str], Contact] = {}
    for e in events:
        now = Contact(e.program_id, e.member_id, e.locale, e.channel,
                      e.identifiers.get("phone"), e.identifiers.get("email"))
        if (was := merged.get((e.program_id, e.member_id))) is not None:
            now.locale = _later(was.locale, now.locale)
            now.channel = _later(was.channel, now.channel)
            now.phone = _later(was.phone, now.phone)
            now.email = _later(was.email, now.email)
        merged[(e.program_id, e.member_id)] = now
    return [merged[k] for k in sorted(merged)]


def _later(earlier: str | None, later: str | None) -> str | None:
    return earlier if later is None else later


def identifier_owners(events: list[MemberEvent], *, keep_first: bool = False
                      ) -> list[tuple[str, str, str, str]]:
    """(program, kind, value, member), sorted: an identifier named twice in a batch goes to
    its latest owner, or with `keep_first` to its first."""
    owners: dict[tuple[str, str, str], str] = {}
    for e in events:
        for kind, value in e.identifiers.items():
            key = (e.program_id, kind, value)
            if not keep_first or key not in owners:
                owners[key] = e.member_id
    return [(*k, owners[k]) for k in sorted(owners)]


async def save_identifiers(conn: asyncpg.Connection, events: list[MemberEvent], *,
                           keep_first: bool = False) -> None:
    """The identifiers a batch of member events names, each to its latest owner, or with
    `keep_first` to its first (`identifier_owners`), which also keeps an owner already
    stored."""
    rows = identifier_owners(events, keep_first=keep_first)
    if rows and not await copy_if_new(conn, "identifiers", IDENTIFIER_COLUMNS, rows):
        await insert_many(conn, "identifiers", IDENTIFIER_COLUMNS, rows, suffix=(
            "ON CONFLICT DO NOTHING" if keep_first else "ON CONFLICT (program_id, kind, value)"
            " DO UPDATE SET member_id = EXCLUDED.member_id"))


async def save_contacts(conn: asyncpg.Connection, events: list[MemberEvent]) -> None:
    """A batch of member events merged into `members` (`merge_contacts`): the rows of the
    members this batch enrolled by COPY when they are many, the rest (and all, if one of them
    was there already) by the upsert; columns beyond the contact keep their defaults on a new
    row."""
    enrolled = {(e.program_id, e.member_id) for e in events if e.type == "member.enrolled"}
    rows = [(c.program_id, c.member_id, c.locale, c.channel, c.phone, c.email)
            for c in merge_contacts(events)]
    new = [r for r in rows if (r[0], r[1]) in enrolled]
    if new and await copy_if_new(conn, "members", CONTACT_COLUMNS, new):
        rows = [r for r in rows if (r[0], r[1]) not in enrolled]
    if rows:
        await insert_many(conn, "members", CONTACT_COLUMNS, rows, suffix=_CONTACT_UPSERT)
