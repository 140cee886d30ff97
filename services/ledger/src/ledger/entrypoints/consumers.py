"""The ledger's subscribers: decode, validate, call one handler. No business logic here."""

from __future__ import annotations

from typing import Any

import asyncpg
from pydantic import TypeAdapter, ValidationError

from ledger import handlers
from ledger.adapters.postgres import LedgerRepository
from loyalty import topics
from loyalty.contracts import MemberEvent
from loyalty.ledger_commands import Credit, Debit, LedgerCommand
from loyalty.messaging import Envelope, Outbox, Rejected, validate
from loyalty.service import Runtime

_commands: TypeAdapter[Credit | Debit] = TypeAdapter(LedgerCommand)


def decode_command(payload: dict[str, Any]) -> tuple[str, Credit | Debit]:
    try:
        command = _commands.validate_python(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "command"
        code = "missing_field" if first["type"] == "missing" else "invalid_command"
        raise Rejected(code, f"{where}: {first['msg']}") from None
    return command.command_id, command


async def on_command(conn: asyncpg.Connection, env: Envelope[Credit | Debit],
                     outbox: Outbox) -> None:
    repo = LedgerRepository(conn)
    command = env.message
    if isinstance(command, Credit):
        await handlers.credit(repo, command, outbox)
    else:
        await handlers.debit(repo, command, outbox)


def decode_member(payload: dict[str, Any]) -> tuple[str, MemberEvent]:
    event = validate(MemberEvent, payload)
    return event.event_id, event


async def on_member(conn: asyncpg.Connection, env: Envelope[MemberEvent], _: Outbox) -> None:
    event = env.message
    await LedgerRepository(conn).save_identifiers(event.program_id, event.member_id,
                                                  event.identifiers)


def wire(runtime: Runtime) -> None:
    runtime.consume(topics.LEDGER_COMMANDS, decode_command, on_command)
    runtime.consume(topics.MEMBERS, decode_member, on_member)
