"""Two ledger processes in one consumer group take a burst of 10,000 commands over 200 members,
with duplicates: `loyalty audit` is clean and every balance equals the reference model's.

Runs on its own broker and database (so no other ledger in the session shares the group), with
the ledger started as real processes, exactly as `loyalty up` starts it.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from refmodel import Model

from loyalty import topics
from loyalty.infra import TansuBroker
from loyalty.platform import Platform
from loyalty.testing import Kafka, scratch_service_db

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
COMMANDS = 10_000
MEMBERS = 200
DUPLICATES = 1_000
APPLY_TIMEOUT_S = 180
AT = datetime(2026, 10, 20, 10, 0, tzinfo=UTC)


def burst(program: str) -> list[dict]:
    rng = random.Random(42)
    members = [f"bm-{i}" for i in range(MEMBERS)]
    commands: list[dict] = []
    for i in range(COMMANDS):
        member = rng.choice(members)
        base = {"command_id": f"{program}-{i}", "program_id": program, "member_id": member,
                "occurred_at": (AT + timedelta(seconds=i)).isoformat(), "reason": "burst",
                "source": {"kind": "purchase", "id": f"o{i}"}}
        roll = rng.random()
        own = [c for c in commands[-400:] if c["member_id"] == member]
        if roll < 0.6:
            expires = rng.choice([None, "2027-03-31T21:59:59+00:00", "2027-06-30T20:59:59+00:00"])
            commands.append(base | {"type": "credit", "points": rng.randint(1, 300),
                                    "expires_at": expires})
        elif roll < 0.9 or not own:
            commands.append(base | {"type": "debit", "points": rng.randint(1, 200),
                                    "allow_owed": rng.random() < 0.3})
        else:
            commands.append(base | {"type": "reverse", "target_id": rng.choice(own)["command_id"],
                                    "points": rng.choice([None, rng.randint(1, 50)])})
    return commands


async def test_two_ledgers_share_a_burst_and_agree_with_the_model(infra, tmp_path) -> None:
    broker = TansuBroker(tmp_path / "broker")
    broker.start()
    client = Kafka(broker.bootstrap)
    await client.producer.start()
    async with scratch_service_db(infra.pg_dsn, "ledger", MIGRATIONS) as (scratch_admin, pool):
        platform = Platform(scratch_admin, broker.bootstrap, "burst-token", tmp_path,
                            fixed_ports=False)
        try:
            await platform.prepare()
            second = platform.add_replica("ledger")
            platform.start("ledger", second)
            await platform.wait_ready("ledger", second)

            commands = burst("burst")
            rng = random.Random(7)
            copies = [rng.choice(commands) for _ in range(DUPLICATES)]
            await client.publish_many(topics.LEDGER_COMMANDS,
                                      [(c["member_id"], c) for c in commands + copies])

            deadline = time.monotonic() + APPLY_TIMEOUT_S
            while await pool.fetchval("SELECT count(*) FROM inbox WHERE topic = $1",
                                      topics.LEDGER_COMMANDS) < COMMANDS:
                assert time.monotonic() < deadline, "the burst was not applied in time"
                await asyncio.sleep(0.2)

            model = Model(sorted({c["member_id"] for c in commands}))
            for c in commands:
                model.apply(c, AT)
            rows = await pool.fetch("SELECT account_id, balance, reserved, owed FROM accounts"
                                    " WHERE program_id = 'burst' AND kind = 'member'")
            got = {r["account_id"]: (r["balance"], r["reserved"], r["owed"]) for r in rows}
            assert got == {m: (ref.balance, ref.reserved, ref.owed)
                           for m, ref in model.members.items()}

            audit = subprocess.run([sys.executable, "-m", "loyalty.cli", "audit"],
                                   env={**os.environ, "LOYALTY_PG_DSN": scratch_admin},
                                   capture_output=True, text=True, timeout=120)
            assert audit.returncode == 0, audit.stdout + audit.stderr
            assert "clean" in audit.stdout
            # The group shared the partitions: both processes applied part of the burst.
            for key in ("ledger", second):
                assert await platform.consumed(key, topics.LEDGER_COMMANDS) > 0, key
        finally:
            await client.producer.stop()
            platform.stop()
            broker.stop()
