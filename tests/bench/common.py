"""What the benchmark scripts share: a platform of their own, and a reader at a topic's end."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer

from loyalty.cli import DEMO_PROGRAMS, publish_programs, wait_programs_applied
from loyalty.infra import start_infrastructure
from loyalty.platform import Platform
from loyalty.programs import load_programs_file


@asynccontextmanager
async def own_platform(*services: str) -> AsyncIterator[str]:
    """Embedded Postgres and Tansu (or LOYALTY_* servers), `services` as processes, the demo
    programs applied when earn runs; yields the broker address."""
    async with own_running_platform(*services) as (bootstrap, _):
        yield bootstrap


@asynccontextmanager
async def own_running_platform(*services: str) -> AsyncIterator[tuple[str, Platform]]:
    """`own_platform`, yielding the running `Platform` too (its services' URLs and token)."""
    # A SIGTERM (`kill`, a timeout) cancels the run like Ctrl-C, so the `finally` below still
    # stops the platform and removes its folder (hundreds of MiB a run).
    run = asyncio.current_task()
    assert run is not None
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, run.cancel)
    tmp = Path(tempfile.mkdtemp(prefix="loyalty-bench-"))
    infra = start_infrastructure(tmp)
    platform = Platform(infra.pg_dsn, infra.kafka_bootstrap, secrets.token_urlsafe(8), tmp,
                        fixed_ports=False)
    try:
        await platform.prepare()
        platform.start(*services)
        await platform.wait_ready(*services)
        if "earn" in services:
            programs = load_programs_file(DEMO_PROGRAMS)
            await publish_programs(infra.kafka_bootstrap, programs)
            await wait_programs_applied(platform.services["earn"].url, platform.api_token,
                                        programs)
        yield infra.kafka_bootstrap, platform
    finally:
        platform.stop()
        infra.stop()
        # Its Postgres data and logs: hundreds of MiB a run, of no use once it has stopped.
        shutil.rmtree(tmp, ignore_errors=True)


async def add_processes(platform: Platform, counts: list[tuple[str, int]]) -> None:
    """Run each named service as that many processes in all (one group, the partitions
    shared among them), and wait until every added one holds partitions."""
    extra = [platform.add_replica(name) for name, n in counts for _ in range(n - 1)]
    if extra:
        platform.start(*extra)
        await platform.wait_ready(*extra)


# How long a reader that times results by `emitted_at` waits in each poll: polling every
# 10 ms instead cost the shared broker 6% of a core per reader and the reading script as much
# again, on the same two cores as what it measures.
CREATETIME_READ_WAIT_MS = 500


async def tail(bootstrap: str, topic: str, wait_ms: int = 10) -> AIOKafkaConsumer:
    """A reader positioned at the end of `topic`: it sees only what comes next.

    A reader that times what it sees by when it sees it polls every 10 ms (measure the
    platform, not this reader); one that reads `emitted_at` can wait longer: its polls then
    cost the shared broker and these two cores nothing worth counting."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest",
                                enable_auto_commit=False, fetch_max_wait_ms=wait_ms)
    await consumer.start()
    await consumer.seek_to_end()
    for tp in consumer.assignment():
        await consumer.position(tp)
    return consumer


def emitted_at(record: Any) -> float:
    """When the platform produced `record` (its Kafka CreateTime: the moment the outbox relay
    handed it to its producer), in seconds since the epoch, as `time.time()` counts: a
    measure of the platform that does not depend on how often the reader polls."""
    return record.timestamp / 1000


def reference_loop_ms() -> float:
    """How fast this machine is right now: a fixed pure-Python loop, best of 5, in ms.

    Shared machines vary: the same commit ran twice as slow on one day as on another. Figures
    are comparable between runs whose reference times are alike; the scripts print it."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        sum(i * i for i in range(1_000_000))
        best = min(best, time.perf_counter() - started)
    return best * 1000


def cpu_seconds(root: psutil.Process) -> dict[str, float]:
    """CPU time (user + system) used so far by each part of the platform under `root`:
    the services, Postgres (all its processes) and the broker. Unlike wall time it hardly
    depends on what else the machine runs, so CPU per purchase is the figure to compare."""
    used: dict[str, float] = {}
    for proc in root.children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        name = next((s for s in ("earn", "ledger", "expiry", "rewards") if f"-m {s}" in cmd),
                    "postgres" if "postgres" in cmd else "broker" if "tansu" in cmd else None)
        if name:
            used[name] = used.get(name, 0.0) + times.user + times.system
    return used
