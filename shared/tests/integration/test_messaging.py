"""Inbox, outbox, dead letters and the relay against real PostgreSQL and the real broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from loyalty import db, topics
from loyalty.messaging import BatchConsumer, Envelope, Outbox, OutboxRelay, Rejected
from loyalty.testing import Kafka, unique

pytestmark = pytest.mark.integration

SCHEMA = "expiry"  # a schema no service under test uses yet


def record(value: bytes | dict[str, Any], offset: int, topic: str = "probe.v1") -> ConsumerRecord:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return ConsumerRecord(topic=topic, partition=0, offset=offset, timestamp=0,
                          timestamp_type=0, key=b"k", value=raw, checksum=None,
                          serialized_key_size=1, serialized_value_size=len(raw), headers=())


@pytest.fixture
async def pool(infra, tmp_path: Path):
    dsn = await db.provision_service(infra.pg_dsn, SCHEMA)
    (tmp_path / "0001_probe.sql").write_text(
        "CREATE TABLE IF NOT EXISTS applied (id text PRIMARY KEY, amount int NOT NULL);")
    pool = await db.create_pool(dsn, schema=SCHEMA)
    await db.apply_migrations(pool, SCHEMA, tmp_path)
    await pool.execute("TRUNCATE applied, outbox, inbox")
    yield pool
    await pool.close()


def decode(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if "id" not in payload:
        raise Rejected("missing_field", "id: Field required")
    return payload["id"], payload


async def handle(conn, env: Envelope[dict[str, Any]], outbox: Outbox) -> None:
    if env.message["amount"] < 0:
        raise Rejected("negative_amount", "amount must not be negative")
    await conn.execute("INSERT INTO applied (id, amount) VALUES ($1, $2)",
                       env.message_id, env.message["amount"])
    outbox.add("probe.out.v1", env.message_id, {"applied": env.message_id})


async def test_a_batch_applies_once_and_dead_letters_only_the_bad_records(pool) -> None:
    consumer = BatchConsumer(service="probe", topic="probe.v1", pool=pool, decode=decode,
                             handle=handle)
    batch = [
        record({"id": "a", "amount": 1}, 0),
        record(b"{not json", 1),
        record({"id": "b", "amount": -5}, 2),
        record({"amount": 3}, 3),
        record({"id": "a", "amount": 1}, 4),   # an identical redelivery: no effect
        record({"id": "a", "amount": 9}, 5),   # same id, another payload: a conflict
        record({"id": "c", "amount": 2}, 6),
    ]
    await consumer(batch)
    await consumer(batch[:1])  # redelivered after the commit: still no effect

    applied = {r["id"]: r["amount"] for r in await pool.fetch("SELECT * FROM applied")}
    assert applied == {"a": 1, "c": 2}
    rows = await pool.fetch("SELECT topic, value, headers FROM outbox ORDER BY id")
    dead = sorted(((r["headers"]["error.code"], int(r["headers"]["original.offset"]))
                   for r in rows if r["topic"] == "probe.v1.dlq"), key=lambda d: d[1])
    assert dead == [("malformed_json", 1), ("negative_amount", 2), ("missing_field", 3),
                    ("id_conflict", 5)]
    assert next(r["value"] for r in rows if r["topic"] == "probe.v1.dlq") == b"{not json"
    assert [json.loads(r["value"]) for r in rows if r["topic"] == "probe.out.v1"] == [
        {"applied": "a"}, {"applied": "c"}]


async def test_a_failing_batch_rolls_back_everything_then_retries(pool) -> None:
    calls = {"n": 0}

    async def flaky(conn, env, outbox) -> None:
        await handle(conn, env, outbox)
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("database went away")  # our side: retry, never drop

    consumer = BatchConsumer(service="probe", topic="probe.v1", pool=pool, decode=decode,
                             handle=flaky, retry_backoff_max_s=0.05)
    await consumer([record({"id": "x", "amount": 1}, 0), record({"id": "y", "amount": 2}, 1)])
    applied = {r["id"] for r in await pool.fetch("SELECT id FROM applied")}
    assert applied == {"x", "y"}
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2


async def test_the_relay_publishes_in_order_and_empties_the_outbox(pool, infra,
                                                                 kafka_client: Kafka) -> None:
    run = unique("relay")
    outbox = Outbox()
    for i in range(20):
        outbox.add(topics.dlq(topics.PURCHASES), run, {"run": run, "seq": i},
                   headers={"error.code": "probe"})
    async with pool.acquire() as conn:
        await outbox.flush(conn)
    relay = OutboxRelay(service="probe", pool=pool, bootstrap=infra.kafka_bootstrap)
    await relay.start()
    try:
        assert await relay.drain(timeout_s=20)
    finally:
        await relay.stop()
    got = await kafka_client.wait_for(topics.dlq(topics.PURCHASES),
                                      lambda r: r.key == run.encode(), count=20)
    assert [json.loads(r.value)["seq"] for r in got] == list(range(20))
    assert {k: v.decode() for k, v in got[0].headers}["error.code"] == "probe"
