"""A purchase, a return, an activity or an adjustment redelivered after its inbox row was
pruned (`loyalty.retention`) has no effect again: its order, return or award is kept forever,
so it is dead-lettered at once (`already_applied`), not retried into a poison, and a valid
event behind it still takes effect (real PostgreSQL, earn's own consumers and handlers)."""

from __future__ import annotations

import pytest
from earn_world import OCTOBER, consumers, outbox

from loyalty import topics
from loyalty.testing import purchase_event, topic_record, unique, unique_phone

pytestmark = pytest.mark.integration


async def test_events_redelivered_after_their_inbox_rows_are_gone_change_nothing(earn) -> None:
    consume = consumers(earn)
    phone = unique_phone()
    bought = purchase_event({"phone": phone}, "10.00")
    returned = purchase_event({"phone": phone}, "4.00", kind="returned",
                              order_id=bought["order_id"])
    activity = {"event_id": unique("act"), "type": "activity.completed", "occurred_at": OCTOBER,
                "program_id": "coffee-club", "customer": {"phone": phone}, "activity": "survey"}
    adjustment = {"event_id": unique("adj"), "type": "points.adjusted", "occurred_at": OCTOBER,
                  "program_id": "coffee-club", "customer": {"phone": phone}, "points": 150,
                  "reason": "missing purchase A-0999", "actor": "agent-17"}
    batches = {topics.PURCHASES: [bought, returned], topics.ACTIVITIES: [activity],
               topics.ADJUSTMENTS: [adjustment]}
    for topic, events in batches.items():
        await consume[topic]([topic_record(topic, e, i) for i, e in enumerate(events)])
    first = await outbox(earn)
    assert [(c["type"], c["points"]) for t, c in first if t == topics.LEDGER_COMMANDS] == [
        ("credit", 100), ("reverse", 40), ("credit", 50), ("credit", 150)]

    await earn.execute("DELETE FROM inbox; DELETE FROM outbox")  # as `prune_inbox` does
    behind = purchase_event({"phone": phone}, "3.00")
    batches[topics.PURCHASES].append(behind)
    for topic, events in batches.items():
        await consume[topic]([topic_record(topic, e, 10 + i) for i, e in enumerate(events)])

    again = await outbox(earn)
    assert [(c["type"], c["points"], c["command_id"]) for t, c in again
            if t == topics.LEDGER_COMMANDS] == [("credit", 30, f"purchase:{behind['event_id']}")]
    dead = [h["error.code"] for t, h in again if t.endswith(".dlq")]
    assert dead == ["already_applied"] * 4
    order = await earn.fetchrow("SELECT returned_amount, points_reversed FROM orders"
                                " WHERE order_id = $1", bought["order_id"])
    assert (order["returned_amount"], order["points_reversed"]) == (4, 40)
    assert await earn.fetchval("SELECT count(*) FROM returns") == 1
    assert await earn.fetchval("SELECT count(*) FROM awards") == 2
