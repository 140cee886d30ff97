"""Wiring: a batch subscriber hands the raw records (value, key, headers, offsets) to its
consumer. In-memory (faststream's TestKafkaBroker); the real broker is in the integration and
end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.structs import ConsumerRecord
from faststream.kafka import TestKafkaBroker

from loyalty.kafka import make_broker, raw_batch_parser, subscribe_batch


@dataclass
class Recorder:
    topic: str = "wiring.v1"
    service: str = "wiring"
    records: list = field(default_factory=list)

    async def __call__(self, records) -> None:
        self.records.extend(records)


async def test_a_batch_subscriber_passes_raw_records_on() -> None:
    broker = make_broker("localhost:9092", "wiring")
    recorder = Recorder()
    subscribe_batch(broker, recorder, group_id="loyalty-wiring", batch_size_max=10,
                    batch_timeout_ms=5)
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(b'{"event_id": "e-1"}', topic="wiring.v1", key=b"A-1",
                                  headers={"correlation_id": "c-1"})
    [record] = recorder.records
    assert record.value == b'{"event_id": "e-1"}'
    assert record.key == b"A-1"
    assert ("correlation_id", b"c-1") in list(record.headers)


async def test_a_payload_faststream_could_not_decode_still_reaches_the_consumer_raw() -> None:
    """100,000-deep JSON raised RecursionError in faststream's own decoding (and the batch was
    acknowledged unapplied); now no payload is decoded before our consumer sees it."""
    broker = make_broker("localhost:9092", "wiring")
    recorder = Recorder()
    subscribe_batch(broker, recorder, group_id="loyalty-wiring", batch_size_max=10,
                    batch_timeout_ms=5)
    deep = b"[" * 100_000 + b"]" * 100_000
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(deep, topic="wiring.v1", headers={"content-type":
                                                                     "application/json"})
    [record] = recorder.records
    assert record.value == deep


async def test_header_values_that_are_not_utf8_are_dropped_from_the_parsers_copy() -> None:
    seen = []

    async def original(records):
        seen.extend(records)
        return records

    record = ConsumerRecord(topic="t", partition=0, offset=7, timestamp=0, timestamp_type=0,
                            key=b"k", value=b"{}", checksum=None, serialized_key_size=1,
                            serialized_value_size=2,
                            headers=(("ok", b"fine"), ("bad", b"\xff\xfe"), ("none", None)))
    await raw_batch_parser((record,), original)
    [parsed] = seen
    assert parsed.headers == (("ok", b"fine"),)
    assert parsed.value == b"{}" and parsed.offset == 7
