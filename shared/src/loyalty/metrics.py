"""Prometheus metrics every service exposes on `/metrics` (names are what the dashboards use).

One registry per process; labels carry the service so one dashboard serves all four.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_CONSUMED = Counter(
    "loyalty_messages_consumed_total", "Kafka records taken from a topic.",
    ["service", "topic"], registry=REGISTRY)
MESSAGES_PRODUCED = Counter(
    "loyalty_messages_produced_total", "Kafka records published by the outbox relay.",
    ["service", "topic"], registry=REGISTRY)
MESSAGES_DUPLICATE = Counter(
    "loyalty_messages_duplicate_total", "Records whose id was seen before (no effect).",
    ["service", "topic"], registry=REGISTRY)
DEAD_LETTERS = Counter(
    "loyalty_dead_letters_total", "Records sent to a dead-letter topic, by error code.",
    ["service", "topic", "code"], registry=REGISTRY)
INBOX_PRUNED = Counter(
    "loyalty_inbox_pruned_total", "Inbox ids deleted once older than the retention window.",
    ["service"], registry=REGISTRY)
HANDLER_SECONDS = Histogram(
    "loyalty_handler_seconds", "Time to apply one consumed batch, database commit included.",
    ["service", "topic"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCH_SIZE = Histogram(
    "loyalty_batch_size", "Records per consumed batch.", ["service", "topic"], registry=REGISTRY,
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500))
HANDLER_ERRORS = Counter(
    "loyalty_handler_errors_total", "Batches that failed on our side (retried with backoff).",
    ["service", "topic"], registry=REGISTRY)
POISON_RECORDS = Counter(
    "loyalty_poison_records_total",
    "Records that failed alone while the database answered, dead-lettered as unprocessable.",
    ["service", "topic"], registry=REGISTRY)
CONSUMER_STALLED = Gauge(
    "loyalty_consumer_stalled",
    "1 while a consumed batch fails and is being retried (an outage, or poison being isolated).",
    ["service", "topic"], registry=REGISTRY)
CONSUMER_LAG = Gauge(
    "loyalty_consumer_lag", "Records not yet committed by the consumer group, per partition.",
    ["service", "topic", "partition"], registry=REGISTRY)
OUTBOX_BACKLOG = Gauge(
    "loyalty_outbox_backlog", "Messages written to the outbox and not yet published.",
    ["service"], registry=REGISTRY)
OUTBOX_OLDEST_AGE_SECONDS = Gauge(
    "loyalty_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox message.",
    ["service"], registry=REGISTRY)
DB_POOL_IN_USE = Gauge(
    "loyalty_db_pool_connections_in_use", "Database connections checked out of the pool.",
    ["service"], registry=REGISTRY)
DB_POOL_SIZE = Gauge(
    "loyalty_db_pool_connections", "Database connections open in the pool.",
    ["service"], registry=REGISTRY)
SWEEP_SECONDS = Histogram(
    "loyalty_expiry_sweep_seconds", "Duration of one expiry sweep (every due warning and "
    "expiry, in bounded batches).", ["service"], registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900))
ORDERS_OPEN = Gauge(
    "loyalty_reward_orders_open", "Reward orders not yet in a final state, by how long they "
    "have been open (`age`: under_1m, 1m_to_15m, over_15m).", ["service", "age"],
    registry=REGISTRY)
POINTS_OUTSTANDING = Gauge(
    "loyalty_points_outstanding", "Members' points not yet spent or expired (the liability).",
    ["program_id"], registry=REGISTRY)
BUSINESS_EVENTS = Counter(
    "loyalty_business_events_total", "Business outcomes worth a dashboard panel.",
    ["service", "event"], registry=REGISTRY)


# Business counts of the batch being applied: they count once the transaction commits, so a
# retried batch or a refused record's rolled-back work is not counted.
_staged: ContextVar[list[tuple[str, str]] | None] = ContextVar("staged_counts", default=None)


def count(service: str, event: str) -> None:
    """One business event (`loyalty_business_events_total`), staged inside a batch."""
    staged = _staged.get()
    if staged is None:
        BUSINESS_EVENTS.labels(service, event).inc()
    else:
        staged.append((service, event))


@contextmanager
def staging() -> Iterator[list[tuple[str, str]]]:
    """Stage the counts made inside; the caller calls `commit_counts` after its commit."""
    token = _staged.set([])
    try:
        yield _staged.get()  # type: ignore[misc]
    finally:
        _staged.reset(token)


def counts_mark() -> int:
    staged = _staged.get()
    return len(staged) if staged is not None else 0


def rollback_counts(mark: int) -> None:
    """Forget the counts staged since `mark` (a record that was rolled back)."""
    staged = _staged.get()
    if staged is not None:
        del staged[mark:]


def commit_counts(staged: list[tuple[str, str]]) -> None:
    for (service, event), n in collections.Counter(staged).items():
        BUSINESS_EVENTS.labels(service, event).inc(n)
    staged.clear()


def render() -> bytes:
    return generate_latest(REGISTRY)
