"""The `loyalty` command line: run the platform locally, apply programs, migrate, audit.

This module is the operator CLI (distribution `loyalty-cli`): it runs in a production image,
where only the services and their runtime library are installed. `loyalty up` needs the local
infrastructure and supervisor of `loyalty-devtools`, imported only when `up` runs.

`loyalty up` writes the addresses it started to `<data_dir>/runtime.json`, so other commands
run in another terminal find the local broker without any environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import importlib
import importlib.util
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from loyalty import db, topics
from loyalty.clock import UuidIds
from loyalty.logging import configure_logging, mask_pii
from loyalty.programs import ProgramDefinition, ProgramFileError, load_programs_file
from loyalty.settings import PostgresTls, kafka_client_kwargs

# The repository's programs/demo.yaml (tools/cli/src/loyalty/cli.py is 4 levels below the root).
DEMO_PROGRAMS = Path(__file__).resolve().parents[4] / "programs" / "demo.yaml"
APPLY_TIMEOUT_S = 30.0
# Ctrl-C drains this long at most (LOYALTY_DRAIN_TIMEOUT_S), then stops anyway: with the
# services' and the infrastructure's own stop the whole stop stays under 30 s.
DRAIN_TIMEOUT_S = 20.0
# The log sink's poll: the local broker answers a waiting fetch only at the end of its wait.
SINK_FETCH_WAIT_MS = 100
SERVICE_COMMANDS = ("expiry.cli", "rewards.cli")


def data_dir() -> Path:
    return Path(os.environ.get("LOYALTY_DATA_DIR", ".loyalty")).resolve()


def _runtime_file() -> Path:
    return data_dir() / "runtime.json"


def _bootstrap() -> str:
    if bootstrap := os.environ.get("LOYALTY_KAFKA_BOOTSTRAP"):
        return bootstrap
    if _runtime_file().exists():
        return json.loads(_runtime_file().read_text())["kafka_bootstrap"]
    raise SystemExit("no broker: set LOYALTY_KAFKA_BOOTSTRAP or start `loyalty up` first")


def program_message(program: ProgramDefinition) -> dict:
    return {"type": "program.defined", "event_id": UuidIds().new_id(), **program.to_message()}


async def publish_programs(bootstrap: str, programs: list[ProgramDefinition]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, **kafka_client_kwargs())
    await producer.start()
    try:
        for program in programs:
            await producer.send_and_wait(
                topics.PROGRAMS, json.dumps(program_message(program)).encode(),
                key=program.id.encode())
    finally:
        await producer.stop()


async def wait_programs_applied(earn_url: str, token: str,
                                programs: list[ProgramDefinition]) -> None:
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        for program in programs:
            while True:
                async with http.get(f"{earn_url}/v1/programs/{program.id}") as resp:
                    if resp.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"earn did not apply {program.id} in {APPLY_TIMEOUT_S}s")
                await asyncio.sleep(0.1)


def cmd_programs_apply(args: argparse.Namespace) -> int:
    try:
        programs = load_programs_file(Path(args.file))
    except ProgramFileError as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    asyncio.run(publish_programs(_bootstrap(), programs))
    for program in programs:
        print(f"published {program.id} to {topics.PROGRAMS}")
    return 0


async def _open_sink(bootstrap: str) -> AIOKafkaConsumer:
    """The notification log sink's consumer, at the current end of both topics: it shows what
    comes from now on, on the local broker or a long-lived one alike.

    It has no consumer group: a group join on the local broker took seconds, so the first SMS
    printed ~3.5 s after it was on its topic.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=SINK_FETCH_WAIT_MS,
                                **kafka_client_kwargs())
    await consumer.start()
    await consumer.topics()  # the cluster's metadata: each topic's partitions
    partitions = [TopicPartition(topic, p)
                  for topic in (topics.NOTIFICATIONS_SMS, topics.NOTIFICATIONS_EMAIL)
                  for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    for partition, end in (await consumer.end_offsets(partitions)).items():
        consumer.seek(partition, end)
    return consumer


async def _sink(consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
    """Prints what an SMS or e-mail sender would send, until `stop`."""
    try:
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=SINK_FETCH_WAIT_MS)).values():
                for record in records:
                    print(notification_line(json.loads(record.value)), flush=True)
    finally:
        await consumer.stop()


def notification_line(n: dict[str, Any]) -> str:
    """How the sink shows a notification: masked address and body, no reward code."""
    body = n["body"] if n["template"] != "reward_fulfilled" else "[code withheld]"
    return (f"[notification] {n['channel']} to {mask_pii(n['to'])} "
            f"({n['locale']}, {n['template']}): {mask_pii(body)}")


async def _up(programs_file: Path) -> int:
    started = time.monotonic()
    try:
        programs = load_programs_file(programs_file)
    except ProgramFileError as exc:
        print(f"error: {programs_file}: {exc}", file=sys.stderr)
        return 2
    root = data_dir()
    root.mkdir(parents=True, exist_ok=True)
    claim = _claim(root)
    if isinstance(claim, str):
        print(f"error: {claim}", file=sys.stderr)
        return 2
    token = os.environ.get("LOYALTY_API_TOKEN") or secrets.token_urlsafe(18)
    # loyalty-devtools: the embedded database, the local broker and the supervisor. Checked in
    # cmd_up, so a production image without them says so instead of a traceback.
    from loyalty.infra import StartupError, start_infrastructure
    from loyalty.platform import Platform

    try:
        infra = start_infrastructure(root)
    except (StartupError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    platform = Platform(infra.pg_dsn, infra.kafka_bootstrap, token, root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task] = []
    try:
        try:
            await platform.prepare()
            platform.start()
            await platform.wait_ready()
        except (StartupError, TimeoutError) as exc:  # a port taken, a service that died ...
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
        await publish_programs(infra.kafka_bootstrap, programs)
        await wait_programs_applied(platform.services["earn"].url, token, programs)
        tasks.append(asyncio.create_task(_sink(await _open_sink(infra.kafka_bootstrap), stop)))
        tasks.append(asyncio.create_task(platform.supervise(_say, stop)))
        _runtime_file().write_text(json.dumps({
            "kafka_bootstrap": infra.kafka_bootstrap, "api_token": token, "pg_dsn": infra.pg_dsn,
            "urls": {n: s.url for n, s in platform.services.items()}}))
        print(f"\nLoyalty platform ready in {time.monotonic() - started:.1f}s\n"
              f"  Kafka bootstrap : {infra.kafka_bootstrap}\n"
              + "".join(f"  {n:<16}: {s.url}\n" for n, s in platform.services.items())
              + f"  API token       : {token}\n"
              f"  Programs        : {', '.join(p.id for p in programs)}\n"
              f"  Logs            : {root / 'logs'}\n"
              "Publish purchases to loyalty.purchases.v1; Ctrl-C drains and stops.\n",
              flush=True)
        await stop.wait()
        drain_s = float(os.environ.get("LOYALTY_DRAIN_TIMEOUT_S", DRAIN_TIMEOUT_S))
        print(f"stopping: draining consumers and outboxes (at most {drain_s:.0f}s) ...",
              flush=True)
        if left := await platform.drain(drain_s):
            print("warning: not drained; stopping anyway. Left:\n  " + "\n  ".join(left),
                  file=sys.stderr, flush=True)
        return 0
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        platform.stop()
        infra.stop()
        _runtime_file().unlink(missing_ok=True)
        claim.close()
        print("stopped.", flush=True)


def _claim(root: Path) -> IO[str] | str:
    """The data folder, for this process alone: an exclusive lock held while the returned
    file is open, which the kernel drops however the process ends (SIGKILL included), so a
    `loyalty up` that died never blocks the next. A second `loyalty up` on the same folder
    would otherwise stop the first one's Postgres from under it: it gets the reason instead."""
    lock = open(root / "up.lock", "a+")  # open, and so locked, until the platform stops
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        return (f"the platform is already running on {root} (loyalty up, pid {holder}); "
                "stop it first (Ctrl-C in its terminal), or set LOYALTY_DATA_DIR to another "
                "folder for a second one")
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _say(line: str) -> None:
    print(f"[supervisor] {line}", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("loyalty.platform") is None:
        print("error: `loyalty up` needs the local infrastructure of the loyalty-devtools "
              "package (installed by `make run`), not in this installation", file=sys.stderr)
        return 2
    configure_logging("loyalty-up", os.environ.get("LOYALTY_LOG_LEVEL", "WARNING"))
    return asyncio.run(_up(Path(args.programs)))


def _ledger_dsn() -> str | None:
    """The ledger's database: its own role, the admin DSN, or the running `loyalty up`'s."""
    for name in ("LOYALTY_LEDGER_PG_DSN", "LOYALTY_PG_DSN"):
        if dsn := os.environ.get(name):
            return dsn
    if _runtime_file().exists():
        return json.loads(_runtime_file().read_text()).get("pg_dsn")
    return None


async def _audit(dsn: str) -> tuple[list[str], dict[str, int]]:
    # The ledger service's package, imported here rather than at the top: the shared library
    # must not depend on a service, but the workspace installs both, so `loyalty audit` works.
    from ledger.audit import audit, census

    conn = await asyncpg.connect(PostgresTls().apply(dsn),
                                 server_settings={"search_path": "ledger"})
    try:
        # One snapshot for the checks and the counts, while the ledger may keep writing.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await audit(conn), await census(conn)
    finally:
        await conn.close()


def cmd_audit(args: argparse.Namespace) -> int:
    """Exit 0: clean; 1: violations (listed); 2: could not audit (no or unreachable database)."""
    dsn = _ledger_dsn()
    if dsn is None:
        print("error: no database: set LOYALTY_LEDGER_PG_DSN or LOYALTY_PG_DSN, "
              "or start `loyalty up` first", file=sys.stderr)
        return 2
    try:
        violations, counts = asyncio.run(_audit(dsn))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"error: cannot audit the ledger: {exc}", file=sys.stderr)
        return 2
    if violations:
        print(f"ledger audit: {len(violations)} violation(s)")
        for violation in violations:
            print(violation)
        return 1
    print(f"ledger audit: clean ({counts['accounts']} accounts, {counts['entries']} entries, "
          f"{counts['lots']} lots)")
    return 0


# The services' bootstrap modules: `build()` gives each one's settings, schema and migrations.
SERVICE_APPS = {"earn": "earn.app", "ledger": "ledger.app", "expiry": "expiry.app",
                "rewards": "rewards.app"}
MIGRATE_POOL_SIZE_MAX = 2


async def _migrate(services: list[str]) -> None:
    for name in services:
        spec = importlib.import_module(SERVICE_APPS[name]).build()
        pool = await db.create_pool(spec.settings.pg_dsn, size_max=MIGRATE_POOL_SIZE_MAX,
                                    schema=spec.schema)
        try:
            applied = await db.apply_migrations(pool, spec.schema, spec.migrations_dir)
        finally:
            await pool.close()
        print(f"{name}: {len(applied)} migration(s) applied"
              + (f" ({', '.join(applied)})" if applied else ", schema up to date"), flush=True)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Each service's migrations, as its own role (its LOYALTY_<SERVICE>_PG_DSN). A service
    applies them at start too, under the same advisory lock: this is for a deploy step (the
    Kubernetes migration job) that should fail before any new replica starts."""
    configure_logging("loyalty-migrate", os.environ.get("LOYALTY_LOG_LEVEL", "WARNING"))
    if unknown := [s for s in args.services if s not in SERVICE_APPS]:
        print(f"error: unknown service(s) {', '.join(unknown)}; "
              f"choose from {', '.join(SERVICE_APPS)}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_migrate(args.services or list(SERVICE_APPS)))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RuntimeError) as exc:
        print(f"error: migration failed: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loyalty", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole platform locally")
    up.add_argument("--programs", default=str(DEMO_PROGRAMS), help="program YAML to apply")
    up.set_defaults(func=cmd_up)

    programs = sub.add_parser("programs", help="program definitions")
    programs_sub = programs.add_subparsers(dest="action", required=True)
    apply = programs_sub.add_parser("apply", help="validate and publish a program YAML file")
    apply.add_argument("file")
    apply.set_defaults(func=cmd_programs_apply)

    # The services' own operator commands (`loyalty expiry ...`, `loyalty rewards ...`), from
    # their packages: the workspace installs them beside this library.
    for module in SERVICE_COMMANDS:
        importlib.import_module(module).register(sub)

    migrate = sub.add_parser("migrate", help="apply the services' database migrations")
    migrate.add_argument("services", nargs="*",
                         help=f"services to migrate: {', '.join(SERVICE_APPS)} (default: all)")
    migrate.set_defaults(func=cmd_migrate)

    audit = sub.add_parser("audit", help="check the ledger invariants (exit 1 if broken)")
    audit.set_defaults(func=cmd_audit)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
