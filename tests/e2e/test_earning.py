"""Earning through the public contract: members without cards, returns, campaigns, activities,
adjustments, program lifecycle, and program files, on the running platform.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loyalty import topics
from loyalty.cli import wait_programs_applied
from loyalty.programs import load_programs_file
from loyalty.testing import Api, Kafka, purchase_event, unique, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PROGRAM = "coffee-club"
OCTOBER = "2026-10-20T10:15:00+03:00"  # outside the demo's double-weekend campaign


def purchase(customer: dict, total: str, *, at: str = OCTOBER, program: str = PROGRAM,
             **fields: str) -> dict:
    return purchase_event(customer, total, occurred_at=at, program_id=program, **fields)


async def send(kafka_client: Kafka, topic: str, event: dict) -> None:
    await kafka_client.publish(topic, event, key=event.get("order_id") or event["event_id"])


async def test_a_till_purchase_then_an_online_one_with_phone_and_email_is_one_member(
        platform, kafka_client: Kafka, ledger: Api) -> None:
    phone, email = unique_phone(), f"{unique('ona')}@Example.com"
    await send(kafka_client, topics.PURCHASES, purchase({"phone": phone}, "10.00"))
    first = await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                                    lambda b: b["balance"] == 100)
    online = purchase({"phone": phone, "email": email}, "5.00", channel="ecommerce")
    await send(kafka_client, topics.PURCHASES, online)

    by_email = await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/email:{email.lower()}",
                                       lambda b: b["balance"] == 150)
    assert by_email["member_id"] == first["member_id"]
    [linked] = await kafka_client.wait_for(
        topics.MEMBERS, lambda r: json.loads(r.value)["member_id"] == first["member_id"]
        and json.loads(r.value)["type"] == "member.identifier_linked")
    assert json.loads(linked.value)["identifiers"] == {"email": email.lower()}


async def test_a_half_return_reverses_half_and_tells_the_member(
        platform, kafka_client: Kafka, ledger: Api) -> None:
    phone = unique_phone()
    bought = purchase({"phone": phone}, "20.00")
    await send(kafka_client, topics.PURCHASES, bought)
    path = f"/v1/programs/{PROGRAM}/members/phone:{phone}"
    member = await ledger.wait_until(path, lambda b: b["balance"] == 200)

    half = purchase({"phone": phone}, "10.00", kind="returned", order_id=bought["order_id"])
    await send(kafka_client, topics.PURCHASES, half)
    await ledger.wait_until(path, lambda b: b["balance"] == 100)
    [returned] = await kafka_client.wait_for(
        topics.LEDGER, lambda r: json.loads(r.value)["member_id"] == member["member_id"]
        and json.loads(r.value)["source"]["kind"] == "return")
    assert json.loads(returned.value)["points"] == -100
    [sms] = await kafka_client.wait_for(
        topics.NOTIFICATIONS_SMS, lambda r: json.loads(r.value)["to"] == phone
        and json.loads(r.value)["template"] == "points_returned")
    assert "100" in json.loads(sms.value)["body"]

    # The rest of the order, then one cent too many: exactly 200 back, then a dead letter.
    rest = purchase({"phone": phone}, "10.00", kind="returned", order_id=bought["order_id"])
    await send(kafka_client, topics.PURCHASES, rest)
    await ledger.wait_until(path, lambda b: b["balance"] == 0)
    extra = purchase({"phone": phone}, "0.01", kind="returned", order_id=bought["order_id"])
    await send(kafka_client, topics.PURCHASES, extra)
    [dead] = await kafka_client.wait_for(topics.dlq(topics.PURCHASES),
                                         lambda r: extra["event_id"].encode() in r.value)
    assert dict(dead.headers)["error.code"] == b"return_exceeds_purchase"


async def test_a_return_of_an_unknown_order_is_dead_lettered(platform,
                                                            kafka_client: Kafka) -> None:
    ghost = purchase({"phone": unique_phone()}, "3.00", kind="returned")
    await send(kafka_client, topics.PURCHASES, ghost)
    [dead] = await kafka_client.wait_for(topics.dlq(topics.PURCHASES),
                                         lambda r: ghost["event_id"].encode() in r.value)
    assert dict(dead.headers)["error.code"] == b"unknown_order"


async def test_a_return_after_the_points_were_spent_leaves_them_owed(
        platform, kafka_client: Kafka, ledger: Api) -> None:
    phone = unique_phone()
    bought = purchase({"phone": phone}, "10.00")
    await send(kafka_client, topics.PURCHASES, bought)
    path = f"/v1/programs/{PROGRAM}/members/phone:{phone}"
    await ledger.wait_until(path, lambda b: b["balance"] == 100)
    await send(kafka_client, topics.ADJUSTMENTS, {
        "event_id": unique("adj"), "type": "points.adjusted", "occurred_at": OCTOBER,
        "program_id": PROGRAM, "customer": {"phone": phone}, "points": -80,
        "reason": "duplicate credit", "actor": "agent-17"})
    await ledger.wait_until(path, lambda b: b["balance"] == 20)

    await send(kafka_client, topics.PURCHASES,
               purchase({"phone": phone}, "10.00", kind="returned", order_id=bought["order_id"]))
    view = await ledger.wait_until(path, lambda b: b["owed"] > 0)
    assert (view["balance"], view["owed"]) == (0, 80)

    await send(kafka_client, topics.PURCHASES, purchase({"phone": phone}, "10.00"))
    view = await ledger.wait_until(path, lambda b: b["owed"] == 0)
    assert view["balance"] == 20  # 100 earned, 80 of it paid back what was owed


async def test_a_campaign_doubles_only_inside_its_window_and_on_its_channels(
        platform, kafka_client: Kafka, ledger: Api) -> None:
    cases = [("2026-11-20T10:00:00+02:00", "pos", 200),        # inside, on the till
             ("2026-11-20T10:00:00+02:00", "ecommerce", 100),  # inside, online: not covered
             ("2026-10-31T21:59:59+00:00", "pos", 100),        # a second before it starts
             ("2027-01-01T00:00:00+02:00", "pos", 100)]        # the instant it ends
    for at, channel, points in cases:
        phone = unique_phone()
        await send(kafka_client, topics.PURCHASES,
                   purchase({"phone": phone}, "10.00", channel=channel, at=at))
        view = await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                                       lambda b: b["balance"] > 0)
        assert view["balance"] == points, (at, channel)


async def test_activities_and_adjustments_credit_with_a_reason(
        platform, kafka_client: Kafka, ledger: Api) -> None:
    phone = unique_phone()
    await send(kafka_client, topics.ACTIVITIES, {
        "event_id": unique("act"), "type": "activity.completed", "occurred_at": OCTOBER,
        "program_id": PROGRAM, "customer": {"phone": phone}, "activity": "survey"})
    path = f"/v1/programs/{PROGRAM}/members/phone:{phone}"
    await ledger.wait_until(path, lambda b: b["balance"] == 50)
    await send(kafka_client, topics.ADJUSTMENTS, {
        "event_id": unique("adj"), "type": "points.adjusted", "occurred_at": OCTOBER,
        "program_id": PROGRAM, "customer": {"phone": phone}, "points": 150,
        "reason": "missing purchase A-0999", "actor": "agent-17"})
    member = await ledger.wait_until(path, lambda b: b["balance"] == 200)
    [sms] = await kafka_client.wait_for(
        topics.NOTIFICATIONS_SMS, lambda r: json.loads(r.value)["to"] == phone
        and json.loads(r.value)["template"] == "points_adjusted")
    assert "150" in json.loads(sms.value)["body"]
    _, page = await ledger.get(f"/v1/programs/{PROGRAM}/members/{member['member_id']}"
                               "/transactions")
    reasons = [item["reason"] for item in page["items"]]
    assert reasons == ["missing purchase A-0999 (by agent-17)", "survey: 50 points"]

    unknown = {"event_id": unique("act"), "type": "activity.completed", "occurred_at": OCTOBER,
               "program_id": PROGRAM, "customer": {"phone": phone}, "activity": "skydiving"}
    await send(kafka_client, topics.ACTIVITIES, unknown)
    [dead] = await kafka_client.wait_for(topics.dlq(topics.ACTIVITIES),
                                         lambda r: unknown["event_id"].encode() in r.value)
    assert dict(dead.headers)["error.code"] == b"unknown_activity"


def program_file(tmp_path: Path, program_id: str, lifecycle: str) -> Path:
    path = tmp_path / f"{program_id}.yaml"
    path.write_text(f"""
programs:
  - id: {program_id}
    name: Closing Club
    currency: EUR
    time_zone: Europe/Vilnius
    lifecycle: {lifecycle}
    earning: {{points_per_unit: 10, rounding: floor}}
    expiry: {{policy: none}}
""")
    return path


def apply(path: Path, bootstrap: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loyalty.cli", "programs", "apply", str(path)],
                          env={**os.environ, "LOYALTY_KAFKA_BOOTSTRAP": bootstrap},
                          capture_output=True, text=True, timeout=60)


async def test_a_program_whose_earning_closed_credits_nothing_and_says_why(
        platform, infra, api_token, kafka_client: Kafka, earn: Api, ledger: Api,
        tmp_path: Path) -> None:
    program_id = unique("closing")
    path = program_file(tmp_path, program_id, "{earning_closes_at: '2026-10-01T00:00:00Z'}")
    result = apply(path, infra.kafka_bootstrap)
    assert result.returncode == 0, result.stderr
    await wait_programs_applied(platform.services["earn"].url, api_token,
                                load_programs_file(path))
    _, status = await earn.get(f"/v1/programs/{program_id}")
    assert status["status"] == "earning_closed"

    late = purchase({"phone": unique_phone()}, "10.00", program=program_id)
    await send(kafka_client, topics.PURCHASES, late)
    outcome = await earn.wait_until(f"/v1/programs/{program_id}/events/{late['event_id']}",
                                    lambda b: True)
    assert outcome["status"] == "skipped" and outcome["reason_code"] == "earning_closed"
    code, _ = await ledger.get(f"/v1/programs/{program_id}/members/"
                               f"phone:{late['customer']['phone']}")
    assert code == 404  # never enrolled, never credited


async def test_an_invalid_program_file_names_the_field_and_publishes_nothing(
        platform, infra, kafka_client: Kafka, tmp_path: Path) -> None:
    program_id = unique("broken")
    path = program_file(tmp_path, program_id, "{}")
    path.write_text(path.read_text().replace("rounding: floor", "rounding: sideways"))
    result = apply(path, infra.kafka_bootstrap)
    assert result.returncode != 0
    assert "programs[0].earning.rounding" in result.stderr
    marker = unique("marker")
    good = program_file(tmp_path, marker, "{}")
    assert apply(good, infra.kafka_bootstrap).returncode == 0
    # The marker, published after, is there: the broken program never was.
    await kafka_client.wait_for(topics.PROGRAMS, lambda r: r.key == marker.encode())
    keys = {r.key for r in await kafka_client.read_all(topics.PROGRAMS)}
    assert marker.encode() in keys and program_id.encode() not in keys


async def test_reaching_gold_is_published_and_multiplies_later_purchases(
        platform, kafka_client: Kafka, ledger: Api) -> None:
    phone = unique_phone()
    path = f"/v1/programs/{PROGRAM}/members/phone:{phone}"
    await send(kafka_client, topics.PURCHASES, purchase({"phone": phone}, "500.00"))
    member = await ledger.wait_until(path, lambda b: b["balance"] == 5000)  # the order cap
    [changed] = await kafka_client.wait_for(
        topics.MEMBERS, lambda r: json.loads(r.value)["member_id"] == member["member_id"]
        and json.loads(r.value)["type"] == "member.tier_changed")
    event = json.loads(changed.value)
    assert (event["previous_tier"], event["tier"]) == ("member", "gold")

    await send(kafka_client, topics.PURCHASES, purchase({"phone": phone}, "10.00"))
    await ledger.wait_until(path, lambda b: b["balance"] == 5000 + 150)  # 100 x 1.5


async def test_identifiers_of_two_members_never_merge_them(
        platform, api_token, kafka_client: Kafka, ledger: Api) -> None:
    phone, email = unique_phone(), f"{unique('jonas')}@example.com"
    await send(kafka_client, topics.PURCHASES, purchase({"phone": phone}, "1.00"))
    await send(kafka_client, topics.PURCHASES,
               purchase({"email": email}, "2.00", channel="ecommerce"))
    by_phone = await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                                       lambda b: b["balance"] == 10)
    by_email = await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/email:{email}",
                                       lambda b: b["balance"] == 20)
    before = await _conflicts(platform, api_token)

    both = purchase({"phone": phone, "email": email}, "3.00", channel="ecommerce")
    await send(kafka_client, topics.PURCHASES, both)
    # The phone comes first in the documented precedence: its member earns, the other keeps
    # its own balance and identifiers.
    await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                            lambda b: b["balance"] == 40)
    _, still = await ledger.get(f"/v1/programs/{PROGRAM}/members/email:{email}")
    assert still["member_id"] == by_email["member_id"] != by_phone["member_id"]
    assert still["balance"] == 20
    assert await _conflicts(platform, api_token) == before + 1


async def _conflicts(platform, api_token) -> float:
    _, text = await Api(platform.services["earn"].url, api_token).get("/metrics", token=None)
    for line in text.splitlines():
        if line.startswith("loyalty_business_events_total") and "identifier_conflict" in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_return_uses_the_rules_of_its_purchase_not_todays(
        platform, infra, api_token, kafka_client: Kafka, earn: Api, ledger: Api,
        tmp_path: Path) -> None:
    program_id = unique("rerated")
    path = program_file(tmp_path, program_id, "{}")
    assert apply(path, infra.kafka_bootstrap).returncode == 0
    await wait_programs_applied(platform.services["earn"].url, api_token,
                                load_programs_file(path))
    phone = unique_phone()
    bought = purchase({"phone": phone}, "10.00", program=program_id)
    await send(kafka_client, topics.PURCHASES, bought)
    member_path = f"/v1/programs/{program_id}/members/phone:{phone}"
    await ledger.wait_until(member_path, lambda b: b["balance"] == 100)

    path.write_text(path.read_text().replace("points_per_unit: 10", "points_per_unit: 20"))
    assert apply(path, infra.kafka_bootstrap).returncode == 0
    await earn.wait_until(f"/v1/programs/{program_id}", lambda b: b["version"] == 2)

    half = purchase({"phone": phone}, "5.00", kind="returned", order_id=bought["order_id"],
                    program=program_id)
    await send(kafka_client, topics.PURCHASES, half)
    await ledger.wait_until(member_path, lambda b: b["balance"] == 50)  # not 100 - 100
    outcome = await earn.wait_until(f"/v1/programs/{program_id}/events/{bought['event_id']}",
                                    lambda b: b["points_reversed"] == 50)
    assert outcome["program_version"] == 1


async def test_no_enrolment_after_enrolment_closes(
        platform, infra, api_token, kafka_client: Kafka, earn: Api, tmp_path: Path) -> None:
    program_id = unique("members-only")
    path = program_file(tmp_path, program_id, "{enrolment_closes_at: '2026-10-01T00:00:00Z'}")
    assert apply(path, infra.kafka_bootstrap).returncode == 0
    await wait_programs_applied(platform.services["earn"].url, api_token,
                                load_programs_file(path))
    newcomer = purchase({"phone": unique_phone()}, "10.00", program=program_id)
    await send(kafka_client, topics.PURCHASES, newcomer)
    outcome = await earn.wait_until(f"/v1/programs/{program_id}/events/{newcomer['event_id']}",
                                    lambda b: True)
    assert (outcome["status"], outcome["reason_code"]) == ("skipped", "enrolment_closed")


async def test_a_refused_purchase_enrols_nobody(platform, kafka_client: Kafka, earn: Api,
                                                ledger: Api) -> None:
    first = purchase({"phone": unique_phone()}, "1.00")
    await send(kafka_client, topics.PURCHASES, first)
    newcomer = unique_phone()
    clash = purchase({"phone": newcomer}, "2.00", order_id=first["order_id"])
    after = purchase({"phone": unique_phone()}, "3.00", order_id=first["order_id"] + "-b")
    await send(kafka_client, topics.PURCHASES, clash)
    await send(kafka_client, topics.PURCHASES, after)

    [dead] = await kafka_client.wait_for(topics.dlq(topics.PURCHASES),
                                         lambda r: clash["event_id"].encode() in r.value)
    assert dict(dead.headers)["error.code"] == b"duplicate_order"
    await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:"
                            f"{after['customer']['phone']}", lambda b: b["balance"] == 30)
    status, _ = await ledger.get(f"/v1/programs/{PROGRAM}/members/phone:{newcomer}")
    assert status == 404
    assert not [r for r in await kafka_client.read_all(topics.MEMBERS)
                if newcomer.encode() in r.value]  # no member.enrolled for the refused one
