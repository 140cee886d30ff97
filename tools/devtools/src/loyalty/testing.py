"""pytest plugin: real infrastructure for integration and end-to-end tests, and small helpers.

Session fixtures give the integration and end-to-end tests real infrastructure, chosen by
`LOYALTY_TEST_INFRA`:
- `embedded` (the default): embedded PostgreSQL and the Tansu broker, started once (each of them
  only where `LOYALTY_PG_DSN` / `LOYALTY_KAFKA_BOOTSTRAP` does not point elsewhere);
- `external`: the servers at `LOYALTY_PG_DSN` and `LOYALTY_KAFKA_BOOTSTRAP` (both required);
- `testcontainers`: the `apache/kafka` (KRaft) and `postgres` images in Docker. Without a Docker
  engine every integration and e2e test is skipped, with the reason in the summary.
In the last two modes the addresses are exported as `LOYALTY_PG_DSN` / `LOYALTY_KAFKA_BOOTSTRAP`
before the first such test, so tests that start a platform of their own use them too. No mocks:
tests that need a broker or a database talk to real servers. `platform` runs the services as
separate processes, with the demo programs applied, exactly as `loyalty up` does.
"""

from __future__ import annotations

import asyncio
import json
import os
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

from loyalty import containers, db, kafka, topics
from loyalty.cli import DEMO_PROGRAMS, publish_programs, wait_programs_applied
from loyalty.contracts import MemberEvent
from loyalty.infra import Infrastructure, start_infrastructure
from loyalty.platform import Platform
from loyalty.programs import load_programs_file
from loyalty.settings import kafka_client_kwargs

CONSUME_TIMEOUT_S = 30.0
INFRA_ENV = "LOYALTY_TEST_INFRA"
INFRA_MODES = ("embedded", "external", "testcontainers")
ADDRESS_ENV = ("LOYALTY_PG_DSN", "LOYALTY_KAFKA_BOOTSTRAP")
REAL_INFRA_MARKERS = ("integration", "e2e")
# Why testcontainers cannot run (None: they can, or another mode), asked once per run.
_DOCKER_UNAVAILABLE = pytest.StashKey[str | None]()


def infra_mode() -> str:
    """The test infrastructure `LOYALTY_TEST_INFRA` asks for (a typo is a usage error)."""
    mode = os.environ.get(INFRA_ENV, "").strip().lower() or "embedded"
    if mode not in INFRA_MODES:
        raise pytest.UsageError(f"{INFRA_ENV}={mode!r}: choose one of {', '.join(INFRA_MODES)}")
    return mode


def needs_real_infra(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) for m in REAL_INFRA_MARKERS)


def pytest_configure(config: pytest.Config) -> None:
    mode = infra_mode()
    # Asked once per run: in testcontainers mode a missing engine skips the real-infra tests.
    config.stash[_DOCKER_UNAVAILABLE] = (
        containers.docker_unavailable_reason() if mode == "testcontainers" else None)


def pytest_report_header(config: pytest.Config) -> str:
    reason = config.stash.get(_DOCKER_UNAVAILABLE, None)
    return f"loyalty test infrastructure: {infra_mode()}" + (f" ({reason})" if reason else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if reason := config.stash.get(_DOCKER_UNAVAILABLE, None):
        skip = pytest.mark.skip(reason=f"{INFRA_ENV}=testcontainers: {reason}")
        for item in items:
            if needs_real_infra(item):
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if reason := config.stash.get(_DOCKER_UNAVAILABLE, None):
        skipped = len(terminalreporter.stats.get("skipped", []))
        terminalreporter.write_line(
            f"{INFRA_ENV}=testcontainers: {skipped} integration/e2e test(s) skipped, "
            f"not run on Kafka and PostgreSQL: {reason}", yellow=True)


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="loyalty-test-") as tmp:
        yield Path(tmp)


def _start_test_infrastructure(mode: str, data_dir: Path) -> Infrastructure:
    if mode == "external":
        if missing := [name for name in ADDRESS_ENV if not os.environ.get(name)]:
            pytest.fail(f"{INFRA_ENV}=external needs {' and '.join(missing)}", pytrace=False)
        return start_infrastructure(data_dir)  # both given: starts nothing
    if mode == "testcontainers":
        if reason := containers.docker_unavailable_reason():
            pytest.skip(f"{INFRA_ENV}=testcontainers: {reason}")
        return containers.start_container_infrastructure()
    return start_infrastructure(data_dir, fsync=False)


@pytest.fixture(scope="session")
def infra(data_dir: Path) -> Iterator[Infrastructure]:
    mode = infra_mode()
    started = _start_test_infrastructure(mode, data_dir)
    exported = {name: os.environ.get(name) for name in ADDRESS_ENV}
    try:
        if mode == "testcontainers":
            # Tests that start a platform of their own (start_infrastructure) use these too.
            os.environ.update(LOYALTY_PG_DSN=started.pg_dsn,
                              LOYALTY_KAFKA_BOOTSTRAP=started.kafka_bootstrap)
        asyncio.run(kafka.ensure_topics(started.kafka_bootstrap))
        yield started
    finally:
        for name, value in exported.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        started.stop()


@pytest.fixture(autouse=True)
def _real_infra_first(request: pytest.FixtureRequest) -> None:
    """In the testcontainers mode, the containers run before any integration or e2e test,
    including those that never ask for `infra` but start a platform of their own."""
    if infra_mode() == "testcontainers" and needs_real_infra(request.node):
        request.getfixturevalue("infra")


@pytest.fixture(scope="session")
def api_token() -> str:
    return secrets.token_urlsafe(12)


@asynccontextmanager
async def running_platform(admin_dsn: str, bootstrap: str, api_token: str,
                           data_dir: Path) -> AsyncIterator[Platform]:
    """The four services as separate processes on free ports, on the given database and
    broker, with the demo programs applied (as `loyalty up` runs them); stopped on exit."""
    running = Platform(admin_dsn, bootstrap, api_token, data_dir, fixed_ports=False)
    await running.prepare()
    running.start()
    try:
        await running.wait_ready()
        programs = load_programs_file(DEMO_PROGRAMS)
        await publish_programs(bootstrap, programs)
        await wait_programs_applied(running.services["earn"].url, api_token, programs)
        yield running
    finally:
        running.stop()


@pytest_asyncio.fixture(scope="session")
async def platform(infra: Infrastructure, data_dir: Path,
                   api_token: str) -> AsyncIterator[Platform]:
    """The session's platform: see `running_platform`."""
    async with running_platform(infra.pg_dsn, infra.kafka_bootstrap, api_token,
                                data_dir / "platform") as running:
        yield running


async def contract_purchase_becomes_sms(platform: Platform, api_token: str) -> dict[str, Any]:
    """CONTRACT.md's example purchase (12.40 EUR, beverages x2: 124 points outside
    campaigns) by a new phone: its `points_earned` SMS arrives and the balance reads 124.
    Returns the SMS."""
    client = Kafka(platform.bootstrap)
    await client.producer.start()
    try:
        phone = unique_phone()
        purchase = purchase_event({"phone": phone}, "12.40")
        await client.publish(topics.PURCHASES, purchase, key=purchase["order_id"])
        [sms] = await client.wait_for(topics.NOTIFICATIONS_SMS,
                                      lambda r: json.loads(r.value)["to"] == phone)
    finally:
        await client.producer.stop()
    ledger = Api(platform.services["ledger"].url, api_token)
    body = await ledger.wait_until(f"/v1/programs/coffee-club/members/phone:{phone}",
                                   lambda b: b["balance"] == 124)
    assert body["balance"] == 124
    return json.loads(sms.value)


def topic_record(topic: str, payload: dict[str, Any], offset: int, key: str = "k"
                 ) -> ConsumerRecord:
    """A JSON message as a service's consumer receives it from `topic` (for tests that feed
    `BatchConsumer` directly)."""
    raw = json.dumps(payload).encode()
    return ConsumerRecord(topic, 0, offset, 0, 0, key.encode(), raw, None, 0, len(raw), ())


def command_record(payload: dict[str, Any], offset: int) -> ConsumerRecord:
    """A ledger command as the ledger's consumer receives it: keyed by member."""
    return topic_record(topics.LEDGER_COMMANDS, payload, offset, payload["member_id"])


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def unique_phone() -> str:
    """A phone no other call gives, in practice: ten uniform digits (E.164 allows 14 after
    +3706's four). Seven digits cut from a uuid's decimal form began with 1, 2 or 3 nearly
    always: two of a test's 500 phones collided in about one run in thirty, and the test that
    expects one member per phone failed."""
    return f"+3706{secrets.randbelow(10**10):010d}"


class Kafka:
    """A producer and on-demand consumers against the real broker, for tests."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                         enable_idempotence=False, linger_ms=5,
                                         **kafka_client_kwargs())

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
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    **kafka_client_kwargs())
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
                                    enable_auto_commit=False, **kafka_client_kwargs())
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
async def scratch_database(admin_dsn: str, prefix: str) -> AsyncIterator[str]:
    """A new, empty database on the server of `admin_dsn`, dropped on exit; yields its admin
    DSN (the same user and parameters)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(admin_dsn)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def scratch_service_db(admin_dsn: str, service: str, migrations_dir: Path
                             ) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A new database holding one service's schema, migrated as the service migrates it;
    dropped on exit. Yields the new database's admin DSN and a pool as the service's role."""
    async with scratch_database(admin_dsn, f"scratch_{service}") as scratch_admin:
        pool = await db.create_pool(await db.provision_service(scratch_admin, service),
                                    schema=service)
        try:
            await db.apply_migrations(pool, service, migrations_dir)
            yield scratch_admin, pool
        finally:
            await pool.close()


OUTSIDE_CAMPAIGNS = "2026-10-20T10:15:00+03:00"  # before the demo's double-weekend campaign


def member_event(i: int, member_id: str = "m-1", program_id: str = "p",
                 locale: str | None = None, channel: str | None = None, *,
                 type_: str = "member.enrolled", **identifiers: str) -> MemberEvent:
    """A `loyalty.members.v1` event, the `i`-th of a test (its id `e-i`)."""
    return MemberEvent.model_validate({
        "event_id": f"e-{i}", "type": type_, "occurred_at": "2026-01-01T00:00:00Z",
        "program_id": program_id, "member_id": member_id, "identifiers": identifiers,
        "locale": locale, "channel": channel})


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
