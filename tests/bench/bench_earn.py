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
import secrets
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from bench_flow import purchase

from loyalty import topics
from loyalty.cli import DEMO_PROGRAMS, publish_programs, wait_programs_applied
from loyalty.infra import start_infrastructure
from loyalty.platform import Platform
from loyalty.programs import load_programs_file


async def run(bootstrap: str, n: int, members: int) -> None:
    tag = uuid.uuid4().hex[:8]
    commands = AIOKafkaConsumer(topics.LEDGER_COMMANDS, bootstrap_servers=bootstrap,
                                auto_offset_reset="latest", enable_auto_commit=False,
                                fetch_max_wait_ms=10)  # measure the platform, not this reader
    await commands.start()
    await commands.seek_to_end()
    for tp in commands.assignment():
        await commands.position(tp)
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
    tmp = Path(tempfile.mkdtemp(prefix="loyalty-bench-"))
    infra = start_infrastructure(tmp)
    platform = Platform(infra.pg_dsn, infra.kafka_bootstrap, secrets.token_urlsafe(8), tmp,
                        fixed_ports=False)
    try:
        await platform.prepare()
        platform.start("earn")
        await platform.wait_ready("earn")
        programs = load_programs_file(DEMO_PROGRAMS)
        await publish_programs(infra.kafka_bootstrap, programs)
        await wait_programs_applied(platform.services["earn"].url, platform.api_token, programs)
        await run(infra.kafka_bootstrap, args.purchases, args.members)
    finally:
        platform.stop()
        infra.stop()


if __name__ == "__main__":
    asyncio.run(main())
