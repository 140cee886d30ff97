"""The expiry scheduler end to end: purchases through earn and the ledger, the scheduler as its
own process, `loyalty expiry sweep --as-of` moving time, and the public topics and routes.

This module runs a platform of its own (its own embedded PostgreSQL and broker): its
scheduler's periodic sweep is off (`LOYALTY_EXPIRY_SWEEP_INTERVAL_S=0`), so the 2021 lots
below expire only when a test sweeps, not at once on the wall clock as the shared platform's
scheduler would. Only the kill -9 test turns the periodic sweep on, last.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from loyalty import topics
from loyalty.cli import publish_programs, wait_programs_applied
from loyalty.contracts import LedgerEvent, Notification
from loyalty.infra import start_infrastructure
from loyalty.platform import Platform
from loyalty.programs import parse_programs_yaml
from loyalty.testing import Api, Kafka, purchase_event, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SERVICES = ("earn", "ledger", "expiry-scheduler")
SCHEDULER = "expiry-scheduler"
PROGRAMS = """
programs:
  - id: rolling-1m
    name: Coffee Club
    currency: EUR
    time_zone: UTC
    default_locale: en
    earning: {points_per_unit: 10}
    expiry: {policy: rolling, months: 1, warn_days_before: [30, 7]}
  - id: ulta
    name: Beauty Club
    currency: EUR
    time_zone: Europe/Vilnius
    earning: {points_per_unit: 10}
    expiry: {policy: rolling, months: 12, round_to: end_of_quarter, warn_days_before: [30]}
  - id: sunset
    name: Card Club
    currency: EUR
    time_zone: Europe/Vilnius
    default_locale: lt
    lifecycle:
      enrolment_closes_at: "2021-04-01T00:00:00+03:00"
      earning_closes_at: "2021-05-01T00:00:00+03:00"
      redemption_closes_at: "2021-07-01T00:00:00+03:00"
    earning: {points_per_unit: 10}
  - id: crash
    name: Crash Club
    currency: EUR
    time_zone: UTC
    earning: {points_per_unit: 10}
    expiry: {policy: rolling, months: 1, warn_days_before: [7]}
"""
END_OF_FEB = "2021-02-28T23:59:59+00:00"
CRASH_LOTS = 10_000
CRASH_MEMBERS = 2_000


class ExpiryWorld:
    def __init__(self, platform: Platform, kafka: Kafka, token: str) -> None:
        self.platform = platform
        self.kafka = kafka
        self.scheduler = Api(platform.services[SCHEDULER].url, token)
        self.ledger = Api(platform.services["ledger"].url, token)
        self.earn = Api(platform.services["earn"].url, token)
        self.env = platform.services[SCHEDULER].env

    def sweep(self, as_of: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """`loyalty expiry sweep`, as an operator runs it, against the scheduler's database."""
        env = {**os.environ, "LOYALTY_EXPIRY_PG_DSN": self.env["LOYALTY_EXPIRY_PG_DSN"]}
        return subprocess.run([sys.executable, "-m", "loyalty.cli", "expiry", "sweep",
                               "--as-of", as_of, *extra], env=env, capture_output=True,
                              text=True, timeout=120)

    async def buy(self, program: str, phone: str, total: str, at: str) -> dict[str, Any]:
        event = purchase_event({"phone": phone}, total, program_id=program, occurred_at=at)
        event["locale"] = "en"
        await self.kafka.publish(topics.PURCHASES, event, key=event["order_id"])
        return event

    async def balance(self, program: str, phone: str, points: int) -> dict[str, Any]:
        return await self.ledger.wait_until(f"/v1/programs/{program}/members/phone:{phone}",
                                            lambda b: b["balance"] == points, timeout_s=60)

    async def messages(self, phone: str, template: str) -> list[dict[str, Any]]:
        found = [json.loads(r.value) for r in await self.kafka.read_all(topics.NOTIFICATIONS_SMS)]
        return [m for m in found if m["to"] == phone and m["template"] == template]

    async def restart_scheduler(self, **env: str) -> None:
        service = self.platform.services[SCHEDULER]
        service.terminate()
        try:
            if service.proc is not None:
                service.proc.wait(30)
        except subprocess.TimeoutExpired:
            service.kill()
        service.env.update(env)
        service.start()
        await self.platform.wait_ready(SCHEDULER)


@pytest.fixture(scope="module")
async def world(tmp_path_factory) -> Any:
    data = tmp_path_factory.mktemp("expiry-e2e")
    infra = start_infrastructure(data, fsync=False)
    token = secrets.token_urlsafe(12)
    platform = Platform(infra.pg_dsn, infra.kafka_bootstrap, token, data, fixed_ports=False)
    kafka = Kafka(infra.kafka_bootstrap)
    try:
        await platform.prepare()
        platform.services[SCHEDULER].env["LOYALTY_EXPIRY_SWEEP_INTERVAL_S"] = "0"
        platform.start(*SERVICES)
        await platform.wait_ready(*SERVICES)
        programs = parse_programs_yaml(PROGRAMS)
        await publish_programs(infra.kafka_bootstrap, programs)
        await wait_programs_applied(platform.services["earn"].url, token, programs)
        await kafka.producer.start()
        world = ExpiryWorld(platform, kafka, token)
        for program in programs:  # the scheduler has applied them too
            await world.scheduler.wait_until(f"/v1/programs/{program.id}/liability",
                                             lambda b: True)
        world.admin_dsn = infra.pg_dsn
        yield world
    finally:
        await kafka.producer.stop()
        platform.stop()
        infra.stop()


async def test_due_points_expire_and_each_warning_sms_goes_once(world: ExpiryWorld) -> None:
    phone = unique_phone()
    await world.buy("rolling-1m", phone, "10.00", "2021-01-31T12:00:00+00:00")
    member = await world.balance("rolling-1m", phone, 100)
    path = f"/v1/programs/rolling-1m/members/phone:{phone}/expirations?from=2021-01-01"
    view = await world.scheduler.wait_until(path, lambda b: b["items"])
    assert view["items"] == [{"member_id": member["member_id"], "points": 100,
                              "expires_at": END_OF_FEB, "policy": "rolling"}]
    assert view["policy"] == {"policy": "rolling", "time_zone": "UTC", "months": 1,
                              "round_to": "none", "warn_days_before": [30, 7]}

    thirty_days_before = "2021-01-29T23:59:59+00:00"
    for _ in range(2):  # two sweeps, then a restart of the scheduler, then a third
        done = world.sweep(thirty_days_before)
        assert done.returncode == 0, done.stderr
    await world.restart_scheduler()
    assert world.sweep(thirty_days_before).returncode == 0
    await world.kafka.wait_for(topics.NOTIFICATIONS_SMS,
                               lambda r: json.loads(r.value)["to"] == phone)
    await asyncio.sleep(1.0)  # long enough for a duplicate to arrive
    [warning] = await world.messages(phone, "expiry_warning")
    Notification.model_validate(warning)
    assert warning["body"] == ("Coffee Club: you have 100 points to use by Feb 28, 2021. "
                               "Treat yourself to something you like!")
    for _ in range(2):  # the 7-day one, twice
        assert world.sweep("2021-02-21T23:59:59+00:00").returncode == 0

    assert world.sweep("2021-02-28T23:59:58+00:00").returncode == 0
    await asyncio.sleep(0.5)
    assert (await world.balance("rolling-1m", phone, 100))["balance"] == 100
    done = world.sweep(END_OF_FEB)
    assert "1 expiry command(s) for 1 lot(s), 100 points" in done.stdout
    await world.balance("rolling-1m", phone, 0)
    [expired] = await world.kafka.wait_for(
        topics.LEDGER, lambda r: json.loads(r.value)["member_id"] == member["member_id"]
        and json.loads(r.value)["type"] == "points.expired")
    event = LedgerEvent.model_validate(json.loads(expired.value))
    assert event.source.kind == "expiry" and event.points == -100
    await world.kafka.wait_for(topics.NOTIFICATIONS_SMS,
                               lambda r: json.loads(r.value)["to"] == phone
                               and json.loads(r.value)["template"] == "points_expired")
    assert len(await world.messages(phone, "expiry_warning")) == 2
    assert "0 expiry command(s)" in world.sweep(END_OF_FEB).stdout  # idempotent
    log = world.platform.services[SCHEDULER].log_path.read_text()
    assert phone not in log and phone[4:] not in log  # logs never hold a phone number


async def test_a_future_sweep_is_refused_and_a_dry_run_forecasts(world: ExpiryWorld) -> None:
    phone = unique_phone()
    await world.buy("rolling-1m", phone, "3.00", "2026-11-01T10:00:00+00:00")
    member = await world.balance("rolling-1m", phone, 30)
    await world.scheduler.wait_until(
        f"/v1/programs/rolling-1m/members/{member['member_id']}/expirations?from=2026-01-01",
        lambda b: b["items"])
    future = (datetime.now(UTC) + timedelta(days=40)).isoformat()
    refused = world.sweep(future)
    assert refused.returncode == 2 and "in the future" in refused.stderr
    forecast = world.sweep(future, "--dry-run")
    assert forecast.returncode == 0, forecast.stderr
    assert f"would expire 30 points of member {member['member_id']}" in forecast.stdout
    await asyncio.sleep(0.5)
    assert (await world.balance("rolling-1m", phone, 30))["balance"] == 30  # nothing done


async def test_ulta_expirations_and_liability_are_in_the_programs_time_zone(
        world: ExpiryWorld) -> None:
    phones = [unique_phone() for _ in range(3)]
    # 12 months then the end of the quarter, in Vilnius: 1 April 01:30 local is still
    # 31 March in UTC, but an April earning (Q2 2022, summer time); 30 October 2021 ends Q4
    # 2022, after the clocks went back.
    await world.buy("ulta", phones[0], "1.00", "2021-03-31T22:30:00+00:00")
    await world.buy("ulta", phones[1], "2.00", "2021-10-30T12:00:00+03:00")
    await world.buy("ulta", phones[2], "4.00", "2021-10-31T12:00:00+02:00")
    for phone, points in zip(phones, (10, 20, 40), strict=True):
        await world.balance("ulta", phone, points)
    body = await world.scheduler.wait_until(
        "/v1/programs/ulta/expirations?from=2021-01-01", lambda b: len(b["items"]) == 3)
    got = sorted((i["expires_at"], i["points"]) for i in body["items"])
    assert got == [("2022-06-30T20:59:59+00:00", 10), ("2022-12-31T21:59:59+00:00", 20),
                   ("2022-12-31T21:59:59+00:00", 40)]
    # from/to select by instant; `to` is excluded.
    status, part = await world.scheduler.get(
        "/v1/programs/ulta/expirations?from=2022-07-01&to=2023-01-01")
    assert status == 200 and {i["points"] for i in part["items"]} == {20, 40}

    status, liability = await world.scheduler.get("/v1/programs/ulta/liability")
    assert status == 200
    assert liability == {"program_id": "ulta", "time_zone": "Europe/Vilnius", "total": 70,
                         "never_expiring": 0, "by_expiry_month": [
                             {"month": "2022-06", "points": 10},
                             {"month": "2022-12", "points": 60}]}
    status, csv_text = await world.scheduler.get("/v1/programs/ulta/liability?format=csv")
    assert status == 200 and csv_text == "month,points\n2022-06,10\n2022-12,60\nnever,0\n"
    # The ledger's months are UTC: the same points land in the same months here only because
    # end of day in Vilnius is still the same UTC day; the scheduler states its zone.

    async with aiohttp.ClientSession() as http, http.get(
            world.scheduler.base_url + "/v1/programs/ulta/expirations?from=2021-01-01",
            headers={"Authorization": f"Bearer {world.scheduler.token}",
                     "Accept": "text/csv"}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
        lines = (await resp.text()).splitlines()
    assert lines[0] == "member_id,points,expires_at,policy"
    assert sorted(line.split(",")[1] for line in lines[1:]) == ["10", "20", "40"]


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/v1/programs/ulta/expirations?from=2021-02-30", 400, "invalid_parameter"),
    ("/v1/programs/ulta/expirations?from=2021-01-01T00:00:00", 400, "invalid_parameter"),
    ("/v1/programs/ulta/expirations?from=%00", 400, "invalid_parameter"),
    ("/v1/programs/ulta/expirations?from=2022-01-01&to=2021-01-01", 400, "invalid_parameter"),
    ("/v1/programs/ulta/expirations?format=xml", 400, "invalid_parameter"),
    ("/v1/programs/ulta/expirations?limit=0", 400, "invalid_parameter"),
    ("/v1/programs/ulta/expirations?cursor=%00%01", 400, "invalid_parameter"),
    ("/v1/programs/ulta/expirations?cursor=garbage", 400, "invalid_cursor"),
    ("/v1/programs/ul%00ta/expirations", 400, "invalid_parameter"),
    ("/v1/programs/nope/expirations", 404, "program_not_found"),
    ("/v1/programs/ulta/members/phone:12/expirations", 400, "invalid_phone"),
    ("/v1/programs/ulta/members/m%00x/expirations", 400, "invalid_parameter"),
    ("/v1/programs/ulta/members/customer:%00/expirations", 400, "invalid_parameter"),
    ("/v1/programs/ulta/members/customer:%20/expirations", 400, "invalid_identifier"),
    ("/v1/programs/ulta/members/no-such-member/expirations", 404, "member_not_found"),
    ("/v1/programs/%00/liability", 400, "invalid_parameter"),
    ("/v1/programs/%ED%A0%80/expirations", 400, "invalid_parameter"),
    ("/v1/programs/ulta/expirations?x%00=1", 400, "invalid_parameter"),
    ("/v1/programs/ulta/liability?format=%FF", 400, "invalid_parameter"),
    ("/v1/programs/ulta/members/%C0%80/expirations", 404, "member_not_found"),
])
async def test_malformed_requests_are_4xx_with_an_error_body(world: ExpiryWorld, path: str,
                                                             status: int, code: str) -> None:
    got, body = await world.scheduler.get(path)
    assert (got, body["error"]["code"]) == (status, code), body
    assert body["error"]["message"]
    unauthorised, _ = await world.scheduler.get(path, token=None)
    assert unauthorised == 401


async def test_program_sunset_step_by_step(world: ExpiryWorld) -> None:
    holder, spender, late = unique_phone(), unique_phone(), unique_phone()
    await world.buy("sunset", holder, "30.00", "2021-03-10T12:00:00+02:00")
    await world.buy("sunset", spender, "1.00", "2021-03-10T12:00:00+02:00")
    await world.balance("sunset", holder, 300)
    spent = await world.balance("sunset", spender, 10)

    # Step 1: enrolment closes: a new shopper earns nothing, and is told why.
    late_buy = await world.buy("sunset", late, "5.00", "2021-04-10T12:00:00+03:00")
    outcome = await world.earn.wait_until(
        f"/v1/programs/sunset/events/{late_buy['event_id']}", lambda b: True)
    assert (outcome["status"], outcome["reason_code"]) == ("skipped", "enrolment_closed")
    # Step 2: earning closes: a member's purchase earns nothing either.
    after = await world.buy("sunset", holder, "5.00", "2021-05-10T12:00:00+03:00")
    outcome = await world.earn.wait_until(
        f"/v1/programs/sunset/events/{after['event_id']}", lambda b: True)
    assert (outcome["status"], outcome["reason_code"]) == ("skipped", "earning_closed")
    # The spender uses their points (the ledger's debit, as a redemption would).
    await world.kafka.publish(topics.ADJUSTMENTS, {
        "event_id": f"adj-{spent['member_id']}", "type": "points.adjusted",
        "occurred_at": "2021-05-15T12:00:00+03:00", "program_id": "sunset",
        "customer": {"phone": spender}, "points": -10, "reason": "used", "actor": "agent-1"})
    await world.balance("sunset", spender, 0)

    # Step 3: the notices, 30 and 7 days before the deadline, to members holding points.
    assert world.sweep("2021-05-31T00:00:00+03:00").returncode == 0  # 31 days before
    assert world.sweep("2021-06-01T00:00:00+03:00").returncode == 0  # 30 days before
    assert world.sweep("2021-06-24T00:00:00+03:00").returncode == 0  # 7 days before
    assert world.sweep("2021-06-24T00:00:00+03:00").returncode == 0
    await world.kafka.wait_for(topics.NOTIFICATIONS_SMS, lambda r: json.loads(r.value)["to"]
                               == holder and json.loads(r.value)["template"]
                               == "program_closing", count=2)
    await asyncio.sleep(1.0)
    notices = await world.messages(holder, "program_closing")
    assert len(notices) == 2 and all("300" in n["body"] for n in notices)
    assert await world.messages(spender, "program_closing") == []

    # Step 4: at the redemption deadline every remaining point expires, as `sunset`.
    assert world.sweep("2021-06-30T23:59:59+03:00").returncode == 0
    await asyncio.sleep(0.5)
    assert (await world.balance("sunset", holder, 300))["balance"] == 300
    done = world.sweep("2021-07-01T00:00:00+03:00")
    assert "1 sunset command(s) for 1 lot(s), 300 points" in done.stdout, done.stdout
    member = await world.balance("sunset", holder, 0)
    [expired] = await world.kafka.wait_for(
        topics.LEDGER, lambda r: json.loads(r.value)["member_id"] == member["member_id"]
        and json.loads(r.value)["type"] == "points.expired")
    assert json.loads(expired.value)["source"]["kind"] == "sunset"


async def test_kill_9_mid_sweep_then_restart_expires_every_lot_exactly_once(
        world: ExpiryWorld) -> None:
    phones = [unique_phone() for _ in range(CRASH_MEMBERS)]
    events = []
    for n in range(CRASH_LOTS):
        event = purchase_event({"phone": phones[n % CRASH_MEMBERS]}, "1.00",
                               program_id="crash", occurred_at="2021-01-10T12:00:00+00:00")
        events.append((event["order_id"], event))
    await world.kafka.publish_many(topics.PURCHASES, events)
    await world.scheduler.wait_until("/v1/programs/crash/liability",
                                     lambda b: b["total"] == 10 * CRASH_LOTS, timeout_s=180)

    # The periodic sweep on (as of the wall clock: every crash lot is long due), in small
    # batches, killed once part of the lots are asked for.
    conn = await asyncpg.connect(world.admin_dsn, server_settings={"search_path": "expiry"})
    try:
        await world.restart_scheduler(LOYALTY_EXPIRY_SWEEP_INTERVAL_S="0.2",
                                      LOYALTY_EXPIRY_SWEEP_BATCH_LOTS_MAX="100")
        deadline = time.monotonic() + 60
        asked = 0
        while not 0 < asked < CRASH_LOTS:
            assert time.monotonic() < deadline, "the sweep never started"
            asked = await conn.fetchval(
                "SELECT count(*) FROM lots WHERE program_id = 'crash'"
                " AND (pending_command_id IS NOT NULL OR remaining = 0)")
            await asyncio.sleep(0.01)
        world.platform.services[SCHEDULER].kill()
        at_kill = await conn.fetchval(
            "SELECT count(*) FROM lots WHERE program_id = 'crash'"
            " AND (pending_command_id IS NOT NULL OR remaining = 0)")
        assert 0 < at_kill < CRASH_LOTS, "killed after the sweep, not in the middle"
        world.platform.services[SCHEDULER].start()
        await world.platform.wait_ready(SCHEDULER)
        await world.scheduler.wait_until("/v1/programs/crash/liability",
                                         lambda b: b["total"] == 0, timeout_s=180)
    finally:
        await conn.close()

    expired = [json.loads(r.value) for r in await world.kafka.read_all(topics.LEDGER)]
    expired = [e for e in expired if e["program_id"] == "crash" and e["type"] == "points.expired"]
    lots = Counter(lot["lot_id"] for e in expired for lot in e["lots"])
    assert len(lots) == CRASH_LOTS and set(lots.values()) == {1}
    assert -sum(e["points"] for e in expired) == 10 * CRASH_LOTS
    ledger_dsn = world.platform.services["ledger"].env["LOYALTY_LEDGER_PG_DSN"]
    audit = subprocess.run([sys.executable, "-m", "loyalty.cli", "audit"], capture_output=True,
                           text=True, env={**os.environ, "LOYALTY_LEDGER_PG_DSN": ledger_dsn},
                           timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
