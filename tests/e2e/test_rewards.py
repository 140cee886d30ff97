"""Reward fulfilment end to end: earn points, redeem a code, get it by SMS, follow the order.

All services run as separate processes on real PostgreSQL and the real broker; the tests
publish CONTRACT.md payloads and read the public topics and routes only (plus the operator's
`loyalty rewards import-codes` command).
"""

from __future__ import annotations

import json
import uuid

import pytest
from test_rewards_helpers import (
    GIFT_POINTS,
    apply_program,
    earn_points,
    import_codes,
    records_for,
    request,
    settled_view,
    wait_status,
)

from loyalty import topics
from loyalty.contracts import Notification, OrderStatusChanged
from loyalty.testing import Api, Kafka, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
def rewards(platform, api_token) -> Api:
    return Api(platform.services["reward-fulfilment"].url, api_token)


async def test_a_member_redeems_a_code_and_gets_it_by_sms(
        platform, infra, api_token, kafka_client: Kafka, ledger: Api, rewards: Api,
        tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    codes = [f"GIFT-{uuid.uuid4().hex[:10].upper()}" for _ in range(3)]
    loaded = import_codes(infra.pg_dsn, program_id, codes, tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded 3 codes" in loaded.stdout
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone])  # 1,000 points

    order = request(program_id, phone)
    await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])

    [sms] = await kafka_client.wait_for(
        topics.NOTIFICATIONS_SMS,
        lambda r: json.loads(r.value)["to"] == phone
        and json.loads(r.value)["template"] == "reward_fulfilled")
    message = json.loads(sms.value)
    Notification.model_validate(message)
    [code] = [c for c in codes if c in message["body"]]
    assert message["body"].count("GIFT-") == 1
    view = await settled_view(ledger, program_id, phone, 1000 - GIFT_POINTS)
    assert view["available"] == 1000 - GIFT_POINTS

    body = await wait_status(rewards, order["event_id"], "fulfilled")
    assert {k: body[k] for k in ("order_id", "program_id", "member_id", "reward_id", "quantity",
                                 "points", "status")} == {
        "order_id": order["event_id"], "program_id": program_id, "member_id": view["member_id"],
        "reward_id": "gift", "quantity": 1, "points": GIFT_POINTS, "status": "fulfilled"}
    assert [h["status"] for h in body["history"]] == ["requested", "points_reserved",
                                                     "fulfilled"]
    assert [h["at"] for h in body["history"]] == sorted(h["at"] for h in body["history"])
    assert code not in json.dumps(body)

    events = records_for(await kafka_client.read_all(topics.ORDERS), order["event_id"])
    for event in events:
        OrderStatusChanged.model_validate(event)
    assert [e["status"] for e in events] == ["requested", "points_reserved", "fulfilled"]
    _, catalog = await rewards.get(f"/v1/programs/{program_id}/rewards")
    assert {i["id"]: i["stock_left"] for i in catalog["items"]} == {"gift": 2, "mug": 3}
