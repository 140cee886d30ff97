"""Exactly-once in effect: the inbox, the outbox, dead letters and the batch pipeline.

Each consumed record ends one of three ways, and no fourth:
1. applied: its effects, its inbox row and the messages it emits commit in one transaction;
2. dead-lettered with a code: the sender's mistake. That is anything our decoding or
   validation raises on it (bad bytes, deep nesting, NUL, a failing internal model), a
   `Rejected` from a handler, or a record that keeps failing alone while the database is
   healthy (`unprocessable`: poison, counted and alerted on);
3. still being retried: something of ours (Postgres) is down. Nothing is dead-lettered then.

A consumed batch is applied in ONE Postgres transaction:
- the records' ids go into the inbox (in bulk) in the same transaction as their effects, so a
  redelivery finds its id and does nothing; the same id with another payload is a conflict
  (dead-lettered);
- each record is then handled in its own savepoint (or, set-based, the whole batch at once);
  the messages a handler emits are written to the outbox, never published directly;
- a `Rejected` (the sender's mistake) rolls back only that record's savepoint and writes a
  dead letter (through the outbox too, so it is published exactly when the batch commits).
Anything else rolls the whole batch back and retries it with capped backoff. After
`ISOLATE_AFTER_FAILURES` failures the batch is replayed one record at a time, each in its own
transaction: the records that apply are committed, and a record that still fails alone
`RECORD_TRIES_MAX` times while the database answers is poison. The consumer returns only when
every record of the batch is applied or dead-lettered, so the offsets faststream commits next
(after the handler returns) never cover a record whose outcome is not in Postgres.

The relay publishes outbox rows in id order with acks=all and deletes them once the broker has
them. One relay per service is active at a time (an advisory lock), which keeps per-key order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel, TypeAdapter, ValidationError

from loyalty import metrics
from loyalty.db import copy_if_new, insert_many
from loyalty.logging import correlation, current_correlation_id
from loyalty.periodic import every
from loyalty.topics import dlq

log = structlog.get_logger(__name__)

T = TypeVar("T")

ERROR_MESSAGE_LEN_MAX = 500
RETRY_BACKOFF_START_S = 0.05
STATS_INTERVAL_S = 1.0
# A record's value beyond this is refused before parsing (the broker's default is 1 MiB).
RECORD_BYTES_MAX = 1024 * 1024
ISOLATE_AFTER_FAILURES = 3  # batch failures before its records are tried one at a time
RECORD_TRIES_MAX = 3  # failures of a record alone, with the database up, before it is poison
HEALTH_PROBE_TIMEOUT_S = 2.0
# Text Postgres cannot store (NUL) or UTF-8 cannot encode (lone surrogates).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


OUTBOX_COLUMNS = (("topic", "text"), ("key", "bytea"), ("value", "bytea"), ("headers", "jsonb"))
INBOX_COLUMNS = (("topic", "text"), ("message_id", "text"), ("digest", "bytea"))



class Rejected(Exception):
    """The sender's mistake: the record goes to the dead-letter topic and the stream goes on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConcurrentWrite(Exception):
    """Another process wrote the same key first (earn enrolled the same identifier, the
    ledger created the same account): the batch is rolled back and retried, and finds the
    row the other one wrote."""


class ConsumerStopping(Exception):
    """The service is stopping while a batch is unresolved: it is left uncommitted (nacked)
    and consumed again after the restart."""


# Errors of the sender's input raised below our decoders: refused, never retried.
SENDER_ERRORS = (Rejected, ValidationError)


def as_rejected(exc: BaseException) -> Rejected:
    """Any exception raised while decoding or validating a record, as the sender's mistake."""
    if isinstance(exc, Rejected):
        return exc
    if isinstance(exc, ValidationError):
        return validation_rejected(exc)
    if isinstance(exc, RecursionError):
        return Rejected("malformed_json", "the message nests too deeply")
    if isinstance(exc, UnicodeError):
        return Rejected("invalid_field", safe_text(f"text that is not valid UTF-8: {exc}"))
    return Rejected("invalid_field", safe_text(f"{type(exc).__name__}: {exc}"))


def is_outage(exc: BaseException) -> bool:
    """An error that says our database (or network) is unavailable, not that a record is bad:
    such a record is never dead-lettered, only retried."""
    return isinstance(exc, OSError | TimeoutError | asyncpg.PostgresConnectionError
                      | asyncpg.InterfaceError | asyncpg.CannotConnectNowError
                      | asyncpg.TooManyConnectionsError | asyncpg.AdminShutdownError
                      | asyncpg.CrashShutdownError | asyncpg.ConnectionDoesNotExistError)


def to_json_bytes(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (orjson: datetimes as RFC 3339, Decimals as strings)."""
    return orjson.dumps(payload, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def safe_text(text: str) -> str:
    """`text` with NUL and lone surrogates escaped: storable in Postgres, encodable as UTF-8
    (error messages quote the bad input they refuse)."""
    if not _UNSTORABLE.search(text):
        return text
    return _UNSTORABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def payload_digest(payload: dict[str, Any]) -> bytes:
    """Hash of the canonical JSON (keys sorted, compact, UTF-8): a producer retry that
    re-serialises still matches. orjson writes it (the byte-for-byte same text as the standard
    library's `sort_keys=True, separators=(",", ":"), ensure_ascii=False`, at a tenth of the
    cost); what orjson cannot write (an integer beyond 64 bits) the standard library does."""
    try:
        canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False).encode()
    return hashlib.sha256(canonical).digest()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(raw: bytes | None) -> dict[str, Any]:
    """The record's value as a JSON object whose every string is storable, or `Rejected`.

    Strict JSON: NaN and Infinity are refused, and so are NUL characters and lone surrogates
    in any key or string (Postgres cannot store them): this is the one place every consumer,
    of every topic, gets that from.
    """
    if raw is None:
        raise Rejected("malformed_json", "the record has no value")
    if len(raw) > RECORD_BYTES_MAX:
        raise Rejected("too_large", f"the value is {len(raw)} bytes; at most "
                                    f"{RECORD_BYTES_MAX} are accepted")
    try:
        payload = orjson.loads(raw)  # strict JSON, fast; the usual path
        # orjson refuses raw control characters and lone surrogates, so the only way to a
        # NUL in what it parsed is the escape `\u0000`: without it there is nothing to walk.
        unchecked = _NUL_ESCAPE in raw
    except orjson.JSONDecodeError:
        payload, unchecked = _diagnose(raw), True
    if not isinstance(payload, dict):
        raise Rejected("malformed_json", "the value is not a JSON object")
    if unchecked:
        _check_text(payload, "")
    return payload


_NUL_ESCAPE = b"\\u0000"


def _diagnose(raw: bytes) -> Any:
    """What orjson refused, parsed again by the standard library to say precisely why: it
    also reads what orjson does not (integers beyond 64 bits, escaped lone surrogates), which
    validation then refuses naming the field."""
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise Rejected("malformed_json", "the JSON nests too deeply") from None
    except (ValueError, UnicodeError) as exc:  # JSONDecodeError is a ValueError
        raise Rejected("malformed_json", f"not valid JSON: {exc}") from None


def _check_text(value: Any, where: str) -> None:
    """Refuse NUL and lone surrogates anywhere in a parsed JSON value (iteratively: depth is
    bounded by the parser already, but the walk need not use the stack)."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                raise Rejected("invalid_field", f"{path or 'message'}: text holds a NUL "
                                                "character or a lone surrogate")
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else key
                if _UNSTORABLE.search(key):
                    raise Rejected("invalid_field", f"{safe_text(child_path)}: a key holds a "
                                                    "NUL character or a lone surrogate")
                stack.append((child, child_path))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))


def validate(model: type[BaseModel] | TypeAdapter[Any], payload: dict[str, Any]) -> Any:
    """Validate against a contract model; name the first failing field in the error."""
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(payload)
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_rejected(exc) from None


def validation_rejected(exc: ValidationError) -> Rejected:
    """A pydantic error as the sender's mistake, naming the first failing field."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    code = "missing_field" if first["type"] == "missing" else "invalid_field"
    return Rejected(code, safe_text(f"{where}: {first['msg']}"))


@dataclass
class Outbox:
    """Messages a handler emits, written in the handler's transaction and published later."""

    rows: list[tuple[str, bytes | None, bytes, dict[str, str]]] = field(default_factory=list)

    def add(self, topic: str, key: str | bytes | None, payload: dict[str, Any] | bytes,
            headers: dict[str, str] | None = None) -> None:
        value = payload if isinstance(payload, bytes) else to_json_bytes(payload)
        hdrs = {"content-type": "application/json"}
        if cid := current_correlation_id():
            hdrs["correlation_id"] = cid
        # Headers are stored as jsonb: text that quotes bad input must be storable there.
        hdrs.update({k: safe_text(v) for k, v in (headers or {}).items()})
        raw_key = key.encode() if isinstance(key, str) else key
        self.rows.append((topic, raw_key, value, hdrs))

    async def flush(self, conn: asyncpg.Connection) -> None:
        if not self.rows:
            return
        await insert_many(conn, "outbox", OUTBOX_COLUMNS, self.rows)  # in order: ids follow
        self.rows.clear()


def dead_letter(outbox: Outbox, record: ConsumerRecord, code: str, message: str) -> None:
    """The original bytes to `<topic>.dlq` with the headers CONTRACT.md names."""
    headers = {
        "error.code": code,
        "error.message": safe_text(message)[:ERROR_MESSAGE_LEN_MAX],
        "original.topic": record.topic,
        "original.partition": str(record.partition),
        "original.offset": str(record.offset),
    }
    outbox.add(dlq(record.topic), record.key, record.value or b"", headers)


@dataclass(frozen=True)
class Envelope(Generic[T]):
    """One decoded record handed to a handler."""

    record: ConsumerRecord
    message: T
    message_id: str
    digest: bytes


Decoder = Callable[[dict[str, Any]], tuple[str, T]]
"""Validates a JSON object; returns (message id, message). Raises `Rejected`."""

def decoder(model: type[BaseModel] | TypeAdapter[Any], id_field: str = "event_id"
            ) -> Decoder[Any]:
    """The decoder of a contract model whose id is `id_field`."""

    def decode(payload: dict[str, Any]) -> tuple[str, Any]:
        message = validate(model, payload)
        return getattr(message, id_field), message

    return decode


Handler = Callable[[asyncpg.Connection, Envelope[T], Outbox], Awaitable[None]]
"""Applies one message inside the batch transaction; raises `Rejected` for bad input."""

BatchHandler = Callable[[asyncpg.Connection, list[Envelope[T]], Outbox],
                        Awaitable[list[tuple[Envelope[T], Rejected]] | None]]
"""Applies many messages at once (set-based); used where per-message round trips are too slow.
Returns the messages it refused (dead-lettered with their codes; their effects are its job to
leave out).
If it fails on a constraint (or raises `Rejected`), the batch is replayed one message at a
time to isolate the bad one, which is dead-lettered (`constraint_violation`, or its code)."""


def _header(record: ConsumerRecord, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name and value is not None:
            return value.decode(errors="replace")
    return None


@dataclass
class BatchConsumer(Generic[T]):
    """Applies a batch of records from one topic; see the module docstring."""

    service: str
    topic: str
    pool: asyncpg.Pool
    decode: Decoder[T]
    handle: Handler[T] | None = None
    handle_batch: BatchHandler[T] | None = None
    on_commit: Callable[[], None] = lambda: None
    use_inbox: bool = True
    retry_backoff_max_s: float = 5.0

    isolate_after_failures: int = ISOLATE_AFTER_FAILURES
    record_tries_max: int = RECORD_TRIES_MAX
    # Set when the service stops: a batch still being retried gives up (it is not committed,
    # so it is consumed again after the restart) instead of holding the shutdown.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stalled_since: float | None = None  # monotonic time of the first failure still unresolved
    last_error: str | None = None

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        """Returns once every record is applied or dead-lettered (then the offsets may be
        committed); raises `ConsumerStopping` if the service stops first."""
        if not records:
            return
        labels = (self.service, self.topic)
        metrics.MESSAGES_CONSUMED.labels(*labels).inc(len(records))
        metrics.BATCH_SIZE.labels(*labels).observe(len(records))
        started = time.perf_counter()
        outcome = await self._apply_with_retries(records)
        metrics.HANDLER_SECONDS.labels(*labels).observe(time.perf_counter() - started)
        self._count(outcome)
        self.on_commit()

    async def _apply_with_retries(self, records: Sequence[ConsumerRecord]) -> _Outcome:
        """The batch, retried; after `isolate_after_failures` failures, record by record."""

        async def isolate(_: Exception) -> _Outcome:
            return await self._isolate(records)

        return await self._retrying(records, self.isolate_after_failures, isolate)

    async def _isolate(self, records: Sequence[ConsumerRecord]) -> _Outcome:
        """Each record alone, in order, in its own transaction: the good ones commit, and a
        record that keeps failing alone while the database answers is dead-lettered."""
        log.warning("batch.isolating", topic=self.topic, records=len(records))
        total = _Outcome()
        for record in records:
            async def poison(exc: Exception, record: ConsumerRecord = record) -> _Outcome | None:
                if not await self._is_poison(exc):
                    return None
                return await self._dead_letter_poison(record, exc)

            outcome = await self._retrying([record], self.record_tries_max, poison)
            total.duplicates += outcome.duplicates
            total.dead_letters += outcome.dead_letters
        return total

    async def _retrying(self, records: Sequence[ConsumerRecord], tries_max: int,
                        give_up: Callable[[Exception], Awaitable[_Outcome | None]]) -> _Outcome:
        """Apply `records`, retrying with capped backoff; from the `tries_max`-th failure on,
        `give_up` may settle them another way (None: keep retrying, we are down)."""
        backoff = RETRY_BACKOFF_START_S
        failures = 0
        while True:
            try:
                outcome = await self._apply_counted(records)
                self._recovered()
                return outcome
            except (asyncio.CancelledError, ConsumerStopping):
                raise
            except Exception as exc:
                failures += 1
                self._failed(exc, records, failures)
                if failures >= tries_max and (settled := await give_up(exc)) is not None:
                    return settled
                backoff = await self._pause(backoff)

    async def _dead_letter_poison(self, record: ConsumerRecord, exc: Exception) -> _Outcome:
        """Poison: it fails alone, the database is up. Out of the way, with what went wrong."""
        metrics.POISON_RECORDS.labels(self.service, self.topic).inc()
        log.error("message.poison", topic=record.topic, partition=record.partition,
                  offset=record.offset, error_type=type(exc).__name__, error=safe_text(str(exc)))
        outcome = _Outcome()
        outbox = Outbox()
        dead_letter(outbox, record, "unprocessable", f"{type(exc).__name__}: {exc}")
        outcome.dead_letters.append("unprocessable")
        async with self.pool.acquire() as conn, conn.transaction():
            await outbox.flush(conn)
        self._recovered()
        return outcome

    async def _apply_counted(self, records: Sequence[ConsumerRecord]) -> _Outcome:
        """`_apply`, with the business counts it staged counted only if it committed."""
        if self.stopping.is_set():
            raise ConsumerStopping(self.topic)
        with metrics.staging() as counts:
            outcome = await self._apply(records)
            metrics.commit_counts(counts)
        return outcome

    def _failed(self, exc: Exception, records: Sequence[ConsumerRecord], attempt: int) -> None:
        metrics.HANDLER_ERRORS.labels(self.service, self.topic).inc()
        metrics.CONSUMER_STALLED.labels(self.service, self.topic).set(1)
        if self.stalled_since is None:
            self.stalled_since = time.monotonic()
        self.last_error = safe_text(f"{type(exc).__name__}: {exc}")[:ERROR_MESSAGE_LEN_MAX]
        log.error("batch.failed", topic=self.topic, records=len(records), attempt=attempt,
                  first_offset=records[0].offset, partition=records[0].partition,
                  exc_info=exc)

    def _recovered(self) -> None:
        if self.stalled_since is not None:
            log.info("batch.recovered", topic=self.topic,
                     stalled_s=round(time.monotonic() - self.stalled_since, 3))
            self.stalled_since = None
            self.last_error = None
            metrics.CONSUMER_STALLED.labels(self.service, self.topic).set(0)

    async def _pause(self, backoff: float) -> float:
        """Sleep `backoff` (or until the service stops); the next, capped backoff."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), backoff)
        return min(backoff * 2, self.retry_backoff_max_s)

    async def _is_poison(self, exc: Exception) -> bool:
        """The record is at fault, not us: the error is no outage and the database answers.
        (As with Spring Kafka's DefaultErrorHandler, a bug that fails every record would
        dead-letter them: with their original bytes, to replay after the fix, and the poison
        alert fires at once.)"""
        if is_outage(exc):
            return False
        try:
            async with asyncio.timeout(HEALTH_PROBE_TIMEOUT_S):
                return await self.pool.fetchval("SELECT 1") == 1
        except Exception:
            return False

    def _count(self, outcome: _Outcome) -> None:
        for code in outcome.dead_letters:
            metrics.DEAD_LETTERS.labels(self.service, self.topic, code).inc()
        if outcome.duplicates:
            metrics.MESSAGES_DUPLICATE.labels(self.service, self.topic).inc(outcome.duplicates)

    async def _apply(self, records: Sequence[ConsumerRecord]) -> _Outcome:
        outcome = _Outcome()
        outbox = Outbox()
        envelopes = self._decode_all(records, outbox, outcome)
        async with self.pool.acquire() as conn, conn.transaction():
            if self.use_inbox:
                envelopes = await self._first_deliveries(conn, envelopes, outbox, outcome)
            if self.handle is not None:
                if not await self._all_at_once(conn, envelopes, outbox, self.handle):
                    await self._one_by_one(conn, envelopes, outbox, outcome, self.handle,
                                           dead_letter=SENDER_ERRORS)
            else:
                await self._set_based(conn, envelopes, outbox, outcome)
            await outbox.flush(conn)
        return outcome

    def _decode_all(self, records: Sequence[ConsumerRecord], outbox: Outbox,
                    outcome: _Outcome) -> list[Envelope[T]]:
        envelopes: list[Envelope[T]] = []
        for record in records:
            try:
                payload = parse_json_object(record.value)
                message_id, message = self.decode(payload)
                digest = payload_digest(payload) if self.use_inbox else b""
            except Exception as exc:  # whatever decoding raises, the record caused it
                self._reject(outbox, record, as_rejected(exc), outcome)
                continue
            envelopes.append(Envelope(record, message, message_id, digest))
        return envelopes

    async def _set_based(self, conn: asyncpg.Connection, envelopes: list[Envelope[T]],
                         outbox: Outbox, outcome: _Outcome) -> None:
        assert self.handle_batch is not None
        if not envelopes:  # every record was a duplicate or could not be decoded
            return
        emitted = Outbox()
        mark = metrics.counts_mark()
        try:
            async with conn.transaction():
                refused = await self.handle_batch(conn, envelopes, emitted) or []
        except (asyncpg.IntegrityConstraintViolationError, *SENDER_ERRORS):
            # A bug or a bad message, not an outage: find the culprit one message at a time.
            metrics.rollback_counts(mark)
            log.exception("batch.constraint_violation", topic=self.topic,
                          records=len(envelopes))
            handle_batch = self.handle_batch

            async def alone(conn: asyncpg.Connection, env: Envelope[T], out: Outbox) -> None:
                for _, rej in await handle_batch(conn, [env], out) or []:
                    raise rej

            await self._one_by_one(
                conn, envelopes, outbox, outcome, alone,
                dead_letter=(*SENDER_ERRORS, asyncpg.IntegrityConstraintViolationError))
            return
        for env, rej in refused:
            self._reject(outbox, env.record, rej, outcome)
        outbox.rows.extend(emitted.rows)

    async def _all_at_once(self, conn: asyncpg.Connection, envelopes: list[Envelope[T]],
                           outbox: Outbox, handle: Handler[T]) -> bool:
        """Every message in ONE savepoint: the usual case, where none is refused, costs one
        savepoint instead of one per message. False (and nothing kept) if one was refused:
        the caller replays them one by one, so only that one is dead-lettered."""
        if len(envelopes) < 2:
            return False
        emitted = Outbox()
        mark = metrics.counts_mark()
        try:
            async with conn.transaction():
                for env in envelopes:
                    with correlation(_header(env.record, "correlation_id") or env.message_id):
                        await handle(conn, env, emitted)
        except SENDER_ERRORS:
            metrics.rollback_counts(mark)
            return False
        outbox.rows.extend(emitted.rows)
        return True

    async def _one_by_one(self, conn: asyncpg.Connection, envelopes: list[Envelope[T]],
                          outbox: Outbox, outcome: _Outcome, handle: Handler[T],
                          dead_letter: tuple[type[Exception], ...]) -> None:
        """Each message in a savepoint; `dead_letter` errors roll back only that message."""
        for env in envelopes:
            emitted = Outbox()
            mark = metrics.counts_mark()
            with correlation(_header(env.record, "correlation_id") or env.message_id):
                try:
                    async with conn.transaction():
                        await handle(conn, env, emitted)
                except dead_letter as exc:
                    metrics.rollback_counts(mark)
                    rej = Rejected("constraint_violation", safe_text(str(exc))) if isinstance(
                        exc, asyncpg.IntegrityConstraintViolationError) else as_rejected(exc)
                    self._reject(outbox, env.record, rej, outcome)
                    continue
            outbox.rows.extend(emitted.rows)

    async def _first_deliveries(self, conn: asyncpg.Connection, envelopes: list[Envelope[T]],
                                outbox: Outbox, outcome: _Outcome) -> list[Envelope[T]]:
        """The inbox, in bulk: envelopes seen for the first time, in order; the rest are
        duplicates (no effect) or conflicts (dead-lettered)."""
        first: dict[str, Envelope[T]] = {}
        repeats: list[Envelope[T]] = []
        for env in envelopes:
            if env.message_id in first:
                repeats.append(env)
            else:
                first[env.message_id] = env
        inserted = await self._record_ids(conn, first)
        again = [i for i in first if i not in inserted]
        seen = {r["message_id"]: bytes(r["digest"]) for r in await conn.fetch(
            "SELECT message_id, digest FROM inbox WHERE topic = $1"
            " AND message_id = ANY($2::text[])", self.topic, again)} if again else {}
        fresh = [env for i, env in first.items() if i in inserted]
        for env in [e for i, e in first.items() if i not in inserted] + repeats:
            if seen.get(env.message_id, first[env.message_id].digest) == env.digest:
                outcome.duplicates += 1
            else:
                self._reject(outbox, env.record, Rejected(
                    "id_conflict", f"id {env.message_id!r} was seen before with a different "
                    "payload"), outcome)
        return fresh

    async def _record_ids(self, conn: asyncpg.Connection,
                          first: dict[str, Envelope[T]]) -> set[str]:
        """Store the batch's ids; return those not seen before.

        A large batch is nearly always all new: it goes in by COPY (`copy_if_new`), and only
        if one id was seen before does the upsert run instead, which sorts them."""
        if await copy_if_new(conn, "inbox", INBOX_COLUMNS,
                             [(self.topic, i, e.digest) for i, e in first.items()]):
            return set(first)
        return {r["message_id"] for r in await conn.fetch(
            "INSERT INTO inbox (topic, message_id, digest)"
            " SELECT $1, * FROM unnest($2::text[], $3::bytea[]) ON CONFLICT DO NOTHING"
            " RETURNING message_id",
            self.topic, list(first), [e.digest for e in first.values()])}

    def _reject(self, outbox: Outbox, record: ConsumerRecord, rej: Rejected,
                outcome: _Outcome) -> None:
        log.warning("message.rejected", topic=record.topic, partition=record.partition,
                    offset=record.offset, error_code=rej.code, error=rej.message)
        dead_letter(outbox, record, rej.code, rej.message)
        outcome.dead_letters.append(rej.code)


@dataclass
class _Outcome:
    duplicates: int = 0
    dead_letters: list[str] = field(default_factory=list)


class CachedKeyPartitioner:
    """Kafka's default partitioner (murmur2 of the key, as the Java client), remembering the
    hashes of the keys it saw last: aiokafka's murmur2 is pure Python, and the same members'
    keys come back again and again. The same partition for a key as the default gives."""

    def __init__(self, size: int = 65_536) -> None:
        self.size = size
        self.hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int],
                 available: list[int]) -> int:
        if key is None:
            return DefaultPartitioner()(key, all_partitions, available)
        h = self.hashes.get(key)
        if h is None:
            if len(self.hashes) >= self.size:
                self.hashes.clear()  # bounded and simple: the hot keys come back at once
            h = self.hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]


OUTBOX_CHANNEL_PREFIX = "loyalty_outbox_"  # + the service's schema: see 0000_outbox_wakeup.sql
# A record batch per partition holds this much at most, where the producer's default is 16 KiB:
# a relay batch of 1,000 messages is then about one record batch per partition, and Tansu took
# a quarter less CPU per message produced (4.5 against 6 us; 1 MiB is a broker's usual limit).
RELAY_BATCH_BYTES = 128 * 1024


class OutboxRelay:
    """Publishes the service's outbox in order (acks=all), then deletes what the broker took."""

    def __init__(self, *, service: str, pool: asyncpg.Pool, bootstrap: str,
                 batch_size_max: int = 1000, poll_interval_s: float = 1.0,
                 retry_backoff_max_s: float = 5.0) -> None:
        self.service = service
        self.pool = pool
        self.bootstrap = bootstrap
        self.batch_size_max = batch_size_max
        self.poll_interval_s = poll_interval_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.wakeup = asyncio.Event()
        self.producer: AIOKafkaProducer | None = None
        self.partitioner = CachedKeyPartitioner()
        self._task: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self.backlog = 0

    async def start(self) -> None:
        from loyalty.settings import kafka_client_kwargs  # TLS / SASL from LOYALTY_KAFKA_*

        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False,
            linger_ms=2, max_batch_size=RELAY_BATCH_BYTES, partitioner=self.partitioner,
            client_id=f"loyalty-{self.service}-relay", **kafka_client_kwargs())
        await self.producer.start()
        self._task = asyncio.create_task(self._run(), name=f"{self.service}-outbox-relay")
        self._stats_task = asyncio.create_task(
            every(STATS_INTERVAL_S, self._stats, "outbox_stats"),
            name=f"{self.service}-outbox-stats")

    def notify(self, *_: object) -> None:
        """Publish now: called after a commit that added outbox rows (also as the LISTEN
        callback, whose connection, pid, channel and payload say nothing more)."""
        self.wakeup.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty; False if it is not within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not await self.pool.fetchval("SELECT EXISTS (SELECT FROM outbox)"):
                return True
            self.notify()
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        for task in (self._task, self._stats_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.producer is not None:
            await self.producer.stop()

    async def _run(self) -> None:
        backoff = RETRY_BACKOFF_START_S
        while True:
            try:
                async with self.pool.acquire() as lock_conn:
                    await self._lead(lock_conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox.relay_failed", retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.retry_backoff_max_s)

    async def _lead(self, lock_conn: asyncpg.Connection) -> None:
        # One active relay per service keeps the outbox order; replicas wait as standbys.
        while not await lock_conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtext('loyalty.outbox.' || current_schema()))"):
            await asyncio.sleep(1.0)
        # Any commit that adds outbox rows, on any replica, wakes us (0000_outbox_wakeup.sql);
        # our own consumers also call `notify` directly, which saves the round trip.
        channel = OUTBOX_CHANNEL_PREFIX + await lock_conn.fetchval("SELECT current_schema()")
        await lock_conn.add_listener(channel, self.notify)
        try:
            while True:
                published = await self._publish_once()
                if published < self.batch_size_max:
                    self.wakeup.clear()
                    try:
                        await asyncio.wait_for(self.wakeup.wait(), self.poll_interval_s)
                    except TimeoutError:
                        pass
        finally:
            if not lock_conn.is_closed():
                await lock_conn.remove_listener(channel, self.notify)
                await lock_conn.execute(
                    "SELECT pg_advisory_unlock(hashtext('loyalty.outbox.' || current_schema()))")

    async def _publish_once(self) -> int:
        assert self.producer is not None
        rows = await self.pool.fetch(
            "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1",
            self.batch_size_max)
        if not rows:
            return 0
        await asyncio.gather(*await self._send(rows))
        await self.pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])",
                                [r["id"] for r in rows])
        for topic, n in collections.Counter(row["topic"] for row in rows).items():
            metrics.MESSAGES_PRODUCED.labels(self.service, topic).inc(n)
        return len(rows)

    async def _send(self, rows: list[asyncpg.Record]) -> list[asyncio.Future[Any]]:
        """Hand `rows` to the producer as one record batch per partition at a time, in id
        order within each partition; the futures of the batches.

        A future per message (`producer.send`) cost about three times the CPU per message:
        each is a coroutine, a size estimate and a callback when the broker answers.
        """
        assert self.producer is not None
        producer = self.producer
        partitions: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], BatchBuilder] = {}
        futures = []
        for row in rows:
            topic, key, value = row["topic"], row["key"], row["value"]
            if topic not in partitions:
                partitions[topic] = sorted(await producer.partitions_for(topic))
            target = (topic, self.partitioner(key, partitions[topic], partitions[topic]))
            headers = [(k, v.encode()) for k, v in row["headers"].items()]
            batch = open_batches.get(target)
            if batch is None or batch.append(timestamp=None, key=key, value=value,
                                             headers=headers) is None:
                if batch is not None:  # full: it goes, and this message opens the next one
                    futures.append(await producer.send_batch(batch, topic, partition=target[1]))
                batch = open_batches[target] = producer.create_batch()
                # A batch's first record always fits (a large one makes a batch of its own).
                batch.append(timestamp=None, key=key, value=value, headers=headers)
        for (topic, partition), batch in open_batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    async def _stats(self) -> None:
        # From the two ends of the id index, not count(*): the relay deletes every row it
        # publishes, and until autovacuum comes (a minute apart by default) count(*) read
        # each dead row. At 2,000 purchases/s that was 35-72 ms a call, a tenth of what
        # Postgres executed. Ids taken by rolled-back transactions inside the range count
        # too, so the backlog may be over by those; an empty outbox always reads 0.
        row = await self.pool.fetchrow(
            "SELECT (SELECT max(id) FROM outbox) - first.id + 1 AS n,"
            " extract(epoch FROM now() - first.created_at) AS age"
            " FROM (SELECT id, created_at FROM outbox ORDER BY id LIMIT 1) first")
        n, age = (row["n"], float(row["age"])) if row is not None else (0, 0.0)
        self.backlog = n
        metrics.OUTBOX_BACKLOG.labels(self.service).set(n)
        metrics.OUTBOX_OLDEST_AGE_SECONDS.labels(self.service).set(age)
        metrics.DB_POOL_SIZE.labels(self.service).set(self.pool.get_size())
        metrics.DB_POOL_IN_USE.labels(self.service).set(
            self.pool.get_size() - self.pool.get_idle_size())