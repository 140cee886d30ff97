"""The batch repository's journal: a refused record leaves no trace, an accepted one stays."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from earn.adapters.batch import BatchEarnRepository
from earn.adapters.postgres import Member

AT = datetime(2026, 10, 20, 10, 0, tzinfo=UTC)


def member(member_id: str, phone: str | None = None) -> Member:
    return Member(member_id, "coffee-club", "lt", "sms", phone, None)


async def enrol_and_order(repo: BatchEarnRepository, member_id: str, phone: str,
                          order_id: str) -> str | None:
    await repo.add_member(member(member_id, phone), AT)
    await repo.link("coffee-club", member_id, [("phone", phone)], AT)
    await repo.set_tier(member_id, "member")
    return await repo.add_order(
        program_id="coffee-club", order_id=order_id, event_id=f"ev-{order_id}",
        member_id=member_id, program_version=1, channel="pos", currency="EUR",
        total=Decimal("10.00"), points=100, breakdown=[], occurred_at=AT)


async def test_a_rolled_back_record_leaves_nothing_behind() -> None:
    repo = BatchEarnRepository()
    repo.begin()
    assert await enrol_and_order(repo, "m-1", "+37060000001", "A-1") is None
    # The next record enrols someone, then hits the same order id: it is refused.
    repo.begin()
    assert await enrol_and_order(repo, "m-2", "+37060000002", "A-1") == "ev-A-1"
    repo.rollback()

    assert await repo.find_members("coffee-club", [("phone", "+37060000002")]) == {}
    assert set(repo.members) == {"m-1"} and set(repo.tiers) == {"m-1"}
    assert [m.member_id for m, _ in repo.writes.members] == ["m-1"]
    assert [i[3] for i in repo.writes.identifiers] == ["m-1"]
    assert repo.writes.orders == [("coffee-club", "A-1")]
    assert await repo.points_earned_since("m-1", AT) == 100


async def test_returns_and_awards_count_toward_the_last_12_months() -> None:
    repo = BatchEarnRepository()
    repo.begin()
    await enrol_and_order(repo, "m-1", "+37060000001", "A-1")
    await repo.add_return(event_id="r-1", program_id="coffee-club", order_id="A-1",
                          amount=Decimal("5.00"), points=50, occurred_at=AT)
    await repo.add_award(event_id="s-1", program_id="coffee-club", member_id="m-1",
                         kind="activity", points=20, reason="survey", occurred_at=AT)
    assert await repo.points_earned_since("m-1", AT) == 100 - 50 + 20
    repo.begin()
    await repo.add_award(event_id="s-2", program_id="coffee-club", member_id="m-1",
                         kind="activity", points=999, reason="survey", occurred_at=AT)
    repo.rollback()
    assert await repo.points_earned_since("m-1", AT) == 70
    assert (await repo.order("coffee-club", "A-1")).points_reversed == 50
