"""The redemption saga, transition by transition and refusal by refusal (pure, no I/O)."""

from __future__ import annotations

import pytest

from rewards.domain.saga import (
    Allocate,
    Deliver,
    Notify,
    Order,
    PublishStatus,
    Refused,
    Rejection,
    ReturnUnits,
    SendLedgerCommand,
    State,
    VoidUnits,
    check_request,
)


def new(kind: str = "code", member_known: bool = True) -> Order:
    order = Order.request("o-1", kind, 500, None, member_known=member_known)
    order.take()
    return order


def at(state: State, kind: str = "code", **fields: object) -> Order:
    order = Order("o-1", kind, 500, state, **fields)  # type: ignore[arg-type]
    return order


def statuses(effects: list) -> list[str]:
    return [e.status for e in effects if isinstance(e, PublishStatus)]


# -- the request ---------------------------------------------------------------------------------

def test_a_request_of_a_known_member_is_published_and_reserves() -> None:
    order = Order.request("o-1", "code", 500, None, member_known=True)
    assert order.take() == [PublishStatus("requested"), SendLedgerCommand("reserve")]
    assert order.state == State.RESERVING and order.status == "requested"


def test_a_request_of_an_unknown_member_waits_for_it() -> None:
    order = Order.request("o-1", "code", 500, None, member_known=False)
    assert order.take() == [PublishStatus("requested")]
    assert order.state == State.IDENTIFYING


def test_a_refused_request_is_requested_then_rejected_with_the_reason() -> None:
    order = Order.request("o-1", "code", 500, Rejection("redemption_closed", "closed at X"),
                          member_known=True)
    assert order.take() == [PublishStatus("requested"),
                            PublishStatus("rejected", "redemption_closed", "closed at X")]
    assert order.state == State.REJECTED


@pytest.mark.parametrize(("facts", "code"), [
    ({"program_known": False, "redemption_open": False, "reward_known": False}, "unknown_program"),
    ({"redemption_open": False, "reward_known": False}, "redemption_closed"),
    ({"reward_known": False, "member_known": False}, "unknown_reward"),
    ({"points": 1_000_000_001, "member_known": False}, "too_many_points"),
    ({"points": 1_000_000_000}, None),
    ({"member_known": False}, "unknown_member"),
    ({"reachable": False}, "unreachable"),
    ({"member_known": None, "reachable": False}, None),  # not known yet: wait, don't refuse
    ({}, None),
])
def test_request_refusals_in_precedence_order(facts: dict, code: str | None) -> None:
    args = {"program_known": True, "redemption_open": True, "closes_at": "2026-12-31",
            "reward_known": True, "reward_id": "gift", "program_id": "p",
            "member_known": True, "reachable": True, **facts}
    rejection = check_request(**args)
    assert (rejection.code if rejection else None) == code


def test_the_member_appears_and_the_order_reserves() -> None:
    order = new(member_known=False)
    assert order.member_found(reachable=True) == [SendLedgerCommand("reserve")]
    assert order.state == State.RESERVING


def test_a_member_who_cannot_be_reached_is_rejected() -> None:
    order = new(member_known=False)
    assert statuses(order.member_found(reachable=False)) == ["rejected"]
    assert order.reason_code == "unreachable"


def test_the_member_never_appears() -> None:
    order = new(member_known=False)
    effects = order.member_wait_expired()
    assert statuses(effects) == ["rejected"] and order.reason_code == "unknown_member"
    assert order.member_wait_expired() == []


# -- the happy path ------------------------------------------------------------------------------

def test_reserved_then_allocated_then_captured_then_delivered() -> None:
    order = new()
    assert order.reserved() == [PublishStatus("points_reserved"), Allocate()]
    assert order.allocated(True) == [SendLedgerCommand("capture")]
    assert order.state == State.CAPTURING
    assert order.captured() == [Deliver()]
    assert order.state == State.DELIVERING and order.status == "points_reserved"
    assert order.delivered() == [PublishStatus("fulfilled")]
    assert order.state == State.FULFILLED


def test_a_physical_reward_is_fulfilled_when_captured() -> None:
    order = at(State.CAPTURING, kind="physical")
    assert order.captured() == [PublishStatus("fulfilled")]
    assert order.state == State.FULFILLED


# -- refusals and failures -----------------------------------------------------------------------

def test_not_enough_points_is_rejected() -> None:
    order = new()
    effects = order.reserve_refused("insufficient_points", "available 100, asked 500")
    assert effects == [PublishStatus("rejected", "insufficient_points",
                                     "available 100, asked 500")]
    assert order.state == State.REJECTED


@pytest.mark.parametrize("code", ["pool_empty", "out_of_stock"])
def test_nothing_left_releases_the_hold_then_fails_with_a_notice(code: str) -> None:
    order = at(State.ALLOCATING)
    assert order.allocated(False, code, "none left") == [SendLedgerCommand("release")]
    assert order.state == State.RELEASING
    assert order.released() == [PublishStatus("failed", code, "none left"),
                                Notify("reward_failed")]
    assert order.state == State.FAILED


def test_a_hold_that_timed_out_before_the_capture_returns_the_codes_and_fails() -> None:
    order = at(State.CAPTURING)
    effects = order.capture_refused("hold_expired", "timed out")
    assert effects == [ReturnUnits(), PublishStatus("failed", "hold_expired", "timed out"),
                       Notify("reward_failed")]


def test_a_refused_release_means_the_hold_timed_out_so_the_points_are_back_anyway() -> None:
    order = at(State.RELEASING, outcome="failed", reason_code="pool_empty", reason="none left")
    assert statuses(order.released()) == ["failed"]


# -- cancellation --------------------------------------------------------------------------------

def test_cancel_while_reserving_releases_once_the_hold_exists() -> None:
    order = new()
    assert order.cancel("changed my mind") == []
    assert order.reserved() == [PublishStatus("points_reserved"), SendLedgerCommand("release")]
    assert order.released() == [PublishStatus("cancelled", "cancelled", "changed my mind"),
                                Notify("reward_cancelled")]


def test_cancel_while_reserving_of_a_refused_reserve_is_just_rejected() -> None:
    order = new()
    order.cancel("changed my mind")
    assert statuses(order.reserve_refused("insufficient_points", "x")) == ["rejected"]


def test_cancel_while_capturing_refunds_once_captured_and_never_delivers() -> None:
    order = at(State.CAPTURING)
    assert order.cancel("complaint") == []
    assert order.captured() == [VoidUnits(), SendLedgerCommand("refund")]
    assert order.refunded() == [PublishStatus("cancelled", "cancelled", "complaint"),
                                Notify("reward_cancelled")]


def test_cancel_while_capturing_when_the_hold_had_expired() -> None:
    order = at(State.CAPTURING)
    order.cancel("complaint")
    effects = order.capture_refused("hold_expired", "timed out")
    assert effects[0] == ReturnUnits() and statuses(effects) == ["cancelled"]


def test_cancel_while_releasing_ends_cancelled() -> None:
    order = at(State.RELEASING, outcome="failed", reason_code="pool_empty")
    assert order.cancel("complaint") == []
    assert statuses(order.released()) == ["cancelled"]


@pytest.mark.parametrize("state", [State.DELIVERING, State.FULFILLED])
def test_cancel_after_capture_voids_the_code_and_refunds(state: State) -> None:
    order = at(state)
    assert order.cancel("complaint") == [VoidUnits(), SendLedgerCommand("refund")]
    assert order.state == State.REFUNDING
    assert order.delivered() == []  # a delivery that was waiting is not sent any more
    assert statuses(order.refunded()) == ["cancelled"]


def test_cancel_while_waiting_for_the_member_cancels_at_once() -> None:
    order = new(member_known=False)
    assert statuses(order.cancel("complaint")) == ["cancelled"]


@pytest.mark.parametrize(("state", "flag", "code"), [
    (State.CANCELLED, False, "already_cancelled"),
    (State.REFUNDING, True, "already_cancelled"),
    (State.RESERVING, True, "already_cancelled"),
    (State.REJECTED, False, "order_closed"),
    (State.FAILED, False, "order_closed"),
])
def test_cancel_refusals(state: State, flag: bool, code: str) -> None:
    order = at(state, cancel_requested=flag)
    with pytest.raises(Refused) as refused:
        order.cancel("again")
    assert refused.value.code == code


# -- idempotence and timeouts --------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["reserved", "captured", "released", "refunded", "delivered"])
def test_an_answer_out_of_turn_changes_nothing(answer: str) -> None:
    for state in State:
        order = at(state)
        expected = {"reserved": State.RESERVING, "captured": State.CAPTURING,
                    "released": State.RELEASING, "refunded": State.REFUNDING,
                    "delivered": State.DELIVERING}[answer]
        if state == expected:
            continue
        assert getattr(order, answer)() == [], (answer, state)
        assert order.state == state


def test_a_repeated_answer_has_no_second_effect() -> None:
    order = new()
    order.reserved()
    order.allocated(True)
    assert order.reserved() == []
    assert order.allocated(True) == []
    order.captured()
    assert order.captured() == []
    assert order.capture_refused("hold_expired", "x") == []


@pytest.mark.parametrize(("state", "step"), [
    (State.RESERVING, "reserve"), (State.CAPTURING, "capture"), (State.RELEASING, "release"),
    (State.REFUNDING, "refund")])
def test_a_stalled_step_resends_its_command(state: State, step: str) -> None:
    assert at(state).stalled() == [SendLedgerCommand(step)]


def test_settled_orders_resend_nothing() -> None:
    for state in (State.FULFILLED, State.REJECTED, State.FAILED, State.CANCELLED,
                  State.DELIVERING):
        assert at(state).stalled() == []
