"""Valid input at the contract's limits is never lost on its way to the ledger (real
PostgreSQL, earn's own consumers and handlers): an event id may take all 200 characters, and
the command it causes (`purchase:<event_id>`, ...) is longer; a purchase may cross so many
category multipliers that its explanation is longer than a ledger reason."""

from __future__ import annotations

from decimal import Decimal

import pytest
from earn_world import OCTOBER, consumers, outbox
from pydantic import TypeAdapter

from earn import handlers
from earn.adapters.postgres import EarnRepository
from loyalty import topics
from loyalty.contracts import ID_LEN_MAX
from loyalty.ledger_commands import REASON_LEN_MAX, LedgerCommand
from loyalty.programs import ProgramDefinition
from loyalty.testing import purchase_event, topic_record, unique_phone

pytestmark = pytest.mark.integration

LEDGER_DECODES = TypeAdapter(LedgerCommand)


def longest_id(mark: str) -> str:
    return mark + "-" + "x" * (ID_LEN_MAX - len(mark) - 1)


async def test_events_whose_ids_take_all_200_characters_reach_the_ledger(earn) -> None:
    consume = consumers(earn)
    await earn.execute("DELETE FROM outbox")
    phone = unique_phone()
    bought = purchase_event({"phone": phone}, "10.00", event_id=longest_id("buy"),
                            order_id=longest_id("order"))
    returned = purchase_event({"phone": phone}, "4.00", kind="returned",
                              event_id=longest_id("ret"), order_id=bought["order_id"])
    activity = {"event_id": longest_id("act"), "type": "activity.completed",
                "occurred_at": OCTOBER, "program_id": "coffee-club",
                "customer": {"phone": phone}, "activity": "survey"}
    adjustments = [{"event_id": longest_id(f"adj{points}"), "type": "points.adjusted",
                    "occurred_at": OCTOBER, "program_id": "coffee-club",
                    "customer": {"phone": phone}, "points": points,
                    "reason": "missing purchase", "actor": longest_id("agent")}
                   for points in (150, -20)]
    batches = {topics.PURCHASES: [bought, returned], topics.ACTIVITIES: [activity],
               topics.ADJUSTMENTS: adjustments}
    for topic, events in batches.items():
        await consume[topic]([topic_record(topic, e, i) for i, e in enumerate(events)])

    emitted = await outbox(earn)
    assert [t for t, _ in emitted if t.endswith(".dlq")] == []
    commands = [LEDGER_DECODES.validate_python(c) for t, c in emitted
                if t == topics.LEDGER_COMMANDS]  # what the ledger's decoder accepts
    assert [(c.type, c.command_id) for c in commands] == [
        ("credit", f"purchase:{bought['event_id']}"),
        ("reverse", f"return:{returned['event_id']}"),
        ("credit", f"activity:{activity['event_id']}"),
        ("credit", f"adjustment:{adjustments[0]['event_id']}"),
        ("debit", f"adjustment:{adjustments[1]['event_id']}")]
    assert commands[1].target_id == commands[0].command_id


async def test_a_purchase_crossing_sixty_multipliers_is_credited_with_its_reason_cut(
        earn) -> None:
    categories = [f"category-number-{i:02d}" for i in range(60)]
    program = ProgramDefinition.model_validate({
        "id": "many-categories", "name": "Many Categories", "currency": "EUR",
        "time_zone": "Europe/Vilnius",
        "earning": {"points_per_unit": 10, "category_multipliers": dict.fromkeys(categories, 2)},
        "tiers": [{"id": "member", "min_points": 0, "multiplier": 1}]})
    async with earn.acquire() as conn:
        await handlers.apply_program(EarnRepository(conn), program)
    await earn.execute("DELETE FROM outbox")
    purchase = purchase_event({"phone": unique_phone()}, "60.00", program_id=program.id)
    purchase["items"] = [{"sku": f"SKU-{c}", "category": c, "quantity": 1, "unit_price": "1.00"}
                         for c in categories]

    await consumers(earn)[topics.PURCHASES]([topic_record(topics.PURCHASES, purchase, 1)])

    [credit] = [c for t, c in await outbox(earn) if t == topics.LEDGER_COMMANDS]
    assert credit["points"] == 1200  # 60 EUR x 10, each line doubled
    assert len(credit["reason"]) == REASON_LEN_MAX and credit["reason"].endswith("\u2026")
    LEDGER_DECODES.validate_python(credit)
    breakdown = await earn.fetchval("SELECT breakdown FROM orders WHERE event_id = $1",
                                    purchase["event_id"])
    assert len(breakdown) == 61  # the order keeps every line: the base and 60 categories
    assert sum(Decimal(line["points"]) for line in breakdown) == 1200
