"""A till's purchase becomes points and an SMS, through the public contract only.

earn and ledger run as separate processes on embedded PostgreSQL and the Tansu broker; tests
publish CONTRACT.md payloads and read the public topics and HTTP routes.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from decimal import Decimal

import asyncpg
import pytest

from loyalty import topics
from loyalty.contracts import LedgerEvent, Notification
from loyalty.testing import Api, Kafka, purchase_event, unique, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PROGRAM = "coffee-club"


def purchase(phone: str, total: str = "12.40", **fields: str) -> dict:
    return purchase_event({"phone": phone}, total, **fields)


def expected_points(total: str) -> int:
    # coffee-club: 10 points per EUR, floor; bakery has no multiplier; member tier x1.
    return int(Decimal(total) * 10)


async def balance_of(ledger: Api, phone: str) -> int | None:
    status, body = await ledger.get(f"/v1/programs/{PROGRAM}/members/phone:{phone}")
    return body["balance"] if status == 200 else None


async def expect_balances(ledger: Api, expected: dict[str, int], timeout_s: float = 90) -> None:
    """Each phone's member reaches its balance; a moment later (long enough for a double
    credit to land) it is still exactly that."""
    for phone, points in expected.items():
        await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                                lambda b, p=points: b["balance"] >= p, timeout_s=timeout_s)
    await asyncio.sleep(1.0)
    for phone, points in expected.items():
        assert await balance_of(ledger, phone) == points, phone


async def test_purchase_credits_points_and_sends_an_sms(platform, kafka_client: Kafka,
                                                        ledger: Api) -> None:
    phone = unique_phone()
    event = purchase(phone, "12.40")
    await kafka_client.publish(topics.PURCHASES, event, key=event["order_id"])

    view = await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                                   lambda b: b["balance"] > 0)
    assert view["balance"] == view["available"] == 124
    assert view["reserved"] == 0 and view["owed"] == 0
    assert sum(e["points"] for e in view["expiring"]) == 124

    [sms] = await kafka_client.wait_for(
        topics.NOTIFICATIONS_SMS, lambda r: json.loads(r.value)["to"] == phone)
    message = json.loads(sms.value)
    Notification.model_validate(message)  # the contract's shape
    assert "subject" not in message  # e-mail only
    assert message["template"] == "points_earned"
    assert message["channel"] == "sms" and message["locale"] == "lt"
    assert message["member_id"] == view["member_id"]
    assert "124" in message["body"]

    [credited] = await kafka_client.wait_for(
        topics.LEDGER, lambda r: json.loads(r.value)["member_id"] == view["member_id"])
    ledger_event = json.loads(credited.value)
    LedgerEvent.model_validate(ledger_event)
    assert ledger_event["type"] == "points.credited"
    assert ledger_event["expires_at"] == view["expiring"][0]["expires_at"]
    assert ledger_event["source"] == {"kind": "purchase", "id": event["order_id"]}
    assert ledger_event["balance_after"] == 124


async def test_the_same_purchase_three_times_credits_once(platform, kafka_client: Kafka,
                                                          ledger: Api) -> None:
    phone = unique_phone()
    event = purchase(phone, "5.00")
    for _ in range(3):
        await kafka_client.publish(topics.PURCHASES, event, key=event["order_id"])
    # Same key, same partition: once the marker counts, every copy before it was processed.
    marker = purchase(phone, "1.00")
    await kafka_client.publish(topics.PURCHASES, marker, key=event["order_id"])

    view = await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                                   lambda b: b["balance"] >= 50 + 10)
    assert view["balance"] == 50 + 10


@pytest.mark.parametrize(("raw", "code"), [
    (b'{"event_id": "x", "type": "purchase.completed",', "malformed_json"),
    ("missing", "missing_field"),
    ("unknown_program", "unknown_program"),
])
async def test_bad_input_goes_to_the_dlq_and_the_stream_goes_on(
        platform, kafka_client: Kafka, ledger: Api, raw, code: str) -> None:
    phone = unique_phone()
    marker = unique("bad")
    if raw == "missing":
        bad = purchase(phone, event_id=marker)
        del bad["total"]
        value = json.dumps(bad).encode()
    elif raw == "unknown_program":
        value = json.dumps(purchase(phone, event_id=marker, program_id="no-such-program")).encode()
    else:
        value = raw[:-1] + f' "marker": "{marker}",'.encode()
    key = unique("A")
    await kafka_client.publish(topics.PURCHASES, value, key=key)
    good = purchase(phone, "2.00")
    await kafka_client.publish(topics.PURCHASES, good, key=key)

    [dead] = await kafka_client.wait_for(topics.dlq(topics.PURCHASES),
                                         lambda r: marker.encode() in (r.value or b""))
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["error.code"] == code
    assert headers["original.topic"] == topics.PURCHASES
    assert int(headers["original.offset"]) >= 0 and headers["error.message"]
    assert dead.value == value
    view = await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                                   lambda b: b["balance"] > 0)
    assert view["balance"] == 20


async def test_kill_9_of_the_ledger_mid_stream_loses_and_doubles_nothing(
        platform, infra, kafka_client: Kafka, ledger: Api) -> None:
    phones = [unique_phone() for _ in range(100)]  # about 1,000 points each: below gold
    rng = random.Random(7)
    events = [purchase(rng.choice(phones), f"{rng.randint(1, 19)}.{rng.randint(0, 99):02d}")
              for _ in range(1000)]
    expected: dict[str, int] = {}
    for e in events:
        expected[e["customer"]["phone"]] = (expected.get(e["customer"]["phone"], 0)
                                            + expected_points(e["total"]))

    await kafka_client.publish_many(topics.PURCHASES, [(e["order_id"], e) for e in events[:500]])
    await asyncio.sleep(0.3)
    platform.services["ledger"].kill()
    await kafka_client.publish_many(topics.PURCHASES, [(e["order_id"], e) for e in events[500:]])
    platform.start("ledger")
    await platform.wait_ready("ledger")

    await expect_balances(ledger, expected)

    conn = await asyncpg.connect(infra.pg_dsn)
    try:
        duplicates = await conn.fetchval(
            "SELECT count(*) FROM (SELECT source_id FROM ledger.entries"
            " WHERE type = 'points.credited' AND account_id NOT LIKE '@%'"
            " GROUP BY source_id HAVING count(*) > 1) d")
        credited = await conn.fetchval(
            "SELECT count(*) FROM ledger.entries WHERE source_id = ANY($1::text[])"
            " AND account_id NOT LIKE '@%'", [e["order_id"] for e in events])
    finally:
        await conn.close()
    assert duplicates == 0
    assert credited == len(events)


async def test_metrics_show_the_flow(platform, api_token, kafka_client: Kafka) -> None:
    await kafka_client.publish(topics.PURCHASES, b"not json", key=unique("A"))
    event = purchase(unique_phone(), "1.00")
    await kafka_client.publish(topics.PURCHASES, event, key=event["order_id"])

    async def metrics_of(name: str, *wanted: str) -> str:
        api = Api(platform.services[name].url, api_token)
        deadline = asyncio.get_running_loop().time() + 30  # the lag and liability are sampled
        while True:
            status, text = await api.get("/metrics", token=None)
            missing = [w for w in wanted if w not in text]
            if status == 200 and not missing:
                return text
            assert asyncio.get_running_loop().time() < deadline, f"{name} lacks {missing}"
            await asyncio.sleep(0.5)

    flow = [f"{m}{{" for m in ("loyalty_messages_consumed_total",
                               "loyalty_messages_produced_total",
                               "loyalty_handler_seconds_bucket", "loyalty_outbox_backlog",
                               "loyalty_consumer_lag")]
    await metrics_of("earn", *flow, "loyalty_dead_letters_total{", 'code="malformed_json"')
    await metrics_of("ledger", *flow,
                     'loyalty_points_outstanding{program_id="coffee-club"}')


async def test_a_broker_outage_mid_stream_loses_and_doubles_nothing(
        platform, infra, kafka_client: Kafka, ledger: Api) -> None:
    """Tansu keeps nothing across a restart, so an outage is a pause (SIGSTOP/SIGCONT): the
    services' publishes and fetches fail and are retried."""
    if infra.broker is None or infra.broker.proc is None:
        pytest.skip("the broker is external (LOYALTY_KAFKA_BOOTSTRAP): cannot pause it")
    phones = [unique_phone() for _ in range(20)]
    events = [purchase(phones[i % len(phones)], "1.00") for i in range(200)]
    await kafka_client.publish_many(topics.PURCHASES, [(e["order_id"], e) for e in events[:100]])
    infra.broker.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(5)
    finally:
        infra.broker.proc.send_signal(signal.SIGCONT)
    await kafka_client.publish_many(topics.PURCHASES, [(e["order_id"], e) for e in events[100:]])

    await expect_balances(ledger, dict.fromkeys(phones, 100))  # 10 purchases of 10 points


async def test_kill_9_of_earn_mid_stream_loses_and_doubles_nothing(
        platform, kafka_client: Kafka, ledger: Api) -> None:
    phones = [unique_phone() for _ in range(40)]
    events = [purchase(phones[i % len(phones)], "1.00") for i in range(400)]
    await kafka_client.publish_many(topics.PURCHASES, [(e["order_id"], e) for e in events[:200]])
    await asyncio.sleep(0.3)
    platform.services["earn"].kill()
    await kafka_client.publish_many(topics.PURCHASES, [(e["order_id"], e) for e in events[200:]])
    platform.start("earn")
    await platform.wait_ready("earn")

    await expect_balances(ledger, dict.fromkeys(phones, 100))  # 10 purchases of 10 points


async def test_a_database_restart_mid_stream_loses_and_doubles_nothing(
        platform, infra, kafka_client: Kafka, ledger: Api) -> None:
    """Postgres goes away for 10 s under both services (connections dropped, transactions
    aborted) and comes back on the same port: batches are retried, nothing is dead-lettered,
    lost or applied twice."""
    if infra.postgres is None:
        pytest.skip("the database is external (LOYALTY_PG_DSN): cannot restart it")
    watched = [topics.dlq(t) for t in (topics.PURCHASES, topics.LEDGER_COMMANDS, topics.LEDGER)]
    dead_before = {t: len(await kafka_client.read_all(t)) for t in watched}
    phones = [unique_phone() for _ in range(20)]
    events = [purchase(phones[i % len(phones)], "1.00") for i in range(200)]
    await kafka_client.publish_many(topics.PURCHASES, [(e["order_id"], e) for e in events[:100]])
    # On this thread, not a worker's: the server is armed to stop when its starter exits.
    infra.postgres.stop()
    await kafka_client.publish_many(topics.PURCHASES, [(e["order_id"], e) for e in events[100:]])
    await asyncio.sleep(10)
    infra.postgres.start()

    await expect_balances(ledger, dict.fromkeys(phones, 100))
    assert {t: len(await kafka_client.read_all(t)) for t in watched} == dead_before
