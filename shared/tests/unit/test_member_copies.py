"""A batch of member events, merged before its one statement per table (pure, no I/O): the
same rows as applying the events one after another; an identifier stays with its first owner
(reward-fulfilment) or goes to its latest (the ledger, the expiry scheduler)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loyalty.contracts import MemberEvent
from loyalty.member_copies import Contact, identifier_owners, merge_contacts
from loyalty.testing import member_event as event

maybe = st.none() | st.sampled_from(["a", "b", ""])  # "" is a value: it overwrites, as SQL does


events = st.lists(st.tuples(
    st.sampled_from(["m-1", "m-2"]), st.sampled_from(["p", "q"]), maybe,
    st.none() | st.sampled_from(["sms", "email"]), maybe, maybe), max_size=8).map(
    lambda rows: [event(i, m, p, locale, channel,
                        **{k: v for k, v in (("phone", phone), ("email", email)) if v is not None})
                  for i, (m, p, locale, channel, phone, email) in enumerate(rows)])


def one_after_another(batch: list[MemberEvent]) -> dict[tuple[str, str], Contact]:
    """What `INSERT ... ON CONFLICT DO UPDATE SET x = coalesce(EXCLUDED.x, members.x)` leaves
    when run once per event."""
    table: dict[tuple[str, str], Contact] = {}
    for e in batch:
        new = [e.locale, e.channel, e.identifiers.get("phone"), e.identifiers.get("email")]
        was = table.get((e.program_id, e.member_id))
        if was is not None:
            old = [was.locale, was.channel, was.phone, was.email]
            new = [n if n is not None else o for n, o in zip(new, old, strict=True)]
        table[(e.program_id, e.member_id)] = Contact(e.program_id, e.member_id, *new)
    return table


@given(events)
def test_merging_a_batch_gives_what_applying_its_events_in_order_gives(
        batch: list[MemberEvent]) -> None:
    merged = merge_contacts(batch)
    assert len({(m.program_id, m.member_id) for m in merged}) == len(merged)  # one upsert
    assert {(m.program_id, m.member_id): m for m in merged} == one_after_another(batch)


def test_a_later_email_is_added_and_a_null_locale_keeps_the_earlier_one() -> None:
    [row] = merge_contacts([event(1, locale="lt", channel="sms", phone="+370600"),
                           event(2, email="m@example.com")])
    assert row == Contact("p", "m-1", "lt", "sms", "+370600", "m@example.com")


def test_an_identifier_named_twice_in_a_batch_goes_to_its_first_owner() -> None:
    assert identifier_owners([event(1, "m-2", phone="+370600"), event(2, "m-1", phone="+370600"),
                              event(3, "m-1", program_id="q", phone="+370600")],
                             keep_first=True) == [
        ("p", "phone", "+370600", "m-2"), ("q", "phone", "+370600", "m-1")]




def test_an_identifier_named_twice_in_a_batch_goes_to_its_latest_owner_for_the_ledger() -> None:
    assert identifier_owners([event(1, "m-2", phone="+370600"), event(2, "m-1", phone="+370600"),
                              event(3, "m-1", program_id="q", phone="+370600")]) == [
        ("p", "phone", "+370600", "m-1"), ("q", "phone", "+370600", "m-1")]
