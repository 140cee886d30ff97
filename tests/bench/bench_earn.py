"""Benchmark: purchases per second through earn alone (purchase in, credit command out).

Starts its own embedded Postgres and Tansu broker and ONE earn process (no ledger), applies
the demo programs, publishes purchases and counts the credit commands earn emits on the
ledger's command topic. Prints figures; asserts nothing.

    uv run python tests/bench/bench_earn.py [--purchases 10000] [--members 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from aiokafka import AIOKafkaProducer
from bench_flow import purchase
from common import own_platform, tail

from loyalty import topics


async def run(bootstrap: str, n: int, members: int) -> None:
    tag = uuid.uuid4().hex[:8]
    commands = await tail(bootstrap, topics.LEDGER_COMMANDS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    phones = [f"+3706{i:07d}" for i in range(members)]
    started = time.perf_counter()
    futures = []
    for i in range(n):
        event = purchase(tag, i, phones[i % members])
        futures.append(await producer.send(topics.PURCHASES, json.dumps(event).encode(),
                                           key=event["order_id"].encode()))
    await asyncio.gather(*futures)
    seen = 0
    marker = f'"command_id":"purchase:{tag}-'.encode()
    while seen < n:
        for records in (await commands.getmany(timeout_ms=500)).values():
            seen += sum(1 for r in records if marker in r.value)
    elapsed = time.perf_counter() - started
    print(f"earn alone: {n:,} purchases over {members:,} members (first purchase enrols): "
          f"{elapsed:.2f}s, {n / elapsed:,.0f} purchases/s")
    await commands.stop()
    await producer.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--purchases", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=2_000)
    args = parser.parse_args()
    async with own_platform("earn") as bootstrap:
        await run(bootstrap, args.purchases, args.members)


if __name__ == "__main__":
    asyncio.run(main())
