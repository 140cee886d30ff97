"""Bootstrap and lifecycle shared by every service process.

`run_service(spec)` builds the pool (after migrations), the faststream broker with the
service's subscribers, the outbox relay and the HTTP server; on SIGTERM/SIGINT it stops
consuming, drains the outbox, and closes everything in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import structlog
import uvloop
from aiohttp import web
from faststream.kafka import KafkaBroker

from loyalty import db, kafka, retention
from loyalty.clock import Clock, IdProvider, SystemClock, UuidIds
from loyalty.http import REQUEST_LINE_BYTES_MAX, make_app
from loyalty.logging import configure_logging
from loyalty.messaging import BatchConsumer, BatchHandler, Decoder, Handler, OutboxRelay
from loyalty.periodic import every
from loyalty.settings import ServiceSettings

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """What a service's wiring function gets: the built adapters, to register on."""

    name: str
    settings: ServiceSettings
    pool: asyncpg.Pool
    broker: KafkaBroker
    relay: OutboxRelay
    app: web.Application
    clock: Clock
    ids: IdProvider
    background: list[Callable[[], Any]] = field(default_factory=list)
    consumers: list[BatchConsumer[Any]] = field(default_factory=list)
    committers: list[kafka.OffsetCommitter] = field(default_factory=list)

    def consume(self, topic: str, decode: Decoder[Any], handle: Handler[Any] | None = None, *,
                handle_batch: BatchHandler[Any] | None = None, use_inbox: bool = True,
                relaxed: bool = False) -> BatchConsumer[Any]:
        """Subscribe `topic`; `relaxed` for a topic whose latency matters less or that is mostly
        idle: its idle polls come ten times less often (`kafka.RELAXED_WAIT_MS`)."""
        consumer = BatchConsumer(
            service=self.name, topic=topic, pool=self.pool, decode=decode, handle=handle,
            handle_batch=handle_batch, on_commit=self.relay.notify, use_inbox=use_inbox,
            retry_backoff_max_s=self.settings.retry_backoff_max_ms / 1000)
        self.consumers.append(consumer)
        self.committers.append(kafka.subscribe_batch(
            self.broker, consumer, group_id=f"loyalty-{self.name}.{topic}",
            batch_size_max=self.settings.batch_size_max,
            batch_timeout_ms=kafka.RELAXED_WAIT_MS if relaxed else self.settings.batch_timeout_ms,
            fetch_max_wait_ms=kafka.RELAXED_WAIT_MS if relaxed else kafka.FETCH_MAX_WAIT_MS))
        return consumer

    async def commit_offsets(self) -> None:
        """Commit every subscriber's applied offsets not committed yet."""
        await asyncio.gather(*(c.flush() for c in self.committers))


@dataclass
class ServiceSpec:
    name: str
    schema: str
    migrations_dir: Path
    settings: ServiceSettings
    http_port: int
    wire: Callable[[Runtime], None]
    clock: Clock = field(default_factory=SystemClock)
    ids: IdProvider = field(default_factory=UuidIds)


# The cyclic garbage collector's first generation runs every this many allocations (Python's
# default is 700): a batch of a few hundred records allocates tens of thousands of short-lived
# objects, nearly none in cycles, and each run walked them all.
GC_GENERATION0_THRESHOLD = 50_000


def main(build: Callable[[], ServiceSpec]) -> None:
    """`python -m <service>`: the service on uvloop (faster sockets and scheduling than
    asyncio's default loop, which the profile showed under load)."""
    spec = build()
    # What is alive after start-up (modules, the program definitions' classes, babel's data)
    # lives as long as the process: frozen, the collector no longer walks it.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GENERATION0_THRESHOLD, *gc.get_threshold()[1:])
    uvloop.run(run_service(spec))


async def run_service(spec: ServiceSpec, stop: asyncio.Event | None = None) -> None:
    settings = spec.settings
    configure_logging(spec.name, settings.log_level)
    if not settings.api_token:
        raise SystemExit("LOYALTY_API_TOKEN is not set")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    dsn = settings.pg_dsn  # type: ignore[attr-defined]
    pool = await db.create_pool(dsn, size_max=settings.pool_size_max, schema=spec.schema)
    await db.apply_migrations(pool, spec.schema, spec.migrations_dir)
    await kafka.ensure_topics(settings.kafka_bootstrap)

    broker = kafka.make_broker(settings.kafka_bootstrap, spec.name)
    relay = OutboxRelay(service=spec.name, pool=pool, bootstrap=settings.kafka_bootstrap,
                        batch_size_max=settings.outbox_batch_size_max,
                        poll_interval_s=settings.outbox_poll_interval_ms / 1000,
                        retry_backoff_max_s=settings.retry_backoff_max_ms / 1000)

    async def readiness() -> str | None:
        try:
            await pool.fetchval("SELECT 1")
        except Exception as exc:
            return f"database unreachable: {exc}"
        if not kafka.is_assigned(broker):
            return "consumers have not joined their groups yet"
        now = time.monotonic()
        stalled = [f"{c.topic} retrying for {now - c.stalled_since:.0f}s ({c.last_error})"
                   for c in runtime.consumers if c.stalled_since is not None]
        return "; ".join(stalled) or None

    app = make_app(settings.api_token, readiness)
    runtime = Runtime(spec.name, settings, pool, broker, relay, app, spec.clock, spec.ids)
    spec.wire(runtime)

    # HTTP first: a taken port fails the start at once, and /readyz says when consumers joined.
    runner = web.AppRunner(app, access_log=None, max_line_size=REQUEST_LINE_BYTES_MAX)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, spec.http_port)
    await site.start()
    await relay.start()
    await kafka.start_broker(broker)
    tasks = [asyncio.create_task(kafka.report_lag(broker, spec.name)),
             # A quiet subscriber's last batches get their offsets committed too.
             asyncio.create_task(every(kafka.COMMIT_INTERVAL_S, runtime.commit_offsets,
                                       "commit_offsets"))]
    if settings.inbox_retention_days:
        prune = retention.inbox_pruner(spec.name, pool, spec.clock, settings.inbox_retention_days)
        tasks.append(asyncio.create_task(
            every(retention.INBOX_PRUNE_INTERVAL_S, prune, "inbox_retention")))
    tasks += [asyncio.create_task(job()) for job in runtime.background]
    log.info("service.started", port=spec.http_port, schema=spec.schema)
    try:
        await stop.wait()
    finally:
        log.info("service.stopping")
        for consumer in runtime.consumers:
            consumer.stopping.set()  # a batch being retried gives up, uncommitted
        await runtime.commit_offsets()
        await broker.stop()  # stop consuming; in-flight batches finish and commit
        if not await relay.drain(settings.shutdown_drain_timeout_s):
            log.warning("service.outbox_not_drained", backlog=relay.backlog)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await relay.stop()
        await runner.cleanup()
        await pool.close()
        log.info("service.stopped")
