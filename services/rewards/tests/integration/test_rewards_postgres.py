"""reward-fulfilment's SQL on real PostgreSQL: allocation racing on many connections, and the
saga's handlers driven by ledger answers (return to the pool, void, timeouts, resends).

A scratch database migrated exactly as the service migrates its schema; no broker needed:
the handlers write to an `Outbox` object, which is inspected.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from cryptography.fernet import Fernet

from loyalty import db, metrics, topics
from loyalty.clock import FixedClock
from loyalty.contracts import LedgerEvent, MemberEvent, RedemptionCancelled, RedemptionRequested
from loyalty.messaging import BatchConsumer, Outbox, Rejected
from loyalty.programs import ProgramDefinition
from loyalty.testing import scratch_service_db
from rewards import handlers
from rewards.adapters.codes_import import import_codes, rotate_keys
from rewards.adapters.postgres import RewardsRepository
from rewards.adapters.vault import CodeVault
from rewards.domain.saga import State
from rewards.entrypoints import consumers, jobs

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
PROGRAM = ProgramDefinition.model_validate({
    "id": "p", "name": "P", "currency": "EUR", "earning": {"points_per_unit": 1},
    "rewards": [{"id": "gift", "name": "Gift", "points": 100, "kind": "code", "pool": "g"},
                {"id": "mug", "name": "Mug", "points": 50, "kind": "physical", "stock": 2}]})
OLD_KEY = Fernet.generate_key()
HMAC_KEY = b"h" * 32
VAULT = CodeVault([OLD_KEY], HMAC_KEY)


@pytest.fixture
async def pool(infra):
    async with scratch_service_db(infra.pg_dsn, "rewards", MIGRATIONS) as (_, pool):
        async with pool.acquire() as conn:
            await RewardsRepository(conn).apply_program(PROGRAM, AT)
        yield pool


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(AT)


@pytest.fixture
def deps(clock) -> handlers.Deps:
    return handlers.Deps(clock=clock, hold_timeout_s=300, step_timeout_s=30, member_wait_s=3)


async def load(pool, codes: list[str]) -> None:
    async with pool.acquire() as conn:
        await import_codes(conn, VAULT, "p", "g", codes, "test")


async def test_a_hundred_concurrent_allocations_share_fifty_codes_exactly(pool) -> None:
    await load(pool, [f"C-{i}" for i in range(50)])

    async def allocate(i: int) -> bool:
        async with pool.acquire() as conn, conn.transaction():
            ok = await RewardsRepository(conn).allocate_codes(f"o-{i}", "p", "g", 1)
            await asyncio.sleep(0.001)  # hold the locks a moment, as a batch would
            return ok

    results = await asyncio.gather(*(allocate(i) for i in range(100)))
    assert results.count(True) == 50
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT order_id, unit FROM codes WHERE status = 'allocated'")
        assert len({r["order_id"] for r in rows}) == 50 and {r["unit"] for r in rows} == {1}
        assert await conn.fetchval("SELECT allocated FROM inventory WHERE name = 'g'") == 50


async def test_a_rolled_back_allocation_gives_its_codes_back(pool) -> None:
    await load(pool, ["R-1", "R-2"])
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        assert await RewardsRepository(conn).allocate_codes("o-1", "p", "g", 2)
        await tx.rollback()
        assert await RewardsRepository(conn).allocate_codes("o-2", "p", "g", 2)
        assert not await RewardsRepository(conn).allocate_codes("o-3", "p", "g", 1)


async def test_quantity_takes_distinct_codes_numbered_per_unit(pool) -> None:
    await load(pool, ["Q-1", "Q-2", "Q-3"])
    async with pool.acquire() as conn:
        repo = RewardsRepository(conn)
        assert not await repo.allocate_codes("o-1", "p", "g", 4)  # all or nothing
        assert await repo.allocate_codes("o-1", "p", "g", 3)
        codes = await repo.codes_of("o-1")
    assert [u for u, _ in codes] == [1, 2, 3]
    assert sorted(VAULT.decrypt(t) for _, t in codes) == ["Q-1", "Q-2", "Q-3"]


async def test_rotation_reencrypts_every_code_so_the_old_key_can_go(pool) -> None:
    await load(pool, ["K-1", "K-2"])
    new_key = Fernet.generate_key()
    async with pool.acquire() as conn:
        assert await rotate_keys(conn, CodeVault([new_key, OLD_KEY], HMAC_KEY)) == 2
        tokens = [r["ciphertext"] for r in await conn.fetch("SELECT ciphertext FROM codes"
                                                            " ORDER BY id")]
    assert [CodeVault([new_key], HMAC_KEY).decrypt(t) for t in tokens] == ["K-1", "K-2"]


# -- the saga's handlers on real SQL ------------------------------------------------------------

def request(order_id: str = "o-1", reward: str = "gift", quantity: int = 1) -> Any:
    return RedemptionRequested.model_validate({
        "event_id": order_id, "type": "redemption.requested", "occurred_at": AT.isoformat(),
        "program_id": "p", "customer": {"phone": "+37060000001"}, "reward_id": reward,
        "quantity": quantity})


def answer(order_id: str, step: str, type_: str, code: str | None = None) -> LedgerEvent:
    event: dict[str, Any] = {
        "event_id": f"{order_id}-{step}-{type_}", "type": type_, "occurred_at": AT.isoformat(),
        "program_id": "p", "member_id": "m-1", "points": 0, "balance_after": 0, "reason": "r",
        "source": {"kind": "redemption", "id": order_id},
        "command_id": handlers.command_id(order_id, step)}
    if code:
        event["error.code"] = code
    return LedgerEvent.model_validate(event)


async def run(pool, fn, *args) -> Outbox:
    outbox = Outbox()
    async with pool.acquire() as conn, conn.transaction():
        await fn(RewardsRepository(conn), *args, outbox)
    return outbox


def sent(outbox: Outbox, topic: str) -> list[dict]:
    return [json.loads(value) for t, _, value, _ in outbox.rows if t == topic]


async def state(pool, order_id: str = "o-1") -> tuple[str, str]:
    row = await pool.fetchrow("SELECT state, status FROM orders WHERE order_id = $1", order_id)
    return row["state"], row["status"]


def member_event(event_id: str, member_id: str = "m-1", type_: str = "member.enrolled",
                 locale: str | None = None, channel: str | None = None,
                 **identifiers: str) -> MemberEvent:
    return MemberEvent.model_validate({
        "event_id": event_id, "type": type_, "occurred_at": AT.isoformat(), "program_id": "p",
        "member_id": member_id, "identifiers": identifiers, "locale": locale,
        "channel": channel})


@pytest.fixture
async def member(pool, deps) -> None:
    await run(pool, handlers.member_events, deps, [member_event(
        "e", phone="+37060000001", locale="lt", channel="sms")])


async def test_a_hold_that_expired_before_the_capture_puts_the_codes_back(
        pool, deps, member) -> None:
    await load(pool, ["H-1"])
    out = await run(pool, handlers.redemption_requested, deps, request())
    [reserve] = sent(out, topics.LEDGER_COMMANDS)
    assert reserve["type"] == "reserve" and reserve["timeout_s"] == 300
    out = await run(pool, handlers.ledger_event, deps, answer("o-1", "reserve", "points.reserved"))
    assert [c["type"] for c in sent(out, topics.LEDGER_COMMANDS)] == ["capture"]
    assert await pool.fetchval("SELECT count(*) FROM codes WHERE status = 'allocated'") == 1
    out = await run(pool, handlers.ledger_event, deps,
                    answer("o-1", "capture", "command.rejected", "hold_expired"))
    assert await state(pool) == ("failed", "failed")
    assert [n["template"] for n in sent(out, topics.NOTIFICATIONS_SMS)] == ["reward_failed"]
    assert await pool.fetchval("SELECT count(*) FROM codes WHERE status = 'available'") == 1
    assert await pool.fetchval("SELECT allocated FROM inventory WHERE name = 'g'") == 0


async def test_a_redelivered_answer_has_no_second_effect(pool, deps, member) -> None:
    await load(pool, ["D-1", "D-2"])
    await run(pool, handlers.redemption_requested, deps, request())
    reserved = answer("o-1", "reserve", "points.reserved")
    await run(pool, handlers.ledger_event, deps, reserved)
    again = await run(pool, handlers.ledger_event, deps, reserved)
    assert again.rows == []
    assert await pool.fetchval("SELECT allocated FROM inventory WHERE name = 'g'") == 1


async def test_a_stalled_step_resends_the_same_command(pool, deps, clock, member) -> None:
    first = await run(pool, handlers.redemption_requested, deps, request())
    clock.advance(timedelta(seconds=31))
    async with pool.acquire() as conn, conn.transaction():
        [row] = await RewardsRepository(conn).timed_out(clock.now(), 10)
        resent = Outbox()
        await handlers.time_out(RewardsRepository(conn), deps, row, resent)
    assert sent(resent, topics.LEDGER_COMMANDS) == sent(first, topics.LEDGER_COMMANDS)
    clock.advance(timedelta(seconds=31))  # the next resend waits twice as long
    async with pool.acquire() as conn:
        assert await RewardsRepository(conn).timed_out(clock.now(), 10) == []
        clock.advance(timedelta(seconds=30))
        assert len(await RewardsRepository(conn).timed_out(clock.now(), 10)) == 1


async def test_an_order_waits_for_its_member_then_gives_up(pool, deps, clock) -> None:
    await run(pool, handlers.redemption_requested, deps, request())
    assert await state(pool) == ("identifying", "requested")
    for _ in range(3):
        clock.advance(timedelta(seconds=1))
        async with pool.acquire() as conn, conn.transaction():
            for row in await RewardsRepository(conn).timed_out(clock.now(), 10):
                await handlers.time_out(RewardsRepository(conn), deps, row, Outbox())
    assert await state(pool) == ("rejected", "rejected")


async def test_a_waiting_order_starts_when_its_member_appears(pool, deps) -> None:
    await run(pool, handlers.redemption_requested, deps, request())
    out = await run(pool, handlers.member_events, deps, [member_event("e", phone="+37060000001")])
    assert [c["type"] for c in sent(out, topics.LEDGER_COMMANDS)] == ["reserve"]
    assert await state(pool) == ("reserving", "requested")


async def test_one_batch_merges_a_member_named_twice_and_starts_the_order_waiting_for_it(
        pool, deps) -> None:
    """Two events of one member in one batch are one upsert (unmerged, Postgres refuses the
    statement: ON CONFLICT cannot touch a row twice): the later email is added, its null
    locale keeps the earlier one; a phone named again by another member stays with the
    first; and the order that waited for the phone moves on."""
    await run(pool, handlers.redemption_requested, deps, request())
    assert await state(pool) == ("identifying", "requested")
    out = await run(pool, handlers.member_events, deps, [
        member_event("e-1", phone="+37060000001", locale="lt", channel="sms"),
        member_event("e-2", type_="member.identifier_linked", email="m1@example.com"),
        member_event("e-3", member_id="m-2", phone="+37060000001", locale="en")])
    merged = await pool.fetchrow(
        "SELECT locale, channel, phone, email FROM members WHERE member_id = 'm-1'")
    assert dict(merged) == {"locale": "lt", "channel": "sms", "phone": "+37060000001",
                            "email": "m1@example.com"}
    assert dict(await pool.fetch("SELECT kind, member_id FROM identifiers")) == {
        "phone": "m-1", "email": "m-1"}
    assert await state(pool) == ("reserving", "requested")
    assert await pool.fetchval("SELECT member_id FROM orders WHERE order_id = 'o-1'") == "m-1"
    [reserve] = sent(out, topics.LEDGER_COMMANDS)
    assert (reserve["type"], reserve["member_id"], reserve["points"]) == ("reserve", "m-1", 100)


@pytest.mark.parametrize("size", [50, 200])
async def test_a_batch_of_members_is_a_few_statements_whatever_its_size(pool, deps, size) -> None:
    """Members, identifiers and waiting orders: one statement each, whatever the batch's size
    (64 new rows or more go by COPY, in a savepoint: the identifiers, two a member, already)."""
    events = [member_event(f"e-{i}", member_id=f"m-{i}", phone=f"+3706100{i:04}",
                           email=f"m{i}@example.com", locale="lt") for i in range(size)]
    statements: list[str] = []

    def logged(query: Any) -> None:
        statements.append(query.query.split(" ")[0])

    await pool.execute("TRUNCATE members, identifiers")
    async with pool.acquire() as conn, conn.transaction():
        conn.add_query_logger(logged)
        await handlers.member_events(RewardsRepository(conn), deps, events, Outbox())
        conn.remove_query_logger(logged)
    # (a COPY is not a query the logger sees: its savepoint shows where it ran)
    by_copy = ["SAVEPOINT", "RELEASE"]
    members = ["INSERT"] if size < db.COPY_NEW_ROWS_MIN else by_copy
    assert statements == [*members, *by_copy, "SELECT"]  # members, identifiers, waiting orders
    assert await pool.fetchval("SELECT count(*) FROM members") == size
    assert await pool.fetchval("SELECT count(*) FROM identifiers") == 2 * size


async def test_the_members_topic_is_consumed_set_based_with_the_inbox(pool, deps) -> None:
    """Through the service's own wiring and `BatchConsumer`: the batch applies at the first
    try (no failure replayed one by one), and the same batch again is a no-op."""
    wired: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
    runtime = SimpleNamespace(clock=deps.clock, consume=lambda topic, decode, handle=None,
                              **kw: wired.setdefault(topic, (decode, handle, kw)))
    consumers.wire(runtime, deps)  # type: ignore[arg-type]
    decode, handle, options = wired[topics.MEMBERS]
    assert handle is None and options.get("use_inbox", True)
    service = "rewards-members-test"
    consumer = BatchConsumer(service=service, topic=topics.MEMBERS, pool=pool, decode=decode,
                             handle_batch=options["handle_batch"])
    await run(pool, handlers.redemption_requested, deps, request())
    records = [ConsumerRecord(topics.MEMBERS, 0, offset, 0, 0, b"m-1",
                              e.model_dump_json().encode(), None, 0, 0, ())
               for offset, e in enumerate([
                   member_event("e-1", phone="+37060000001", locale="lt", channel="sms"),
                   member_event("e-2", type_="member.identifier_linked",
                                email="m1@example.com")])]
    labels = {"service": service, "topic": topics.MEMBERS}
    await consumer(records)
    assert not metrics.REGISTRY.get_sample_value("loyalty_handler_errors_total", labels)
    assert await state(pool) == ("reserving", "requested")
    outbox = await pool.fetchval("SELECT count(*) FROM outbox")
    await consumer(records)
    assert metrics.REGISTRY.get_sample_value("loyalty_messages_duplicate_total", labels) == 2
    assert await pool.fetchval("SELECT count(*) FROM outbox") == outbox


async def test_cancelling_after_capture_voids_and_refunds_once(pool, deps, member) -> None:
    await load(pool, ["V-1"])
    await run(pool, handlers.redemption_requested, deps, request())
    await run(pool, handlers.ledger_event, deps, answer("o-1", "reserve", "points.reserved"))
    await run(pool, handlers.ledger_event, deps, answer("o-1", "capture", "points.captured"))
    assert await state(pool) == ("delivering", "points_reserved")
    cancel = RedemptionCancelled.model_validate({
        "event_id": "c-1", "type": "redemption.cancelled", "occurred_at": AT.isoformat(),
        "program_id": "p", "order_id": "o-1", "reason": "complaint"})
    out = await run(pool, handlers.redemption_cancelled, deps, cancel)
    [refund] = sent(out, topics.LEDGER_COMMANDS)
    assert (refund["type"], refund["points"], refund["source"]["kind"]) == (
        "credit", 100, "redemption")
    assert await pool.fetchval("SELECT status FROM codes") == "voided"
    with pytest.raises(Rejected) as twice:
        await run(pool, handlers.redemption_cancelled, deps, cancel)
    assert twice.value.code == "already_cancelled"
    await run(pool, handlers.ledger_event, deps, answer("o-1", "refund", "points.credited"))
    assert await state(pool) == (State.CANCELLED.value, "cancelled")


async def test_delivery_sends_each_code_once_and_an_undeliverable_order_holds_up_no_other(
        pool, deps, member, infra) -> None:
    stranger = CodeVault([Fernet.generate_key()], HMAC_KEY)  # a key the service was not given
    async with pool.acquire() as conn:
        await import_codes(conn, stranger, "p", "g", ["LOST-1"], "foreign")
    await load(pool, ["GOOD-1"])
    for order_id in ("o-1", "o-2"):
        await run(pool, handlers.redemption_requested, deps, request(order_id))
        await run(pool, handlers.ledger_event, deps, answer(order_id, "reserve", "points.reserved"))
        await run(pool, handlers.ledger_event, deps, answer(order_id, "capture", "points.captured"))
    relay = SimpleNamespace(notify=lambda: None)
    runtime = SimpleNamespace(pool=pool, name="rewards-test", relay=relay)
    delivery = jobs.Delivery(runtime, deps, VAULT, batch_size_max=10)  # type: ignore[arg-type]
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        assert await delivery.deliver_once(producer) == 1
        assert await delivery.deliver_once(producer) == 0  # nothing sent twice
    finally:
        await producer.stop()
    assert await state(pool, "o-1") == ("delivering", "points_reserved")
    assert await state(pool, "o-2") == ("fulfilled", "fulfilled")
    assert dict(await pool.fetch("SELECT order_id, status FROM codes")) == {
        "o-1": "allocated", "o-2": "delivered"}
