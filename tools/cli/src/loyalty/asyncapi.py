"""The AsyncAPI 3.0 document of the platform's public topics, generated from the services.

Each service is wired exactly as it runs (`<service>.app.build().wire`) on a faststream broker
that never connects, so the subscribers in the document are the ones the code registers (topic
and consumer group). The services publish through their outboxes, not through faststream
publishers, so what each one emits is declared here (`EMITS`) as documentation-only faststream
publishers. faststream renders the document; every payload is then the JSON schema of the public
contract's pydantic model (`loyalty.contracts`, `loyalty.programs`). Internal topics are left out.

    python -m loyalty.asyncapi docs/asyncapi.json   # tests/contract checks it is current
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel

from loyalty import contracts, kafka, topics
from loyalty.clock import SystemClock, UuidIds
from loyalty.messaging import OutboxRelay
from loyalty.programs import ProgramDefinition
from loyalty.service import Runtime

TITLE = "Loyalty platform: public topics"
VERSION = "1.0.0"
SERVER = "kafka:9092"
SERVICE_APPS = ("earn.app", "ledger.app", "expiry.app", "rewards.app")
# The CLI publishes program definitions (`loyalty programs apply`).
CLI = "loyalty-cli"
PUBLIC_TOPICS = {
    topics.PURCHASES: (contracts.PurchaseEvent,),
    topics.ACTIVITIES: (contracts.ActivityEvent,),
    topics.ADJUSTMENTS: (contracts.AdjustmentEvent,),
    topics.REDEMPTIONS: (contracts.RedemptionRequested, contracts.RedemptionCancelled),
    topics.PROGRAMS: (ProgramDefinition,),
    topics.LEDGER: (contracts.LedgerEvent,),
    topics.MEMBERS: (contracts.MemberEvent,),
    topics.ORDERS: (contracts.OrderStatusChanged,),
    topics.NOTIFICATIONS_SMS: (contracts.Notification,),
    topics.NOTIFICATIONS_EMAIL: (contracts.Notification,),
}
NOTIFICATIONS = (topics.NOTIFICATIONS_SMS, topics.NOTIFICATIONS_EMAIL)
# What each service's outbox relay publishes on the public topics (ARCHITECTURE: every service
# asks for the notifications of the facts it knows).
EMITS: dict[str, tuple[str, ...]] = {
    "earn": (topics.MEMBERS, *NOTIFICATIONS),
    "ledger": (topics.LEDGER, *NOTIFICATIONS),
    "expiry-scheduler": NOTIFICATIONS,
    "reward-fulfilment": (topics.ORDERS, *NOTIFICATIONS),
    CLI: (topics.PROGRAMS,),
}
# Settings a service's build() validates; nothing connects anywhere.
PLACEHOLDER_ENV = {"LOYALTY_PG_DSN": "postgresql://asyncapi@localhost/asyncapi"}


def _wired_broker(app_module: str) -> KafkaBroker:
    spec = importlib.import_module(app_module).build()
    broker = kafka.make_broker(SERVER, spec.name)
    relay = OutboxRelay(service=spec.name, pool=None, bootstrap=SERVER,  # type: ignore[arg-type]
                        batch_size_max=1, poll_interval_s=1.0, retry_backoff_max_s=1.0)
    runtime = Runtime(spec.name, spec.settings, None, broker, relay,  # type: ignore[arg-type]
                      web.Application(), SystemClock(), UuidIds())
    spec.wire(runtime)
    _declare_emits(broker, spec.name)
    return broker


def _declare_emits(broker: KafkaBroker, name: str) -> None:
    for topic in EMITS[name]:
        broker.publisher(topic, title=f"{name}:{topic}:publish",
                         description=f"Published by {name} (through its outbox, acks=all).")


def build_document() -> dict[str, Any]:
    saved = {k: os.environ.get(k) for k in PLACEHOLDER_ENV}
    os.environ.update({k: v for k, v in PLACEHOLDER_ENV.items() if not os.environ.get(k)})
    try:
        brokers = [_wired_broker(module) for module in SERVICE_APPS]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
    cli = KafkaBroker(SERVER)
    _declare_emits(cli, CLI)
    raw = AsyncAPI(*brokers, cli, title=TITLE, version=VERSION,
                   schema_version="3.0.0").to_specification().to_jsonable()
    return _with_contract_payloads(raw)


def _with_contract_payloads(raw: dict[str, Any]) -> dict[str, Any]:
    """Public channels only, one server, and the contract's models as payloads."""
    schemas: dict[str, Any] = {}
    for models in PUBLIC_TOPICS.values():
        for model in models:
            _add_schema(schemas, model)
    channels, messages, operations = {}, {}, {}
    for key, channel in raw["channels"].items():
        topic = channel["address"]
        if topic not in PUBLIC_TOPICS:
            continue
        models = PUBLIC_TOPICS[topic]
        channel["servers"] = [{"$ref": "#/servers/production"}]
        channels[key] = channel
        for ref in channel["messages"].values():
            name = ref["$ref"].rsplit("/", 1)[1]
            message = raw["components"]["messages"][name]
            refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in models]
            message["payload"] = refs[0] if len(refs) == 1 else {"oneOf": refs}
            message["contentType"] = "application/json"
            messages[name] = message
    for key, operation in raw["operations"].items():
        if operation["channel"]["$ref"].rsplit("/", 1)[1] in channels:
            operations[key] = operation
    return {
        "asyncapi": raw["asyncapi"],
        "info": {**raw["info"], "description": (
            "Every public topic of the loyalty platform: who publishes, who consumes (consumer "
            "group per service and topic: loyalty-<service>.<topic>), and each message's schema. "
            "Values are JSON; bad input goes to <topic>.dlq with error.* headers "
            "(docs/contract-additions.md). Generated by `python -m loyalty.asyncapi`.")},
        "defaultContentType": "application/json",
        "servers": {"production": {
            "host": SERVER, "protocol": "kafka",
            "description": "Apache Kafka; PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL as "
                           "LOYALTY_KAFKA_SECURITY_PROTOCOL says (deploy/README.md)."}},
        "channels": dict(sorted(channels.items())),
        "operations": dict(sorted(operations.items())),
        "components": {"messages": dict(sorted(messages.items())),
                       "schemas": dict(sorted(schemas.items()))},
    }


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema


def render() -> str:
    return json.dumps(build_document(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m loyalty.asyncapi OUTPUT.json")
    Path(sys.argv[1]).write_text(render())  # a file: the services' wiring may log to stdout
