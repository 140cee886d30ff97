"""The ledger's read routes through the running platform: transactions paged by cursor,
liability by expiry month, and the error bodies of CONTRACT.md (HTTP).

Purchases happen in October 2026, when no coffee-club campaign runs, so each earns the base
rate: 10 points per EUR.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from loyalty import topics
from loyalty.testing import Api, Kafka, purchase_event, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PROGRAM = "coffee-club"
OCCURRED_AT = "2026-10-20T10:15:00+03:00"
TOTALS = ("1.00", "2.50", "3.10", "4.00")


def purchase(phone: str, total: str) -> dict:
    return purchase_event({"phone": phone}, total, occurred_at=OCCURRED_AT)


def expected_points(total: str) -> int:
    return int(Decimal(total) * 10)


async def member_with_purchases(kafka_client: Kafka, ledger: Api,
                                totals: tuple[str, ...] = TOTALS) -> tuple[str, dict, list[dict]]:
    """A fresh phone's purchases, credited: (phone, member view, the purchase events)."""
    phone = unique_phone()
    events = [purchase(phone, total) for total in totals]
    for event in events:
        await kafka_client.publish(topics.PURCHASES, event, key=event["order_id"])
    points = sum(expected_points(t) for t in totals)
    view = await ledger.wait_until(f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                                   lambda b: b["balance"] >= points)
    assert view["balance"] == points
    return phone, view, events


def assert_error(status: int, body: object, expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["code"] == code and body["error"]["message"], body


async def test_transactions_page_newest_first_until_the_cursor_is_null(
        kafka_client: Kafka, ledger: Api) -> None:
    phone, view, events = await member_with_purchases(kafka_client, ledger)
    path = f"/v1/programs/{PROGRAM}/members/phone:{phone}/transactions"

    pages: list[dict] = []
    status, page = await ledger.get(f"{path}?limit=1")
    while True:
        assert status == 200, page
        pages.append(page)
        assert len(page["items"]) == 1
        if page["next_cursor"] is None:
            break
        assert len(pages) <= len(events), "more pages than entries"
        status, page = await ledger.get(f"{path}?limit=1&cursor={page['next_cursor']}")
    items = [item for p in pages for item in p["items"]]

    assert len(items) == len(events)
    ids = [item["entry_id"] for item in items]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert items[0]["balance_after"] == view["balance"]
    for newer, older in itertools.pairwise(items):  # newest first: balances unwind
        assert newer["balance_after"] - newer["points"] == older["balance_after"]
    assert items[-1]["balance_after"] == items[-1]["points"]
    by_order = {e["order_id"]: e for e in events}
    for item in items:
        assert set(item) == {"entry_id", "occurred_at", "type", "points", "balance_after",
                             "reason", "source"}
        assert item["type"] == "points.credited" and item["reason"]
        assert item["source"]["kind"] == "purchase"
        assert item["points"] == expected_points(by_order[item["source"]["id"]]["total"])
        assert datetime.fromisoformat(item["occurred_at"]) == datetime.fromisoformat(OCCURRED_AT)
    assert {item["source"]["id"] for item in items} == set(by_order)

    # The default page holds them all, in the same order; the member_id ref gives the same.
    status, whole = await ledger.get(
        f"/v1/programs/{PROGRAM}/members/{view['member_id']}/transactions")
    assert status == 200
    assert whole == {"items": items, "next_cursor": None}


async def test_a_bad_or_foreign_cursor_is_a_400(kafka_client: Kafka, ledger: Api) -> None:
    phone, _, _ = await member_with_purchases(kafka_client, ledger, ("1.00", "2.00"))
    other, _, _ = await member_with_purchases(kafka_client, ledger, ("1.00", "2.00"))
    path = f"/v1/programs/{PROGRAM}/members/phone:{phone}/transactions"
    _, first = await ledger.get(f"{path}?limit=1")
    cursor = first["next_cursor"]
    assert cursor
    fields = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    tampered = base64.urlsafe_b64encode(
        json.dumps({**fields, "m": "someone-else"}).encode()).decode().rstrip("=")
    not_json = base64.urlsafe_b64encode(b"before=5").decode()

    for bad in ("not-a-cursor!", not_json, tampered, cursor[:-3]):
        status, body = await ledger.get(f"{path}?limit=1&cursor={bad}")
        assert_error(status, body, 400, "invalid_cursor")
    status, body = await ledger.get(
        f"/v1/programs/{PROGRAM}/members/phone:{other}/transactions?cursor={cursor}")
    assert_error(status, body, 400, "invalid_cursor")
    for limit in ("0", "201", "ten"):
        status, body = await ledger.get(f"{path}?limit={limit}")
        assert_error(status, body, 400, "invalid_parameter")
    status, page = await ledger.get(f"{path}?limit=1&cursor={cursor}")
    assert status == 200 and len(page["items"]) == 1  # the good cursor still works


async def test_the_token_is_required(kafka_client: Kafka, ledger: Api) -> None:
    phone, _, _ = await member_with_purchases(kafka_client, ledger, ("1.00",))
    for path in (f"/v1/programs/{PROGRAM}/members/phone:{phone}",
                 f"/v1/programs/{PROGRAM}/members/phone:{phone}/transactions",
                 f"/v1/programs/{PROGRAM}/liability"):
        status, body = await ledger.get(path, token=None)
        assert_error(status, body, 401, "unauthorized")
        status, body = await ledger.get(path, token="wrong-token")
        assert_error(status, body, 401, "unauthorized")


async def test_unknown_members_and_programs_are_404(platform, ledger: Api) -> None:
    for path in (f"/v1/programs/{PROGRAM}/members/phone:{unique_phone()}",
                 f"/v1/programs/{PROGRAM}/members/phone:{unique_phone()}/transactions",
                 f"/v1/programs/{PROGRAM}/members/no-such-member",
                 f"/v1/programs/{PROGRAM}/members/no-such-member/transactions?limit=5",
                 f"/v1/programs/{PROGRAM}/members/@issued",  # a program account, not a member
                 "/v1/programs/no-such-program/members/phone:+37060000001"):
        status, body = await ledger.get(path)
        assert_error(status, body, 404, "member_not_found")
    status, body = await ledger.get("/v1/programs/no-such-program/liability")
    assert_error(status, body, 404, "program_not_found")
    status, body = await ledger.get(f"/v1/programs/{PROGRAM}/members/phone:12/transactions")
    assert_error(status, body, 400, "invalid_phone")


async def test_liability_adds_up_and_covers_the_members_points(kafka_client: Kafka,
                                                               ledger: Api) -> None:
    _, view, _ = await member_with_purchases(kafka_client, ledger)

    status, report = await ledger.get(f"/v1/programs/{PROGRAM}/liability")

    assert status == 200, report
    assert set(report) == {"program_id", "total", "never_expiring", "by_expiry_month"}
    assert report["program_id"] == PROGRAM
    months = report["by_expiry_month"]
    assert all(re.fullmatch(r"\d{4}-\d{2}", m["month"]) and m["points"] > 0 for m in months)
    assert [m["month"] for m in months] == sorted({m["month"] for m in months})
    assert report["total"] == report["never_expiring"] + sum(m["points"] for m in months)
    assert report["total"] >= view["balance"]
    by_month = {m["month"]: m["points"] for m in months}
    for lot in view["expiring"]:
        month = datetime.fromisoformat(lot["expires_at"]).astimezone(UTC)
        assert by_month.get(month.strftime("%Y-%m"), 0) >= lot["points"]
