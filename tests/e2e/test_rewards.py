"""Reward fulfilment end to end: earn points, redeem a code, get it by SMS, follow the order.

All services run as separate processes on real PostgreSQL and the real broker; the tests
publish CONTRACT.md payloads and read the public topics and routes only (plus the operator's
`loyalty rewards import-codes` command).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest
from test_rewards_helpers import (
    GIFT_POINTS,
    MUG_POINTS,
    apply_program,
    cancellation,
    earn_points,
    import_codes,
    records_for,
    request,
    settled_view,
    wait_status,
)

from loyalty import topics
from loyalty.contracts import Notification, OrderStatusChanged
from loyalty.testing import Api, Kafka, purchase_event, unique, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


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


async def sms_for(kafka: Kafka, phone: str, template: str, count: int = 1) -> list[dict]:
    found = await kafka.wait_for(
        topics.NOTIFICATIONS_SMS,
        lambda r: json.loads(r.value)["to"] == phone
        and json.loads(r.value)["template"] == template, count=count)
    return [json.loads(r.value) for r in found]


async def test_not_enough_points_is_rejected_and_nothing_is_held(
        platform, api_token, kafka_client: Kafka, ledger: Api, rewards: Api) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone], total="3.00")  # 300 < 500
    order = request(program_id, phone)
    await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])

    body = await wait_status(rewards, order["event_id"], "rejected")
    assert body["history"][-1]["reason_code"] == "insufficient_points"
    assert body["history"][-1]["reason"]
    await settled_view(ledger, program_id, phone, 300)


async def test_an_empty_pool_releases_the_hold_and_fails_with_a_notice(
        platform, api_token, kafka_client: Kafka, ledger: Api, rewards: Api) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)  # no codes
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone])
    order = request(program_id, phone)
    await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])

    body = await wait_status(rewards, order["event_id"], "failed")
    assert [h["status"] for h in body["history"]] == ["requested", "points_reserved", "failed"]
    assert body["history"][-1]["reason_code"] == "pool_empty"
    [notice] = await sms_for(kafka_client, phone, "reward_failed")
    assert "500" in notice["body"]
    await settled_view(ledger, program_id, phone, 1000)


async def test_physical_stock_runs_out(platform, api_token, kafka_client: Kafka, ledger: Api,
                                       rewards: Api) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards, mug_stock=1)
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone])
    first, second = (request(program_id, phone, "mug") for _ in range(2))
    for order in (first, second):
        await kafka_client.publish(topics.REDEMPTIONS, order, key=phone)  # in this order

    assert (await wait_status(rewards, first["event_id"], "fulfilled"))["points"] == MUG_POINTS
    body = await wait_status(rewards, second["event_id"], "failed")
    assert body["history"][-1]["reason_code"] == "out_of_stock"
    await settled_view(ledger, program_id, phone, 1000 - MUG_POINTS)
    _, catalog = await rewards.get(f"/v1/programs/{program_id}/rewards")
    assert {i["id"]: i["stock_left"] for i in catalog["items"]}["mug"] == 0


async def test_redemption_after_the_program_closed_is_rejected_with_the_reason(
        platform, infra, api_token, kafka_client: Kafka, ledger: Api, rewards: Api,
        tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards,
                                     redemption_closes_at="2026-11-01T00:00:00+00:00")
    assert import_codes(infra.pg_dsn, program_id, ["SUNSET-1"], tmp_path).returncode == 0
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone])
    order = request(program_id, phone)  # occurred 2026-11-23: after the deadline
    await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])

    body = await wait_status(rewards, order["event_id"], "rejected")
    assert body["history"][-1]["reason_code"] == "redemption_closed"
    assert "2026-11-01" in body["history"][-1]["reason"]
    await settled_view(ledger, program_id, phone, 1000)


async def test_unknown_reward_and_unknown_member_are_rejected(
        platform, api_token, kafka_client: Kafka, ledger: Api, rewards: Api) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone])
    no_reward = request(program_id, phone, "no-such-reward")
    no_member = request(program_id, unique_phone())
    for order in (no_reward, no_member):
        await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])

    body = await wait_status(rewards, no_reward["event_id"], "rejected")
    assert body["history"][-1]["reason_code"] == "unknown_reward"
    body = await wait_status(rewards, no_member["event_id"], "rejected", timeout_s=60)
    assert body["history"][-1]["reason_code"] == "unknown_member"
    assert body["member_id"] is None


async def test_the_same_request_three_times_is_one_order_one_hold_one_code(
        platform, infra, api_token, kafka_client: Kafka, ledger: Api, rewards: Api,
        tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    assert import_codes(infra.pg_dsn, program_id, [f"TRI-{i}" for i in range(3)],
                        tmp_path).returncode == 0
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone])
    order = request(program_id, phone)
    for _ in range(3):
        await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])

    await wait_status(rewards, order["event_id"], "fulfilled")
    view = await settled_view(ledger, program_id, phone, 1000 - GIFT_POINTS)
    await asyncio.sleep(1.0)
    sent = [json.loads(r.value) for r in await kafka_client.read_all(topics.NOTIFICATIONS_SMS)
            if json.loads(r.value)["to"] == phone
            and json.loads(r.value)["template"] == "reward_fulfilled"]
    assert len(sent) == 1
    reserved = [json.loads(r.value) for r in await kafka_client.read_all(topics.LEDGER)
                if json.loads(r.value)["member_id"] == view["member_id"]
                and json.loads(r.value)["type"] == "points.reserved"]
    assert len(reserved) == 1
    events = records_for(await kafka_client.read_all(topics.ORDERS), order["event_id"])
    assert [e["status"] for e in events] == ["requested", "points_reserved", "fulfilled"]
    _, catalog = await rewards.get(f"/v1/programs/{program_id}/rewards")
    assert {i["id"]: i["stock_left"] for i in catalog["items"]}["gift"] == 2


async def test_a_cancellation_before_fulfilment_releases_the_hold(
        platform, infra, api_token, kafka_client: Kafka, ledger: Api, rewards: Api,
        tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    assert import_codes(infra.pg_dsn, program_id, ["EARLY-1"], tmp_path).returncode == 0
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone])
    order = request(program_id, phone)
    # Keyed by the order: the cancellation is read right after its request, before the
    # ledger has even answered the reserve.
    await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])
    await kafka_client.publish(topics.REDEMPTIONS, cancellation(program_id, order["event_id"]),
                               key=order["event_id"])

    body = await wait_status(rewards, order["event_id"], "cancelled")
    assert [h["status"] for h in body["history"]] == ["requested", "points_reserved",
                                                     "cancelled"]
    assert body["history"][-1]["reason"] == "customer complaint"
    [notice] = await sms_for(kafka_client, phone, "reward_cancelled")
    assert "500" in notice["body"]
    await settled_view(ledger, program_id, phone, 1000)
    _, catalog = await rewards.get(f"/v1/programs/{program_id}/rewards")
    assert {i["id"]: i["stock_left"] for i in catalog["items"]}["gift"] == 1  # never issued


async def test_a_cancellation_after_fulfilment_refunds_and_voids_the_code(
        platform, infra, api_token, kafka_client: Kafka, ledger: Api, rewards: Api,
        tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    assert import_codes(infra.pg_dsn, program_id, ["LATE-1", "LATE-2"],
                        tmp_path).returncode == 0
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone])
    order = request(program_id, phone)
    await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])
    await wait_status(rewards, order["event_id"], "fulfilled")
    await settled_view(ledger, program_id, phone, 1000 - GIFT_POINTS)

    await kafka_client.publish(topics.REDEMPTIONS, cancellation(program_id, order["event_id"]),
                               key=order["event_id"])
    body = await wait_status(rewards, order["event_id"], "cancelled")
    assert [h["status"] for h in body["history"]] == [
        "requested", "points_reserved", "fulfilled", "cancelled"]
    [notice] = await sms_for(kafka_client, phone, "reward_cancelled")
    assert "500" in notice["body"]
    view = await settled_view(ledger, program_id, phone, 1000)
    [refund] = [json.loads(r.value) for r in await kafka_client.read_all(topics.LEDGER)
                if json.loads(r.value)["member_id"] == view["member_id"]
                and json.loads(r.value)["source"]["kind"] == "redemption"
                and json.loads(r.value)["type"] == "points.credited"]
    assert refund["points"] == GIFT_POINTS
    assert refund["source"] == {"kind": "redemption", "id": order["event_id"]}

    conn = await asyncpg.connect(infra.pg_dsn)
    try:
        states = await conn.fetch("SELECT status, count(*) FROM rewards.codes"
                                  " WHERE program_id = $1 GROUP BY status", program_id)
    finally:
        await conn.close()
    assert dict(states) == {"voided": 1, "available": 1}  # voided, never reissued
    _, catalog = await rewards.get(f"/v1/programs/{program_id}/rewards")
    assert {i["id"]: i["stock_left"] for i in catalog["items"]}["gift"] == 1


@pytest.mark.parametrize("case", ["twice", "unknown_order", "rejected_order"])
async def test_cancelling_twice_or_an_unknown_or_closed_order_is_dead_lettered(
        platform, api_token, kafka_client: Kafka, ledger: Api, rewards: Api,
        case: str) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone], total="3.00")
    order = request(program_id, phone, "mug")  # 200 of 300 points: fulfilled
    if case == "rejected_order":
        order = request(program_id, phone)  # 500 of 300: rejected
    await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])
    await wait_status(rewards, order["event_id"], "fulfilled", "rejected")
    if case == "twice":
        first = cancellation(program_id, order["event_id"])
        await kafka_client.publish(topics.REDEMPTIONS, first, key=order["event_id"])
        await wait_status(rewards, order["event_id"], "cancelled")
    target = unique("nope") if case == "unknown_order" else order["event_id"]
    bad = cancellation(program_id, target)
    await kafka_client.publish(topics.REDEMPTIONS, bad, key=order["event_id"])

    [dead] = await kafka_client.wait_for(topics.dlq(topics.REDEMPTIONS),
                                         lambda r: bad["event_id"].encode() in (r.value or b""))
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["error.code"] == {"twice": "already_cancelled", "unknown_order":
                                     "unknown_order", "rejected_order": "order_closed"}[case]
    assert headers["original.topic"] == topics.REDEMPTIONS


@pytest.mark.parametrize(("value", "code"), [
    (b"{not json", "malformed_json"),
    (b'{"event_id": "x", "type": "redemption.requested"}', "missing_field"),
    (b'{"event_id": "x", "type": "redemption.exploded", "program_id": "p"}', "invalid_field"),
    (b'{"event_id": "q", "type": "redemption.requested", "occurred_at":'
     b' "2026-11-23T10:00:00+02:00", "program_id": "p", "customer": {"phone": "12"},'
     b' "reward_id": "gift"}', "invalid_phone"),
    (b'{"event_id": "q", "type": "redemption.requested", "occurred_at":'
     b' "2026-11-23T10:00:00+02:00", "program_id": "p", "customer": {"phone": "+37060000001"},'
     b' "reward_id": "gift", "quantity": 1000000}', "invalid_field"),
])
async def test_hostile_redemptions_are_dead_lettered_and_the_stream_goes_on(
        platform, api_token, kafka_client: Kafka, ledger: Api, rewards: Api, value: bytes,
        code: str) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    phone = unique_phone()
    await earn_points(kafka_client, ledger, program_id, [phone])
    marker = unique("hostile").encode()
    key = unique("k")
    raw = value.replace(b'"x"', b'"' + marker + b'"').replace(b'"q"', b'"' + marker + b'"')
    raw = raw if marker in raw else raw + b" " + marker
    await kafka_client.publish(topics.REDEMPTIONS, raw, key=key)
    good = request(program_id, phone, "mug")
    await kafka_client.publish(topics.REDEMPTIONS, good, key=key)

    [dead] = await kafka_client.wait_for(topics.dlq(topics.REDEMPTIONS),
                                         lambda r: marker in (r.value or b""))
    assert {k: v.decode() for k, v in dead.headers}["error.code"] == code
    assert dead.value == raw
    await wait_status(rewards, good["event_id"], "fulfilled")


@pytest.mark.parametrize("path", [
    "/v1/orders/a%00b", "/v1/orders/" + "x" * 201, "/v1/programs/%00/rewards",
    "/v1/orders/%01%02"])
async def test_malformed_path_segments_are_a_400_with_an_error_body(rewards: Api,
                                                                    path: str) -> None:
    status, body = await rewards.get(path)
    assert status == 400, (status, body)
    assert body["error"]["code"] == "invalid_parameter" and body["error"]["message"]


@pytest.mark.parametrize("length", [5_000, 300_000])
async def test_a_huge_id_is_a_4xx_with_an_error_body(rewards: Api, length: int) -> None:
    status, body = await rewards.get("/v1/orders/" + "x" * length)
    assert 400 <= status < 500, status
    assert body["error"]["code"] and body["error"]["message"], body


async def test_unknown_orders_and_programs_are_404_and_the_token_is_required(
        rewards: Api) -> None:
    status, body = await rewards.get("/v1/orders/no-such-order")
    assert (status, body["error"]["code"]) == (404, "order_not_found")
    status, body = await rewards.get("/v1/programs/no-such-program/rewards")
    assert (status, body["error"]["code"]) == (404, "program_not_found")
    status, body = await rewards.get("/v1/orders/x", token="wrong")
    assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_a_code_goes_by_e_mail_when_the_request_asks_for_it(
        platform, infra, api_token, kafka_client: Kafka, ledger: Api, rewards: Api,
        tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    assert import_codes(infra.pg_dsn, program_id, ["MAIL-CODE-1"], tmp_path).returncode == 0
    phone, email = unique_phone(), f"{unique('m')}@example.com"
    purchase = purchase_event({"phone": phone, "email": email}, "10.00",
                              program_id=program_id, category="x")
    await kafka_client.publish(topics.PURCHASES, purchase, key=purchase["order_id"])
    await ledger.wait_until(f"/v1/programs/{program_id}/members/email:{email}",
                            lambda b: b["balance"] >= 1000)
    order = request(program_id, phone, delivery={"channel": "email"}, locale="pl")
    await kafka_client.publish(topics.REDEMPTIONS, order, key=order["event_id"])

    [mail] = await kafka_client.wait_for(
        topics.NOTIFICATIONS_EMAIL,
        lambda r: json.loads(r.value)["to"] == email
        and json.loads(r.value)["template"] == "reward_fulfilled")
    message = json.loads(mail.value)
    Notification.model_validate(message)
    assert "MAIL-CODE-1" in message["body"] and message["subject"]
    assert message["locale"] == "pl"
    await wait_status(rewards, order["event_id"], "fulfilled")
