"""expiry-scheduler's subscribers and its periodic sweep: decode, validate, call one handler.

Topics: `loyalty.programs.v1` (latest definition wins, no inbox, like earn),
`loyalty.members.v1` (contact data) and `loyalty.ledger.v1` (lots, activity, answers to our
expire commands). A record that does not validate is dead-lettered with the shared codes
(`malformed_json`, `missing_field`, `invalid_field`, `id_conflict`; `invalid_program` for a
definition that does not validate).
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import structlog
from pydantic import BaseModel, ConfigDict, Field

from expiry import handlers
from expiry.adapters.postgres import ExpiryRepository
from expiry.adapters.sweeper import run_sweep
from expiry.settings import Settings
from loyalty import metrics, topics
from loyalty.contracts import LedgerEvent, MemberEvent
from loyalty.messaging import Envelope, Outbox, Rejected, decoder
from loyalty.periodic import every
from loyalty.programs import ProgramDefinition, ProgramFileError
from loyalty.service import Runtime

log = structlog.get_logger(__name__)

# A movement names the lots it touched; a member's whole history in one debit is the most.
LOTS_PER_EVENT_MAX = 100_000


class LotMove(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    lot_id: int
    points: int


class LedgerMovement(LedgerEvent):
    """`loyalty.ledger.v1` with the lot fields the ledger adds (docs/contract-additions.md)."""

    lot_id: int | None = None
    lot_points: int = 0
    lots: Annotated[list[LotMove], Field(max_length=LOTS_PER_EVENT_MAX)] = []
    command_id: str | None = None
    command_type: str | None = None
    reverses: str | None = None


def decode_program(payload: dict[str, Any]) -> tuple[str, ProgramDefinition]:
    try:
        program = ProgramDefinition.from_message(payload)
    except (ProgramFileError, ValueError) as exc:
        raise Rejected("invalid_program", str(exc)[:500]) from None
    return str(payload.get("event_id") or program.id), program


def to_move(e: LedgerMovement) -> handlers.LedgerMove:
    return handlers.LedgerMove(
        event_id=e.event_id, type=e.type, occurred_at=e.occurred_at, program_id=e.program_id,
        member_id=e.member_id, points=e.points, balance_after=e.balance_after,
        source_kind=e.source.kind, expires_at=e.expires_at, lot_id=e.lot_id,
        lot_points=e.lot_points, lots=[(m.lot_id, m.points) for m in e.lots],
        command_id=e.command_id, command_type=e.command_type, reverses=e.reverses,
        error_code=e.error_code)


async def on_program(conn: asyncpg.Connection, env: Envelope[ProgramDefinition],
                     _: Outbox) -> None:
    await handlers.apply_program(ExpiryRepository(conn), env.message)


async def on_members(conn: asyncpg.Connection, envs: list[Envelope[MemberEvent]],
                     _: Outbox) -> None:
    await handlers.apply_member_events(ExpiryRepository(conn), [e.message for e in envs])


async def on_ledger(conn: asyncpg.Connection, envs: list[Envelope[LedgerMovement]],
                    outbox: Outbox) -> None:
    await handlers.apply_ledger_events(ExpiryRepository(conn),
                                       [to_move(e.message) for e in envs], outbox)


decode_members = decoder(MemberEvent)
decode_ledger = decoder(LedgerMovement)


def wire(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    runtime.consume(topics.PROGRAMS, decode_program, on_program, use_inbox=False,
                    relaxed=True)
    # It acts on a schedule: a few hundred milliseconds behind the ledger changes nothing.
    runtime.consume(topics.MEMBERS, decode_members, handle_batch=on_members,
                    relaxed=True)
    runtime.consume(topics.LEDGER, decode_ledger, handle_batch=on_ledger,
                    relaxed=True)

    if settings.sweep_interval_s > 0:
        limits = sweep_limits(settings)

        async def periodic_sweep() -> None:
            with metrics.SWEEP_SECONDS.labels(runtime.name).time():
                report = await run_sweep(runtime.pool, runtime.clock.now(), limits,
                                         run_id=runtime.ids.new_id(),
                                         on_commit=runtime.relay.notify)
            if not report.empty:
                log.info("sweep.done", summary=report.summary())

        runtime.background.append(
            lambda: every(settings.sweep_interval_s, periodic_sweep, "expiry_sweep"))


def sweep_limits(settings: Settings) -> handlers.SweepLimits:
    return handlers.SweepLimits(
        lots_per_batch_max=settings.sweep_batch_lots_max,
        members_per_batch_max=settings.sweep_batch_members_max,
        notices_per_batch_max=settings.sweep_batch_notices_max,
        lots_per_command_max=settings.lots_per_command_max)
