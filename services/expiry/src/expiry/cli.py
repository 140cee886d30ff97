"""`loyalty expiry ...`: the scheduler's operator commands (registered by `loyalty.cli`).

`loyalty expiry sweep --as-of T [--dry-run]` runs every warning and expiry due as of T, in
the scheduler's database, exactly as the service's periodic sweep does; the service's outbox
relay publishes the commands and messages (at once if it runs, when it starts otherwise).
Idempotent: a second sweep as of the same T does nothing. A T in the future is refused
(exit 2) unless `--dry-run`, which prints what a sweep at T would do and changes nothing.

Exit codes: 0 done; 2 refused (future T, bad T) or no database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime
from pathlib import Path

import asyncpg

from expiry.adapters.sweeper import run_sweep
from expiry.domain.schedule import AsOfInFuture, check_as_of
from expiry.handlers import SweepLimits, SweepReport
from loyalty import db
from loyalty.clock import SystemClock, UuidIds

FORECAST_LINES_MAX = 10_000
SCHEMA = "expiry"


def register(sub: argparse._SubParsersAction) -> None:
    """Add this service's subcommands to the `loyalty` parser."""
    expiry = sub.add_parser("expiry", help="the expiry scheduler's operator commands")
    actions = expiry.add_subparsers(dest="action", required=True)
    sweep = actions.add_parser("sweep", help="run due warnings and expiries as of an instant")
    sweep.add_argument("--as-of", required=True, type=_instant, metavar="TIMESTAMP",
                       help="RFC 3339 with an offset, e.g. 2027-01-01T00:00:00+00:00")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print what would be warned about and expired; change nothing")
    sweep.add_argument("--batch-lots", type=int, default=SweepLimits.lots_per_batch_max,
                       help="lots per transaction (default %(default)s)")
    sweep.set_defaults(func=cmd_sweep)


def _instant(raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 timestamp: {raw!r}") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"needs a UTC offset (e.g. +00:00): {raw!r}")
    return value


def _dsn() -> str | None:
    """The scheduler's database: its own role, the admin DSN, or the running `loyalty up`'s."""
    for name in ("LOYALTY_EXPIRY_PG_DSN", "LOYALTY_PG_DSN"):
        if dsn := os.environ.get(name):
            return dsn
    runtime = Path(os.environ.get("LOYALTY_DATA_DIR", ".loyalty")).resolve() / "runtime.json"
    if runtime.exists():
        return json.loads(runtime.read_text()).get("pg_dsn")
    return None


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        check_as_of(args.as_of, SystemClock().now(), dry_run=args.dry_run)
    except AsOfInFuture as exc:
        print(f"error: refused: {exc}", file=sys.stderr)
        return 2
    if args.batch_lots < 1:
        print("error: --batch-lots must be at least 1", file=sys.stderr)
        return 2
    dsn = _dsn()
    if dsn is None:
        print("error: no database: set LOYALTY_EXPIRY_PG_DSN or LOYALTY_PG_DSN, or start "
              "`loyalty up` first", file=sys.stderr)
        return 2
    limits = SweepLimits(lots_per_batch_max=args.batch_lots)
    try:
        report = asyncio.run(_sweep(dsn, args.as_of, limits, args.dry_run))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"error: cannot sweep: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"forecast (dry run, nothing changed) {report.summary()}")
        for line in report.forecast:
            print(f"  would {line}")
    else:
        print(f"expiry sweep {report.summary()}")
    return 0


async def _sweep(dsn: str, as_of: datetime, limits: SweepLimits, dry_run: bool
                 ) -> SweepReport:
    pool = await db.create_pool(dsn, size_max=2, schema=SCHEMA)
    try:
        if not await pool.fetchval("SELECT to_regclass('expiry.lots') IS NOT NULL"):
            raise OSError("the expiry schema is not migrated: start the expiry-scheduler once")
        return await run_sweep(pool, as_of, limits, run_id=UuidIds().new_id(), dry_run=dry_run,
                               forecast_max=FORECAST_LINES_MAX if dry_run else 0)
    finally:
        await pool.close()
