"""docs/asyncapi.json is what the code says: regenerated from the services' wiring and the
contract's models, it must equal the committed document (and cover every public topic)."""

from __future__ import annotations

import json
from pathlib import Path

from loyalty import asyncapi, topics

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "asyncapi.json"
REGENERATE = "regenerate: uv run python -m loyalty.asyncapi docs/asyncapi.json"


def test_the_committed_document_matches_the_code() -> None:
    committed = json.loads(DOCUMENT.read_text())
    generated = json.loads(asyncapi.render())
    drift = sorted(
        f"{section}.{key}" for section in ("channels", "operations")
        for key in committed[section].keys() ^ generated[section].keys())
    assert not drift, f"channels/operations differ: {drift}; {REGENERATE}"
    assert committed == generated, f"docs/asyncapi.json is stale; {REGENERATE}"


def test_every_public_topic_is_documented_with_its_contract_model() -> None:
    document = json.loads(DOCUMENT.read_text())
    addresses = {c["address"] for c in document["channels"].values()}
    public = {topics.PURCHASES, topics.ACTIVITIES, topics.ADJUSTMENTS, topics.REDEMPTIONS,
              topics.PROGRAMS, topics.LEDGER, topics.MEMBERS, topics.ORDERS,
              topics.NOTIFICATIONS_SMS, topics.NOTIFICATIONS_EMAIL}
    assert addresses == public  # and nothing internal
    received = {document["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
                for op in document["operations"].values() if op["action"] == "receive"}
    assert set(topics.INPUT_TOPICS) <= received
    sent = {document["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
            for op in document["operations"].values() if op["action"] == "send"}
    assert public - set(topics.INPUT_TOPICS) <= sent
    schemas = document["components"]["schemas"]
    for message in document["components"]["messages"].values():
        payload = message["payload"]
        for ref in payload.get("oneOf", [payload]):
            assert ref["$ref"].rsplit("/", 1)[1] in schemas
    assert "event_id" in schemas["PurchaseEvent"]["properties"]


def test_a_change_in_what_the_services_consume_or_emit_shows_up_as_drift(monkeypatch) -> None:
    """The drift check can fail: without reward-fulfilment's wiring the redemptions topic has
    no consumer, and without one declared emission its channel is gone."""
    committed = json.loads(DOCUMENT.read_text())
    monkeypatch.setattr(asyncapi, "SERVICE_APPS", ("earn.app", "ledger.app", "expiry.app"))
    monkeypatch.setitem(asyncapi.EMITS, "reward-fulfilment", ())
    monkeypatch.setattr(asyncapi, "_declare_emits", lambda broker, name: None)
    generated = json.loads(asyncapi.render())
    assert "reward-fulfilment:loyalty.redemptions.v1" in committed["channels"]
    assert "reward-fulfilment:loyalty.redemptions.v1" not in generated["channels"]
    assert generated != committed
