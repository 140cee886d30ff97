"""Logs never carry full phone numbers, e-mails or reward codes."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from loyalty.logging import configure_logging, correlation, mask_pii


@pytest.mark.parametrize(("text", "masked"), [
    ("+37060000001", "+3706*****01"),
    ("call +370 600 00001 now", "call +370 *******01 now"),
    ("jonas.jonaitis@example.com", "j***@example.com"),
    ("to a@b.lt and +48500100200", "to a***@b.lt and +4850*****00"),
])
def test_phones_and_emails_are_masked(text: str, masked: str) -> None:
    assert mask_pii(text) == masked


@pytest.mark.parametrize("text", [
    "1bb78aba-6601-4a84-be82-20b972590182",  # a UUID is not a phone number
    "pos-7781-000123",
    "order A-1001 of 12.40 EUR",
    "balance 1240",
])
def test_ids_and_amounts_are_left_alone(text: str) -> None:
    assert mask_pii(text) == text


@pytest.fixture
def json_logs():
    configure_logging("probe", "INFO")
    yield
    structlog.reset_defaults()


def test_log_lines_are_json_with_correlation_and_no_secrets(json_logs, capsys) -> None:
    log = structlog.get_logger("probe")
    with correlation("corr-1"):
        log.info("reward.delivered", to="+37060000001", code="GIFT-ABCD-1234",
                 note="sent to jonas@example.com")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["correlation_id"] == "corr-1" and line["service"] == "probe"
    assert line["code"] == "***" and line["to"] == "***"
    assert line["note"] == "sent to j***@example.com"
    assert "37060000001" not in json.dumps(line) and "GIFT-ABCD" not in json.dumps(line)


def test_tracebacks_are_masked_too(json_logs, capsys) -> None:
    log = structlog.get_logger("probe")
    try:
        raise ValueError("Key (kind, value)=(phone, +37060000001) already exists")
    except ValueError:
        log.exception("batch.failed")
    try:
        raise ValueError("duplicate e-mail jonas@example.com")
    except ValueError:
        logging.getLogger("asyncpg.probe").exception("from the standard library")
    err = capsys.readouterr().err
    assert "+3706*****01" in err and "j***@example.com" in err
    assert "37060000001" not in err and "jonas@example.com" not in err


def test_a_correlation_id_holds_inside_its_block_only(json_logs, capsys) -> None:
    log = structlog.get_logger("probe")
    with correlation("outer"):
        with correlation("inner"):
            log.info("a")
        logging.getLogger("aiokafka").warning("b")  # the standard library's loggers too
    log.info("c")
    with correlation(None):
        log.info("d")
    lines = [json.loads(x) for x in capsys.readouterr().err.strip().splitlines()]
    assert [line.get("correlation_id") for line in lines] == ["inner", "outer", None, None]
