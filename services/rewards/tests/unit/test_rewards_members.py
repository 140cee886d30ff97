"""Which waiting order adopts which member of a batch of member events (pure, no I/O)."""

from __future__ import annotations

from loyalty.testing import member_event as event
from rewards.handlers import waiting_adopters


def test_a_waiting_order_adopts_the_first_event_naming_it_in_its_own_program() -> None:
    batch = [event(1, "m-9", program_id="q", phone="+370600"),
             event(2, "m-1", email="m@example.com"), event(3, "m-2", phone="+370600")]
    waiting = [("o-1", "p", ["phone:+370600", "email:m@example.com"]),
               ("o-2", "p", ["phone:+370600"]), ("o-3", "p", ["card:1"])]
    adopters = waiting_adopters(batch, waiting)
    assert adopters == {"o-1": ("p", "m-1"), "o-2": ("p", "m-2")}
    assert list(adopters) == ["o-1", "o-2"]  # started in the order their events came
