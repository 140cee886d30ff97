"""reward-fulfilment's background jobs: delivering codes, and the saga's timeouts.

Delivery: orders whose points are captured wait in `delivering`. The job takes a batch
(`FOR UPDATE SKIP LOCKED`, so replicas share the work and never send one order twice at
once), decrypts the codes in memory, publishes each `reward_fulfilled` message straight to the
sender topic (acks=all), and only then commits `fulfilled` (with its status event through the
outbox). The clear code is therefore never written to the database, not even to the outbox.
A crash between the publish and the commit sends the message again with the same
`notification_id` (at least once, de-duplicable by the sender), never a different code.
It wakes on `NOTIFY rewards_delivery` (sent by the transaction that captured, so on commit)
and polls every DELIVERY_POLL_INTERVAL_S in case a notification was missed.

Timeouts: every SWEEP_INTERVAL_S, orders whose waiting step passed its deadline either give up
on an unknown member (`rejected`) or resend the step's ledger command (the same command: a
no-op at the ledger if it had applied).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

from loyalty import metrics, topics
from loyalty.messaging import Outbox, to_json_bytes
from loyalty.notifications import build_notification
from loyalty.periodic import every
from loyalty.programs import ProgramDefinition
from loyalty.service import Runtime
from rewards import handlers
from rewards.adapters.postgres import RewardsRepository
from rewards.adapters.vault import CodeVault, VaultError

log = structlog.get_logger(__name__)

DELIVERY_POLL_INTERVAL_S = 0.5
DELIVERY_BACKOFF_MAX_S = 5.0
SWEEP_INTERVAL_S = 1.0
OPEN_ORDERS_INTERVAL_S = 10.0
SWEEP_ORDERS_MAX = 200


class Undeliverable(Exception):
    """An order whose codes cannot be sent (no address, codes missing): an operator's case."""


class Delivery:
    def __init__(self, runtime: Runtime, deps: handlers.Deps, vault: CodeVault,
                 batch_size_max: int) -> None:
        self.runtime = runtime
        self.deps = deps
        self.vault = vault
        self.batch_size_max = batch_size_max
        self.wakeup = asyncio.Event()

    async def run(self) -> None:
        """Serve until cancelled; a failure to even start (broker down) is retried."""
        while True:
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery.restart", retry_in_s=DELIVERY_BACKOFF_MAX_S)
                await asyncio.sleep(DELIVERY_BACKOFF_MAX_S)

    async def _serve(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.runtime.settings.kafka_bootstrap, acks="all",
            enable_idempotence=False, linger_ms=1,
            client_id=f"loyalty-{self.runtime.name}-delivery")
        listener: asyncpg.Connection | None = None
        backoff = 0.05
        try:
            await producer.start()
            while True:
                listener = await self._listen(listener)
                self.wakeup.clear()
                try:
                    delivered = await self.deliver_once(producer)
                    backoff = 0.05
                except asyncio.CancelledError:
                    raise
                except Exception:
                    metrics.count(handlers.SERVICE, "delivery_failed")
                    log.exception("delivery.failed", retry_in_s=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, DELIVERY_BACKOFF_MAX_S)
                    continue
                if delivered:
                    self.runtime.relay.notify()
                if delivered < self.batch_size_max:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wakeup.wait(), DELIVERY_POLL_INTERVAL_S)
        finally:
            await producer.stop()
            if listener is not None and not listener.is_closed():
                await listener.close()

    async def _listen(self, listener: asyncpg.Connection | None) -> asyncpg.Connection | None:
        if listener is not None and not listener.is_closed():
            return listener
        try:
            conn = await asyncpg.connect(self.runtime.settings.pg_dsn)  # type: ignore[attr-defined]
            await conn.add_listener(handlers.DELIVERY_CHANNEL, lambda *_: self.wakeup.set())
            return conn
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("delivery.listen_failed", error=str(exc))  # polling still works
            return None

    async def deliver_once(self, producer: AIOKafkaProducer) -> int:
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            repo = RewardsRepository(conn)
            rows = await repo.due_deliveries(self.batch_size_max)
            if not rows:
                return 0
            outbox = Outbox()
            messages: list[tuple[str, str, dict]] = []
            programs: dict[str, ProgramDefinition | None] = {
                p: await repo.program(p) for p in {row.program_id for row in rows}}
            members = await repo.members({(r.program_id, r.member_id or "") for r in rows})
            codes_of = await repo.codes_of_orders([row.order_id for row in rows])
            done: list[str] = []
            stuck: list[str] = []
            for row in rows:
                program = programs[row.program_id]
                member = members.get((row.program_id, row.member_id or ""))
                route = handlers.route_of(row, member)
                codes = codes_of[row.order_id]
                try:
                    if program is None or route is None or len(codes) != row.quantity:
                        raise Undeliverable(f"codes {len(codes)} of {row.quantity}, "
                                            f"reachable {route is not None}")
                    clear = [(unit, self.vault.decrypt(token)) for unit, token in codes]
                except (Undeliverable, VaultError) as exc:
                    # One order we cannot deliver must not hold up the others: it waits at
                    # the back of the queue (and on the error metric) for an operator.
                    metrics.count(handlers.SERVICE, "delivery_impossible")
                    log.error("delivery.impossible", order_id=row.order_id, error=str(exc))
                    stuck.append(row.order_id)
                    continue
                channel, to = route
                topic = (topics.NOTIFICATIONS_SMS if channel == "sms"
                         else topics.NOTIFICATIONS_EMAIL)
                now = self.deps.clock.now()
                for unit, code in clear:
                    messages.append((topic, row.member_id or "", build_notification(
                        template="reward_fulfilled",
                        locale=row.locale or program.default_locale, channel=channel,
                        to=to, program_id=row.program_id, member_id=row.member_id or "",
                        params={"program_name": program.name, "reward_name": row.reward_name,
                                "code": code},
                        fact_id=f"order:{row.order_id}:unit:{unit}", occurred_at=now)))
                clear.clear()
                await handlers.delivered(repo, self.deps, row, outbox)
                done.append(row.order_id)
            await repo.mark_delivered(done)
            if stuck:
                await conn.execute("UPDATE orders SET updated_at = $2"
                                   " WHERE order_id = ANY($1::text[])",
                                   stuck, self.deps.clock.now())
            futures = [await producer.send(topic, to_json_bytes(message), key=key.encode())
                       for topic, key, message in messages]
            sent_topics = [topic for topic, _, _ in messages]
            messages.clear()
            await asyncio.gather(*futures)
            for topic in sent_topics:
                metrics.MESSAGES_PRODUCED.labels(self.runtime.name, topic).inc()
            await outbox.flush(conn)
        return len(done)


def sweeper(runtime: Runtime, deps: handlers.Deps) -> Callable[[], Awaitable[None]]:
    async def sweep() -> None:
        async with runtime.pool.acquire() as conn, conn.transaction():
            repo = RewardsRepository(conn)
            outbox = Outbox()
            rows = await repo.timed_out(deps.clock.now(), SWEEP_ORDERS_MAX)
            for row in rows:
                await handlers.time_out(repo, deps, row, outbox)
            await outbox.flush(conn)
        if rows:
            runtime.relay.notify()

    return lambda: every(SWEEP_INTERVAL_S, sweep, "rewards_timeouts")


def open_orders_gauge(runtime: Runtime) -> Callable[[], Awaitable[None]]:
    """`loyalty_reward_orders_open` by age: orders stuck in a non-final state show here."""

    async def sample() -> None:
        row = await runtime.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE requested_at > now() - interval '1 minute') AS fresh,"
            " count(*) FILTER (WHERE requested_at <= now() - interval '1 minute'"
            "  AND requested_at > now() - interval '15 minutes') AS slow,"
            " count(*) FILTER (WHERE requested_at <= now() - interval '15 minutes') AS stuck"
            " FROM orders WHERE status IN ('requested', 'points_reserved')")
        for age, key in (("under_1m", "fresh"), ("1m_to_15m", "slow"), ("over_15m", "stuck")):
            metrics.ORDERS_OPEN.labels(runtime.name, age).set(row[key])

    return lambda: every(OPEN_ORDERS_INTERVAL_S, sample, "rewards_open_orders")
