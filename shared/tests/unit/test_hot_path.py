"""The shortcuts the consumer and relay hot path takes give exactly what the slow way gives."""

from __future__ import annotations

import hashlib
import json
import random
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from loyalty.clock import stable_id, uuid5_text
from loyalty.messaging import CachedKeyPartitioner, Rejected, parse_json_object, payload_digest
from loyalty.notifications import NOTIFICATION_NAMESPACE, notification_id


def slow_digest(payload: dict) -> bytes:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).digest()


@pytest.mark.parametrize("payload", [
    {"event_id": "e-1", "total": "12.40", "items": [{"sku": "LATTE", "quantity": 2}]},
    {"z": 1, "a": {"é": "ü\u001f\u2028", "b": [1, -2, {"y": None, "x": True}]}, "😀": "x"},
    {"big": 2**70, "neg": -(2**63), "nested": {"b": 1, "a": [2, 3]}},  # beyond orjson's ints
])
def test_digest_is_the_canonical_json_digest_it_always_was(payload: dict) -> None:
    # Inbox rows written before the change must still match a redelivery after it.
    assert payload_digest(payload) == slow_digest(payload)


def test_digest_ignores_key_order() -> None:
    assert payload_digest({"a": 1, "b": {"c": 2, "d": 3}}) == payload_digest(
        {"b": {"d": 3, "c": 2}, "a": 1})


@pytest.mark.parametrize("raw", [
    b'{"a": "x\\u0000"}', b'{"a\\u0000": 1}', b'{"a": [{"b": "\\u0000"}]}',
])
def test_escaped_nul_is_still_refused(raw: bytes) -> None:
    with pytest.raises(Rejected) as info:
        parse_json_object(raw)
    assert info.value.code == "invalid_field"


@pytest.mark.parametrize("raw", [b'{"a": "\\ud800"}', b'{"a": "x\x00"}', b"[1]", b"NaN"])
def test_what_orjson_refuses_is_still_refused(raw: bytes) -> None:
    with pytest.raises(Rejected):
        parse_json_object(raw)


def test_an_escaped_backslash_before_u0000_is_text_not_nul() -> None:
    assert parse_json_object(b'{"a": "\\\\u0000"}') == {"a": "\\u0000"}


def test_cached_partitioner_agrees_with_kafkas_default() -> None:
    cached, default, rng = CachedKeyPartitioner(size=50), DefaultPartitioner(), random.Random(7)
    for n in (1, 6, 12):
        partitions = list(range(n))
        for _ in range(2_000):
            key = f"member-{rng.randint(0, 400)}".encode()
            assert cached(key, partitions, partitions) == default(key, partitions, partitions)
    assert len(cached.hashes) <= 50  # bounded
    assert cached(None, [0, 1, 2], [1]) == 1  # no key: an available partition


@given(st.text(), st.sampled_from([uuid.NAMESPACE_URL, uuid.NAMESPACE_DNS, uuid.uuid4()]))
def test_uuid5_text_is_the_standard_uuid5(name: str, namespace: uuid.UUID) -> None:
    # Ids already published (ledger events, notifications) must come out the same again.
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))


def test_stable_and_notification_ids_are_unchanged() -> None:
    # Pinned values: the ids a redelivery must reproduce for the consumers' de-duplication.
    assert stable_id("ledger", "purchase:e-1", "credit") == str(
        uuid.uuid5(uuid.NAMESPACE_URL, "loyalty:ledger|purchase:e-1|credit"))
    assert notification_id("points_earned", "sms", "f-1") == str(
        uuid.uuid5(NOTIFICATION_NAMESPACE, '["points_earned", "sms", "f-1"]'))
