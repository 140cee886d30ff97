"""Kafka plumbing: topic creation, the faststream broker factory, batch subscribers, lag.

Subscribers are thin: they take the raw records of a batch and hand them to a
`messaging.BatchConsumer`, which returns only once every record is applied or dead-lettered
in Postgres. Nothing of faststream's own touches a payload: the parser keeps the raw records
(header values that are not UTF-8 are dropped from its copy, since faststream would raise on
them), and the decoder decodes nothing, so hostile bytes can only reach our own decoding.

Ack policy: `AckPolicy.NACK_ON_ERROR`, auto-commit off. A handler that raises (only on
shutdown, or a bug) is nacked: faststream seeks back to the batch's first offset and the
batch is consumed again. `AckPolicy.ACK` would commit a batch whose handler raised, silently
skipping its records.

Offsets are committed after the database, at most once a second per subscriber
(`OffsetCommitter`): the offsets of the batches applied since the last commit, explicitly
(never the consumer's position, which may include records fetched but not yet applied), and
at once when the service stops. A crash replays at most that second's records, which the
inbox (or the follower's own idempotence) makes no-ops. A commit per batch cost a broker
round trip per batch, and Tansu's in-memory store grows slower with every commit it holds
(four groups committing per poll: 14% -> 45% of a core in 200 s at a constant load).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import AckStatus
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from loyalty import metrics
from loyalty.clock import Clock, SystemClock
from loyalty.messaging import BatchConsumer
from loyalty.periodic import every
from loyalty.settings import KafkaSecurity, kafka_client_kwargs
from loyalty.topics import TopicSpec, all_topics

log = structlog.get_logger(__name__)

LAG_INTERVAL_S = 2.0
# A fetch's high watermark is the partition's end for the lag gauge this long (`lag_of`): a
# consumer at the end fetches every fetch wait (RELAXED_WAIT_MS at most).
HIGHWATER_FRESH_S = 1.0
ADMIN_TIMEOUT_MS = 10_000
TOPIC_ALREADY_EXISTS = 36
FETCH_MAX_WAIT_MS = 50
# For topics whose latency matters less, or that are mostly idle (program definitions; what
# the expiry scheduler follows, since it acts on a schedule, and its copy of the members;
# activities and support's adjustments): each idle poll costs the broker and the service CPU,
# and an idle platform's polls took a third of a core. Used both as the broker's fetch wait
# and as faststream's batch wait (`getmany`, which then sleeps as long when it found
# nothing). Under load neither waits; on an idle topic a new record can wait up to twice this
# (a broker answers a held fetch as soon as records come, Tansu only at its end).
RELAXED_WAIT_MS = 500
# An in-flight batch may finish this long after a stop: its work is either committed, or
# rolled back and consumed again (offsets follow the database).
GRACEFUL_STOP_S = 3.0
# Offsets are committed this often at most (see the module docstring).
COMMIT_INTERVAL_S = 1.0


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec] | None = None) -> None:
    """Create every platform topic that does not exist yet; existing ones are left alone."""
    specs = list(specs or all_topics())
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ADMIN_TIMEOUT_MS,
                                **kafka_client_kwargs())
    await admin.start()
    try:
        # One node locally; on a real cluster set LOYALTY_TOPIC_REPLICATION (e.g. 3).
        replication = int(os.environ.get("LOYALTY_TOPIC_REPLICATION", "1"))
        new = [NewTopic(s.name, s.partitions, replication,
                        topic_configs={"cleanup.policy": "compact"} if s.compacted else {})
               for s in specs]
        response = await admin.create_topics(new)
        for name, code, message in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"cannot create topic {name}: {code} {message}")
    finally:
        await admin.close()


def make_broker(bootstrap: str, service: str) -> KafkaBroker:
    """A faststream broker that only consumes (emitting goes through the outbox relay)."""
    return KafkaBroker(bootstrap, client_id=f"loyalty-{service}", enable_idempotence=False,
                       acks="all", graceful_timeout=GRACEFUL_STOP_S,
                       security=faststream_security(KafkaSecurity()),
                       logger=logging.getLogger("loyalty.faststream"))


def faststream_security(security: KafkaSecurity) -> BaseSecurity | None:
    """The settings as faststream's security object (which it turns into aiokafka's kwargs)."""
    context = security.ssl_context()
    if security.kafka_sasl_mechanism:
        sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256,
                "SCRAM-SHA-512": SASLScram512}[security.kafka_sasl_mechanism]
        password = security.kafka_sasl_password
        return sasl(security.kafka_sasl_username or "",
                    password.get_secret_value() if password else "",
                    ssl_context=context, use_ssl=security.uses_tls)
    return BaseSecurity(ssl_context=context, use_ssl=True) if security.uses_tls else None


async def start_broker(broker: KafkaBroker) -> None:
    """`broker.start()`, but the subscribers join their groups concurrently.

    Each group join takes seconds on the broker (its rebalance delay); joined one after
    another they made a service's start-up the sum of them.
    """
    await broker.connect()
    await asyncio.gather(*(sub.start() for sub in broker.subscribers))
    for pub in broker.publishers:
        await pub.start()
    broker.running = True


def _utf8_headers_only(record: ConsumerRecord) -> ConsumerRecord:
    """The record, or a copy without the header values faststream's parser cannot decode."""
    headers = record.headers or ()
    kept = tuple((k, v) for k, v in headers if isinstance(v, bytes) and _is_utf8(v))
    return record if len(kept) == len(headers) else dataclasses.replace(record, headers=kept)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


async def raw_batch_parser(records: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """faststream's batch parser on records it cannot fail on (see the module docstring)."""
    if isinstance(records, tuple | list):
        records = type(records)(_utf8_headers_only(r) for r in records)
    return await original(records)


async def raw_decoder(message: Any) -> Any:
    """No decoding: the raw records go to our `BatchConsumer`, which decodes each itself."""
    return None


class OffsetCommitter:
    """Commits the offsets of the batches a subscriber applied, at most once per
    `interval_s`, and whenever `flush` is called (periodically, and on stop)."""

    def __init__(self, interval_s: float = COMMIT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.pending: dict[TopicPartition, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.last = time.monotonic()

    def applied(self, consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
        """`records` are in the database: their offsets may be committed."""
        self.consumer = consumer
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            self.pending[tp] = max(self.pending.get(tp, 0), r.offset + 1)

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.last >= self.interval_s

    async def flush(self) -> None:
        """Commit what was applied; partitions no longer ours are left to their new owner
        (which re-applies a few records, no-ops by the inbox)."""
        if not self.pending or self.consumer is None:
            return
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in self.pending.items() if tp in assigned}
        self.pending = {}
        self.last = time.monotonic()
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance, say: the records come again, as no-ops
            log.warning("offsets.commit_failed", error=str(exc), partitions=len(offsets))


def subscribe_batch(broker: KafkaBroker, consumer: BatchConsumer, *, group_id: str,
                    batch_size_max: int, batch_timeout_ms: int,
                    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> OffsetCommitter:
    """Register a batch subscriber that feeds raw records to `consumer`; its offsets are
    committed by the `OffsetCommitter` returned (the caller flushes it now and then)."""
    committer = OffsetCommitter()

    @broker.subscriber(
        consumer.topic, group_id=group_id, batch=True, max_records=batch_size_max,
        batch_timeout_ms=batch_timeout_ms, auto_offset_reset="earliest",
        # The broker holds an empty fetch this long: it bounds the latency of each hop.
        fetch_max_wait_ms=fetch_max_wait_ms,
        parser=raw_batch_parser, decoder=raw_decoder,
        ack_policy=AckPolicy.NACK_ON_ERROR, title=f"{consumer.service}:{consumer.topic}",
    )
    async def on_batch(message: KafkaMessage) -> None:
        raw = message.raw_message
        # A tuple from the real broker, a list from TestKafkaBroker.
        records = tuple(raw) if isinstance(raw, tuple | list) else (raw,)
        await consumer(records)
        kafka_consumer = getattr(message, "consumer", None)
        if not isinstance(kafka_consumer, AIOKafkaConsumer):  # TestKafkaBroker: no offsets
            return
        committer.applied(kafka_consumer, records)
        if committer.due() or consumer.stopping.is_set():
            await committer.flush()
        # faststream's ack would commit the consumer's position: ours are committed above.
        message.committed = AckStatus.ACKED

    return committer


def consumers_of(broker: KafkaBroker) -> list[AIOKafkaConsumer]:
    return [c for sub in broker.subscribers if (c := getattr(sub, "consumer", None)) is not None]


async def lag_of(consumer: AIOKafkaConsumer,
                 clock: Clock | None = None) -> dict[TopicPartition, int]:
    """Committed-offset lag per assigned partition (end offset minus committed offset).

    The end offset is the high watermark of the consumer's own last fetch of the partition,
    where that fetch is recent; a ListOffsets request only for the others. Tansu's ListOffsets
    answers one past the first offset of the partition's last record batch, not its end, so
    it counts a batch of 100 unconsumed records as 1; and it reads every batch the partition
    holds, so its cost grows with all that was ever produced (1.7 ms for six partitions of an
    empty broker, 7.1 ms with 600,000 records).

    `clock` is the wall clock (`SystemClock`, the default) whatever the service's business
    clock: aiokafka stamps each fetch by it."""
    assigned = list(consumer.assignment())
    if not assigned:
        return {}
    now_ms = (clock or SystemClock()).now().timestamp() * 1000
    ends = _fresh_highwaters(consumer, assigned, now_ms)
    if stale := [tp for tp in assigned if tp not in ends]:
        ends.update(await consumer.end_offsets(stale))
    # One OffsetFetch for every partition: `consumer.committed(tp)` asks once per partition,
    # and the samples were a third of an idle broker's requests.
    committed = await consumer._coordinator.fetch_committed_offsets(assigned)
    return {tp: max(0, ends[tp] - max(committed[tp].offset if tp in committed else 0, 0))
            for tp in assigned}


def _fresh_highwaters(consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                      now_ms: float) -> dict[TopicPartition, int]:
    """The high watermark of each partition fetched within HIGHWATER_FRESH_S.

    A consumer that holds no fetched records keeps a fetch in flight, answered within its
    fetch wait, so its highwater stays fresh; one busy with fetched records has a lag of at
    least those records whatever its highwater says. Older figures are left out."""
    fresh = {}
    for tp in partitions:
        highwater = consumer.highwater(tp)
        polled_ms = consumer.last_poll_timestamp(tp)
        if highwater is not None and polled_ms and now_ms - polled_ms <= HIGHWATER_FRESH_S * 1000:
            fresh[tp] = highwater
    return fresh


async def report_lag(broker: KafkaBroker, service: str) -> None:
    """Keep the `loyalty_consumer_lag` gauge current (the admin API of Tansu cannot do it)."""

    async def sample() -> None:
        for consumer in consumers_of(broker):
            with contextlib.suppress(Exception):  # one rebalancing consumer spoils no other
                for tp, lag in (await lag_of(consumer)).items():
                    metrics.CONSUMER_LAG.labels(service, tp.topic, str(tp.partition)).set(lag)

    await every(LAG_INTERVAL_S, sample, "consumer_lag")


def is_assigned(broker: KafkaBroker) -> bool:
    """Every subscriber has joined its group and holds partitions.

    (A replica beyond the partition count would hold none and never report ready: keep
    replicas at or below the partition count.)"""
    consumers = consumers_of(broker)
    return len(consumers) == len(broker.subscribers) and all(c.assignment() for c in consumers)
