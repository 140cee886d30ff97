"""Benchmark (`make bench`): the whole flow, purchase -> points.credited -> SMS, as users run it.

Starts its own platform (embedded Postgres with fsync on, Tansu, and all four services as
separate processes: earn, ledger, expiry-scheduler following every ledger event, and
reward-fulfilment), or uses a running `loyalty up` (found through .loyalty/runtime.json).
Prints, in one run:
- throughput: N purchases published at once, until every one is credited and has its SMS;
- latency at a steady rate: p50/p95/p99 from when each purchase was due to `points.credited`
  and to the SMS (`--tick-ms`: how often the load generator sends what is due, 10 ms);
- peak RSS of each service process;
- the same purchases through a deliberately plain per-message pipeline (one transaction, one
  acked produce and one offset commit per purchase) on the same broker and Postgres, and the
  platform's ratio to it.
Results are timed by when the platform produced them (each record's Kafka CreateTime, set as
the outbox relay hands it to its producer), so this script's own reading, every half second,
neither delays nor loads what it measures. Asserts nothing about speed (shared machines are
noisy). `--profile` adds the top statements
of pg_stat_statements; `--py-spy DIR` samples each service with py-spy during the throughput
run, writes its collapsed stacks (flamegraph input) to DIR and prints where its time goes.

    uv run python tests/bench/bench_flow.py [--purchases 20000] [--members 5000]
        [--rate 2500] [--seconds 20] [--tick-ms 10] [--naive 2000] [--profile]
        [--py-spy DIR] [--processes ledger=2 earn=2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
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

SERVICES = ("earn", "ledger", "expiry-scheduler", "reward-fulfilment")
WAIT_S_MAX = 600.0


def purchase(run: str, i: int, phone: str) -> dict:
    return {
        "event_id": f"{run}-{i}", "type": "purchase.completed",
        "occurred_at": "2026-10-20T10:15:00+03:00", "program_id": "coffee-club",
        "order_id": f"{run}-o{i}", "channel": "ecommerce", "customer": {"phone": phone},
        "currency": "EUR", "total": "12.40",
        "items": [{"sku": "LATTE", "category": "beverages", "quantity": 2, "unit_price": "3.70"}],
    }


class RssWatch:
    """Peak resident memory of each service process, sampled every 0.5 s."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.first: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    def sample(self) -> None:
        for name, proc in self.procs.items():
            rss = proc.memory_info().rss
            self.first.setdefault(name, rss)
            self.peak[name] = max(self.peak[name], rss)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.5)

    def __enter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.sample()


def own_cpu_seconds() -> float:
    """This script's CPU time (the load generator's: publishing, reading the results)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


class PySpy:
    """py-spy sampling each service (non-blocking, so the service is never paused)."""

    def __init__(self, pids: dict[str, int], out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.files = {name: out / f"{name}.collapsed" for name in pids}
        self.procs = [subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking",
             "--format", "raw", "--rate", "200", "--pid", str(pid), "-o", str(self.files[name])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in pids.items()]

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            proc.wait(timeout=60)

    # Where a sample falls, by the first of these frames on its stack.
    PARTS = (("consumer: handler, inbox, outbox writes", "BatchConsumer._apply ("),
             ("outbox relay (publish, delete)", "OutboxRelay._run"),
             ("fetching records (aiokafka)", "Fetcher."),
             ("faststream's consume loop", "_run_consume_loop"),
             ("lag and outbox metrics", "report_lag"))
    OWN_CODE = ("(messaging.py", "(earn/", "(ledger/", "(expiry/", "(rewards/",
                "(notifications.py", "(contracts.py", "(programs.py", "(ledger_commands.py")
    WRAPPERS = ("<module>", "BatchConsumer.__call__", "BatchConsumer._retrying",
                "BatchConsumer._apply", "OutboxRelay._run", "OutboxRelay._lead")

    def report(self, top: int = 12) -> None:
        """Per service: the share of its samples in each part of the service, then its own
        functions that take the most (inclusive), busiest first."""
        for name, path in self.files.items():
            if not path.exists():
                print(f"  {name}: no profile (py-spy could not attach)")
                continue
            parts: Counter[str] = Counter()
            own: Counter[str] = Counter()
            total = 0
            for line in path.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                n = int(count)
                total += n
                part = next((label for label, frame in self.PARTS if frame in stack),
                            "event loop and socket I/O (uvloop, aiokafka, asyncpg)")
                parts[part] += n
                frames = {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}
                for frame in frames:
                    if any(mark in frame for mark in self.OWN_CODE) and not frame.startswith(
                            self.WRAPPERS):
                        own[frame] += n
            print(f"\n  {name}: {total:,} samples ({path})")
            for part, n in parts.most_common():
                print(f"    {100 * n / total:5.1f}%  {part}")
            print("    busiest functions of ours (inclusive):")
            for frame, n in own.most_common(top):
                print(f"    {100 * n / total:5.1f}%    {frame[:100]}")

async def watch(consumer: AIOKafkaConsumer, wanted: set[str], key: str,
                seen: dict[str, float]) -> None:
    """Record when each of `wanted` (the value of `key` in a record) was first produced."""
    deadline = time.monotonic() + WAIT_S_MAX
    while len(seen) < len(wanted) and time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            for r in records:
                value = json.loads(r.value)
                ident = value.get(key) if key != "source" else value["source"]["id"]
                if ident in wanted and ident not in seen:
                    seen[ident] = emitted_at(r)


async def throughput(bootstrap: str, n: int, members: int) -> float:
    """Publishes `n` purchases at once; the purchases per second end to end (to the SMS)."""
    run = uuid.uuid4().hex[:8]
    phones = [f"+3706{i:07d}" for i in range(members)]
    events = [purchase(run, i, phones[i % members]) for i in range(n)]
    ledger = await tail(bootstrap, topics.LEDGER, CREATETIME_READ_WAIT_MS)
    sms = await tail(bootstrap, topics.NOTIFICATIONS_SMS, CREATETIME_READ_WAIT_MS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    credited: dict[str, float] = {}
    notified_count, last_sms = 0, 0.0

    async def count_sms() -> None:
        nonlocal notified_count, last_sms
        deadline = time.monotonic() + WAIT_S_MAX
        while notified_count < n and time.monotonic() < deadline:
            for records in (await sms.getmany(timeout_ms=1000)).values():
                earned = [r for r in records if b'"points_earned"' in r.value]
                notified_count += len(earned)
                last_sms = max([last_sms, *map(emitted_at, earned)])
        return None

    started = time.time()
    watchers = asyncio.gather(watch(ledger, {e["order_id"] for e in events}, "source", credited),
                              count_sms())
    futures = [await producer.send(topics.PURCHASES, json.dumps(e).encode(),
                                   key=e["order_id"].encode()) for e in events]
    await asyncio.gather(*futures)
    published = time.time() - started
    await watchers
    done = last_sms - started
    last_credit = max(credited.values()) - started
    print(f"\nthroughput: {n:,} purchases over {members:,} members, published at once")
    print(f"  published in {published:.2f}s ({n / published:,.0f}/s)")
    print(f"  all credited after {last_credit:.2f}s: {n / last_credit:,.0f} purchases/s")
    print(f"  all {notified_count:,} SMS emitted after {done:.2f}s: "
          f"{n / done:,.0f} purchases/s end to end")
    for consumer in (ledger, sms):
        await consumer.stop()
    await producer.stop()
    return n / done


def percentiles(values: Iterable[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return "no samples"
    def at(q: float) -> float:
        return ms[min(len(ms) - 1, int(len(ms) * q))]
    return f"p50 {statistics.median(ms):,.0f} ms, p95 {at(0.95):,.0f} ms, p99 {at(0.99):,.0f} ms"


async def latency(bootstrap: str, rate: float, seconds: float, tick_s: float) -> None:
    """A steady `rate` of purchases, each by a new shopper (enrolment included), sent every
    `tick_s`; each is timed from when it was due, so the tick's wait counts."""
    run = uuid.uuid4().hex[:8]
    n = int(rate * seconds)
    phones = [f"+3709{int(run, 16) % 10**3:03d}{i:04d}" for i in range(n)]
    events = [purchase(run, i, phones[i]) for i in range(n)]
    ledger = await tail(bootstrap, topics.LEDGER, CREATETIME_READ_WAIT_MS)
    sms = await tail(bootstrap, topics.NOTIFICATIONS_SMS, CREATETIME_READ_WAIT_MS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    sent: dict[str, float] = {}
    credited: dict[str, float] = {}
    notified: dict[str, float] = {}
    watchers = asyncio.gather(
        watch(ledger, {e["order_id"] for e in events}, "source", credited),
        watch(sms, set(phones), "to", notified))
    started, started_at = time.perf_counter(), time.time()
    i = 0
    while i < n:
        due = min(n, int((time.perf_counter() - started) * rate) + 1)
        while i < due:
            e = events[i]
            sent[e["order_id"]] = sent[e["customer"]["phone"]] = started_at + i / rate
            await producer.send(topics.PURCHASES, json.dumps(e).encode(),
                                key=e["order_id"].encode())
            i += 1
        await asyncio.sleep(tick_s)
    await producer.flush()
    offered = n / (time.perf_counter() - started)
    await watchers
    print(f"\nlatency: {n:,} purchases offered at {offered:,.0f}/s for {seconds:.0f}s, "
          "each by a new shopper")
    print(f"  publish -> points.credited: {percentiles(credited[o] - sent[o] for o in credited)}"
          f" ({len(credited):,} seen)")
    print(f"  publish -> SMS:             {percentiles(notified[p] - sent[p] for p in notified)}"
          f" ({len(notified):,} seen)")
    for consumer in (ledger, sms):
        await consumer.stop()
    await producer.stop()


async def naive(bootstrap: str, pg_dsn: str, n: int) -> float:
    """The same purchases through a plain per-message pipeline: for each record, one
    transaction (inbox row and effect), one acked produce, one offset commit."""
    run = uuid.uuid4().hex[:8]
    topic = f"bench.naive.{run}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    futures = [await producer.send(topic, json.dumps(purchase(run, i, f"+3707{i:07d}")).encode())
               for i in range(n)]
    await asyncio.gather(*futures)
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f"CREATE TABLE naive_{run} (event_id text PRIMARY KEY, points int)")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"naive-{run}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    done = 0
    started = time.perf_counter()
    try:
        while done < n:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                for r in records:
                    event = json.loads(r.value)
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO naive_{run} VALUES ($1, $2)"
                                           " ON CONFLICT DO NOTHING", event["event_id"], 248)
                    await producer.send_and_wait(f"{topic}.out", json.dumps(
                        {"credited": event["event_id"]}).encode())
                    await consumer.commit({TopicPartition(tp.topic, tp.partition): r.offset + 1})
                    done += 1
        took = time.perf_counter() - started
    finally:
        await consumer.stop()
        await producer.stop()
        await conn.execute(f"DROP TABLE naive_{run}")
        await conn.close()
    return n / took


async def pg_profile(pg_dsn: str) -> None:
    """Postgres's top statements, then the rows each table took per purchase (earn's orders
    count the purchases) and the WAL."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT calls, round(total_exec_time)::bigint AS ms, rows,"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query"
            " FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 30")
        tables = await conn.fetch(
            "SELECT schemaname || '.' || relname AS t, n_tup_ins AS ins, n_tup_upd AS upd,"
            " n_tup_del AS del FROM pg_stat_user_tables"
            " WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY 1")
        # A key lookup planned while its table was small scans it whole, until an ANALYZE
        # makes the plan stale: what each table had read so.
        scanned = await conn.fetch(
            "SELECT schemaname || '.' || relname AS t, seq_scan, seq_tup_read"
            " FROM pg_stat_user_tables WHERE seq_tup_read > 0 ORDER BY seq_tup_read DESC")
        wal = await conn.fetchrow("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
    finally:
        await conn.close()
    print("\npg_stat_statements, top statements by total time:")
    for r in rows:
        print(f"  {r['ms']:>7,} ms {r['calls']:>8,} calls {r['rows']:>9,} rows  {r['query']}")
    rows_written(tables, wal)
    print("\nsequential scans (scans, rows read):")
    for r in scanned[:12]:
        print(f"  {r['t']:<28} {r['seq_scan']:>8,} {r['seq_tup_read']:>14,}")


def rows_written(tables: list[asyncpg.Record], wal: asyncpg.Record) -> None:
    purchases = next((r["ins"] for r in tables if r["t"] == "earn.orders"), 0)
    if not purchases:
        return
    print(f"\nrows written per purchase ({purchases:,} purchases: inserted / updated / deleted):")
    total = 0.0
    for r in tables:
        per = [r[k] / purchases for k in ("ins", "upd", "del")]
        total += sum(per)
        if sum(per) >= 0.005:  # not the programs, migrations and such
            print(f"  {r['t']:<28} {per[0]:5.2f} {per[1]:5.2f} {per[2]:5.2f}")
    print(f"  {'total':<28} {total:5.2f} row writes")
    print(f"  WAL: {wal['wal_records'] / purchases:.1f} records, "
          f"{wal['wal_fpi'] / purchases:.2f} full-page images, "
          f"{wal['wal_bytes'] / purchases / 1024:.1f} KiB per purchase")


async def measure(bootstrap: str, pg_dsn: str, pids: dict[str, int],
                  args: argparse.Namespace) -> None:
    if args.profile:
        conn = await asyncpg.connect(pg_dsn)
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
        await conn.execute("SELECT pg_stat_reset()")  # this database's table counters
        await conn.execute("SELECT pg_stat_reset_shared('wal')")
        await conn.close()
    me = psutil.Process()
    with RssWatch(pids) as rss:
        before, own_before, wall_before = cpu_seconds(me), own_cpu_seconds(), time.perf_counter()
        spy = PySpy(pids, Path(args.py_spy)) if args.py_spy else None
        end_to_end = await throughput(bootstrap, args.purchases, args.members)
        if spy:
            spy.stop()
        own, wall = own_cpu_seconds() - own_before, time.perf_counter() - wall_before
        used = {k: v - before.get(k, 0.0) for k, v in cpu_seconds(me).items()}
        if used:  # only when the platform is this script's own (its children)
            print("  CPU per purchase (user + system), by part of the platform:")
            for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
                print(f"    {name:<10} {seconds * 1000 / args.purchases:6.3f} ms")
            print(f"    {'total':<10} {sum(used.values()) * 1000 / args.purchases:6.3f} ms "
                  f"(2 cores: at most {2 * args.purchases / sum(used.values()):,.0f}"
                  " purchases/s with nothing else running)")
            cores = os.cpu_count() or 2
            print(f"  and this load generator {own * 1000 / args.purchases:.3f} ms; of the "
                  f"{cores} cores' time during the run, the platform used "
                  f"{sum(used.values()) / (cores * wall):.0%} and the load generator "
                  f"{own / (cores * wall):.0%}")
        await latency(bootstrap, args.rate, args.seconds, args.tick_ms / 1000)
    if spy:
        print("\npy-spy during the throughput run, share of each service's busy samples:")
        spy.report()
    print("\npeak RSS per process (start -> peak):")
    for name in pids:
        print(f"  {name:<18} {rss.first[name] / 2**20:>6.0f} MiB -> "
              f"{rss.peak[name] / 2**20:>6.0f} MiB")
    if args.profile:
        await pg_profile(pg_dsn)
    if args.naive:
        per_s = await naive(bootstrap, pg_dsn, args.naive)
        print(f"\nnaive per-message pipeline: {args.naive:,} purchases at {per_s:,.0f}/s "
              "(one transaction, one acked produce, one offset commit each)")
        print(f"  the platform end to end: {end_to_end:,.0f}/s, {end_to_end / per_s:.1f}x that")


def processes_of(text: str) -> tuple[str, int]:
    name, _, n = text.partition("=")
    if name not in SERVICES or not n.isdigit() or not 1 <= int(n) <= 6:
        raise argparse.ArgumentTypeError(f"{text!r}: SERVICE=N, N from 1 to 6 (the partitions)")
    return name, int(n)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--purchases", type=int, default=20_000)
    parser.add_argument("--members", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=2_500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--tick-ms", type=float, default=10,
                        help="the steady rate's purchases go every this many ms")
    parser.add_argument("--naive", type=int, default=2_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--py-spy", metavar="DIR", default=None)
    parser.add_argument("--processes", metavar="SERVICE=N", type=processes_of, default=[],
                        nargs="*", help="run N processes of a service, e.g. ledger=2 earn=2")
    args = parser.parse_args()
    print(f"this machine now: a reference Python loop takes {reference_loop_ms():.0f} ms "
          "(best of 5; compare figures between runs whose loop times are alike)")

    runtime = Path(os.environ.get("LOYALTY_DATA_DIR", ".loyalty")) / "runtime.json"
    if runtime.exists():
        info = json.loads(runtime.read_text())
        pids = {name: next(c.pid for c in psutil.net_connections("tcp")
                           if c.laddr and c.laddr.port == int(url.rsplit(":", 1)[1])
                           and c.status == psutil.CONN_LISTEN)
                for name, url in info["urls"].items()}
        print(f"using the running platform at {info['kafka_bootstrap']}")
        await measure(info["kafka_bootstrap"], info["pg_dsn"], pids, args)
        return
    async with own_running_platform(*SERVICES) as (bootstrap, platform):
        await add_processes(platform, args.processes)
        print(f"started a platform for the benchmark: {', '.join(platform.services)}; "
              "Postgres fsync on")
        pids = {key: s.proc.pid for key, s in platform.services.items() if s.proc is not None}
        await measure(bootstrap, platform.admin_dsn, pids, args)


if __name__ == "__main__":
    asyncio.run(main())
