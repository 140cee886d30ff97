"""A reward code goes to the member's channel and nowhere else: not to a log, not to
`loyalty.orders.v1`, not to any HTTP response, not in clear to the database (any schema,
any table, the outbox included). Each search is shown to work on a value that is there."""

from __future__ import annotations

import json
import random
import string

import asyncpg
import pytest
from test_rewards_helpers import (
    apply_program,
    cancellation,
    earn_points,
    import_codes,
    request,
    wait_status,
)

from loyalty import topics
from loyalty.testing import Api, Kafka, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def secret_code() -> str:
    # Letters only: the log masker hides digit runs, which could hide a leak from this test.
    return "QZX" + "".join(random.choices(string.ascii_uppercase, k=12))


def leaked(text: str | bytes, codes: list[str]) -> list[str]:
    raw = text if isinstance(text, str) else text.decode(errors="replace")
    return [c for c in codes if c in raw]


async def rows_containing(conn: asyncpg.Connection, needles: list[str]) -> dict[str, int]:
    """Rows of any table of any schema whose text form contains one of `needles`."""
    found: dict[str, int] = {}
    tables = await conn.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_type = 'BASE TABLE'"
        " AND table_schema NOT IN ('pg_catalog', 'information_schema')")
    patterns = [f"%{n}%" for n in needles]
    for t in tables:
        name = f'"{t["table_schema"]}"."{t["table_name"]}"'
        count = await conn.fetchval(f"SELECT count(*) FROM {name} r WHERE r::text LIKE ANY($1)",
                                    patterns)
        if count:
            found[name] = count
    return found


async def test_a_code_never_appears_in_logs_orders_http_or_the_database_in_clear(
        platform, infra, api_token, kafka_client: Kafka, ledger: Api, rewards: Api,
        tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    codes = [secret_code() for _ in range(4)]
    loaded = import_codes(infra.pg_dsn, program_id, codes, tmp_path)
    assert loaded.returncode == 0 and not leaked(loaded.stdout + loaded.stderr, codes)
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone], total="20.00")
    kept = request(program_id, phone, quantity=2)
    refunded = request(program_id, phone)
    for order in (kept, refunded):
        await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])
        await wait_status(rewards, order["event_id"], "fulfilled")
    await kafka_client.publish(topics.REDEMPTIONS,
                               cancellation(program_id, refunded["event_id"]),
                               key=refunded["event_id"])
    await wait_status(rewards, refunded["event_id"], "cancelled")

    # The member got three codes: the one place they belong (and proof the search works).
    sms = [r.value for r in await kafka_client.read_all(topics.NOTIFICATIONS_SMS)
           if json.loads(r.value)["to"] == phone
           and json.loads(r.value)["template"] == "reward_fulfilled"]
    delivered = sorted({c for value in sms for c in leaked(value, codes)})
    assert len(delivered) == 3

    # 1. loyalty.orders.v1
    orders = [r.value for r in await kafka_client.read_all(topics.ORDERS)]
    assert any(kept["event_id"].encode() in v for v in orders)
    assert [c for v in orders for c in leaked(v, codes)] == []

    # 2. every HTTP response a caller could get about this member, order and program
    responses = []
    for api, path in [
            (rewards, f"/v1/orders/{kept['event_id']}"),
            (rewards, f"/v1/orders/{refunded['event_id']}"),
            (rewards, f"/v1/programs/{program_id}/rewards"),
            (ledger, f"/v1/programs/{program_id}/members/phone:{phone}"),
            (ledger, f"/v1/programs/{program_id}/members/phone:{phone}/transactions")]:
        status, body = await api.get(path)
        assert status == 200, (path, body)
        responses.append(json.dumps(body))
    status, metrics = await rewards.get("/metrics", token=None)
    responses.append(metrics)
    assert kept["event_id"] in responses[0]
    assert [c for r in responses for c in leaked(r, codes)] == []

    # 3. the database, every schema and table (not the ciphertext's hex, the clear code)
    conn = await asyncpg.connect(infra.pg_dsn)
    try:
        assert await rows_containing(conn, [kept["event_id"]])  # the search finds what's there
        assert await rows_containing(conn, codes) == {}
    finally:
        await conn.close()

    # 4. every service's log
    logs = list((platform.data_dir / "logs").glob("*.log"))
    assert logs
    text = "".join(path.read_text(errors="replace") for path in logs)
    assert "service.started" in text
    assert leaked(text, codes) == []
