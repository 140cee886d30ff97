"""earn's own consumers and handlers on a scratch database (the `earn` fixture), without a
broker: records go straight to the `BatchConsumer`s, and what earn emitted is read from its
outbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from earn import handlers
from earn.entrypoints.consumers import EVENT_TOPICS, batch_handlers
from loyalty.clock import FixedClock, UuidIds
from loyalty.messaging import BatchConsumer, decoder

OCTOBER = "2026-10-20T10:15:00+03:00"


def consumers(pool: asyncpg.Pool) -> dict[str, BatchConsumer[Any]]:
    deps = handlers.Deps(clock=FixedClock(datetime(2026, 10, 20, 8, tzinfo=UTC)), ids=UuidIds())
    by_topic = batch_handlers(deps)
    return {topic: BatchConsumer(service="earn", topic=topic, pool=pool, decode=decoder(model),
                                 handle_batch=by_topic[topic], retry_backoff_max_s=0.01)
            for topic, (model, _) in EVENT_TOPICS.items()}


async def outbox(pool: asyncpg.Pool) -> list[tuple[str, dict[str, Any]]]:
    """(topic, payload) of what earn emitted, a dead letter as (topic, its headers)."""
    rows = await pool.fetch("SELECT topic, value, headers FROM outbox ORDER BY id")
    return [(r["topic"], r["headers"] if r["topic"].endswith(".dlq") else json.loads(r["value"]))
            for r in rows]


