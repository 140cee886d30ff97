"""Reward fulfilment under load: replicas racing for the last codes, and a kill -9 mid-burst.

Real processes on real PostgreSQL and the real broker; checked through the public topics and
routes, the ledger's audit and (for where codes went) reward-fulfilment's own table.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from test_rewards_helpers import (
    GIFT_POINTS,
    apply_program,
    earn_points,
    expect_balances,
    final_orders,
    fulfilled_codes,
    import_codes,
    request,
    run_audit,
)

from loyalty import topics
from loyalty.testing import Api, Kafka, unique, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SERVICE = "reward-fulfilment"


async def code_states(pg_dsn: str, program_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return dict(await conn.fetch("SELECT status, count(*) FROM rewards.codes"
                                     " WHERE program_id = $1 GROUP BY status", program_id))
    finally:
        await conn.close()


async def test_200_redemptions_against_100_codes_on_two_replicas(
        platform, infra, api_token, kafka_client: Kafka, ledger: Api, rewards: Api,
        tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    codes = [unique("POOL").upper() for _ in range(100)]
    assert import_codes(infra.pg_dsn, program_id, codes, tmp_path).returncode == 0
    phones = [unique_phone() for _ in range(200)]
    await earn_points(kafka_client, ledger, program_id, phones)  # 1,000 points each
    replica = platform.add_replica(SERVICE)
    platform.start(replica)
    try:
        await platform.wait_ready(replica, SERVICE)
        orders = [request(program_id, phone) for phone in phones]
        await kafka_client.publish_many(topics.REDEMPTIONS,
                                        [(o["event_id"], o) for o in orders])

        done = await final_orders(rewards, [o["event_id"] for o in orders])
        assert await platform.consumed(replica, topics.REDEMPTIONS) > 0
        assert await platform.consumed(SERVICE, topics.REDEMPTIONS) > 0
    finally:
        stopping = platform.services.pop(replica)
        stopping.terminate()
        if stopping.proc is not None:
            await asyncio.to_thread(stopping.proc.wait, 30)

    by_status: dict[str, list[str]] = {}
    for order, phone in zip(orders, phones, strict=True):
        by_status.setdefault(done[order["event_id"]]["status"], []).append(phone)
    assert {s: len(p) for s, p in by_status.items()} == {"fulfilled": 100, "failed": 100}
    assert {done[o["event_id"]]["history"][-1]["reason_code"] for o in orders
            if done[o["event_id"]]["status"] == "failed"} == {"pool_empty"}

    sent = await fulfilled_codes(kafka_client, set(phones), set(codes))
    assert len(sent) == 100 and all(len(members) == 1 for members in sent.values())
    assert len({m for members in sent.values() for m in members}) == 100
    await expect_balances(ledger, program_id, {
        **dict.fromkeys(by_status["fulfilled"], 1000 - GIFT_POINTS),
        **dict.fromkeys(by_status["failed"], 1000)})
    assert await code_states(infra.pg_dsn, program_id) == {"delivered": 100}
    audit = run_audit(infra.pg_dsn)
    assert audit.returncode == 0, audit.stdout + audit.stderr


async def test_kill_9_during_a_burst_of_500_redemptions(
        platform, infra, api_token, kafka_client: Kafka, ledger: Api, rewards: Api,
        tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    codes = [unique("KILL").upper() for _ in range(600)]
    assert import_codes(infra.pg_dsn, program_id, codes, tmp_path).returncode == 0
    phones = [unique_phone() for _ in range(500)]
    await earn_points(kafka_client, ledger, program_id, phones)
    orders = [request(program_id, phone) for phone in phones]

    await kafka_client.publish_many(topics.REDEMPTIONS,
                                    [(o["event_id"], o) for o in orders[:250]])
    # Mid-burst: the first orders are in, most are not done yet.
    await rewards.wait_until(f"/v1/orders/{orders[0]['event_id']}", lambda b: True)
    platform.services[SERVICE].kill()
    await kafka_client.publish_many(topics.REDEMPTIONS,
                                    [(o["event_id"], o) for o in orders[250:]])
    await asyncio.sleep(1.0)
    platform.start(SERVICE)
    await platform.wait_ready(SERVICE)

    done = await final_orders(rewards, [o["event_id"] for o in orders])
    assert {body["status"] for body in done.values()} == {"fulfilled"}
    for body in done.values():
        assert [h["status"] for h in body["history"]] == [
            "requested", "points_reserved", "fulfilled"], body
    sent = await fulfilled_codes(kafka_client, set(phones), set(codes))
    assert len(sent) == 500 and all(len(members) == 1 for members in sent.values())
    await expect_balances(ledger, program_id, dict.fromkeys(phones, 1000 - GIFT_POINTS))
    assert await code_states(infra.pg_dsn, program_id) == {"delivered": 500, "available": 100}
    audit = run_audit(infra.pg_dsn)
    assert audit.returncode == 0, audit.stdout + audit.stderr
