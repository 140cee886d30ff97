"""The hostile-input corpus: what a broken till or an attacker sends never stops a consumer.

For every input topic, each bad case is published on one key (so one partition), and each is
followed there by a valid message. Every bad one must reach `<topic>.dlq` with its original
bytes and the expected `error.code`; every valid one must take effect. A new input topic joins
by adding a `TopicCorpus` to `CORPORA` (its cases, a valid message, and how to see it applied).

The same corpus drives `tests/bench/bench_hostile_input.py`, which runs it many times over.
The HTTP routes of all four services get the same treatment at the end.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from loyalty import topics
from loyalty.testing import Api, Kafka, purchase_event, unique, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PROGRAM = "coffee-club"
OCTOBER = "2026-10-20T10:15:00+03:00"
DELETE = object()
DEEP = b"[" * 100_000 + b"]" * 100_000  # RecursionError for a recursive JSON parser
BIG_ID = "x" * 300_000
APPLY_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Case:
    """One hostile message: `raw(previous_valid)` are its bytes; `code` is the DLQ code."""

    name: str
    code: str
    raw: Callable[[dict[str, Any]], bytes]


def changed(base: Callable[[], dict[str, Any]], *edits: tuple[str, Any]) -> Callable[..., bytes]:
    """A valid message with fields replaced (dotted paths; `DELETE` removes the field)."""

    def build(_: dict[str, Any]) -> bytes:
        message = base()
        for path, value in edits:
            *parents, last = path.split(".")
            node: Any = message
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if value is DELETE:
                del node[last]
            else:
                node[last] = value
        return json.dumps(message).encode()

    return build


def literal(raw: bytes) -> Callable[..., bytes]:
    return lambda _: raw


def spliced(base: Callable[[], dict[str, Any]], field_name: str, raw_value: bytes
            ) -> Callable[..., bytes]:
    """A valid message whose `field_name` is replaced by raw JSON text (NaN, 1e400, deep)."""

    def build(_: dict[str, Any]) -> bytes:
        message = base()
        message[field_name] = "@@SPLICE@@"
        return json.dumps(message).encode().replace(b'"@@SPLICE@@"', raw_value)

    return build


def conflicting(field_name: str, value: Any) -> Callable[[dict[str, Any]], bytes]:
    """The previous valid message's id with another payload."""

    def build(previous: dict[str, Any]) -> bytes:
        other = copy.deepcopy(previous)
        other[field_name] = value
        return json.dumps(other).encode()

    return build


def common_cases(base: Callable[[], dict[str, Any]], id_field: str = "event_id") -> list[Case]:
    """What every JSON input topic must refuse, whatever its schema."""
    return [
        Case("not json", "malformed_json", literal(b"{not json")),
        Case("empty value", "malformed_json", literal(b"")),
        Case("not utf-8", "malformed_json", literal(b"\xff\xfe{}")),
        Case("a json array", "malformed_json", literal(b"[1, 2, 3]")),
        Case("a json string", "malformed_json", literal(b'"purchase"')),
        Case("json null", "malformed_json", literal(b"null")),
        Case("100,000-deep nesting", "malformed_json", spliced(base, "deep", DEEP)),
        Case("NaN literal", "malformed_json", spliced(base, "nan", b"NaN")),
        Case("NUL in a key", "invalid_field", changed(base, ("a\u0000b", 1))),
        Case(f"NUL in {id_field}", "invalid_field", changed(base, (id_field, "e\u0000"))),
        Case(f"lone surrogate in {id_field}", "invalid_field",
             changed(base, (id_field, "e\ud800x"))),
        Case(f"300 KB {id_field}", "invalid_field", changed(base, (id_field, BIG_ID))),
        Case(f"{id_field} of the wrong type", "invalid_field", changed(base, (id_field, 12345))),
        Case(f"{id_field} missing", "missing_field", changed(base, (id_field, DELETE))),
    ]


@dataclass
class TopicCorpus:
    topic: str
    valid: Callable[[], dict[str, Any]]  # a fresh valid message
    applied: Callable[[dict[str, str], dict[str, Any]], Awaitable[bool]]  # (apis, message)
    cases: list[Case] = field(default_factory=list)
    key: Callable[[str], str] = lambda run: run


# --- purchases ---------------------------------------------------------------------------

def valid_purchase() -> dict[str, Any]:
    return purchase_event({"phone": unique_phone()}, "1.00")


async def earn_outcome(apis: dict[str, Api], message: dict[str, Any]) -> bool:
    status, body = await apis["earn"].get(
        f"/v1/programs/{message['program_id']}/events/{message['event_id']}")
    return status == 200 and body.get("status") in ("credited", "debited")


P = valid_purchase
PURCHASES = TopicCorpus(topics.PURCHASES, P, earn_outcome, [
    *common_cases(P),
    Case("NaN as money", "invalid_field", changed(P, ("total", "NaN"))),
    Case("Infinity as money", "invalid_field", changed(P, ("total", "Infinity"))),
    Case("1e400 as money (string)", "invalid_field", changed(P, ("total", "1e400"))),
    Case("1e400 as money (number)", "invalid_field", spliced(P, "total", b"1e400")),
    Case("money as a float", "invalid_field", changed(P, ("total", 12.4))),
    Case("negative total", "invalid_field", changed(P, ("total", "-5.00"))),
    Case("huge total", "invalid_field", changed(P, ("total", "1" * 30))),
    Case("quantity 2^63", "invalid_field", changed(P, ("items.0.quantity", 2**63))),
    Case("negative quantity", "invalid_field", changed(P, ("items.0.quantity", -1))),
    Case("customer missing", "missing_field", changed(P, ("customer", DELETE))),
    Case("customer without identifiers", "invalid_field", changed(P, ("customer", {}))),
    Case("order_id a list", "invalid_field", changed(P, ("order_id", ["A-1"]))),
    Case("unknown type", "invalid_field", changed(P, ("type", "purchase.exploded"))),
    Case("unknown channel", "invalid_field", changed(P, ("channel", "telepathy"))),
    Case("timestamp without offset", "invalid_field",
         changed(P, ("occurred_at", "2026-11-22T10:15:00"))),
    Case("timestamp that is not one", "invalid_field", changed(P, ("occurred_at", "yesterday"))),
    Case("NUL in order_id", "invalid_field", changed(P, ("order_id", "A-\u00001"))),
    Case("NUL in store_id", "invalid_field", changed(P, ("store_id", "vilnius\u0000"))),
    Case("NUL in program_id", "invalid_field", changed(P, ("program_id", "coffee\u0000club"))),
    Case("NUL in phone", "invalid_field", changed(P, ("customer.phone", "+3706\u00001234"))),
    Case("NUL in sku", "invalid_field", changed(P, ("items.0.sku", "\u0000"))),
    Case("lone surrogate in order_id", "invalid_field", changed(P, ("order_id", "\udc00"))),
    Case("lone surrogate in email", "invalid_field",
         changed(P, ("customer", {"email": "a\ud83d@x.com"}))),
    Case("1,001 items", "invalid_field", changed(P, ("items", [
        {"sku": "S", "quantity": 1, "unit_price": "0.01"}] * 1001))),
    Case("unknown program", "unknown_program", changed(P, ("program_id", "no-such-program"))),
    Case("return of an unknown order", "unknown_order",
         changed(P, ("type", "purchase.returned"), ("order_id", "never-sold"))),
    Case("a locale that does not exist", "invalid_field", changed(P, ("locale", "xx-XX"))),
    Case("a path as locale", "invalid_field", changed(P, ("locale", "../../etc/passwd"))),
    Case("a phone that is not one", "invalid_phone", changed(P, ("customer", {"phone": "+1"}))),
    Case("an e-mail that is not one", "invalid_email",
         changed(P, ("customer", {"email": "not-an-email"}))),
    Case("currency in lower case", "invalid_field", changed(P, ("currency", "eur"))),
    Case("another currency than the program's", "currency_mismatch",
         changed(P, ("currency", "USD"))),
    Case("same event id, another payload", "id_conflict", conflicting("total", "99.00")),
])

# --- activities --------------------------------------------------------------------------


def valid_activity() -> dict[str, Any]:
    return {"event_id": unique("act"), "type": "activity.completed", "occurred_at": OCTOBER,
            "program_id": PROGRAM, "customer": {"phone": unique_phone()}, "activity": "survey"}


A = valid_activity
ACTIVITIES = TopicCorpus(topics.ACTIVITIES, A, earn_outcome, [
    *common_cases(A),
    Case("activity missing", "missing_field", changed(A, ("activity", DELETE))),
    Case("unknown activity", "unknown_activity", changed(A, ("activity", "skydiving"))),
    Case("NUL in activity", "invalid_field", changed(A, ("activity", "sur\u0000vey"))),
    Case("unknown type", "invalid_field", changed(A, ("type", "activity.failed"))),
    Case("timestamp without offset", "invalid_field",
         changed(A, ("occurred_at", "2026-10-20 10:15"))),
    Case("unknown program", "unknown_program", changed(A, ("program_id", "nope"))),
    Case("identifiers all null", "invalid_field", changed(A, ("customer", {"phone": None}))),
    Case("lone surrogate in customer_id", "invalid_field",
         changed(A, ("customer", {"customer_id": "c\udfff"}))),
    Case("a locale that does not exist", "invalid_field", changed(A, ("locale", "zz"))),
    Case("same event id, another payload", "id_conflict", conflicting("activity", "review")),
])

# --- adjustments -------------------------------------------------------------------------


def valid_adjustment() -> dict[str, Any]:
    return {"event_id": unique("adj"), "type": "points.adjusted", "occurred_at": OCTOBER,
            "program_id": PROGRAM, "customer": {"phone": unique_phone()}, "points": 150,
            "reason": "missing purchase A-0999", "actor": "agent-17"}


J = valid_adjustment
ADJUSTMENTS = TopicCorpus(topics.ADJUSTMENTS, J, earn_outcome, [
    *common_cases(J),
    Case("points 10^30", "invalid_field", changed(J, ("points", 10**30))),
    Case("points -10^30", "invalid_field", changed(J, ("points", -(10**30)))),
    Case("points 2^63", "invalid_field", changed(J, ("points", 2**63))),
    Case("points as a string", "invalid_field", changed(J, ("points", "150"))),
    Case("fractional points", "invalid_field", changed(J, ("points", 1.5))),
    Case("zero points", "invalid_field", changed(J, ("points", 0))),
    Case("points 1e400", "invalid_field", spliced(J, "points", b"1e400")),
    Case("points -Infinity literal", "malformed_json", spliced(J, "points", b"-Infinity")),
    Case("reason missing", "missing_field", changed(J, ("reason", DELETE))),
    Case("300 KB reason", "invalid_field", changed(J, ("reason", BIG_ID))),
    Case("NUL in actor", "invalid_field", changed(J, ("actor", "agent\u000017"))),
    Case("unknown program", "unknown_program", changed(J, ("program_id", "nope"))),
    Case("same event id, another payload", "id_conflict", conflicting("points", 151)),
])

# --- programs ----------------------------------------------------------------------------


def valid_program() -> dict[str, Any]:
    """A program of its own each time (the key is shared, so the partition is too)."""
    return {"type": "program.defined", "event_id": unique("prog"), "id": unique("corpus"),
            "name": "Corpus Club", "currency": "EUR", "earning": {"points_per_unit": 1}}


async def program_applied(apis: dict[str, Api], message: dict[str, Any]) -> bool:
    status, _ = await apis["earn"].get(f"/v1/programs/{message['id']}")
    return status == 200


G = valid_program
PROGRAMS = TopicCorpus(topics.PROGRAMS, G, program_applied, [
    *common_cases(G, id_field="id")[:9],  # programs have no inbox: no id cases but NUL/types
    Case("NUL in name", "invalid_field", changed(G, ("name", "Coffee\u0000Club"))),
    Case("lone surrogate in name", "invalid_field", changed(G, ("name", "\ud800"))),
    Case("NUL in id", "invalid_field", changed(G, ("id", "corpus\u0000"))),
    Case("currency missing", "invalid_program", changed(G, ("currency", DELETE))),
    Case("points_per_unit 1e30", "invalid_program", changed(G, ("earning.points_per_unit",
                                                                "1e30"))),
    Case("NaN multiplier", "invalid_program",
         changed(G, ("earning", {"points_per_unit": 1, "category_multipliers": {"x": "NaN"}}))),
    Case("a time zone that does not exist", "invalid_program",
         changed(G, ("time_zone", "Mars/Olympus_Mons"))),
    Case("a locale that does not exist", "invalid_program", changed(G, ("default_locale", "qq"))),
    Case("sku bonus 2^63", "invalid_program",
         changed(G, ("earning", {"points_per_unit": 1, "sku_bonus": {"X": 2**63}}))),
])

# --- redemptions -------------------------------------------------------------------------


def valid_redemption() -> dict[str, Any]:
    """A well-formed request of a shopper the platform has never seen: it takes effect as an
    order (`rejected`: unknown member), which is all the corpus needs to see."""
    return {"event_id": unique("red"), "type": "redemption.requested", "occurred_at": OCTOBER,
            "program_id": PROGRAM, "customer": {"phone": unique_phone()},
            "reward_id": "mug", "quantity": 1, "delivery": {"channel": "sms"}}


async def order_exists(apis: dict[str, Api], message: dict[str, Any]) -> bool:
    status, _ = await apis["reward-fulfilment"].get(f"/v1/orders/{message['event_id']}")
    return status == 200


def cancellation(order_id: str) -> dict[str, Any]:
    """A cancellation of `order_id` with a fresh event id (a repeated id would be a
    duplicate, rightly ignored, when the corpus runs several rounds)."""
    return {"event_id": unique("cancel"), "type": "redemption.cancelled",
            "occurred_at": OCTOBER, "program_id": PROGRAM, "order_id": order_id,
            "reason": "customer complaint"}


R = valid_redemption
REDEMPTIONS = TopicCorpus(topics.REDEMPTIONS, R, order_exists, [
    *common_cases(R),
    Case("unknown type", "invalid_field", changed(R, ("type", "redemption.exploded"))),
    Case("quantity 0", "invalid_field", changed(R, ("quantity", 0))),
    Case("quantity 2^63", "invalid_field", changed(R, ("quantity", 2**63))),
    Case("quantity as a string", "invalid_field", changed(R, ("quantity", "1"))),
    Case("unknown delivery channel", "invalid_field",
         changed(R, ("delivery", {"channel": "pigeon"}))),
    Case("NUL in reward_id", "invalid_field", changed(R, ("reward_id", "gift\u000010"))),
    Case("reward_id missing", "missing_field", changed(R, ("reward_id", DELETE))),
    Case("a phone that is not one", "invalid_phone", changed(R, ("customer", {"phone": "12"}))),
    Case("a locale that does not exist", "invalid_field", changed(R, ("locale", "xx-XX"))),
    Case("cancelling an unknown order", "unknown_order",
         changed(lambda: cancellation("no-such-order"))),
    Case("cancellation without a reason", "missing_field",
         changed(lambda: cancellation("o"), ("reason", DELETE))),
    Case("same event id, another payload", "id_conflict", conflicting("reward_id", "gift-card-10")),
])

CORPORA = [PURCHASES, ACTIVITIES, ADJUSTMENTS, PROGRAMS, REDEMPTIONS]


# --- the run -----------------------------------------------------------------------------

@dataclass
class Published:
    topic: str
    case: Case
    raw: bytes
    partition: int
    offset: int


async def publish_corpus(kafka_client: Kafka, corpus: TopicCorpus, run: str, rounds: int = 1
                         ) -> tuple[list[Published], list[dict[str, Any]]]:
    """Every case, each followed by a valid message, on one key; `rounds` times over."""
    producer = kafka_client.producer
    key = corpus.key(run).encode()
    bad: list[Published] = []
    valid: list[dict[str, Any]] = []
    previous = corpus.valid()
    await producer.send_and_wait(corpus.topic, json.dumps(previous).encode(), key=key)
    valid.append(previous)
    for _ in range(rounds):
        for case in corpus.cases:
            raw = case.raw(previous)
            meta = await producer.send_and_wait(corpus.topic, raw, key=key)
            bad.append(Published(corpus.topic, case, raw, meta.partition, meta.offset))
            previous = corpus.valid()
            await producer.send_and_wait(corpus.topic, json.dumps(previous).encode(), key=key)
            valid.append(previous)
    return bad, valid


async def dead_letters_of(kafka_client: Kafka, bad: list[Published], timeout_s: float
                          ) -> dict[tuple[int, int], tuple[str, bytes]]:
    """(partition, offset) -> (error.code, value) of the dead letters of `bad`'s records."""
    wanted = {(p.partition, p.offset) for p in bad}
    found: dict[tuple[int, int], tuple[str, bytes]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in await kafka_client.read_all(topics.dlq(bad[0].topic)):
            headers = {k: v.decode() for k, v in record.headers}
            if headers.get("original.topic") != bad[0].topic:
                continue  # another test's probe on the same topic
            at = (int(headers["original.partition"]), int(headers["original.offset"]))
            if at in wanted:
                found[at] = (headers["error.code"], record.value)
        if wanted <= found.keys():
            break
        await asyncio.sleep(0.5)
    return found


async def not_applied(apis: dict[str, Api], corpus: TopicCorpus, valid: list[dict[str, Any]],
                      timeout_s: float) -> list[dict[str, Any]]:
    """The valid messages that have not taken effect within `timeout_s` (empty: all did)."""
    pending = list(valid)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pending = [m for m in pending if not await corpus.applied(apis, m)]
        if pending:
            await asyncio.sleep(0.5)
    return pending


def apis_of(platform, api_token: str) -> dict[str, Api]:
    return {name: Api(service.url, api_token) for name, service in platform.services.items()}


def test_the_corpus_is_big_enough_and_names_its_cases_once() -> None:
    for corpus in CORPORA:
        names = [c.name for c in corpus.cases]
        assert len(names) == len(set(names)), corpus.topic
    assert sum(len(c.cases) for c in CORPORA) >= 60


@pytest.mark.parametrize("corpus", CORPORA, ids=lambda c: c.topic)
async def test_every_bad_message_is_dead_lettered_and_every_valid_one_applies(
        platform, api_token, kafka_client: Kafka, corpus: TopicCorpus) -> None:
    bad, valid = await publish_corpus(kafka_client, corpus, unique("corpus"))

    dead = await dead_letters_of(kafka_client, bad, APPLY_TIMEOUT_S)
    wrong = [(p.case.name, dead.get((p.partition, p.offset), ("(none)",))[0], p.case.code)
             for p in bad if dead.get((p.partition, p.offset), ("",))[0] != p.case.code]
    assert wrong == [], "cases dead-lettered with another code (case, got, expected)"
    assert all(dead[(p.partition, p.offset)][1] == p.raw for p in bad), "bytes not kept"

    missing = await not_applied(apis_of(platform, api_token), corpus, valid, APPLY_TIMEOUT_S)
    assert missing == [], f"{len(missing)} of {len(valid)} valid messages never took effect"


# --- HTTP --------------------------------------------------------------------------------

MEMBER = "phone:+37060000001"
# Any parameter holding NUL or bytes that are not UTF-8 is refused, used by the route or not.
ANY_ROUTE_PARAMS = ["?limit=%00", "?to=%00", "?format=%FF", "?x%00=1"]
PAGE_PARAMS = ["?limit=abc", "?limit=99999999999999999999999", "?limit=-1", "?cursor=%00",
               "?cursor=garbage", "?limit=0"]
PERIOD_PARAMS = ["?from=not-a-date", "?to=%00", "?from=2026-13-45", "?format=xml",
                 "?from=2027-01-01T00:00:00Z&to=2026-01-01T00:00:00Z"]
ROUTES = [  # (service, path template, a well-formed {s}, the parameters the route takes)
    ("earn", "/v1/programs/{s}", "coffee-club", []),
    ("earn", "/v1/programs/coffee-club/events/{s}", "pos-1", []),
    ("ledger", "/v1/programs/{s}/members/" + MEMBER, "coffee-club", []),
    ("ledger", "/v1/programs/coffee-club/members/{s}", MEMBER, []),
    ("ledger", "/v1/programs/coffee-club/members/{s}/transactions", MEMBER, PAGE_PARAMS),
    ("ledger", "/v1/programs/{s}/liability", "coffee-club", []),
    ("expiry-scheduler", "/v1/programs/{s}/expirations", "coffee-club", PERIOD_PARAMS),
    ("expiry-scheduler", "/v1/programs/coffee-club/members/{s}/expirations", MEMBER, []),
    ("reward-fulfilment", "/v1/programs/{s}/rewards", "coffee-club", []),
    ("reward-fulfilment", "/v1/orders/{s}", "order-1", []),
]
SEGMENTS = ["%00", "a%00b", "%ED%A0%80", "%FF%FE", "x" * 300_000, "..%2F..%2Fetc%2Fpasswd",
            "email:%00@x.com", "phone:%00", "phone:+1", "card:", "customer:%F0%9F%92%A9",
            "%2500", "%C0%80"]


async def test_malformed_path_segments_and_parameters_are_4xx_with_the_error_body(
        platform, api_token) -> None:
    apis = apis_of(platform, api_token)
    failures = []
    for service, template, normal, params in ROUTES:
        targets = [template.format(s=s) for s in SEGMENTS]
        targets += [template.format(s=normal) + p for p in [*ANY_ROUTE_PARAMS, *params]]
        for target in targets:
            status, body = await apis[service].get(target)
            ok = 400 <= status < 500 and isinstance(body, dict) and isinstance(
                body.get("error", {}).get("code"), str)
            if not ok:
                failures.append((service, target[:80], status, str(body)[:120]))
    assert failures == [], "\n".join(map(str, failures))
