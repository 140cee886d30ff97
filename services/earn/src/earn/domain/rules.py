"""The earning rules of DOMAIN.md "Earning", as pure functions of a program and a purchase.

Order of the computation (each step's share is one breakdown line, so a member can see why):
1. `min_total`: a total below it earns nothing.
2. `base`: total x points_per_unit.
3. `category:<name>`: each item line of a category with a multiplier adds
   line amount x points_per_unit x (multiplier - 1). When the lines add up to more than the
   total (an order discount), their amounts are scaled down to what was paid; when they add up
   to less, the rest is unlisted (fees, items without category) and earns the base only.
4. `campaign:<id>`: every campaign active at `occurred_at` on the purchase's channel multiplies
   the running amount (several multiply together).
5. `tier:<id>`: the member's tier multiplier, from points earned in the last 12 months.
6. Rounding (floor, half up, ceil) happens once, on that rate-derived amount. Each breakdown
   line shows the change of the rounded running amount, so the lines add up to the points.
7. `sku_bonus:<sku>`: flat whole points per unit bought, not multiplied: a bonus states a
   number of points and must mean exactly that.
8. `cap`: max_points_per_order limits the whole order, bonuses included.

The arithmetic is exact (fractions as integer pairs), so rounding never trips over a 0.999...
artefact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

from loyalty.programs import ProgramDefinition

CHANNELS = ("pos", "ecommerce")
# Tiers count the points earned in this window before each earning.
TIER_WINDOW = timedelta(days=365)
_TIMES = "\N{MULTIPLICATION SIGN}"


class InvalidPurchase(ValueError):
    """The sender's mistake in a purchase (negative amounts, naive time, unknown channel)."""


@dataclass(frozen=True)
class Line:
    sku: str
    category: str | None
    quantity: Decimal
    unit_price: Decimal

    def __post_init__(self) -> None:
        if self.quantity < 0 or self.unit_price < 0:
            raise InvalidPurchase(f"item {self.sku}: quantity and unit_price must be >= 0")

    @property
    def amount(self) -> Decimal:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class Purchase:
    total: Decimal
    channel: str
    occurred_at: datetime
    items: tuple[Line, ...] = ()

    def __post_init__(self) -> None:
        # Discounts show as a total below the lines, never as negative amounts.
        if self.total < 0:
            raise InvalidPurchase("total must be >= 0")
        if self.channel not in CHANNELS:
            raise InvalidPurchase(f"channel must be one of {CHANNELS}, not {self.channel!r}")
        if self.occurred_at.tzinfo is None:
            raise InvalidPurchase("occurred_at must carry a UTC offset")


@dataclass(frozen=True)
class BreakdownLine:
    rule: str  # "base", "category:beverages", "sku_bonus:BEANS-1KG", "tier:gold", "cap", ...
    points: int
    detail: str  # the human phrase this rule contributes to `Earning.reason`


@dataclass(frozen=True)
class Earning:
    points: int
    breakdown: tuple[BreakdownLine, ...]
    tier_id: str

    @property
    def reason(self) -> str:
        """E.g. "12.40 EUR x 10 pts/EUR = 124; beverages x2 +74; tier gold x1.5 +99" (with the
        multiplication sign, which members read more easily than an x)."""
        return "; ".join(line.detail for line in self.breakdown)


# A program's rates and multipliers are the same few values for every purchase: they are
# converted and formatted once (Decimals equal in value hash alike, and give the same results).
_CONSTANTS_CACHED = 4096


@lru_cache(maxsize=_CONSTANTS_CACHED)
def _number(value: Decimal) -> str:
    """2 rather than 2.0 or 2E+0, for multipliers and rates in reasons."""
    return format(value.normalize(), "f")


@lru_cache(maxsize=_CONSTANTS_CACHED)
def _ratio(value: Decimal) -> tuple[int, int]:
    """A program constant as an exact fraction (numerator, denominator > 0)."""
    return value.as_integer_ratio()


def _round(numerator: int, denominator: int, rounding: str) -> int:
    """numerator / denominator (denominator > 0) rounded to whole points, exactly."""
    if rounding == "floor":
        return numerator // denominator
    if rounding == "ceil":
        return -(-numerator // denominator)
    return (2 * numerator + denominator) // (2 * denominator)  # "round" is half up


def _category_amounts(lines: Iterable[Line], multipliers: dict[str, Decimal]) -> dict[str, Decimal]:
    amounts: dict[str, Decimal] = {}
    for line in lines:
        if line.category in multipliers:
            amounts[line.category] = amounts.get(line.category, Decimal(0)) + line.amount
    return amounts


def _bonus_quantities(lines: Iterable[Line], bonuses: dict[str, int]) -> dict[str, Decimal]:
    # Summed per SKU first, so a SKU split over two lines rounds once and shows once.
    quantities: dict[str, Decimal] = {}
    for line in lines:
        if bonuses.get(line.sku):
            quantities[line.sku] = quantities.get(line.sku, Decimal(0)) + line.quantity
    return quantities


def compute_points(
    program: ProgramDefinition, purchase: Purchase, points_last_12_months: int
) -> Earning:
    """Points a purchase earns under `program` for a member with that recent earning."""
    rules = program.earning
    currency = program.currency
    tier = program.tier_for(points_last_12_months)

    if purchase.total < rules.min_total:
        detail = f"total {purchase.total} {currency} below the minimum {rules.min_total} {currency}"
        return Earning(0, (BreakdownLine("min_total", 0, detail),), tier.id)

    breakdown: list[BreakdownLine] = []
    # The running amount is the exact fraction num / den (den > 0): plain integers, as
    # Fraction objects cost a few microseconds an operation, on every purchase.
    rate_num, rate_den = _ratio(rules.points_per_unit)
    total_num, total_den = purchase.total.as_integer_ratio()
    num, den = total_num * rate_num, total_den * rate_den
    shown = _round(num, den, rules.rounding)  # what the lines so far add up to
    breakdown.append(
        BreakdownLine(
            "base",
            shown,
            f"{purchase.total} {currency} {_TIMES} {_number(rules.points_per_unit)} pts/{currency}"
            f" = {shown}",
        )
    )

    def apply(rule: str, new_num: int, new_den: int, phrase: str) -> None:
        nonlocal num, den, shown
        common = math.gcd(new_num, new_den)
        num, den = new_num // common, new_den // common
        rounded = _round(num, den, rules.rounding)
        breakdown.append(BreakdownLine(rule, rounded - shown, f"{phrase} {rounded - shown:+d}"))
        shown = rounded

    lines_total = sum((line.amount for line in purchase.items), Decimal(0))
    # Scale down only: lines above the total mean a discount; below it, unlisted extras.
    if lines_total > purchase.total:
        lines_num, lines_den = lines_total.as_integer_ratio()
        scale_num, scale_den = total_num * lines_den, total_den * lines_num
    else:
        scale_num, scale_den = 1, 1
    for category, amount in _category_amounts(purchase.items, rules.category_multipliers).items():
        multiplier = rules.category_multipliers[category]
        if multiplier != 1:
            # amount x scale x rate x (multiplier - 1)
            amount_num, amount_den = amount.as_integer_ratio()
            mult_num, mult_den = _ratio(multiplier)
            extra_num = amount_num * scale_num * rate_num * (mult_num - mult_den)
            extra_den = amount_den * scale_den * rate_den * mult_den
            phrase = f"{category} {_TIMES}{_number(multiplier)}"
            apply(f"category:{category}", num * extra_den + extra_num * den, den * extra_den,
                  phrase)

    for campaign in rules.campaigns:
        if campaign.is_active(purchase.occurred_at, purchase.channel):
            mult_num, mult_den = _ratio(campaign.multiplier)
            apply(
                f"campaign:{campaign.id}",
                num * mult_num,
                den * mult_den,
                f"campaign {campaign.id} {_TIMES}{_number(campaign.multiplier)}",
            )

    if tier.multiplier != 1:
        mult_num, mult_den = _ratio(tier.multiplier)
        apply(
            f"tier:{tier.id}",
            num * mult_num,
            den * mult_den,
            f"tier {tier.id} {_TIMES}{_number(tier.multiplier)}",
        )

    points = shown
    for sku, quantity in _bonus_quantities(purchase.items, rules.sku_bonus).items():
        bonus_per_unit = rules.sku_bonus[sku]
        # Whole points only, rounded down: 0.5 kg of a 100-point SKU earns 50.
        quantity_num, quantity_den = quantity.as_integer_ratio()
        bonus = bonus_per_unit * quantity_num // quantity_den
        detail = f"{sku} {_number(quantity)} {_TIMES} {bonus_per_unit} {bonus:+d}"
        breakdown.append(BreakdownLine(f"sku_bonus:{sku}", bonus, detail))
        points += bonus

    cap = rules.max_points_per_order
    if cap is not None and points > cap:
        breakdown.append(BreakdownLine("cap", cap - points, f"capped at {cap}"))
        points = cap

    return Earning(points, tuple(breakdown), tier.id)


def activity_points(program: ProgramDefinition, activity: str) -> int | None:
    """Points for a non-purchase activity; None when the program does not reward it."""
    return program.earning.activities.get(activity)


def return_points(
    earned_points: int,
    purchase_total: Decimal,
    already_returned_amount: Decimal,
    already_reversed_points: int,
    return_amount: Decimal,
) -> int:
    """Points to take back for a return, pro rata to the amount under the original earning.

    Computed on the cumulative amount returned so far, not per return, so rounding never adds
    up across partial returns: they never take back more than was earned, and once the whole
    total is returned exactly all of it has been taken back.
    """
    if earned_points < 0 or already_reversed_points < 0:
        raise ValueError("points must be >= 0")
    if purchase_total < 0 or already_returned_amount < 0 or return_amount < 0:
        raise ValueError("amounts must be >= 0")
    returned_amount = already_returned_amount + return_amount
    if purchase_total == 0 or returned_amount >= purchase_total:
        reversed_total = earned_points
    else:
        reversed_total = math.floor(
            earned_points * Fraction(returned_amount) / Fraction(purchase_total)
        )
    return max(0, reversed_total - already_reversed_points)
