"""Benchmark: importing codes, and redemptions from request to `reward_fulfilled` SMS.

Starts its own platform (embedded Postgres, Tansu, earn, ledger and reward-fulfilment as
processes), applies a program of its own, and prints:
- the wall time of `loyalty rewards import-codes` for --codes codes (the command as an
  operator runs it: process start, validation, encryption, COPY);
- redemptions per second: --redemptions requests published at once, until every one's
  `reward_fulfilled` SMS is on the topic;
- latency at a steady --rate: request published -> its SMS on the topic, p50 / p99 / max.
Asserts nothing about speed (shared machines are noisy).

    uv run python tests/bench/bench_rewards.py [--codes 100000] [--redemptions 3000]
        [--members 1000] [--rate 50] [--latency-samples 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from common import tail

from loyalty import topics
from loyalty.cli import publish_programs, wait_programs_applied
from loyalty.infra import start_infrastructure
from loyalty.platform import Platform
from loyalty.programs import ProgramDefinition

SERVICES = ("earn", "ledger", "reward-fulfilment")
REWARD_POINTS = 100


def program(program_id: str) -> ProgramDefinition:
    return ProgramDefinition.model_validate({
        "id": program_id, "name": "Bench Club", "currency": "EUR",
        "earning": {"points_per_unit": 100},
        "rewards": [{"id": "gift", "name": "Gift", "points": REWARD_POINTS, "kind": "code",
                     "pool": "bench"}]})


def redemption(program_id: str, phone: str) -> dict:
    # occurred_at is the publish time: `steps` measures the consumer's pick-up from it.
    return {"event_id": f"bench-{uuid.uuid4().hex}", "type": "redemption.requested",
            "occurred_at": datetime.now(UTC).isoformat(), "program_id": program_id,
            "customer": {"phone": phone}, "reward_id": "gift", "quantity": 1,
            "delivery": {"channel": "sms"}}


async def wait_catalog(url: str, token: str, program_id: str, stock: int) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        while True:
            async with http.get(f"{url}/v1/programs/{program_id}/rewards") as resp:
                if resp.status == 200 and (await resp.json())["items"][0]["stock_left"] >= stock:
                    return
            await asyncio.sleep(0.2)


def import_codes(pg_dsn: str, program_id: str, n: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        f.write("\n".join(f"BENCH-{secrets.token_hex(8).upper()}" for _ in range(n)) + "\n")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "loyalty.cli", "rewards", "import-codes", "--program", program_id,
         "--pool", "bench", f.name], env={**os.environ, "LOYALTY_PG_DSN": pg_dsn},
        capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    os.unlink(f.name)
    if result.returncode:
        raise SystemExit(f"import failed: {result.stderr}")
    print(f"import-codes: {result.stdout.strip()}")
    print(f"  {n:,} codes in {elapsed:.2f}s wall ({n / elapsed:,.0f} codes/s), "
          "process start included")
    return elapsed


async def earn(bootstrap: str, program_id: str, phones: list[str], points_each: int) -> None:
    credited = await tail(bootstrap, topics.LEDGER)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    total = f"{points_each // 100}.00"
    futures = []
    for i, phone in enumerate(phones):
        event = {"event_id": f"bench-p-{uuid.uuid4().hex}", "type": "purchase.completed",
                 "occurred_at": "2026-11-20T10:00:00+00:00", "program_id": program_id,
                 "order_id": f"bench-o-{i}-{uuid.uuid4().hex[:6]}", "channel": "pos",
                 "customer": {"phone": phone}, "currency": "EUR", "total": total}
        futures.append(await producer.send(topics.PURCHASES, json.dumps(event).encode(),
                                           key=event["order_id"].encode()))
    await asyncio.gather(*futures)
    await producer.stop()
    seen = 0
    while seen < len(phones):
        for records in (await credited.getmany(timeout_ms=500)).values():
            seen += sum(1 for r in records if b'"points.credited"' in r.value
                        and program_id.encode() in r.value)
    await credited.stop()
    await asyncio.sleep(2)  # members.v1 reaches reward-fulfilment too


async def count_sms(consumer: AIOKafkaConsumer, phones: set[str], n: int) -> None:
    seen = 0
    while seen < n:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            for r in records:
                message = json.loads(r.value)
                if message["template"] == "reward_fulfilled" and message["to"] in phones:
                    seen += 1


def cpu_seconds(platform: Platform) -> dict[str, float]:
    """CPU time (user + system) each service process has used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name in SERVICES:
        proc = platform.services[name].proc
        if proc is None:
            continue
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[name] = (int(fields[11]) + int(fields[12])) / tick
    return used


async def throughput(bootstrap: str, program_id: str, phones: list[str], n: int) -> None:
    sms = await tail(bootstrap, topics.NOTIFICATIONS_SMS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    started = time.perf_counter()
    futures = []
    for i in range(n):
        event = redemption(program_id, phones[i % len(phones)])
        futures.append(await producer.send(topics.REDEMPTIONS, json.dumps(event).encode(),
                                           key=event["event_id"].encode()))
    await asyncio.gather(*futures)
    published = time.perf_counter() - started
    await count_sms(sms, set(phones), n)
    elapsed = time.perf_counter() - started
    print(f"throughput: {n:,} redemptions over {len(phones):,} members")
    print(f"  published in {published:.2f}s; every reward_fulfilled SMS after {elapsed:.2f}s: "
          f"{n / elapsed:,.0f} redemptions/s end to end")
    await sms.stop()
    await producer.stop()


async def latency(bootstrap: str, program_id: str, phones: list[str], rate: float) -> None:
    sms = await tail(bootstrap, topics.NOTIFICATIONS_SMS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}

    async def receive() -> None:
        while len(seen) < len(phones):
            for records in (await sms.getmany(timeout_ms=200)).values():
                for r in records:
                    message = json.loads(r.value)
                    to = message["to"]
                    if (message["template"] == "reward_fulfilled" and to in sent
                            and to not in seen):
                        seen[to] = time.perf_counter() - sent[to]

    receiver = asyncio.create_task(receive())
    for phone in phones:  # one request per member: its SMS is that request's
        event = redemption(program_id, phone)
        sent[phone] = time.perf_counter()
        await producer.send_and_wait(topics.REDEMPTIONS, json.dumps(event).encode(),
                                     key=event["event_id"].encode())
        await asyncio.sleep(1 / rate)
    await asyncio.wait_for(receiver, 120)
    ms = sorted(v * 1000 for v in seen.values())
    print(f"latency: {len(ms)} redemptions at {rate:.0f}/s")
    print(f"  request published -> reward_fulfilled SMS on loyalty.notifications.sms.v1: "
          f"p50 {statistics.median(ms):.0f} ms, p99 {ms[int(len(ms) * 0.99) - 1]:.0f} ms, "
          f"max {ms[-1]:.0f} ms")
    await sms.stop()
    await producer.stop()


async def steps(pg_dsn: str, program_id: str) -> None:
    """Where the time goes: median gap between an order's status changes."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT h.status, percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM"
            " h.at - coalesce(p.at, o.requested_at))) * 1000 AS ms"
            " FROM rewards.order_history h JOIN rewards.orders o ON o.order_id = h.order_id"
            " LEFT JOIN rewards.order_history p ON p.order_id = h.order_id AND p.seq = h.seq - 1"
            " WHERE o.program_id = $1 GROUP BY h.status ORDER BY min(h.seq)", program_id)
    finally:
        await conn.close()
    print("  median gap before each status (from the publish for `requested`): "
          + ", ".join(f"{r['status']} {r['ms']:.0f} ms" for r in rows))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--codes", type=int, default=100_000)
    parser.add_argument("--redemptions", type=int, default=3000)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--latency-samples", type=int, default=300)
    args = parser.parse_args()
    if args.codes < args.redemptions + args.latency_samples:
        raise SystemExit("--codes must cover every redemption")

    tmp = Path(tempfile.mkdtemp(prefix="loyalty-bench-rewards-"))
    infra = start_infrastructure(tmp, fsync=False)
    platform = Platform(infra.pg_dsn, infra.kafka_bootstrap, secrets.token_urlsafe(8), tmp,
                        fixed_ports=False)
    try:
        await platform.prepare()
        platform.start(*SERVICES)
        await platform.wait_ready(*SERVICES)
        program_id = f"bench-{uuid.uuid4().hex[:6]}"
        await publish_programs(infra.kafka_bootstrap, [program(program_id)])
        await wait_programs_applied(platform.services["earn"].url, platform.api_token,
                                    [program(program_id)])
        rewards_url = platform.services["reward-fulfilment"].url
        await wait_catalog(rewards_url, platform.api_token, program_id, 0)
        print(f"platform for the benchmark at {infra.kafka_bootstrap}")

        import_codes(infra.pg_dsn, program_id, args.codes)
        await wait_catalog(rewards_url, platform.api_token, program_id, args.codes)

        per_member = -(-args.redemptions // args.members)
        phones = [f"+3706{i:07d}" for i in range(args.members)]
        fresh = [f"+3707{i:07d}" for i in range(args.latency_samples)]
        await earn(infra.kafka_bootstrap, program_id, phones, per_member * REWARD_POINTS)
        await earn(infra.kafka_bootstrap, program_id, fresh, REWARD_POINTS)
        await latency(infra.kafka_bootstrap, program_id, fresh, args.rate)
        await steps(infra.pg_dsn, program_id)
        before = cpu_seconds(platform)
        await throughput(infra.kafka_bootstrap, program_id, phones, args.redemptions)
        after = cpu_seconds(platform)
        print("  CPU per 1,000 redemptions (robust to a busy machine): " + ", ".join(
            f"{name} {(after[name] - before[name]) * 1000 / args.redemptions:.1f}s"
            for name in after))
    finally:
        platform.stop()
        infra.stop()


if __name__ == "__main__":
    asyncio.run(main())
