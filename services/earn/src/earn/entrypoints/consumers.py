"""earn's subscribers: decode, validate, call one handler. No business logic here."""

from __future__ import annotations

from typing import Any

import asyncpg

from earn import handlers
from earn.adapters.postgres import EarnRepository
from loyalty import topics
from loyalty.contracts import ActivityEvent, AdjustmentEvent, LedgerEvent, PurchaseEvent
from loyalty.messaging import Envelope, Outbox, Rejected, decoder
from loyalty.programs import ProgramDefinition, ProgramFileError
from loyalty.service import Runtime


def decode_program(payload: dict[str, Any]) -> tuple[str, ProgramDefinition]:
    body = {k: v for k, v in payload.items() if k not in ("type", "event_id")}
    try:
        program = ProgramDefinition.from_message(body)
    except (ProgramFileError, ValueError) as exc:
        raise Rejected("invalid_program", str(exc)) from None
    return str(payload.get("event_id") or program.id), program


def wire(runtime: Runtime) -> None:
    deps = handlers.Deps(clock=runtime.clock, ids=runtime.ids)

    async def on_program(conn: asyncpg.Connection, env: Envelope[ProgramDefinition],
                         _: Outbox) -> None:
        await handlers.apply_program(EarnRepository(conn), env.message)

    async def on_purchase(conn: asyncpg.Connection, env: Envelope[PurchaseEvent],
                          outbox: Outbox) -> None:
        event = env.message
        if event.type == "purchase.completed":
            await handlers.purchase_completed(EarnRepository(conn), deps, event, outbox)
        else:
            await handlers.purchase_returned(EarnRepository(conn), event, outbox)

    async def on_activity(conn: asyncpg.Connection, env: Envelope[ActivityEvent],
                          outbox: Outbox) -> None:
        await handlers.activity_completed(EarnRepository(conn), deps, env.message, outbox)

    async def on_adjustment(conn: asyncpg.Connection, env: Envelope[AdjustmentEvent],
                            outbox: Outbox) -> None:
        await handlers.points_adjusted(EarnRepository(conn), deps, env.message, outbox)

    async def on_ledger_events(conn: asyncpg.Connection, envs: list[Envelope[LedgerEvent]],
                               outbox: Outbox) -> None:
        await handlers.notify_movements(EarnRepository(conn), [e.message for e in envs], outbox)

    # Programs: the latest definition per key wins; applying one twice changes nothing.
    runtime.consume(topics.PROGRAMS, decode_program, on_program, use_inbox=False)
    runtime.consume(topics.PURCHASES, decoder(PurchaseEvent), on_purchase)
    runtime.consume(topics.ACTIVITIES, decoder(ActivityEvent), on_activity)
    runtime.consume(topics.ADJUSTMENTS, decoder(AdjustmentEvent), on_adjustment)
    runtime.consume(topics.LEDGER, decoder(LedgerEvent), handle_batch=on_ledger_events)
