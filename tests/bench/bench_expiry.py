"""Benchmark: the expiry scheduler with 100,000 lots due at once, and a 100,000-row CSV export.

Starts its own embedded Postgres and Tansu broker (or uses LOYALTY_PG_DSN /
LOYALTY_KAFKA_BOOTSTRAP), a ledger and an expiry-scheduler process (periodic sweep off).
Credits `--lots` lots straight onto the ledger's command topic (each lot with its own expiry
second in 2021, so each is one row of the export), waits until the scheduler holds them all,
then measures:

1. the CSV export of every upcoming expiration (`/v1/programs/bench/expirations?format=csv`):
   time to the first byte, total time, and the scheduler's resident memory sampled during the
   stream (peak minus before: flat means it does not grow with the rows);
2. one sweep (`loyalty expiry sweep` in-process, bounded batches of `--batch-lots`) as of
   now: lots decided per second, then lots per second until the ledger has expired every lot
   and the scheduler has seen it (expire commands applied and answered).

Prints figures; asserts nothing (shared machines are noisy).

    uv run python tests/bench/bench_expiry.py [--lots 100000] [--members 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer

from expiry.adapters.sweeper import run_sweep
from expiry.handlers import SweepLimits
from loyalty import db, topics
from loyalty.cli import publish_programs
from loyalty.infra import start_infrastructure
from loyalty.platform import Platform
from loyalty.programs import parse_programs_yaml

SERVICES = ("ledger", "expiry-scheduler")
PROGRAM = """
programs:
  - id: bench
    name: Bench Club
    currency: EUR
    earning: {points_per_unit: 1}
    expiry: {policy: rolling, months: 1, warn_days_before: [7]}
"""
EARNED = datetime(2021, 1, 1, tzinfo=UTC)
POLL_S = 0.2


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def credit_lots(bootstrap: str, lots: int, members: int) -> None:
    run = uuid.uuid4().hex[:8]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10,
                                max_batch_size=1 << 20)
    await producer.start()
    futures = []
    for i in range(lots):
        member = f"bm-{i % members}"
        command = {"type": "credit", "command_id": f"{run}-{i}", "program_id": "bench",
                   "member_id": member, "occurred_at": EARNED.isoformat(), "reason": "bench",
                   "source": {"kind": "purchase", "id": f"o{i}"}, "points": 10,
                   "expires_at": (EARNED + timedelta(days=30, seconds=i)).isoformat()}
        futures.append(await producer.send(topics.LEDGER_COMMANDS, json.dumps(command).encode(),
                                           key=member.encode()))
    await asyncio.gather(*futures)
    await producer.stop()


async def wait_for(conn: asyncpg.Connection, query: str, done,
                   timeout_s: float = 900) -> float:
    started = time.perf_counter()
    while not done(await conn.fetchval(query)):
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(query)
        await asyncio.sleep(POLL_S)
    return time.perf_counter() - started


async def export_csv(url: str, token: str, pid: int) -> None:
    before = rss_kib(pid)
    peak = before
    rows = 0
    started = time.perf_counter()
    first_byte = None
    async with aiohttp.ClientSession() as http, http.get(
            f"{url}/v1/programs/bench/expirations?format=csv&from=2000-01-01",
            headers={"Authorization": f"Bearer {token}"}) as resp:
        async for chunk in resp.content.iter_any():
            if first_byte is None:
                first_byte = time.perf_counter() - started
            rows += chunk.count(b"\n")
            peak = max(peak, rss_kib(pid))
    total = time.perf_counter() - started
    print(f"csv export: {rows - 1:,} rows (+ header) in {total:.2f}s "
          f"({(rows - 1) / total:,.0f} rows/s); time to first byte {first_byte * 1000:.0f} ms")
    print(f"csv export: scheduler RSS {before / 1024:.1f} MiB before, peak "
          f"{peak / 1024:.1f} MiB during (+{(peak - before) / 1024:.1f} MiB)")


async def main(lots: int, members: int, batch_lots: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="loyalty-bench-expiry-"))
    infra = start_infrastructure(tmp)
    token = secrets.token_urlsafe(8)
    platform = Platform(infra.pg_dsn, infra.kafka_bootstrap, token, tmp, fixed_ports=False)
    try:
        await platform.prepare()
        platform.services["expiry-scheduler"].env["LOYALTY_EXPIRY_SWEEP_INTERVAL_S"] = "0"
        platform.start(*SERVICES)
        await platform.wait_ready(*SERVICES)
        await publish_programs(infra.kafka_bootstrap, parse_programs_yaml(PROGRAM))
        scheduler = platform.services["expiry-scheduler"]
        pool = await db.create_pool(scheduler.env["LOYALTY_EXPIRY_PG_DSN"], size_max=3,
                                    schema="expiry")
        async with pool.acquire() as conn:
            await wait_for(conn, "SELECT count(*) FROM programs", lambda n: n == 1)
            started = time.perf_counter()
            await credit_lots(infra.kafka_bootstrap, lots, members)
            await wait_for(conn, "SELECT count(*) FROM lots", lambda n: n == lots)
            took = time.perf_counter() - started
            print(f"setup: {lots:,} lots over {members:,} members credited by the ledger and "
                  f"followed by the scheduler in {took:.1f}s ({lots / took:,.0f} lots/s)")

            await export_csv(scheduler.url, token, scheduler.proc.pid)

            started = time.perf_counter()
            report = await run_sweep(pool, datetime.now(UTC),
                                     SweepLimits(lots_per_batch_max=batch_lots),
                                     run_id=uuid.uuid4().hex)
            decided = time.perf_counter() - started
            print(f"sweep: {report.summary()}")
            print(f"sweep: {report.lots['expiry']:,} lots decided in {decided:.2f}s "
                  f"({report.lots['expiry'] / decided:,.0f} lots/s; batches of {batch_lots:,} "
                  f"lots, one transaction each)")
            await wait_for(conn, "SELECT count(*) FROM lots WHERE remaining > 0",
                           lambda n: n == 0)
            done = time.perf_counter() - started
            print(f"sweep: every lot expired by the ledger and seen back in {done:.2f}s "
                  f"({lots / done:,.0f} lots/s end to end)")
        await pool.close()
    finally:
        platform.stop()
        infra.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--batch-lots", type=int, default=1_000)
    args = parser.parse_args()
    asyncio.run(main(args.lots, args.members, args.batch_lots))
