"""pytest plugin: real infrastructure for integration and end-to-end tests, and small helpers.

Session fixtures start embedded PostgreSQL and the Tansu broker once (or use
`LOYALTY_PG_DSN` / `LOYALTY_KAFKA_BOOTSTRAP` when set). No mocks of either: tests that need
them talk to the real servers. `platform` runs earn and ledger as separate processes, with the
demo programs applied, exactly as `loyalty up` does.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition

from loyalty import db, kafka
from loyalty.cli import DEMO_PROGRAMS, publish_programs, wait_programs_applied
from loyalty.infra import Infrastructure, start_infrastructure
from loyalty.platform import Platform
from loyalty.programs import load_programs_file

CONSUME_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="loyalty-test-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def infra(data_dir: Path) -> Iterator[Infrastructure]:
    started = start_infrastructure(data_dir, fsync=False)
    try:
        asyncio.run(kafka.ensure_topics(started.kafka_bootstrap))
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def api_token() -> str:
    return secrets.token_urlsafe(12)


@pytest_asyncio.fixture(scope="session")
async def platform(infra: Infrastructure, data_dir: Path,
                   api_token: str) -> AsyncIterator[Platform]:
    """earn and ledger as separate processes on free ports, demo programs applied."""
    running = Platform(infra.pg_dsn, infra.kafka_bootstrap, api_token, data_dir / "platform",
                       fixed_ports=False)
    await running.prepare()
    running.start()
    try:
        await running.wait_ready()
        programs = load_programs_file(DEMO_PROGRAMS)
        await publish_programs(infra.kafka_bootstrap, programs)
        await wait_programs_applied(running.services["earn"].url, api_token, programs)
        yield running
    finally:
        running.stop()


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def unique_phone() -> str:
    return "+3706" + str(uuid.uuid4().int)[:7]


class Kafka:
    """A producer and on-demand consumers against the real broker, for tests."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                         enable_idempotence=False, linger_ms=5)

    async def publish(self, topic: str, value: dict[str, Any] | bytes, key: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        await self.producer.send_and_wait(
            topic, raw, key=key.encode() if key else None,
            headers=[(k, v.encode()) for k, v in (headers or {}).items()])

    async def publish_many(self, topic: str, items: list[tuple[str | None, dict[str, Any]]]
                           ) -> None:
        futures = [await self.producer.send(topic, json.dumps(v).encode(),
                                            key=k.encode() if k else None) for k, v in items]
        await asyncio.gather(*futures)

    async def wait_for(self, topic: str, match: Callable[[ConsumerRecord], bool], *,
                       count: int = 1, timeout_s: float = CONSUME_TIMEOUT_S
                       ) -> list[ConsumerRecord]:
        """Read `topic` from the beginning until `count` records match (or fail on timeout)."""
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        found: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(found) < count:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{len(found)} of {count} matching records on {topic} in {timeout_s}s")
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    found.extend(r for r in records if match(r))
        finally:
            await consumer.stop()
        return found


    async def read_all(self, topic: str) -> list[ConsumerRecord]:
        """Every record now in `topic`, all partitions, up to their current end."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()  # fetches the cluster's metadata
            partitions = [TopicPartition(topic, p)
                          for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found: list[ConsumerRecord] = []
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found.extend(records)
            return found
        finally:
            await consumer.stop()


@pytest_asyncio.fixture(scope="session")
async def kafka_client(infra: Infrastructure) -> AsyncIterator[Kafka]:
    client = Kafka(infra.kafka_bootstrap)
    await client.producer.start()
    yield client
    await client.producer.stop()


class Api:
    """HTTP client for a service, with the bearer token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token

    async def get(self, path: str, *, token: str | None = "default",
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        async with aiohttp.ClientSession() as http, \
                http.get(self.base_url + path, headers=hdrs) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except json.JSONDecodeError:
                return resp.status, text

    async def wait_until(self, path: str, ok: Callable[[Any], bool],
                         timeout_s: float = CONSUME_TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                status, body = await self.get(path)
            except aiohttp.ClientConnectionError as exc:  # the service is (re)starting
                last = exc
            else:
                last = (status, body)
                if status == 200 and ok(body):
                    return body
            await asyncio.sleep(0.05)
        raise AssertionError(f"GET {path}: condition not met in {timeout_s}s; last {last}")


@asynccontextmanager
async def scratch_service_db(admin_dsn: str, service: str, migrations_dir: Path
                             ) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A new database holding one service's schema, migrated as the service migrates it;
    dropped on exit. Yields the new database's admin DSN and a pool as the service's role."""
    name = f"scratch_{service}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(admin_dsn)
    scratch_admin = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    pool = await db.create_pool(await db.provision_service(scratch_admin, service),
                                schema=service)
    try:
        await db.apply_migrations(pool, service, migrations_dir)
        yield scratch_admin, pool
    finally:
        await pool.close()
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()


OUTSIDE_CAMPAIGNS = "2026-10-20T10:15:00+03:00"  # before the demo's double-weekend campaign


def purchase_event(customer: dict[str, str], total: str, *, program_id: str = "coffee-club",
                   kind: str = "completed", channel: str = "pos",
                   occurred_at: str = OUTSIDE_CAMPAIGNS, order_id: str | None = None,
                   event_id: str | None = None, category: str = "bakery") -> dict[str, Any]:
    """CONTRACT.md's purchase (or return) with fresh ids: one line of `total` in `category`
    (bakery has no multiplier in the demo programs: 10 points per EUR, floor)."""
    return {
        "event_id": event_id or unique("pos"), "type": f"purchase.{kind}",
        "occurred_at": occurred_at, "program_id": program_id,
        "order_id": order_id or unique("A"), "channel": channel, "store_id": "vilnius-01",
        "customer": customer, "currency": "EUR", "total": total,
        "items": [{"sku": "CROISSANT", "category": category, "quantity": 1,
                   "unit_price": total}],
        "locale": "lt",
    }
