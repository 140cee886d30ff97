"""Inbox, outbox, dead letters and the relay against real PostgreSQL and the real broker."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from loyalty import db, metrics, topics
from loyalty.clock import FixedClock
from loyalty.messaging import (
    BatchConsumer,
    ConsumerStopping,
    Envelope,
    Outbox,
    OutboxRelay,
    Rejected,
)
from loyalty.retention import inbox_pruner, prune_inbox
from loyalty.testing import Kafka, unique

pytestmark = pytest.mark.integration

SCHEMA = "probe"  # a schema of its own: no service uses it


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


async def dead_letters(pool) -> list[tuple[str, int, str]]:
    rows = await pool.fetch("SELECT headers FROM outbox WHERE topic = 'probe.v1.dlq' ORDER BY id")
    return [(r["headers"]["error.code"], int(r["headers"]["original.offset"]),
             r["headers"]["error.message"]) for r in rows]


async def test_one_poison_record_in_500_is_dead_lettered_and_the_499_apply_once(pool) -> None:
    """A record our code fails on (here: a value the column cannot hold, a DataError), alone,
    while the database answers: dead-lettered `unprocessable`; the batch's others apply."""
    consumer = BatchConsumer(service="probe", topic="probe.v1", pool=pool, decode=decode,
                             handle=handle, retry_backoff_max_s=0.02)
    batch = [record({"id": f"r{i}", "amount": 10**12 if i == 250 else i}, i) for i in range(500)]
    poisoned = metrics.POISON_RECORDS.labels("probe", "probe.v1")._value.get()
    await consumer(batch)
    await consumer(batch[:10])  # a redelivery of applied records has no effect

    applied = {r["id"]: r["amount"] for r in await pool.fetch("SELECT * FROM applied")}
    assert applied == {f"r{i}": i for i in range(500) if i != 250}
    [(code, offset, message)] = await dead_letters(pool)
    assert (code, offset) == (("unprocessable", 250))
    assert "DataError" in message and "out of int32 range" in message
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE topic = 'probe.out.v1'") == 499
    assert metrics.POISON_RECORDS.labels("probe", "probe.v1")._value.get() == poisoned + 1
    assert consumer.stalled_since is None


async def test_an_outage_dead_letters_nothing_and_the_batch_applies_once_it_ends(pool) -> None:
    """Every attempt fails with a connection error: the consumer keeps retrying (stalled, as
    /readyz and a gauge show) and dead-letters nothing; when the outage ends, all apply."""
    down = {"on": True}

    async def outage(conn, env, outbox) -> None:
        if down["on"]:
            raise ConnectionRefusedError("the database is restarting")
        await handle(conn, env, outbox)

    consumer = BatchConsumer(service="probe", topic="probe.v1", pool=pool, decode=decode,
                             handle=outage, retry_backoff_max_s=0.02)
    task = asyncio.create_task(consumer([record({"id": f"o{i}", "amount": i}, i)
                                         for i in range(5)]))
    await asyncio.sleep(1.0)
    assert not task.done()
    assert consumer.stalled_since is not None and "restarting" in (consumer.last_error or "")
    assert metrics.CONSUMER_STALLED.labels("probe", "probe.v1")._value.get() == 1
    assert await dead_letters(pool) == []
    down["on"] = False
    await asyncio.wait_for(task, 10)
    assert await pool.fetchval("SELECT count(*) FROM applied") == 5
    assert await dead_letters(pool) == []
    assert metrics.CONSUMER_STALLED.labels("probe", "probe.v1")._value.get() == 0


async def test_a_stopping_service_leaves_an_unresolved_batch_uncommitted(pool) -> None:
    async def outage(conn, env, outbox) -> None:
        raise ConnectionRefusedError("down")

    consumer = BatchConsumer(service="probe", topic="probe.v1", pool=pool, decode=decode,
                             handle=outage, retry_backoff_max_s=5)
    task = asyncio.create_task(consumer([record({"id": "s", "amount": 1}, 0)]))
    await asyncio.sleep(0.3)
    consumer.stopping.set()
    with pytest.raises(ConsumerStopping):
        await asyncio.wait_for(task, 2)  # not after the 5 s backoff: at once
    assert await dead_letters(pool) == []


@pytest.mark.parametrize(("raw", "code"), [
    (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),  # RecursionError in the parser
    (b'{"id": "\\u0000", "amount": 1}', "invalid_field"),
    (b'{"id": "a\\ud800b", "amount": 1}', "invalid_field"),
    (b'{"id": "n", "amount": NaN}', "malformed_json"),
    (b'{"id": "n", "amount": 1e400}', "invalid_field"),  # inf: refused by the decoder
    (b"\xff\xfe{}", "malformed_json"),
    (b'{"id": "' + b"x" * (2 * 1024 * 1024) + b'"}', "too_large"),
    (b'{"\\u0000": 1, "id": "k", "amount": 1}', "invalid_field"),
])
async def test_what_our_decoding_raises_on_is_dead_lettered_and_the_rest_applies(
        pool, raw: bytes, code: str) -> None:
    def strict(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        message_id, message = decode(payload)
        if not isinstance(message["amount"], int):
            raise TypeError("amount must be an integer")  # an internal model's error
        return message_id, message

    consumer = BatchConsumer(service="probe", topic="probe.v1", pool=pool, decode=strict,
                             handle=handle)
    await consumer([record(raw, 0), record({"id": "after", "amount": 7}, 1)])
    assert [(c, o) for c, o, _ in await dead_letters(pool)] == [(code, 0)]
    dlq_value = await pool.fetchval("SELECT value FROM outbox WHERE topic = 'probe.v1.dlq'")
    assert dlq_value == raw
    assert await pool.fetchval("SELECT amount FROM applied WHERE id = 'after'") == 7


async def relay_all(pool, bootstrap: str, outbox: Outbox) -> None:
    """Write `outbox`, then let a relay publish it until the table is empty."""
    async with pool.acquire() as conn:
        await outbox.flush(conn)
    relay = OutboxRelay(service="probe", pool=pool, bootstrap=bootstrap)
    await relay.start()
    try:
        assert await relay.drain(timeout_s=20)
    finally:
        await relay.stop()


async def test_the_relay_publishes_in_order_and_empties_the_outbox(pool, infra,
                                                                 kafka_client: Kafka) -> None:
    run = unique("relay")
    outbox = Outbox()
    for i in range(20):
        outbox.add(topics.dlq(topics.PURCHASES), run, {"run": run, "seq": i},
                   headers={"error.code": "probe"})
    await relay_all(pool, infra.kafka_bootstrap, outbox)
    got = await kafka_client.wait_for(topics.dlq(topics.PURCHASES),
                                      lambda r: r.key == run.encode(), count=20)
    assert [json.loads(r.value)["seq"] for r in got] == list(range(20))
    assert {k: v.decode() for k, v in got[0].headers}["error.code"] == "probe"


async def test_the_relay_batches_per_partition_keeping_each_key_in_order(
        pool, infra, kafka_client: Kafka) -> None:
    """Many keys over every partition, more than a record batch holds per partition, one
    message larger than a whole batch and one without a key: each key's messages arrive in
    order on the default partitioner's partition, and nothing is missing."""
    run = unique("batches")
    keys = [f"{run}-{k}" for k in range(12)]
    outbox = Outbox()
    sent: dict[str | None, list[int]] = {}
    for i in range(600):
        key = keys[i % len(keys)]
        filler = "x" * (200_000 if i == 300 else 1_500)  # a record batch holds 128 KiB
        outbox.add(topics.dlq(topics.PURCHASES), key, {"run": run, "seq": i, "f": filler})
        sent.setdefault(key, []).append(i)
    outbox.add(topics.dlq(topics.PURCHASES), None, {"run": run, "seq": 600})
    await relay_all(pool, infra.kafka_bootstrap, outbox)
    got = await kafka_client.wait_for(topics.dlq(topics.PURCHASES),
                                      lambda r: json.loads(r.value).get("run") == run,
                                      count=601)
    received: dict[str | None, list[int]] = {}
    every = list(range(topics.PUBLIC_PARTITIONS))
    for r in got:
        key = r.key.decode() if r.key else None
        received.setdefault(key, []).append(json.loads(r.value)["seq"])
        if key is not None:
            assert r.partition == DefaultPartitioner()(r.key, every, every)
    assert received == {**sent, None: [600]}
    assert len({r.partition for r in got}) > 1


async def test_a_commit_anywhere_wakes_the_relay_without_waiting_for_its_poll(
        pool, infra, kafka_client: Kafka) -> None:
    """Rows another connection commits (another replica's consumer, an HTTP route, a job)
    are published at once: the relay LISTENs for the outbox's NOTIFY and polls only as a
    safety net, here once a minute."""
    run = unique("wakeup")
    relay = OutboxRelay(service="probe", pool=pool, bootstrap=infra.kafka_bootstrap,
                        poll_interval_s=60.0)
    await relay.start()
    try:
        await asyncio.sleep(1.0)  # leading, listening, and past its first (empty) poll
        outbox = Outbox()
        outbox.add(topics.dlq(topics.PURCHASES), run, {"seq": 0})
        async with pool.acquire() as conn, conn.transaction():
            await outbox.flush(conn)
        got = await kafka_client.wait_for(topics.dlq(topics.PURCHASES),
                                          lambda r: r.key == run.encode(), timeout_s=10)
        assert json.loads(got[0].value) == {"seq": 0}
    finally:
        await relay.stop()


async def test_a_lone_poison_record_is_dead_lettered_too(pool) -> None:
    """A batch of one (low traffic) must not retry its poison forever."""
    consumer = BatchConsumer(service="probe", topic="probe.v1", pool=pool, decode=decode,
                             handle=handle, retry_backoff_max_s=0.02)
    await asyncio.wait_for(consumer([record({"id": "p", "amount": 10**12}, 0)]), 10)
    [(code, offset, _)] = await dead_letters(pool)
    assert (code, offset) == ("unprocessable", 0)
    await consumer([record({"id": "next", "amount": 1}, 1)])
    assert await pool.fetchval("SELECT amount FROM applied WHERE id = 'next'") == 1


async def test_the_inbox_forgets_ids_older_than_its_window_and_only_those(pool) -> None:
    consumer = BatchConsumer(service="probe", topic="probe.v1", pool=pool, decode=decode,
                             handle=handle)
    await consumer([record({"id": f"old-{i}", "amount": 1}, i) for i in range(5)])
    await pool.execute("UPDATE inbox SET received_at = now() - interval '31 days'")
    await consumer([record({"id": "new", "amount": 1}, 5)])

    cutoff = await pool.fetchval("SELECT now() - interval '30 days'")
    assert await prune_inbox(pool, cutoff, chunk_rows=2) == 5  # three chunks: 2, 2, 1
    assert [r["message_id"] for r in await pool.fetch("SELECT message_id FROM inbox")] == ["new"]
    assert await prune_inbox(pool, cutoff) == 0

    # What is still in the window still has no second effect.
    await consumer([record({"id": "new", "amount": 1}, 6)])
    assert await pool.fetchval("SELECT count(*) FROM applied WHERE id = 'new'") == 1


async def test_each_service_prunes_by_its_clock_and_counts_what_went(pool) -> None:
    consumer = BatchConsumer(service="probe", topic="probe.v1", pool=pool, decode=decode,
                             handle=handle)
    await consumer([record({"id": "x", "amount": 1}, 0)])
    received = await pool.fetchval("SELECT received_at FROM inbox")
    pruned = metrics.INBOX_PRUNED.labels("probe")
    before = pruned._value.get()

    await inbox_pruner("probe", pool, FixedClock(received + timedelta(days=29)), 30)()
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 1
    await inbox_pruner("probe", pool, FixedClock(received + timedelta(days=31)), 30)()
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 0
    assert pruned._value.get() - before == 1


async def test_a_large_batch_goes_into_the_inbox_at_once_and_a_redelivery_among_it_is_sorted(
        pool) -> None:
    consumer = BatchConsumer(service="probe", topic="probe.v1", pool=pool, decode=decode,
                             handle=handle)
    size = db.COPY_NEW_ROWS_MIN
    first = [record({"id": f"big-{i}", "amount": 1}, i) for i in range(size)]
    await consumer(first)  # all new: the COPY path
    assert await pool.fetchval("SELECT count(*) FROM inbox") == size

    again = [*first[:size // 2],  # seen before: no effect
             record({"id": "big-0", "amount": 7}, size),  # seen before, another payload
             *[record({"id": f"more-{i}", "amount": 2}, size + 1 + i) for i in range(size)]]
    await consumer(again)  # the COPY meets the old ids: the upsert sorts them

    applied = {r["id"]: r["amount"] for r in await pool.fetch("SELECT * FROM applied")}
    assert len(applied) == 2 * size
    assert applied["big-0"] == 1 and applied["more-0"] == 2
    dead = await pool.fetch("SELECT headers FROM outbox WHERE topic = 'probe.v1.dlq'")
    assert [r["headers"]["error.code"] for r in dead] == ["id_conflict"]


async def test_the_backlog_gauges_count_unpublished_rows_and_the_oldest_ones_age(pool) -> None:
    """What `loyalty up` drains on and the outbox alerts read: 0 when empty, the rows left
    while the relay deletes from the oldest, and how long the oldest has waited."""
    relay = OutboxRelay(service="probe-stats", pool=pool, bootstrap="127.0.0.1:1")

    def gauges() -> tuple[float, float]:
        return (metrics.OUTBOX_BACKLOG.labels("probe-stats")._value.get(),
                metrics.OUTBOX_OLDEST_AGE_SECONDS.labels("probe-stats")._value.get())

    await relay._stats()
    assert (relay.backlog, gauges()) == (0, (0, 0))
    outbox = Outbox()
    for seq in range(5):
        outbox.add("probe.out.v1", "k", {"seq": seq})
    async with pool.acquire() as conn:
        await outbox.flush(conn)
    await pool.execute("UPDATE outbox SET created_at = now() - interval '42 seconds'"
                       " WHERE id = (SELECT min(id) FROM outbox)")
    await relay._stats()
    backlog, age = gauges()
    assert (relay.backlog, backlog) == (5, 5) and 42 <= age < 52
    await pool.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 2)")
    await relay._stats()
    backlog, age = gauges()
    assert backlog == 3 and age < 10
    await pool.execute("DELETE FROM outbox")
    await relay._stats()
    assert (relay.backlog, gauges()) == (0, (0, 0))
