"""reward-fulfilment's subscribers: decode, validate, call one handler. No business logic.

- `loyalty.redemptions.v1`: requests and cancellations, one savepoint each (a refused one is
  dead-lettered alone), with the inbox: the same request three times is one order.
- `loyalty.internal.ledger-replies.v1`: the ledger's answers to our own commands (its events
  whose `source.kind` is `redemption`, also on `loyalty.ledger.v1`, where every movement of
  the platform passes). No inbox: each answer moves the order only from the state that
  awaits it, so a redelivery finds it past that step.
- `loyalty.members.v1`: our copy of the members and their contact data, set-based (a batch
  is one upsert of members, one insert of identifiers, one query for waiting orders), with
  the inbox.
- `loyalty.programs.v1`: the catalog (latest definition per program wins).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from pydantic import TypeAdapter

from loyalty import topics
from loyalty.contracts import LedgerEvent, MemberEvent, RedemptionEvent, RedemptionRequested
from loyalty.messaging import Envelope, Outbox, Rejected, decoder
from loyalty.programs import ProgramDefinition, ProgramFileError
from loyalty.service import Runtime
from rewards import handlers
from rewards.adapters.postgres import RewardsRepository


def decode_program(payload: dict[str, Any]) -> tuple[str, ProgramDefinition]:
    try:
        program = ProgramDefinition.from_message(payload)
    except (ProgramFileError, ValueError) as exc:
        raise Rejected("invalid_program", str(exc)) from None
    return str(payload.get("event_id") or program.id), program


def wire(runtime: Runtime, deps: handlers.Deps) -> None:
    async def on_program(conn: asyncpg.Connection, env: Envelope[ProgramDefinition],
                         _: Outbox) -> None:
        await RewardsRepository(conn).apply_program(env.message, runtime.clock.now())

    async def on_redemption(conn: asyncpg.Connection, env: Envelope[Any],
                            outbox: Outbox) -> None:
        repo = RewardsRepository(conn)
        if isinstance(env.message, RedemptionRequested):
            await handlers.redemption_requested(repo, deps, env.message, outbox)
        else:
            await handlers.redemption_cancelled(repo, deps, env.message, outbox)

    async def on_ledger_events(conn: asyncpg.Connection, envs: list[Envelope[LedgerEvent]],
                               outbox: Outbox) -> None:
        repo = RewardsRepository(conn)
        for env in envs:
            if env.message.source.kind == "redemption":
                await handlers.ledger_event(repo, deps, env.message, outbox)

    async def on_members(conn: asyncpg.Connection, envs: list[Envelope[MemberEvent]],
                         outbox: Outbox) -> None:
        await handlers.member_events(RewardsRepository(conn), deps, [e.message for e in envs],
                                     outbox)

    runtime.consume(topics.PROGRAMS, decode_program, on_program, use_inbox=False,
                    relaxed=True)
    # Set-based: a batch of members is three statements, not three per member. A batch the
    # database refuses (a CHECK) is replayed one member at a time, and only that one is
    # dead-lettered.
    # Not relaxed: an order waits for its member, who may redeem right after enrolling.
    runtime.consume(topics.MEMBERS, decoder(MemberEvent), handle_batch=on_members)
    runtime.consume(topics.REDEMPTIONS, decoder(TypeAdapter(RedemptionEvent)), on_redemption)
    runtime.consume(topics.LEDGER_REPLIES, decoder(LedgerEvent), handle_batch=on_ledger_events,
                    use_inbox=False)
