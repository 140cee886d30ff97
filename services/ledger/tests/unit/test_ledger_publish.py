"""Where the ledger's events go: every one on loyalty.ledger.v1; the answers to
reward-fulfilment's commands on its reply topic too, so it need not read every movement."""

from __future__ import annotations

import orjson
import pytest

from ledger.handlers import publish
from loyalty import topics
from loyalty.messaging import Outbox


def event(kind: str) -> dict:
    return {"event_id": "e1", "type": "points.reserved", "program_id": "p", "member_id": "m1",
            "command_id": "c1", "points": -30, "source": {"kind": kind, "id": "R-1"}}


def test_an_answer_to_a_redemption_goes_to_the_ledger_topic_and_the_reply_topic() -> None:
    outbox = Outbox()
    publish(outbox, event("redemption"))
    assert [row[0] for row in outbox.rows] == [topics.LEDGER, topics.LEDGER_REPLIES]
    (_, key1, value1, headers1), (_, key2, value2, headers2) = outbox.rows
    assert (key1, value1, headers1) == (key2, value2, headers2)
    assert key1 == b"m1" and orjson.loads(value1) == event("redemption")
    assert headers1["source.kind"] == "redemption" and headers1["event.type"] == "points.reserved"


@pytest.mark.parametrize("kind", ["purchase", "return", "expiry", "adjustment"])
def test_other_movements_go_to_the_ledger_topic_only(kind: str) -> None:
    outbox = Outbox()
    publish(outbox, event(kind))
    assert [row[0] for row in outbox.rows] == [topics.LEDGER]


def test_an_event_without_a_source_goes_to_the_ledger_topic_only() -> None:
    outbox = Outbox()
    publish(outbox, {k: v for k, v in event("redemption").items() if k != "source"})
    assert [row[0] for row in outbox.rows] == [topics.LEDGER]
