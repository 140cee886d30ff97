"""Runs a sweep on one database connection: for real (a transaction per batch) or as a dry
run (every batch in a savepoint of one transaction that is rolled back: a forecast that
goes through exactly the same code, and leaves nothing behind)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import asyncpg

from expiry import handlers
from expiry.adapters.postgres import ExpiryRepository
from expiry.handlers import SweepLimits, SweepReport


async def run_sweep(pool: asyncpg.Pool, as_of: datetime, limits: SweepLimits, *, run_id: str,
                    dry_run: bool = False, on_commit: Callable[[], None] = lambda: None,
                    forecast_max: int = 0) -> SweepReport:
    report = SweepReport(as_of, run_id=run_id, forecast_max=forecast_max)
    async with pool.acquire() as conn:
        repo = ExpiryRepository(conn)
        if not dry_run:
            return await handlers.sweep(repo, conn.transaction, as_of, limits=limits,
                                        on_commit=on_commit, report=report)
        outer = conn.transaction()
        await outer.start()
        try:
            return await handlers.sweep(repo, conn.transaction, as_of, limits=limits,
                                        report=report)
        finally:
            await outer.rollback()
