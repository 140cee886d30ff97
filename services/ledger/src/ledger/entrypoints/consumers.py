"""The ledger's subscribers: decode, validate, call one handler. No business logic here."""

from __future__ import annotations

import asyncpg
from pydantic import TypeAdapter

from ledger import handlers
from ledger.adapters.postgres import LedgerRepository
from loyalty import metrics, topics
from loyalty.contracts import MemberEvent
from loyalty.ledger_commands import AnyCommand, LedgerCommand
from loyalty.member_copies import save_identifiers
from loyalty.messaging import Envelope, Outbox, decoder
from loyalty.periodic import every
from loyalty.service import Runtime

HOLD_SWEEP_INTERVAL_S = 1.0
LIABILITY_INTERVAL_S = 10.0


decode_command = decoder(TypeAdapter(LedgerCommand), id_field="command_id")


async def on_members(conn: asyncpg.Connection, envs: list[Envelope[MemberEvent]],
                     _: Outbox) -> None:
    """The identifier lookup behind the member routes, a batch of member events at once."""
    await save_identifiers(conn, [e.message for e in envs])


def wire(runtime: Runtime) -> None:
    async def on_commands(conn: asyncpg.Connection, envs: list[Envelope[AnyCommand]],
                          outbox: Outbox) -> None:
        await handlers.apply_commands(LedgerRepository(conn), [e.message for e in envs],
                                      runtime.clock.now(), outbox)

    async def sweep_holds() -> None:
        async with runtime.pool.acquire() as conn, conn.transaction():
            outbox = Outbox()
            released = await handlers.time_out_holds(
                LedgerRepository(conn), runtime.clock.now(), outbox)
            await outbox.flush(conn)
        if released:
            runtime.relay.notify()

    async def report_liability() -> None:
        for row in await runtime.pool.fetch(
                "SELECT program_id, sum(balance) AS points FROM accounts"
                " WHERE kind = 'member' GROUP BY program_id"):
            metrics.POINTS_OUTSTANDING.labels(row["program_id"]).set(row["points"])

    runtime.consume(topics.LEDGER_COMMANDS, decode_command, handle_batch=on_commands)
    # Not relaxed: the member's phone or e-mail must find their balance as soon as the first
    # purchase's SMS is out (the member event and the credit leave earn together).
    runtime.consume(topics.MEMBERS, decoder(MemberEvent), handle_batch=on_members)
    runtime.background.extend([
        lambda: every(HOLD_SWEEP_INTERVAL_S, sweep_holds, "holds_sweep"),
        lambda: every(LIABILITY_INTERVAL_S, report_liability, "liability")])
