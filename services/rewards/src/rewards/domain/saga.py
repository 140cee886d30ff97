"""The redemption saga as a pure state machine: what an order does next, and why.

An order moves through internal states (finer than the public statuses of
`loyalty.orders.v1`); each input (the request, a ledger answer, a cancellation, an allocation
result, the delivery, a timeout) is a method that returns the effects the caller must carry
out in the same transaction. Nothing here does I/O.

    identifying ─► reserving ─► (allocating) ─► capturing ─► delivering ─► fulfilled
         │             │               │             │            │             │
         ▼             ▼               ▼             ▼            ▼             ▼
      rejected      rejected       releasing     failed/     refunding ◄────────┘ (cancel)
                                  ─► failed     cancelled   ─► cancelled
                                  ─► cancelled

Rules:
- An answer that does not fit the current state (a redelivery, a stale event) changes
  nothing and has no effect: that, with deterministic ledger command ids, makes the saga
  idempotent and safe to resume after a crash at any step.
- A cancellation never races the ledger: before fulfilment it is remembered and acted on at
  the next answer (release instead of allocating, or refund instead of delivering), so there
  is never a capture and a release in flight for one hold.
- Public statuses are facts: `points_reserved` is published when the ledger confirms the
  hold, `failed` / `cancelled` once the points are back, `fulfilled` once the code is
  handed to the sender.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    IDENTIFYING = "identifying"  # waiting for the member to appear on loyalty.members.v1
    RESERVING = "reserving"  # reserve sent; waiting for the ledger
    ALLOCATING = "allocating"  # hold confirmed; the caller allocates now (never stored)
    CAPTURING = "capturing"  # units allocated, capture sent
    RELEASING = "releasing"  # release sent (allocation failed, or cancelled before capture)
    DELIVERING = "delivering"  # captured; the code is waiting for the delivery job
    REFUNDING = "refunding"  # cancelled after capture: refund credit sent
    FULFILLED = "fulfilled"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({State.REJECTED, State.FAILED, State.CANCELLED})
# Fulfilled is final for the saga but not for the member: it can still be cancelled (refund).
SETTLED = FINAL | {State.FULFILLED}
# States where the saga waits for the ledger and may resend the same command after a timeout.
AWAITING_LEDGER = frozenset({State.RESERVING, State.CAPTURING, State.RELEASING,
                             State.REFUNDING})


class Refused(Exception):
    """A cancellation that cannot be applied: the sender's mistake (dead-lettered)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# Effects: what the caller does, in this order, in the same transaction -------------------

@dataclass(frozen=True)
class PublishStatus:
    """Record a public status change (history) and publish it on loyalty.orders.v1."""

    status: str
    reason_code: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class SendLedgerCommand:
    """Send the step's ledger command: `reserve`, `capture`, `release` or `refund`."""

    step: str


@dataclass(frozen=True)
class Allocate:
    """Take `quantity` codes (or units of stock); report back with `Order.allocated`."""


@dataclass(frozen=True)
class ReturnUnits:
    """Put allocated, never delivered codes (or stock) back: they were never issued."""


@dataclass(frozen=True)
class VoidUnits:
    """Void the order's codes: issued (or about to be) and then refunded, never reissued."""


@dataclass(frozen=True)
class Deliver:
    """Queue the codes for the delivery job (reward_fulfilled to the member's channel)."""


@dataclass(frozen=True)
class Notify:
    """Tell the member: `reward_failed` or `reward_cancelled` (points are back)."""

    template: str


Effect = PublishStatus | SendLedgerCommand | Allocate | ReturnUnits | VoidUnits | Deliver | Notify


@dataclass(frozen=True)
class Rejection:
    code: str
    message: str


def check_request(*, program_known: bool, redemption_open: bool, closes_at: str | None,
                  reward_known: bool, reward_id: str, program_id: str,
                  member_known: bool | None, reachable: bool, points: int = 0,
                  points_max: int = 1_000_000_000) -> Rejection | None:
    """Why a request is refused, first applicable in this order: `unknown_program`,
    `redemption_closed`, `unknown_reward`, `too_many_points` (price x quantity above what one
    ledger command may move), `unknown_member` (member_known False; None means not known
    yet, so wait), `unreachable` (no phone or e-mail to send the reward to)."""
    if not program_known:
        return Rejection("unknown_program", f"program {program_id!r} is not defined")
    if not redemption_open:
        return Rejection("redemption_closed",
                         f"redemption in {program_id} closed at {closes_at}")
    if not reward_known:
        return Rejection("unknown_reward", f"{program_id} has no reward {reward_id!r}")
    if points > points_max:
        return Rejection("too_many_points", f"{points} points is more than one order may "
                         f"spend ({points_max})")
    if member_known is False:
        return Rejection("unknown_member", "no member of the program has these identifiers")
    if member_known and not reachable:
        return Rejection("unreachable", "the member has no phone or e-mail to deliver to")
    return None


@dataclass
class Order:
    """A reward order's saga state. `kind` is `code` or `physical`."""

    order_id: str
    kind: str
    points: int
    state: State
    status: str = "requested"
    outcome: str | None = None  # while releasing: failed | cancelled
    reason_code: str | None = None
    reason: str | None = None
    cancel_requested: bool = False
    effects: list[Effect] = field(default_factory=list)

    # -- the request ------------------------------------------------------------------------

    @classmethod
    def request(cls, order_id: str, kind: str, points: int,
                rejection: Rejection | None, member_known: bool) -> Order:
        """A new order: rejected at once, waiting for its member, or reserving."""
        order = cls(order_id, kind, points, State.IDENTIFYING)
        order._status("requested")
        if rejection is not None:
            order._finish(State.REJECTED, rejection.code, rejection.message)
        elif member_known:
            order._reserve()
        return order

    def member_found(self, reachable: bool) -> list[Effect]:
        if self.state != State.IDENTIFYING:
            return self._ignored()
        if not reachable:
            self._finish(State.REJECTED, "unreachable",
                         "the member has no phone or e-mail to deliver to")
        else:
            self._reserve()
        return self.take()

    def member_wait_expired(self) -> list[Effect]:
        if self.state != State.IDENTIFYING:
            return self._ignored()
        self._finish(State.REJECTED, "unknown_member",
                     "no member of the program has these identifiers")
        return self.take()

    # -- ledger answers -----------------------------------------------------------------------

    def reserved(self) -> list[Effect]:
        if self.state != State.RESERVING:
            return self._ignored()
        self._status("points_reserved")
        if self.cancel_requested:
            self._release("cancelled", "cancelled", self.reason or "cancelled by request")
        else:
            self.state = State.ALLOCATING
            self.effects.append(Allocate())
        return self.take()

    def allocated(self, ok: bool, code: str = "", message: str = "") -> list[Effect]:
        """The allocation's result (`code`: pool_empty or out_of_stock when not ok)."""
        if self.state != State.ALLOCATING:
            return self._ignored()
        if ok:
            self.state = State.CAPTURING
            self.effects.append(SendLedgerCommand("capture"))
        else:
            self._release("failed", code, message)
        return self.take()

    def reserve_refused(self, code: str, message: str) -> list[Effect]:
        if self.state != State.RESERVING:
            return self._ignored()
        self._finish(State.REJECTED, code, message)
        return self.take()

    def captured(self) -> list[Effect]:
        if self.state != State.CAPTURING:
            return self._ignored()
        if self.cancel_requested:
            self._refund()
        elif self.kind == "code":
            self.state = State.DELIVERING
            self.effects.append(Deliver())
        else:
            # Physical items leave through the operator's shipping: fulfilled when captured.
            self.state = State.FULFILLED
            self._status("fulfilled")
        return self.take()

    def capture_refused(self, code: str, message: str) -> list[Effect]:
        """The hold is gone (it timed out): the ledger already released the points."""
        if self.state != State.CAPTURING:
            return self._ignored()
        self.effects.append(ReturnUnits())
        if self.cancel_requested:
            self._finish(State.CANCELLED, "cancelled", self.reason or "cancelled by request",
                         notify="reward_cancelled")
        else:
            self._finish(State.FAILED, code, message, notify="reward_failed")
        return self.take()

    def released(self) -> list[Effect]:
        """Our release applied, or was refused because the hold had timed out: either way
        the points are back."""
        if self.state != State.RELEASING:
            return self._ignored()
        if self.outcome == "cancelled":
            self._finish(State.CANCELLED, "cancelled", self.reason or "cancelled by request",
                         notify="reward_cancelled")
        else:
            self._finish(State.FAILED, self.reason_code or "failed", self.reason or "",
                         notify="reward_failed")
        return self.take()

    def refunded(self) -> list[Effect]:
        if self.state != State.REFUNDING:
            return self._ignored()
        self._finish(State.CANCELLED, "cancelled", self.reason or "cancelled by request",
                     notify="reward_cancelled")
        return self.take()

    # -- delivery, cancellation, timeouts -----------------------------------------------------

    def delivered(self) -> list[Effect]:
        if self.state != State.DELIVERING:
            return self._ignored()
        self.state = State.FULFILLED
        self._status("fulfilled")
        return self.take()

    def cancel(self, reason: str) -> list[Effect]:
        """`redemption.cancelled`; raises Refused (`already_cancelled`, `order_closed`)."""
        if self.cancel_requested or self.state == State.CANCELLED:
            raise Refused("already_cancelled", f"order {self.order_id} is already cancelled")
        if self.state in (State.REJECTED, State.FAILED):
            raise Refused("order_closed", f"order {self.order_id} is {self.state.value}: "
                          "there is nothing to cancel")
        self.cancel_requested = True
        self.reason = reason
        if self.state == State.IDENTIFYING:
            self._finish(State.CANCELLED, "cancelled", reason)
        elif self.state == State.RELEASING:
            self.outcome = "cancelled"
        elif self.state in (State.DELIVERING, State.FULFILLED):
            self._refund()
        # reserving / capturing: acted on when the ledger answers (see the module docstring)
        return self.take()

    def stalled(self) -> list[Effect]:
        """No answer in time: resend the step's command (same id: a no-op if it applied)."""
        step = {State.RESERVING: "reserve", State.CAPTURING: "capture",
                State.RELEASING: "release", State.REFUNDING: "refund"}.get(self.state)
        return [SendLedgerCommand(step)] if step else []

    # -- helpers ------------------------------------------------------------------------------

    def _reserve(self) -> None:
        self.state = State.RESERVING
        self.effects.append(SendLedgerCommand("reserve"))

    def _release(self, outcome: str, code: str, message: str) -> None:
        self.state = State.RELEASING
        self.outcome = outcome
        self.reason_code, self.reason = code, message
        self.effects.append(SendLedgerCommand("release"))

    def _refund(self) -> None:
        self.state = State.REFUNDING
        self.effects += [VoidUnits(), SendLedgerCommand("refund")]

    def _finish(self, state: State, code: str, message: str, notify: str | None = None) -> None:
        self.state = state
        self.reason_code, self.reason = code, message
        self._status(state.value, code, message)
        if notify:
            self.effects.append(Notify(notify))

    def _status(self, status: str, code: str | None = None, reason: str | None = None) -> None:
        self.status = status
        self.effects.append(PublishStatus(status, code, reason))

    def take(self) -> list[Effect]:
        taken, self.effects = self.effects, []
        return taken

    def _ignored(self) -> list[Effect]:
        return []
