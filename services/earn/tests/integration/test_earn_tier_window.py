"""What a member earned in the 12 months before each event of a batch, as the batch repository
loads it (one sum per member for what every event's window holds, rows only for the rest),
equals the plain sum over all their orders and awards: with returns in the batch, new orders
and awards, and events spread over weeks (real PostgreSQL; random histories)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from earn.adapters.batch import BatchEarnRepository
from earn.domain.rules import TIER_WINDOW

pytestmark = pytest.mark.integration

PROGRAM = "coffee-club"
T0 = datetime(2026, 10, 20, 10, 0, tzinfo=UTC)
DAYS = st.integers(-420, 40)  # around a year back from T0, and a little after

history = st.fixed_dictionaries({
    # (day offset, points, points already reversed out of them)
    "orders": st.lists(st.tuples(DAYS, st.integers(0, 500), st.integers(0, 100)), max_size=25),
    "awards": st.lists(st.tuples(DAYS, st.integers(-200, 300)), max_size=8),
    # the batch: its events (day offsets), the orders it returns (index, points), its new
    # orders and awards (day offset, points)
    "events": st.lists(st.integers(0, 40), min_size=1, max_size=6),
    "returns": st.lists(st.tuples(st.integers(0, 24), st.integers(0, 100)), max_size=5),
    "new_orders": st.lists(st.tuples(st.integers(0, 40), st.integers(0, 500)), max_size=3),
    "new_awards": st.lists(st.tuples(st.integers(0, 40), st.integers(-50, 50)), max_size=3),
})


def at(day: int) -> datetime:
    """Whole days: an order or award often falls exactly where a window starts."""
    return T0 + timedelta(days=day)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(h=history)
async def test_points_of_the_last_12_months_are_the_plain_sum(earn, h) -> None:
    member, phone = f"m-{uuid.uuid4().hex[:12]}", f"+3706{uuid.uuid4().int % 10**7:07d}"
    # Besides the random ones, an order and an award exactly where each event's window
    # starts, and a day before: the edges are where a window is easiest to get wrong.
    edges = [d - 365 + shift for d in h["events"] for shift in (0, -1)]
    orders = {f"o-{member}-{i}": [at(day), points, min(rev, points)] for i, (day, points, rev)
              in enumerate([*h["orders"], *((day, 10 + i, 0) for i, day in enumerate(edges))])}
    awards = [(at(day), points) for day, points in [*h["awards"], *((day, 3) for day in edges)]]
    async with earn.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO members (member_id, program_id, locale, enrolled_at)"
                           " VALUES ($1, $2, 'lt', $3)", member, PROGRAM, at(-500))
        await conn.execute("INSERT INTO identifiers VALUES ($1, 'phone', $2, $3, $4)",
                           PROGRAM, phone, member, at(-500))
        await conn.executemany(
            "INSERT INTO orders (program_id, order_id, event_id, member_id, program_version,"
            " channel, currency, total, points, breakdown, points_reversed, occurred_at)"
            " VALUES ($1, $2, $2, $3, 1, 'pos', 'EUR', 1, $4, '[]', $5, $6)",
            [(PROGRAM, o, member, p, r, t) for o, (t, p, r) in orders.items()])
        await conn.executemany(
            "INSERT INTO awards VALUES ($1, $2, $3, 'activity', $4, 'r', $5)",
            [(f"a-{member}-{i}", PROGRAM, member, p, t) for i, (t, p) in enumerate(awards)])

        events = [at(day) for day in h["events"]]
        returned = [(list(orders)[i % len(orders)], points)
                    for i, points in h["returns"]] if orders else []
        repo = await BatchEarnRepository.load(
            conn, program_ids=[PROGRAM], identifiers=[(PROGRAM, "phone", phone)],
            orders=[(PROGRAM, o) for o, _ in returned], earliest=min(events),
            latest=max(events))
        for n, (order_id, points) in enumerate(returned):
            left = orders[order_id][1] - orders[order_id][2]
            if points := min(points, left):
                await repo.add_return(event_id=f"r-{member}-{n}", program_id=PROGRAM,
                                      order_id=order_id, amount=Decimal(0), points=points,
                                      occurred_at=events[-1])
                orders[order_id][2] += points
        for n, (day, points) in enumerate(h["new_orders"]):
            await repo.add_order(
                program_id=PROGRAM, order_id=f"n-{member}-{n}", event_id=f"n-{member}-{n}",
                member_id=member, program_version=1, channel="pos", currency="EUR",
                total=Decimal(1), points=points, breakdown=[], occurred_at=at(day))
            orders[f"n-{member}-{n}"] = [at(day), points, 0]
        for n, (day, points) in enumerate(h["new_awards"]):
            await repo.add_award(event_id=f"w-{member}-{n}", program_id=PROGRAM,
                                 member_id=member, kind="activity", points=points, reason="r",
                                 occurred_at=at(day))
            awards.append((at(day), points))

        for event in events:
            since = event - TIER_WINDOW
            plain = (sum(p - r for t, p, r in orders.values() if t >= since)
                     + sum(p for t, p in awards if t >= since))
            assert await repo.points_earned_since(member, since) == plain, event
        with pytest.raises(ValueError):  # a window the batch did not load
            await repo.points_earned_since(member, max(events) - TIER_WINDOW
                                           + timedelta(seconds=1))
