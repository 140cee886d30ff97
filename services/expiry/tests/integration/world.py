"""The scheduler and the real ledger side by side on real PostgreSQL, without a broker.

Each service has its own scratch database; messages travel from one's outbox to the other's
`BatchConsumer` (the same inbox, decoding and handlers the services run), so a test can
drive months of expiry in milliseconds: sweeps take an explicit `as_of`, and the ledger's
clock is a `FixedClock`. The broker path is covered by the end-to-end tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka.structs import ConsumerRecord

from expiry.adapters.sweeper import run_sweep
from expiry.entrypoints.consumers import (
    decode_ledger,
    decode_members,
    decode_program,
    on_ledger,
    on_members,
    on_program,
)
from expiry.handlers import SweepLimits, SweepReport
from ledger import handlers as ledger_handlers
from ledger.adapters.postgres import LedgerRepository
from ledger.entrypoints.consumers import decode_command
from loyalty import topics
from loyalty.clock import FixedClock, UuidIds
from loyalty.expiry import expires_at_for
from loyalty.messaging import BatchConsumer
from loyalty.programs import ProgramDefinition

PUMP_ROUNDS_MAX = 50


@dataclass
class World:
    expiry_pool: asyncpg.Pool
    ledger_pool: asyncpg.Pool
    clock: FixedClock
    programs: dict[str, ProgramDefinition] = field(default_factory=dict)
    sent: list[dict[str, Any]] = field(default_factory=list)       # notifications
    ledger_events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)    # what the scheduler sent
    offset: int = 0

    def __post_init__(self) -> None:
        async def apply(conn, envs, outbox) -> None:
            await ledger_handlers.apply_commands(LedgerRepository(conn),
                                                 [e.message for e in envs], self.clock.now(),
                                                 outbox)

        pool = self.expiry_pool
        self.to_ledger = BatchConsumer(service="ledger", topic=topics.LEDGER_COMMANDS,
                                       pool=self.ledger_pool, decode=decode_command,
                                       handle_batch=apply)
        self.on_programs = BatchConsumer(service="expiry-scheduler", topic=topics.PROGRAMS,
                                         pool=pool, decode=decode_program, handle=on_program,
                                         use_inbox=False)
        self.on_members = BatchConsumer(service="expiry-scheduler", topic=topics.MEMBERS,
                                        pool=pool, decode=decode_members,
                                        handle_batch=on_members)
        self.on_ledger = BatchConsumer(service="expiry-scheduler", topic=topics.LEDGER,
                                       pool=pool, decode=decode_ledger, handle_batch=on_ledger)

    def record(self, topic: str, payload: dict[str, Any] | bytes, key: str = "k"
               ) -> ConsumerRecord:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.offset += 1
        return ConsumerRecord(topic, 0, self.offset, 0, 0, key.encode(), raw, None, 0,
                              len(raw), ())

    # Inputs ---------------------------------------------------------------------------------

    async def program(self, definition: dict[str, Any]) -> ProgramDefinition:
        program = ProgramDefinition.model_validate(definition)
        self.programs[program.id] = program
        await self.on_programs([self.record(topics.PROGRAMS, {
            "type": "program.defined", "event_id": UuidIds().new_id(),
            **program.to_message()})])
        return program

    async def member(self, program_id: str, member_id: str, *, phone: str | None = None,
                     email: str | None = None, locale: str = "lt",
                     channel: str | None = "sms") -> None:
        identifiers = {k: v for k, v in (("phone", phone), ("email", email)) if v}
        await self.on_members([self.record(topics.MEMBERS, {
            "event_id": UuidIds().new_id(), "type": "member.enrolled",
            "occurred_at": self.clock.now().isoformat(), "program_id": program_id,
            "member_id": member_id, "identifiers": identifiers, "locale": locale,
            "channel": channel})])

    async def command(self, **command: Any) -> str:
        """A ledger command (credit, debit, reserve ...), applied, and the events pumped."""
        command.setdefault("command_id", UuidIds().new_id())
        command.setdefault("reason", command["type"])
        command.setdefault("source", {"kind": "purchase", "id": command["command_id"]})
        for name in ("occurred_at", "expires_at", "watermark"):
            if isinstance(command.get(name), datetime):
                command[name] = command[name].isoformat()
        await self.to_ledger([self.record(topics.LEDGER_COMMANDS, command,
                                          command["member_id"])])
        await self.pump()
        return command["command_id"]

    async def earn(self, program_id: str, member_id: str, points: int, at: datetime) -> str:
        """A purchase credit, stamped with its expiry the way earn stamps it."""
        program = self.programs[program_id]
        return await self.command(
            type="credit", program_id=program_id, member_id=member_id, points=points,
            occurred_at=at, expires_at=expires_at_for(program.expiry, program.time_zone, at))

    async def spend(self, program_id: str, member_id: str, points: int, at: datetime) -> str:
        return await self.command(type="debit", program_id=program_id, member_id=member_id,
                                  points=points, occurred_at=at,
                                  source={"kind": "redemption", "id": UuidIds().new_id()})

    # Moving messages ------------------------------------------------------------------------

    async def pump(self, *, to_ledger: bool = True) -> None:
        """Deliver outbox rows until both services are quiet."""
        for _ in range(PUMP_ROUNDS_MAX):
            moved = 0
            if to_ledger:
                commands = await self._take(self.expiry_pool, topics.LEDGER_COMMANDS)
                self.commands += [json.loads(r.value) for r in commands]
                if commands:
                    await self.to_ledger(commands)
                moved += len(commands)
            events = await self._take(self.ledger_pool, topics.LEDGER)
            self.ledger_events += [json.loads(r.value) for r in events]
            if events:
                await self.on_ledger(events)
            moved += len(events)
            for topic in (topics.NOTIFICATIONS_SMS, topics.NOTIFICATIONS_EMAIL):
                self.sent += [json.loads(r.value) for r in await self._take(self.expiry_pool,
                                                                           topic)]
            if not moved:
                return
        raise AssertionError("the services never went quiet")

    async def _take(self, pool: asyncpg.Pool, topic: str) -> list[ConsumerRecord]:
        rows = await pool.fetch("DELETE FROM outbox WHERE topic = $1 RETURNING id, key, value",
                                topic)
        return [self.record(topic, bytes(r["value"]), (r["key"] or b"k").decode())
                for r in sorted(rows, key=lambda r: r["id"])]

    async def sweep(self, as_of: datetime, *, dry_run: bool = False, pump: bool = True,
                    limits: SweepLimits | None = None) -> SweepReport:
        report = await run_sweep(self.expiry_pool, as_of, limits or SweepLimits(),
                                 run_id=UuidIds().new_id(), dry_run=dry_run, forecast_max=1000)
        if pump:
            self.clock.set(max(self.clock.now(), as_of))
            await self.pump()
        return report

    # Reading --------------------------------------------------------------------------------

    async def balance(self, program_id: str, member_id: str) -> int:
        return await self.ledger_pool.fetchval(
            "SELECT balance FROM accounts WHERE program_id = $1 AND account_id = $2",
            program_id, member_id) or 0

    def messages(self, template: str, member_id: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["template"] == template
                and (member_id is None or m["member_id"] == member_id)]
