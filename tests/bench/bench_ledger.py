"""Benchmark: commands per second applied by the ledger alone, and command-to-event latency.

Starts its own embedded Postgres and Tansu broker (or uses LOYALTY_PG_DSN /
LOYALTY_KAFKA_BOOTSTRAP) and one ledger process, or `--processes N` of them in one consumer
group (the command topic's 6 partitions shared among them); publishes ledger commands straight
to the internal command topic and reads the resulting events from loyalty.ledger.v1. The
throughput run fills the topic while the ledger is paused, then times it draining the topic
alone. Prints figures and the CPU each part used per command; asserts nothing (shared
machines are noisy).

    uv run python tests/bench/bench_ledger.py [--commands 50000] [--members 5000] [--rate 500]
        [--processes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid

import psutil
from aiokafka import AIOKafkaProducer
from common import (
    CREATETIME_READ_WAIT_MS,
    add_processes,
    cpu_seconds,
    emitted_at,
    own_running_platform,
    reference_loop_ms,
    tail,
)

from loyalty import topics

NOW = "2026-10-20T10:15:00+00:00"


def command(run: str, i: int, member: str, rng: random.Random) -> dict:
    base = {"command_id": f"{run}-{i}", "program_id": "bench", "member_id": member,
            "occurred_at": NOW, "reason": "bench", "source": {"kind": "purchase", "id": f"o{i}"}}
    if rng.random() < 0.8:
        return base | {"type": "credit", "points": rng.randint(1, 500),
                       "expires_at": rng.choice([None, "2027-03-31T21:59:59+00:00",
                                                 "2027-06-30T20:59:59+00:00"])}
    return base | {"type": "debit", "points": rng.randint(1, 100), "allow_owed": False}


async def throughput(bootstrap: str, n: int, members: int, ledgers: list[psutil.Process]
                     ) -> None:
    """The ledger draining a full topic: its processes are paused (SIGSTOP) while the
    commands are published, so the load generator takes none of the two cores while the
    ledger works, then resumed; timed from the resume to the last event's CreateTime (when
    the ledger's relay produced it). The pause is far shorter than the consumer session
    timeout, so the group does not rebalance."""
    me = psutil.Process()
    run, rng = uuid.uuid4().hex[:8], random.Random(1)
    names = [f"bm-{run}-{i}" for i in range(members)]
    events = await tail(bootstrap, topics.LEDGER, CREATETIME_READ_WAIT_MS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10,
                                max_batch_size=1 << 20)
    await producer.start()
    for ledger in ledgers:
        ledger.suspend()
    try:
        started = time.perf_counter()
        futures = []
        for i in range(n):
            c = command(run, i, names[i % members], rng)
            futures.append(await producer.send(topics.LEDGER_COMMANDS, json.dumps(c).encode(),
                                               key=c["member_id"].encode()))
        await asyncio.gather(*futures)
        published = time.perf_counter() - started
    finally:
        before = cpu_seconds(me)
        resumed = time.time()
        for ledger in ledgers:
            ledger.resume()
    seen, last = 0, resumed
    marker = f'"command_id":"{run}-'.encode()
    while seen < n:
        for records in (await events.getmany(timeout_ms=1000, max_records=10_000)).values():
            mine = [r for r in records if marker in r.value]
            seen += len(mine)
            last = max([last, *map(emitted_at, mine)])
    elapsed = last - resumed
    print(f"throughput: {n:,} commands (80% credits, 20% debits) over {members:,} members")
    print(f"  published in {published:.2f}s with the ledger paused; resumed, it applied them "
          f"all and produced their events in {elapsed:.2f}s: {n / elapsed:,.0f} commands/s")
    used = {k: v - before.get(k, 0.0) for k, v in cpu_seconds(me).items()}
    print("  CPU per command (user + system): " + ", ".join(
        f"{name} {seconds * 1e6 / n:.0f} us ({seconds / elapsed:.0%} of a core)"
        for name, seconds in sorted(used.items(), key=lambda kv: -kv[1])))
    await events.stop()
    await producer.stop()


async def latency(bootstrap: str, n: int, rate: float) -> None:
    run, rng = uuid.uuid4().hex[:8], random.Random(2)
    events = await tail(bootstrap, topics.LEDGER)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    sent: dict[str, float] = {}
    took: list[float] = []

    async def receive() -> None:
        while len(took) < n:
            for records in (await events.getmany(timeout_ms=200)).values():
                for r in records:
                    cid = json.loads(r.value).get("command_id")
                    if cid in sent:
                        took.append((time.perf_counter() - sent.pop(cid)) * 1000)

    receiver = asyncio.create_task(receive())
    for i in range(n):
        c = command(run, i, f"lm-{run}-{i % 200}", rng) | {"type": "credit", "points": 10,
                                                           "expires_at": None}
        c.pop("allow_owed", None)
        sent[c["command_id"]] = time.perf_counter()
        await producer.send(topics.LEDGER_COMMANDS, json.dumps(c).encode(),
                            key=c["member_id"].encode())
        await asyncio.sleep(1 / rate)
    await asyncio.wait_for(receiver, 60)
    took.sort()
    print(f"latency at {rate:.0f} commands/s ({n} commands): command published -> event on "
          f"loyalty.ledger.v1 p50 {statistics.median(took):.0f} ms, "
          f"p99 {took[int(n * 0.99) - 1]:.0f} ms")
    await events.stop()
    await producer.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=50_000)
    parser.add_argument("--members", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--latency-samples", type=int, default=2_000)
    parser.add_argument("--processes", type=int, default=1,
                        help="ledger processes in the group (at most 6: the partitions)")
    args = parser.parse_args()
    async with own_running_platform("ledger") as (bootstrap, platform):
        await add_processes(platform, [("ledger", args.processes)])
        print(f"{args.processes} ledger process(es); this machine now: a reference Python loop "
              f"takes {reference_loop_ms():.0f} ms")
        await latency(bootstrap, args.latency_samples, args.rate)
        ledgers = [psutil.Process(service.proc.pid) for service in platform.services.values()
                   if service.name == "ledger" and service.proc is not None]
        await throughput(bootstrap, args.commands, args.members, ledgers)


if __name__ == "__main__":
    asyncio.run(main())
