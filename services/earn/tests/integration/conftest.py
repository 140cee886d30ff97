"""A scratch earn database with the demo programs applied (real PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest_asyncio

from earn import handlers
from earn.adapters.postgres import EarnRepository
from loyalty.programs import load_programs_file
from loyalty.testing import scratch_service_db

ROOT = Path(__file__).resolve().parents[4]
MIGRATIONS = ROOT / "services" / "earn" / "migrations"


@pytest_asyncio.fixture(scope="module")
async def earn(infra) -> AsyncIterator[asyncpg.Pool]:
    async with scratch_service_db(infra.pg_dsn, "earn", MIGRATIONS) as (_, pool):
        [coffee] = [p for p in load_programs_file(ROOT / "programs" / "demo.yaml")
                    if p.id == "coffee-club"]
        async with pool.acquire() as conn:
            await handlers.apply_program(EarnRepository(conn), coffee)
        yield pool
