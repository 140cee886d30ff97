"""Wiring: a batch subscriber hands the raw records (value, key, headers, offsets) to its
consumer. In-memory (faststream's TestKafkaBroker); the real broker is in the integration and
end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from faststream.kafka import TestKafkaBroker

from loyalty.kafka import make_broker, subscribe_batch


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
