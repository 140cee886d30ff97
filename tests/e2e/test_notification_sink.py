"""`loyalty up`'s notification log sink, on the real broker: what it prints, and from when."""

from __future__ import annotations

import asyncio
import time

import pytest

from loyalty import cli, topics
from loyalty.testing import unique, unique_phone

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _notification(channel: str, to: str, template: str, body: str) -> dict[str, str]:
    return {"notification_id": unique("n"), "type": "notification.requested",
            "occurred_at": "2026-11-24T10:00:00+00:00", "channel": channel, "to": to,
            "locale": "en", "template": template, "body": body,
            "program_id": "coffee-club", "member_id": unique("m")}


async def _printed(capsys: pytest.CaptureFixture[str], marker: str, count: int) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines += [line for line in capsys.readouterr().out.splitlines() if marker in line]
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(lines)} of {count} lines with {marker!r} printed: {lines}")


async def test_the_sink_prints_what_comes_after_it_opened_masked_and_without_codes(
        infra, kafka_client, capsys):
    marker = unique("sink")
    phone = unique_phone()
    await kafka_client.publish(topics.NOTIFICATIONS_SMS, _notification(
        "sms", phone, "points_earned", f"{marker} before the sink opened"))
    consumer = await cli._open_sink(infra.kafka_bootstrap)
    stop = asyncio.Event()
    task = asyncio.create_task(cli._sink(consumer, stop))
    try:
        await kafka_client.publish(topics.NOTIFICATIONS_SMS, _notification(
            "sms", phone, "points_earned", f"{marker} you earned 396 points"))
        await kafka_client.publish(topics.NOTIFICATIONS_EMAIL, _notification(
            "email", f"ona@{marker}.example", "reward_fulfilled", "your code ABCD-1234"))
        email, sms = sorted(await _printed(capsys, marker, 2))  # "[notification] email" first
    finally:
        stop.set()
        await task
    assert email.startswith("[notification] email to ")
    assert f"ona@{marker}" not in email and "ABCD-1234" not in email
    assert email.endswith("(en, reward_fulfilled): [code withheld]")
    assert "you earned 396 points" in sms and phone not in sms
    assert "before the sink opened" not in capsys.readouterr().out
