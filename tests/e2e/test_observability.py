"""What SRE dashboards and alerts read from the expiry-scheduler and reward-fulfilment:
sweep durations, and reward orders not yet final by age (stuck orders)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

WAIT_S = 30.0


async def samples(url: str, name: str) -> dict[tuple, float]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name}


async def eventually(url: str, name: str) -> dict[tuple, float]:
    deadline = time.monotonic() + WAIT_S
    while not (found := await samples(url, name)) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return found


async def test_each_sweep_is_timed(platform) -> None:
    found = await eventually(platform.services["expiry-scheduler"].url,
                             "loyalty_expiry_sweep_seconds_count")
    assert sum(found.values()) >= 1  # the first sweep runs at start


async def test_open_reward_orders_are_counted_by_age(platform) -> None:
    found = await eventually(platform.services["reward-fulfilment"].url,
                             "loyalty_reward_orders_open")
    ages = {dict(labels)["age"] for labels in found}
    assert ages == {"under_1m", "1m_to_15m", "over_15m"}
    assert all(value >= 0 for value in found.values())
