"""Fixtures: a fresh pair of scratch databases (scheduler and ledger) per test, so each
test's sweeps see only its own programs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from world import World

import expiry.app
import ledger.app
from loyalty.clock import FixedClock
from loyalty.testing import scratch_service_db

EXPIRY_MIGRATIONS = Path(expiry.app.__file__).resolve().parents[2] / "migrations"
LEDGER_MIGRATIONS = Path(ledger.app.__file__).resolve().parents[2] / "migrations"


@pytest.fixture
async def world(infra):
    async with scratch_service_db(infra.pg_dsn, "expiry", EXPIRY_MIGRATIONS) as (_, expiry_pool), \
            scratch_service_db(infra.pg_dsn, "ledger", LEDGER_MIGRATIONS) as (_, ledger_pool):
        yield World(expiry_pool, ledger_pool, FixedClock(datetime(2021, 1, 1, tzinfo=UTC)))
