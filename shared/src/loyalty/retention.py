"""How long a service keeps what it needs only for a while: the ids in its inbox.

An inbox row exists so that a redelivered record has no second effect. A redelivery comes from
the topic (a consumer that re-reads after a crash or a rebalance, which Kafka's retention
bounds) or from a producer that sends the same event again (a till replaying its own backlog).
By default the ids are kept forever (CONTRACT.md: an id seen before has no further effect,
ever), and an inbox grows by a row per consumed record. With `LOYALTY_INBOX_RETENTION_DAYS`
set, longer than both kinds of redelivery, older rows are deleted. Should a record come
back even later, it still cannot move points twice: the ledger keeps the id of every command
that moved or held points as a key (`movements`, `lots`, `holds`) and refuses it again, and
earn refuses an order it has recorded (`duplicate_order`); such a record is dead-lettered (a
visible effect, which is why the window is the operator's choice), not applied
(`test_ledger_late_redelivery.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg
import structlog

from loyalty import metrics
from loyalty.clock import Clock

log = structlog.get_logger(__name__)

INBOX_PRUNE_INTERVAL_S = 60.0
# Rows deleted per transaction: short locks and a bounded WAL burst per commit; a round goes
# on chunk after chunk until nothing older than the window is left.
INBOX_PRUNE_CHUNK_ROWS = 10_000


async def prune_inbox(pool: asyncpg.Pool, received_before: datetime, *,
                      chunk_rows: int = INBOX_PRUNE_CHUNK_ROWS) -> int:
    """Delete the inbox rows received before `received_before`, oldest first, a chunk per
    transaction; returns how many went."""
    pruned = 0
    while True:
        status = await pool.execute(
            "DELETE FROM inbox WHERE ctid = ANY(ARRAY("
            " SELECT ctid FROM inbox WHERE received_at < $1 ORDER BY received_at LIMIT $2"
            " FOR UPDATE SKIP LOCKED))",  # a replica pruning too takes other rows
            received_before, chunk_rows)
        deleted = int(status.split()[-1])
        pruned += deleted
        if deleted < chunk_rows:
            return pruned
        await asyncio.sleep(0)  # let the consumers' work in between


def inbox_pruner(service: str, pool: asyncpg.Pool, clock: Clock,
                 retention_days: int) -> Callable[[], Awaitable[None]]:
    """The periodic job for `loyalty.periodic.every`: prune what the window let go."""
    window = timedelta(days=retention_days)

    async def prune() -> None:
        pruned = await prune_inbox(pool, clock.now() - window)
        if pruned:
            metrics.INBOX_PRUNED.labels(service).inc(pruned)
            log.info("inbox.pruned", rows=pruned, retention_days=retention_days)

    return prune
