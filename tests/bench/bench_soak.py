"""Benchmark (`make soak`): a steady rate of purchases for minutes on end, watching memory and
latency over time (the issue "Throughput": memory stays flat over a 10-minute run; p99 from
purchase to SMS within 1 s at a steady rate).

Starts its own platform like bench_flow.py (embedded Postgres with fsync on, Tansu, all four
services as processes) and offers `--rate` purchases/s for `--minutes`, sending what is due
every `--tick-ms` (10 ms: one produce request with a record batch per partition each tick).
Shoppers are `--members` phones reused round-robin: new members first, then returning ones.
Each purchase is matched to its `points.credited` (by source id = order_id) and to its
`points_earned` SMS (by notification_id, which the ledger derives from the credit's event_id),
so every purchase has both latencies, whether its shopper is new or returning. Latencies
start when the purchase was due (its place in the steady rate), so a coarse tick's wait
counts; they end when the platform produced the result (the record's CreateTime, set by the
outbox relay), so the readers poll every half second and neither delay nor load what they
measure.

Every minute it prints: offered and credited rate, p50/p99 publish -> credit and publish -> SMS
of the purchases sent in that minute, RSS of each service, the PSS of Postgres and the broker
together (PSS counts Postgres's shared memory once, not once per backend), this script's own
RSS, and the CPU each part of the platform used in the minute (% of a core: what grows). At
the end: each service's RSS in minute 1 against the last minute (Postgres and broker apart:
Tansu keeps topics in memory, so it grows with every message by design), overall p50/p95/p99,
and how many purchases were never credited or never got their SMS (both 0).
Asserts nothing about speed.

    uv run python tests/bench/bench_soak.py [--rate 500] [--minutes 10] [--members 20000]
                                            [--tick-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from array import array
from dataclasses import dataclass, field

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from bench_flow import SERVICES, RssWatch, percentiles, purchase
from common import (
    CREATETIME_READ_WAIT_MS,
    cpu_seconds,
    emitted_at,
    own_running_platform,
    tail,
)

from loyalty import topics
from loyalty.notifications import notification_id

MINUTE_S = 60.0
GRACE_S = 30.0  # how long a minute's line waits for its stragglers before it is printed
DRAIN_S = 120.0  # how long the end waits for the last credits and SMS
EARLY_SMS_MAX = 10_000
MiB = 2**20


@dataclass
class Minute:
    """What happened to the purchases sent in one minute (and what was credited in it)."""

    sent: int = 0
    credited_in: int = 0  # credits observed during this wall-clock minute, whatever their age
    credit: array = field(default_factory=lambda: array("d"))
    sms: array = field(default_factory=lambda: array("d"))
    rss: dict[str, int] = field(default_factory=dict)
    infra_pss: dict[str, int] = field(default_factory=dict)
    own_rss: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # % of a core in this minute, by part


class Soak:
    def __init__(self, minutes: int) -> None:
        self.minutes = [Minute() for _ in range(minutes)]
        self.started = 0.0
        # order_id -> (sent at, minute); dropped once credited
        self.awaiting_credit: dict[str, tuple[float, int]] = {}
        # notification_id -> (sent at, minute); dropped once the SMS is seen
        self.awaiting_sms: dict[str, tuple[float, int]] = {}
        # notification_id -> seen at, for an SMS read before its credit (two topics, two
        # readers); dropped once its credit comes
        self.early_sms: dict[str, float] = {}
        self.all_credit = array("d")
        self.all_sms = array("d")
        self.sent = self.credited = self.notified = 0

    def minute_of(self, at: float) -> int:
        return min(len(self.minutes) - 1, max(0, int((at - self.started) // MINUTE_S)))

    async def read_ledger(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    now = emitted_at(r)
                    event = json.loads(r.value)
                    if event["type"] != "points.credited":
                        continue
                    found = self.awaiting_credit.pop(event["source"]["id"], None)
                    if found is None:
                        continue
                    sent_at, m = found
                    self.credited += 1
                    if (during := int((now - self.started) // MINUTE_S)) < len(self.minutes):
                        self.minutes[during].credited_in += 1
                    self.minutes[m].credit.append(now - sent_at)
                    self.all_credit.append(now - sent_at)
                    nid = notification_id("points_earned", "sms", event["event_id"])
                    if (seen := self.early_sms.pop(nid, None)) is not None:
                        self.record_sms(seen - sent_at, m)
                    else:
                        self.awaiting_sms[nid] = found

    async def read_sms(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    now = emitted_at(r)
                    if b'"points_earned"' not in r.value:
                        continue  # welcome messages of new members
                    nid = json.loads(r.value)["notification_id"]
                    if (found := self.awaiting_sms.pop(nid, None)) is not None:
                        self.record_sms(now - found[0], found[1])
                    else:
                        self.early_sms[nid] = now
            if len(self.early_sms) > EARLY_SMS_MAX:  # a redelivered SMS is never matched
                old = time.time() - DRAIN_S
                self.early_sms = {k: t for k, t in self.early_sms.items() if t > old}

    def record_sms(self, took: float, m: int) -> None:
        self.notified += 1
        self.minutes[m].sms.append(took)
        self.all_sms.append(took)


def infra_pss() -> dict[str, int]:
    """Proportional set size of Postgres (all its processes) and of the broker, which run as
    this script's descendants."""
    total = {"postgres": 0, "broker": 0}
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            if (part := "postgres" if "postgres" in cmd else "broker" if "tansu" in cmd
                    else None):
                total[part] += proc.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def p50_p99(values: array) -> str:
    if not values:
        return "-"
    ms = sorted(values)
    p50, p99 = ms[len(ms) // 2] * 1000, ms[min(len(ms) - 1, int(len(ms) * 0.99))] * 1000
    return f"{p50:,.0f}/{p99:,.0f}"


def header(names: list[str]) -> str:
    return (f"{'min':>3} {'offered/s':>9} {'credited/s':>10} {'credit p50/p99':>14} "
            f"{'SMS p50/p99':>13}  " + " ".join(f"{n[:8]:>8}" for n in names)
            + f" {'pg+broker':>9} {'bench':>6}   (latency ms; memory MiB)")


def line(m: int, minute: Minute, names: list[str], pending: int) -> str:
    late = f"  {pending:,} not yet matched" if pending else ""
    return (f"{m + 1:>3} {minute.sent / MINUTE_S:>9,.0f} {minute.credited_in / MINUTE_S:>10,.0f} "
            f"{p50_p99(minute.credit):>14} {p50_p99(minute.sms):>13}  "
            + " ".join(f"{minute.rss[n] / MiB:>8,.0f}" for n in names)
            + f" {sum(minute.infra_pss.values()) / MiB:>9,.0f} {minute.own_rss / MiB:>6,.0f}"
            + "   cpu% " + " ".join(f"{part} {pct:.0f}" for part, pct in minute.cpu.items())
            + late)


async def soak(bootstrap: str, pids: dict[str, int], rate: float, minutes: int,
               members: int, tick_s: float) -> None:
    run = uuid.uuid4().hex[:8]
    phones = [f"+3706{i:07d}" for i in range(members)]
    state = Soak(minutes)
    names = list(pids)
    me = psutil.Process()
    ledger = await tail(bootstrap, topics.LEDGER, CREATETIME_READ_WAIT_MS)
    sms = await tail(bootstrap, topics.NOTIFICATIONS_SMS, CREATETIME_READ_WAIT_MS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    readers = [asyncio.create_task(state.read_ledger(ledger)),
               asyncio.create_task(state.read_sms(sms))]
    n = int(rate * MINUTE_S * minutes)
    printed = 0  # minutes whose line is out

    def print_due(now: float, sampled: int) -> None:
        """The line of each sampled minute whose purchases all have their SMS, or whose
        stragglers had GRACE_S; then its latencies are dropped (the overall ones stay)."""
        nonlocal printed
        while printed < sampled:
            minute = state.minutes[printed]
            pending = minute.sent - len(minute.sms)
            if pending and now < state.started + (printed + 1) * MINUTE_S + GRACE_S:
                return
            print(line(printed, minute, names, pending), flush=True)
            minute.credit, minute.sms = array("d"), array("d")
            printed += 1

    print(f"soak: {rate:,.0f} purchases/s for {minutes} min over {members:,} members "
          f"(phones reused round-robin), {n:,} purchases, sent every {tick_s * 1000:g} ms",
          flush=True)
    print(header(names), flush=True)
    with RssWatch(pids) as rss:
        used = cpu_seconds(me)
        state.started = time.time()
        i = sampled = 0
        while printed < minutes:
            due = min(n, int((time.time() - state.started) * rate) + 1)
            while i < due:
                e = purchase(run, i, phones[i % members])
                # Timed from when the purchase was due, not sent: a coarser tick holds it
                # back up to a tick, and that wait counts.
                due_at = state.started + i / rate
                m = state.minute_of(due_at)
                state.awaiting_credit[e["order_id"]] = (due_at, m)
                state.minutes[m].sent += 1
                await producer.send(topics.PURCHASES, json.dumps(e).encode(),
                                    key=e["order_id"].encode())
                i += 1
            state.sent = i
            now = time.time()
            if sampled < minutes and now >= state.started + (sampled + 1) * MINUTE_S:
                minute = state.minutes[sampled]
                minute.rss = {name: rss.procs[name].memory_info().rss for name in names}
                minute.infra_pss = infra_pss()
                minute.own_rss = me.memory_info().rss
                # Which part's cost grows over the minutes (CPU time, not wall time).
                was, used = used, cpu_seconds(me)
                minute.cpu = {part: 100 * (used[part] - was.get(part, 0.0)) / MINUTE_S
                              for part in used}
                sampled += 1
            print_due(now, sampled)
            await asyncio.sleep(tick_s)
        deadline = time.time() + DRAIN_S
        while (state.awaiting_credit or state.awaiting_sms) and time.time() < deadline:
            await asyncio.sleep(0.2)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for consumer in (ledger, sms):
        await consumer.stop()
    await producer.stop()

    first, last = state.minutes[0], state.minutes[-1]
    print(f"\nRSS, minute 1 -> minute {minutes} (growth), peak:")
    for name in names:
        grew = (last.rss[name] - first.rss[name]) / MiB
        print(f"  {name:<18} {first.rss[name] / MiB:>6,.0f} -> {last.rss[name] / MiB:>6,.0f} MiB "
              f"({grew:+,.1f} MiB), peak {rss.peak[name] / MiB:,.0f} MiB")
    for part in first.infra_pss:
        was, now = first.infra_pss[part] / MiB, last.infra_pss[part] / MiB
        print(f"  {part + ' (PSS)':<18} {was:>6,.0f} -> {now:>6,.0f} MiB ({now - was:+,.1f} MiB)")
    print(f"\nall {state.sent:,} purchases, offered at {rate:,.0f}/s:")
    print(f"  publish -> points.credited: {percentiles(state.all_credit)}")
    print(f"  publish -> SMS:             {percentiles(state.all_sms)}")
    lost = state.sent - state.credited
    missing = state.credited - state.notified
    print(f"  credited {state.credited:,} of {state.sent:,}: {lost:,} lost; "
          f"SMS for {state.notified:,}: {missing:,} credited without an SMS"
          + (" (should be 0 and 0)" if lost or missing else " (none lost)"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--tick-ms", type=float, default=10,
                        help="send what is due every this many ms (one produce per tick)")
    args = parser.parse_args()
    async with own_running_platform(*SERVICES) as (bootstrap, platform):
        print(f"started a platform for the soak: {', '.join(SERVICES)}; Postgres fsync on")
        pids = {name: platform.services[name].proc.pid for name in SERVICES}
        await soak(bootstrap, pids, args.rate, args.minutes, args.members, args.tick_ms / 1000)


if __name__ == "__main__":
    asyncio.run(main())
