"""Benchmark: purchases per second through the whole flow, and purchase-to-SMS latency.

Runs against a platform started by `loyalty up` (found through .loyalty/runtime.json) or, if
none is running, starts its own (embedded Postgres, Tansu, earn and ledger processes).
Prints figures; asserts nothing about speed (shared machines are noisy).

    uv run python tests/bench/bench_flow.py [--purchases 5000] [--members 1000] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from common import own_platform, tail

from loyalty import topics


def purchase(run: str, i: int, phone: str) -> dict:
    return {
        "event_id": f"{run}-{i}", "type": "purchase.completed",
        "occurred_at": "2026-10-20T10:15:00+03:00", "program_id": "coffee-club",
        "order_id": f"{run}-o{i}", "channel": "ecommerce", "customer": {"phone": phone},
        "currency": "EUR", "total": "12.40",
        "items": [{"sku": "LATTE", "category": "beverages", "quantity": 2, "unit_price": "3.70"}],
    }


async def throughput(bootstrap: str, n: int, members: int) -> None:
    run = uuid.uuid4().hex[:8]
    phones = [f"+3706{i:07d}" for i in range(members)]
    credited = await tail(bootstrap, topics.LEDGER)
    sms = await tail(bootstrap, topics.NOTIFICATIONS_SMS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    started = time.perf_counter()
    futures = []
    for i in range(n):
        event = purchase(run, i, phones[i % members])
        futures.append(await producer.send(topics.PURCHASES, json.dumps(event).encode(),
                                           key=event["order_id"].encode()))
    await asyncio.gather(*futures)
    published = time.perf_counter() - started

    async def count(consumer: AIOKafkaConsumer, match: bytes) -> float:
        seen = 0
        while seen < n:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                seen += sum(1 for r in records if match in r.value)
        return time.perf_counter() - started

    done_credit, done_sms = await asyncio.gather(
        count(credited, f'"id":"{run}-o'.encode()), count(sms, b'"points_earned"'))
    print(f"throughput: {n} purchases over {members} members")
    print(f"  published in {published:.2f}s ({n / published:,.0f}/s)")
    print(f"  all credited (points.credited) after {done_credit:.2f}s: {n / done_credit:,.0f}/s")
    print(f"  all SMS emitted after {done_sms:.2f}s: {n / done_sms:,.0f} purchases/s end to end")
    for consumer in (credited, sms):
        await consumer.stop()
    await producer.stop()


async def latency(bootstrap: str, n: int, rate: float) -> None:
    run = uuid.uuid4().hex[:8]
    sms = await tail(bootstrap, topics.NOTIFICATIONS_SMS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}

    async def receive() -> None:
        while len(seen) < n:
            for records in (await sms.getmany(timeout_ms=200)).values():
                for r in records:
                    to = json.loads(r.value)["to"]
                    if to in sent and to not in seen:
                        seen[to] = time.perf_counter() - sent[to]

    receiver = asyncio.create_task(receive())
    for i in range(n):
        phone = f"+3709{secrets.randbelow(10**7):07d}"
        event = purchase(run, i, phone)
        sent[phone] = time.perf_counter()
        await producer.send_and_wait(topics.PURCHASES, json.dumps(event).encode(),
                                     key=event["order_id"].encode())
        await asyncio.sleep(1 / rate)
    await asyncio.wait_for(receiver, 60)
    ms = sorted(v * 1000 for v in seen.values())
    print(f"latency: {n} purchases at {rate:.0f}/s, each a new member (enrolment included)")
    print(f"  purchase published -> SMS on loyalty.notifications.sms.v1: "
          f"p50 {statistics.median(ms):.0f} ms, p99 {ms[int(len(ms) * 0.99) - 1]:.0f} ms, "
          f"max {ms[-1]:.0f} ms")
    await sms.stop()
    await producer.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--purchases", type=int, default=5000)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--latency-samples", type=int, default=300)
    args = parser.parse_args()

    runtime = Path(".loyalty/runtime.json")
    if runtime.exists():
        bootstrap = json.loads(runtime.read_text())["kafka_bootstrap"]
        print(f"using the running platform at {bootstrap}")
        await _measure(bootstrap, args)
        return
    async with own_platform("earn", "ledger") as bootstrap:
        print(f"started a platform for the benchmark at {bootstrap}")
        await _measure(bootstrap, args)


async def _measure(bootstrap: str, args: argparse.Namespace) -> None:
    await latency(bootstrap, args.latency_samples, args.rate)
    await throughput(bootstrap, args.purchases, args.members)


if __name__ == "__main__":
    asyncio.run(main())
