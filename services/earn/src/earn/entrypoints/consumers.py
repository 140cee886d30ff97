"""earn's subscribers: decode, validate, call one handler. No business logic here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from earn import handlers
from earn.adapters.batch import BatchEarnRepository
from earn.adapters.postgres import EarnRepository
from loyalty import metrics, topics
from loyalty.contracts import ActivityEvent, AdjustmentEvent, Customer, PurchaseEvent
from loyalty.identifiers import InvalidIdentifier
from loyalty.logging import correlation
from loyalty.messaging import BatchHandler, ConcurrentWrite, Envelope, Outbox, Rejected, decoder
from loyalty.programs import ProgramDefinition, ProgramFileError
from loyalty.service import Runtime


def decode_program(payload: dict[str, Any]) -> tuple[str, ProgramDefinition]:
    body = {k: v for k, v in payload.items() if k not in ("type", "event_id")}
    try:
        program = ProgramDefinition.from_message(body)
    except (ProgramFileError, ValueError) as exc:
        raise Rejected("invalid_program", str(exc)) from None
    return str(payload.get("event_id") or program.id), program


Event = PurchaseEvent | ActivityEvent | AdjustmentEvent


def batched(apply: Callable[[BatchEarnRepository, Any, Outbox], Awaitable[None]]
            ) -> BatchHandler[Any]:
    """A record-by-record handler, applied to a whole batch over a `BatchEarnRepository`:
    the batch reads in a few queries, and a refused record leaves no trace."""

    async def handle(conn: asyncpg.Connection, envs: list[Envelope[Event]],
                     outbox: Outbox) -> list[tuple[Envelope[Event], Rejected]]:
        events = [env.message for env in envs]
        repo = await BatchEarnRepository.load(
            conn, program_ids=[e.program_id for e in events],
            identifiers=[(e.program_id, kind, value) for e in events
                         for kind, value in identifier_items(e.customer)],
            orders=[(e.program_id, e.order_id) for e in events if isinstance(e, PurchaseEvent)],
            earliest=min(e.occurred_at for e in events),
            latest=max(e.occurred_at for e in events),
            returns=[e.event_id for e in events
                     if isinstance(e, PurchaseEvent) and e.type == "purchase.returned"],
            awards=[e.event_id for e in events if not isinstance(e, PurchaseEvent)])
        refused = []
        for env in envs:
            emitted = Outbox()
            repo.begin()
            mark = metrics.counts_mark()
            with correlation(env.message_id):
                try:
                    await apply(repo, env.message, emitted)
                except Rejected as rej:
                    repo.rollback()
                    metrics.rollback_counts(mark)
                    refused.append((env, rej))
                    continue
            outbox.rows.extend(emitted.rows)
        try:
            async with conn.transaction():
                await repo.flush(conn)
        except asyncpg.UniqueViolationError as exc:
            raise ConcurrentWrite(str(exc)) from exc
        return refused

    return handle


def identifier_items(customer: Customer) -> list[tuple[str, str]]:
    """The customer's normalised identifiers, or none if one is invalid (the handler says so)."""
    try:
        return customer.identifiers.items()
    except InvalidIdentifier:
        return []


def batch_handlers(deps: handlers.Deps) -> dict[str, BatchHandler[Any]]:
    """The handler of each event topic, by topic."""

    async def on_purchase(repo: BatchEarnRepository, event: PurchaseEvent, outbox: Outbox) -> None:
        if event.type == "purchase.completed":
            await handlers.purchase_completed(repo, deps, event, outbox)
        else:
            await handlers.purchase_returned(repo, event, outbox)

    async def on_activity(repo: BatchEarnRepository, event: ActivityEvent, outbox: Outbox) -> None:
        await handlers.activity_completed(repo, deps, event, outbox)

    async def on_adjustment(repo: BatchEarnRepository, event: AdjustmentEvent,
                            outbox: Outbox) -> None:
        await handlers.points_adjusted(repo, deps, event, outbox)

    return {topics.PURCHASES: batched(on_purchase), topics.ACTIVITIES: batched(on_activity),
            topics.ADJUSTMENTS: batched(on_adjustment)}


# Each event topic's message model, and whether it is relaxed: a quiet topic whose latency
# matters less, read with a longer wait for a fuller batch.
EVENT_TOPICS = {topics.PURCHASES: (PurchaseEvent, False), topics.ACTIVITIES: (ActivityEvent, True),
                topics.ADJUSTMENTS: (AdjustmentEvent, True)}


def wire(runtime: Runtime) -> None:
    async def on_program(conn: asyncpg.Connection, env: Envelope[ProgramDefinition],
                         _: Outbox) -> None:
        await handlers.apply_program(EarnRepository(conn), env.message)

    # Programs: the latest definition per key wins; applying one twice changes nothing.
    runtime.consume(topics.PROGRAMS, decode_program, on_program, use_inbox=False,
                    relaxed=True)
    by_topic = batch_handlers(handlers.Deps(clock=runtime.clock, ids=runtime.ids))
    for topic, (model, relaxed) in EVENT_TOPICS.items():
        runtime.consume(topic, decoder(model), handle_batch=by_topic[topic], relaxed=relaxed)
