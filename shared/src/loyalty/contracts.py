"""Pydantic models of the public topics in CONTRACT.md: what producers send, what we emit.

These are the single definition of the public payloads: services validate input with them and
tests publish them. Internal messages (ledger commands) live in their services.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

from babel import Locale, UnknownLocaleError
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from loyalty.identifiers import Identifiers, normalise_customer

ID_LEN_MAX = 200
TEXT_LEN_MAX = 500
ITEMS_MAX = 1000
QUANTITY_MAX = 100
# The most points one message may move (documented in docs/contract-additions.md): far above
# any real balance, far below what the ledger's bigint columns hold even summed.
POINTS_MAX = 1_000_000_000
LOCALE_LEN_MAX = 20


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


Timestamp = Annotated[AwareDatetime, AfterValidator(_utc),
                      PlainSerializer(lambda v: v.isoformat(), return_type=str)]
Id = Annotated[str, Field(min_length=1, max_length=ID_LEN_MAX)]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4),
                  PlainSerializer(lambda v: str(v), return_type=str)]


@lru_cache(maxsize=256)
def _known_locale(tag: str) -> str:
    """A language tag babel knows (`lt`, `lt-LT`, `pt_BR`); not one that does not exist."""
    try:
        Locale.parse(tag.replace("-", "_"))
    except (ValueError, TypeError, UnknownLocaleError):
        raise ValueError(f"unknown locale {tag!r}") from None
    return tag


LocaleTag = Annotated[str, Field(min_length=2, max_length=LOCALE_LEN_MAX,
                                 pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$"),
                      AfterValidator(_known_locale)]


def _money_string(value: Any) -> Any:
    # Money is a decimal string; a JSON float would already have lost cents.
    if isinstance(value, float):
        raise ValueError("money must be a decimal string like \"12.40\", not a number")
    return value


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Customer(_Message):
    """A shopper without a card: at least one identifier."""

    customer_id: Id | None = None
    phone: Annotated[str, Field(max_length=40)] | None = None
    email: Annotated[str, Field(max_length=320)] | None = None
    card_token: Id | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Customer:
        if not any((self.customer_id, self.phone, self.email, self.card_token)):
            raise ValueError("customer needs at least one of customer_id, phone, email, card_token")
        return self

    @cached_property
    def identifiers(self) -> Identifiers:
        """The identifiers in their normal forms (`loyalty.identifiers`), worked out once: the
        batch's loader and the handler both ask. Raises `InvalidIdentifier`."""
        return normalise_customer(self.model_dump(exclude_none=True))


class Item(_Message):
    sku: Id
    category: Annotated[str, Field(max_length=ID_LEN_MAX)] | None = None
    quantity: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=3)]
    unit_price: Money

    @model_validator(mode="before")
    @classmethod
    def _no_float_money(cls, data: Any) -> Any:
        if isinstance(data, dict) and "unit_price" in data:
            _money_string(data["unit_price"])
        return data


class PurchaseEvent(_Message):
    """`loyalty.purchases.v1`: `purchase.completed` or `purchase.returned` (of `order_id`)."""

    event_id: Id
    type: Literal["purchase.completed", "purchase.returned"]
    occurred_at: Timestamp
    program_id: Id
    order_id: Id
    channel: Literal["pos", "ecommerce"]
    store_id: Id | None = None
    customer: Customer
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    total: Money
    items: Annotated[list[Item], Field(max_length=ITEMS_MAX)] = []
    locale: LocaleTag | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_float_money(cls, data: Any) -> Any:
        if isinstance(data, dict) and "total" in data:
            _money_string(data["total"])
        return data


class ActivityEvent(_Message):
    """`loyalty.activities.v1`: non-purchase earning."""

    event_id: Id
    type: Literal["activity.completed"]
    occurred_at: Timestamp
    program_id: Id
    customer: Customer
    activity: Id
    locale: LocaleTag | None = None


class AdjustmentEvent(_Message):
    """`loyalty.adjustments.v1`: support staff fixing a balance, with a reason and an actor."""

    event_id: Id
    type: Literal["points.adjusted"]
    occurred_at: Timestamp
    program_id: Id
    customer: Customer
    points: Annotated[int, Field(strict=True, ge=-POINTS_MAX, le=POINTS_MAX)]
    reason: Annotated[str, Field(min_length=1, max_length=TEXT_LEN_MAX)]
    actor: Id

    @model_validator(mode="after")
    def _moves_points(self) -> AdjustmentEvent:
        if self.points == 0:
            raise ValueError("points must not be 0: an adjustment moves points")
        return self


class Source(_Message):
    kind: Literal["purchase", "return", "activity", "adjustment", "redemption", "expiry",
                  "sunset"]
    id: Id


LedgerEventType = Literal["points.credited", "points.debited", "points.expired",
                          "points.reserved", "points.released", "points.captured",
                          "command.rejected"]


class LedgerEvent(_Message):
    """`loyalty.ledger.v1`: every balance movement, and refusals (`command.rejected`)."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    event_id: Id
    type: LedgerEventType
    occurred_at: Timestamp
    program_id: Id
    member_id: Id
    points: int
    balance_after: int
    reason: str
    source: Source
    expires_at: Timestamp | None = None
    error_code: str | None = Field(default=None, alias="error.code")


class MemberEvent(_Message):
    """`loyalty.members.v1`: `member.enrolled`, `member.identifier_linked`, and
    `member.tier_changed` (an addition to CONTRACT.md: with `tier`, `previous_tier` and
    `points_last_12_months`; `identifiers` is empty)."""

    event_id: Id
    type: Literal["member.enrolled", "member.identifier_linked", "member.tier_changed"]
    occurred_at: Timestamp
    program_id: Id
    member_id: Id
    identifiers: dict[str, str]
    # Additions (docs/contract-additions.md): the member's language and preferred channel, so
    # services that notify keep their own copy of the contact data from this topic.
    locale: str | None = None
    channel: Literal["sms", "email"] | None = None


class Notification(_Message):
    """`loyalty.notifications.{sms,email}.v1`: a rendered message for a downstream sender."""

    notification_id: Id
    type: Literal["notification.requested"]
    occurred_at: Timestamp
    channel: Literal["sms", "email"]
    to: str
    locale: str
    template: str
    subject: str | None = None
    body: str
    program_id: Id
    member_id: Id


class Delivery(_Message):
    channel: Literal["sms", "email"] | None = None


class RedemptionRequested(_Message):
    """`loyalty.redemptions.v1`: a member asks for a reward; the order id is `event_id`."""

    event_id: Id
    type: Literal["redemption.requested"]
    occurred_at: Timestamp
    program_id: Id
    customer: Customer
    reward_id: Id
    quantity: Annotated[int, Field(strict=True, ge=1, le=QUANTITY_MAX)] = 1
    delivery: Delivery = Delivery()
    locale: LocaleTag | None = None


class RedemptionCancelled(_Message):
    """`loyalty.redemptions.v1`: cancel the order `order_id` (the request's `event_id`)."""

    event_id: Id
    type: Literal["redemption.cancelled"]
    occurred_at: Timestamp
    program_id: Id
    order_id: Id
    reason: Annotated[str, Field(min_length=1, max_length=TEXT_LEN_MAX)]


RedemptionEvent = Annotated[RedemptionRequested | RedemptionCancelled,
                            Field(discriminator="type")]

OrderStatus = Literal["requested", "points_reserved", "fulfilled", "rejected", "failed",
                      "cancelled"]


class OrderStatusChanged(_Message):
    """`loyalty.orders.v1`: every status change of a reward order. Never carries a code."""

    event_id: Id
    type: Literal["order.status_changed"]
    occurred_at: Timestamp
    program_id: Id
    order_id: Id
    member_id: Id | None
    reward_id: Id
    quantity: int
    points: int
    status: OrderStatus
    reason: str | None = None
