"""The consumer-lag gauge's figures on a real broker: end offset minus committed offset, per
assigned partition (`loyalty up` drains on it, dashboards alert on it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from loyalty import kafka
from loyalty.settings import kafka_client_kwargs
from loyalty.testing import unique
from loyalty.topics import TopicSpec

pytestmark = pytest.mark.integration


@asynccontextmanager
async def group_consumer(bootstrap: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of `topic` in a group of its own, from the earliest offset, committing
    nothing by itself."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=unique("lag.group"),
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **kafka_client_kwargs())
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def test_lag_is_what_the_group_has_not_committed_on_each_partition(infra) -> None:
    topic = unique("lag.probe")
    await kafka.ensure_topics(infra.kafka_bootstrap, [TopicSpec(topic, 3)])
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all",
                                **kafka_client_kwargs())
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, b"%d" % i, partition=0)
        await producer.send_and_wait(topic, b"x", partition=1)
    finally:
        await producer.stop()
    async with group_consumer(infra.kafka_bootstrap, topic) as consumer:
        for _ in range(100):  # until the group has its partitions
            if consumer.assignment():
                break
            await asyncio.sleep(0.1)
        assert await kafka.lag_of(consumer) == {
            TopicPartition(topic, 0): 5, TopicPartition(topic, 1): 1,
            TopicPartition(topic, 2): 0}
        await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, ""),
                               TopicPartition(topic, 1): OffsetAndMetadata(1, "")})
        assert await kafka.lag_of(consumer) == {
            TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 0,
            TopicPartition(topic, 2): 0}


async def test_a_batch_of_records_counts_as_its_records(infra) -> None:
    """A relay sends one record batch per partition; Tansu's ListOffsets answers one past the
    batch's first offset, so the end must come from the consumer's own fetches."""
    topic = unique("lag.batch")
    await kafka.ensure_topics(infra.kafka_bootstrap, [TopicSpec(topic, 2)])
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all",
                                **kafka_client_kwargs())
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(5):
            assert batch.append(key=None, value=b"%d" % i, timestamp=None) is not None
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()
    async with group_consumer(infra.kafka_bootstrap, topic) as consumer:
        p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        for _ in range(100):  # until the group has its partitions and has fetched them
            if consumer.assignment() and consumer.highwater(p0) and consumer.highwater(p1) == 0:
                break
            await asyncio.sleep(0.1)
        assert await kafka.lag_of(consumer) == {p0: 5, p1: 0}
        await consumer.commit({p0: OffsetAndMetadata(4, "")})
        assert await kafka.lag_of(consumer) == {p0: 1, p1: 0}
