"""Helpers of the reward-fulfilment end-to-end tests (no tests here): a program of their own,
codes, requests.

Each test applies a fresh program (its own pools and stock, so tests never share codes) with
100 points per EUR, and loads codes through the real `loyalty rewards import-codes` command.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from loyalty import topics
from loyalty.cli import publish_programs, wait_programs_applied
from loyalty.programs import ProgramDefinition
from loyalty.testing import Api, Kafka, purchase_event, unique

GIFT_POINTS = 500
MUG_POINTS = 200


def program_definition(program_id: str, *, mug_stock: int = 3,
                       redemption_closes_at: str | None = None) -> ProgramDefinition:
    return ProgramDefinition.model_validate({
        "id": program_id, "name": "Reward Club", "currency": "EUR", "time_zone": "UTC",
        "default_locale": "en",
        "lifecycle": {"redemption_closes_at": redemption_closes_at},
        "earning": {"points_per_unit": 100, "rounding": "floor"},
        "expiry": {"policy": "rolling", "months": 12},
        "rewards": [
            {"id": "gift", "name": "Gift card", "points": GIFT_POINTS, "kind": "code",
             "pool": "gift-pool"},
            {"id": "mug", "name": "Mug", "points": MUG_POINTS, "kind": "physical",
             "stock": mug_stock},
        ]})


async def apply_program(platform: Any, kafka: Kafka, api_token: str, rewards: Api,
                        **options: Any) -> str:
    """A new program, applied and seen by earn and reward-fulfilment; returns its id."""
    program = program_definition(unique("rw"), **options)
    await publish_programs(kafka.bootstrap, [program])
    await wait_programs_applied(platform.services["earn"].url, api_token, [program])
    await rewards.wait_until(f"/v1/programs/{program.id}/rewards", lambda b: len(b["items"]) == 2)
    return program.id


def import_codes(pg_dsn: str, program_id: str, codes: list[str], tmp: Path,
                 pool: str = "gift-pool", raw: bytes | None = None) -> subprocess.CompletedProcess:
    """`loyalty rewards import-codes`, as an operator runs it."""
    path = tmp / f"{unique('codes')}.csv"
    path.write_bytes(raw if raw is not None else ("\n".join(codes) + "\n").encode())
    env = {**os.environ, "LOYALTY_PG_DSN": pg_dsn}
    env.pop("LOYALTY_REWARDS_PG_DSN", None)
    return subprocess.run(
        [sys.executable, "-m", "loyalty.cli", "rewards", "import-codes", "--program", program_id,
         "--pool", pool, str(path)], env=env, capture_output=True, text=True, timeout=120)


async def earn_points(kafka: Kafka, ledger: Api, program_id: str, phones: list[str],
                      total: str = "10.00") -> None:
    """Each phone buys for `total` (100 points per EUR) and the ledger shows the points."""
    events = [purchase_event({"phone": p}, total, program_id=program_id, category="x")
              for p in phones]
    await kafka.publish_many(topics.PURCHASES, [(e["order_id"], e) for e in events])
    points = int(float(total) * 100)
    for phone in phones:
        await ledger.wait_until(f"/v1/programs/{program_id}/members/phone:{phone}",
                                lambda b: b["balance"] >= points, timeout_s=90)


def request(program_id: str, phone: str, reward_id: str = "gift", quantity: int = 1,
            **fields: Any) -> dict[str, Any]:
    return {"event_id": unique("rdm"), "type": "redemption.requested",
            "occurred_at": "2026-11-23T10:00:00+02:00", "program_id": program_id,
            "customer": {"phone": phone}, "reward_id": reward_id, "quantity": quantity,
            "delivery": {"channel": "sms"}, **fields}


def cancellation(program_id: str, order_id: str, reason: str = "customer complaint"
                 ) -> dict[str, Any]:
    return {"event_id": unique("cnl"), "type": "redemption.cancelled",
            "occurred_at": "2026-11-23T10:05:00+02:00", "program_id": program_id,
            "order_id": order_id, "reason": reason}


async def wait_status(rewards: Api, order_id: str, *statuses: str,
                      timeout_s: float = 60) -> dict[str, Any]:
    return await rewards.wait_until(f"/v1/orders/{order_id}",
                                    lambda b: b["status"] in statuses, timeout_s=timeout_s)


async def member_view(ledger: Api, program_id: str, phone: str) -> dict[str, Any]:
    status, body = await ledger.get(f"/v1/programs/{program_id}/members/phone:{phone}")
    assert status == 200, body
    return body


async def settled_view(ledger: Api, program_id: str, phone: str, balance: int
                       ) -> dict[str, Any]:
    """The member's view once the balance is `balance` with nothing held; a moment later
    (long enough for a second effect to land) it is still exactly that."""
    view = await ledger.wait_until(
        f"/v1/programs/{program_id}/members/phone:{phone}",
        lambda b: b["balance"] == balance and b["reserved"] == 0)
    await asyncio.sleep(1.0)
    view = await member_view(ledger, program_id, phone)
    assert (view["balance"], view["reserved"]) == (balance, 0), view
    return view


def records_for(records: list[Any], order_id: str) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records if json.loads(r.value)["order_id"] == order_id]


async def expect_balances(ledger: Api, program_id: str, expected: dict[str, int],
                          timeout_s: float = 120) -> None:
    """Each phone's member reaches its balance with nothing held; a moment later (long enough
    for a second effect to land) every one is still exactly that."""
    for phone, points in expected.items():
        await ledger.wait_until(f"/v1/programs/{program_id}/members/phone:{phone}",
                                lambda b, p=points: b["balance"] == p and b["reserved"] == 0,
                                timeout_s=timeout_s)
    await asyncio.sleep(1.5)
    for phone, points in expected.items():
        view = await member_view(ledger, program_id, phone)
        assert (view["balance"], view["reserved"]) == (points, 0), (phone, view)


async def final_orders(rewards: Api, order_ids: list[str], timeout_s: float = 180
                       ) -> dict[str, dict[str, Any]]:
    """Every order's view once all are in a final state."""
    final = {"fulfilled", "rejected", "failed", "cancelled"}
    done: dict[str, dict[str, Any]] = {}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(done) < len(order_ids):
        for order_id in [o for o in order_ids if o not in done]:
            status, body = await rewards.get(f"/v1/orders/{order_id}")
            if status == 200 and body["status"] in final:
                done[order_id] = body
        if len(done) < len(order_ids):
            left = len(order_ids) - len(done)
            assert asyncio.get_running_loop().time() < deadline, f"{left} orders not final"
            await asyncio.sleep(0.5)
    return done


def run_audit(pg_dsn: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOYALTY_PG_DSN": pg_dsn}
    return subprocess.run([sys.executable, "-m", "loyalty.cli", "audit"], env=env,
                          capture_output=True, text=True, timeout=120)


async def fulfilled_codes(kafka: Kafka, phones: set[str], codes: set[str]
                          ) -> dict[str, set[str]]:
    """code -> the members it was sent to, from every reward_fulfilled SMS to `phones`."""
    sent: dict[str, set[str]] = {}
    for record in await kafka.read_all(topics.NOTIFICATIONS_SMS):
        message = json.loads(record.value)
        if message["to"] not in phones or message["template"] != "reward_fulfilled":
            continue
        found = [c for c in codes if c in message["body"]]
        assert len(found) == 1, message["notification_id"]
        sent.setdefault(found[0], set()).add(message["member_id"])
    return sent
