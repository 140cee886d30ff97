"""The `loyalty rewards ...` subcommands (registered by `loyalty.cli`).

- `loyalty rewards import-codes --program P --pool POOL FILE.csv`: one code per line
  (`rewards.domain.codefile`). Exit 0 with what was loaded and skipped; exit 2 on a malformed
  file (naming the line; nothing is loaded), an unknown program or pool, or no database.
- `loyalty rewards rotate-keys`: re-encrypt every code with the first key of
  `LOYALTY_REWARDS_CODE_KEYS` (see README "Code keys").

The database is reward-fulfilment's: `LOYALTY_REWARDS_PG_DSN`, else `LOYALTY_PG_DSN`, else
the running `loyalty up`'s. Messages never include a code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import asyncpg

from loyalty.logging import configure_logging
from loyalty.programs import ProgramDefinition
from rewards.adapters.codes_import import import_codes, rotate_keys
from rewards.adapters.vault import CodeVault, VaultError
from rewards.domain.codefile import MalformedFile, parse_codes

CODE_FILE_SIZE_MAX_BYTES = 512 * 1024 * 1024
SCHEMA = "rewards"


class CliError(Exception):
    """Exit 2 with this message."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add this service's subcommands to the `loyalty` parser."""
    rewards = sub.add_parser("rewards", help="reward catalog operations")
    actions = rewards.add_subparsers(dest="action", required=True)
    load = actions.add_parser("import-codes", help="load a CSV of codes (one per line) into "
                              "a pool, encrypted; duplicates are skipped and counted")
    load.add_argument("--program", required=True)
    load.add_argument("--pool", required=True)
    load.add_argument("file")
    load.set_defaults(func=cmd_import_codes)
    rotate = actions.add_parser("rotate-keys", help="re-encrypt every code with the newest key")
    rotate.set_defaults(func=cmd_rotate_keys)


def _dsn() -> str:
    for name in ("LOYALTY_REWARDS_PG_DSN", "LOYALTY_PG_DSN"):
        if dsn := os.environ.get(name):
            return dsn
    runtime = Path(os.environ.get("LOYALTY_DATA_DIR", ".loyalty")).resolve() / "runtime.json"
    if runtime.exists():
        return json.loads(runtime.read_text())["pg_dsn"]
    raise CliError("no database: set LOYALTY_REWARDS_PG_DSN or LOYALTY_PG_DSN, or start "
                   "`loyalty up` first")


async def _connect() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(_dsn(), server_settings={"search_path": SCHEMA})
    except (OSError, asyncpg.PostgresError) as exc:
        raise CliError(f"cannot reach the database: {exc}") from None


def _read_codes(path: Path) -> list[str]:
    try:
        with open(path, "rb") as file:
            raw = file.read(CODE_FILE_SIZE_MAX_BYTES + 1)
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None
    if len(raw) > CODE_FILE_SIZE_MAX_BYTES:
        raise CliError(f"{path}: larger than {CODE_FILE_SIZE_MAX_BYTES} bytes")
    try:
        parsed = parse_codes(raw)
    except MalformedFile as exc:
        raise CliError(f"{path}: {exc}; nothing was loaded") from None
    return parsed.codes


async def _import(program_id: str, pool: str, codes: list[str]) -> str:
    vault = CodeVault.from_settings()
    conn = await _connect()
    try:
        try:
            definition = await conn.fetchval(
                "SELECT definition FROM programs WHERE program_id = $1", program_id)
        except asyncpg.UndefinedTableError:
            raise CliError("reward-fulfilment has not created its tables yet: start it once "
                           "(`loyalty up`)") from None
        if definition is None:
            raise CliError(f"program {program_id!r} is not applied (run `loyalty programs "
                           "apply` and let reward-fulfilment read it first)")
        program = ProgramDefinition.model_validate(json.loads(definition))
        pools = sorted({r.pool for r in program.rewards if r.kind == "code" and r.pool})
        if pool not in pools:
            raise CliError(f"program {program_id} has no code reward drawing from pool "
                           f"{pool!r} (its pools: {', '.join(pools) or 'none'})")
        result = await import_codes(conn, vault, program_id, pool, codes,
                                    import_id=str(uuid.uuid4()))
    finally:
        await conn.close()
    return (f"loaded {result.loaded} codes into {program_id}/{pool}; skipped "
            f"{result.skipped} ({result.duplicates_in_file} duplicated in the file, "
            f"{result.already_loaded} already loaded)")


def _run(coro: object) -> int:
    # Warnings (the development keys) as JSON lines on stderr; stdout is the result only.
    configure_logging("loyalty-rewards", os.environ.get("LOYALTY_LOG_LEVEL", "WARNING"))
    try:
        print(asyncio.run(coro))  # type: ignore[arg-type]
    except (CliError, VaultError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_import_codes(args: argparse.Namespace) -> int:
    try:
        codes = _read_codes(Path(args.file))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _run(_import(args.program, args.pool, codes))


async def _rotate() -> str:
    vault = CodeVault.from_settings()
    conn = await _connect()
    try:
        return f"re-encrypted {await rotate_keys(conn, vault)} codes with the newest key"
    finally:
        await conn.close()


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    return _run(_rotate())
