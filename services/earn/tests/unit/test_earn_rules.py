"""Earning rules: every rule alone and combined, with real numbers, plus properties of returns."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from earn.domain.rules import (
    InvalidPurchase,
    Line,
    Purchase,
    activity_points,
    compute_points,
    return_points,
)
from loyalty.programs import ProgramDefinition

VILNIUS_WINTER = timezone(timedelta(hours=2))
SUNDAY_IN_NOVEMBER = datetime(2026, 11, 22, 10, 15, tzinfo=VILNIUS_WINTER)
WEEKEND_START = datetime(2026, 11, 28, tzinfo=VILNIUS_WINTER)
WEEKEND_END = datetime(2026, 11, 30, tzinfo=VILNIUS_WINTER)
SATURDAY = datetime(2026, 11, 28, 12, tzinfo=VILNIUS_WINTER)

TIERS = [
    {"id": "member", "min_points": 0, "multiplier": 1},
    {"id": "gold", "min_points": 5000, "multiplier": 1.5},
]
DOUBLE_WEEKEND = {
    "id": "double-weekend",
    "starts_at": WEEKEND_START,
    "ends_at": WEEKEND_END,
    "multiplier": 2,
    "channels": ["pos"],
}


def program(**earning: Any) -> ProgramDefinition:
    """Coffee Club with a plain 10 pts/EUR floor rate, overridden by `earning`."""
    return ProgramDefinition.model_validate(
        {
            "id": "coffee-club",
            "name": "Coffee Club",
            "currency": "EUR",
            "time_zone": "Europe/Vilnius",
            "earning": {"points_per_unit": 10, "rounding": "floor", **earning},
            "tiers": TIERS,
        }
    )


def line(sku: str, category: str | None, quantity: str, unit_price: str) -> Line:
    return Line(sku, category, Decimal(quantity), Decimal(unit_price))


def purchase(
    total: str, *items: Line, channel: str = "pos", at: datetime = SUNDAY_IN_NOVEMBER
) -> Purchase:
    return Purchase(Decimal(total), channel, at, tuple(items))


LATTES = line("LATTE", "beverages", "2", "3.70")  # 7.40
CROISSANT = line("CROISSANT", "bakery", "2", "2.50")  # 5.00
BEANS = line("BEANS-1KG", "coffee", "1", "18.90")
BEVERAGES_X2 = {"category_multipliers": {"beverages": 2}}


@pytest.mark.parametrize(
    ("earning", "bought", "last_12_months", "points", "breakdown"),
    [
        pytest.param(
            {}, purchase("12.40"), 0, 124, {"base": 124},
            id="base: 12.40 EUR x 10 = 124",
        ),
        pytest.param(
            {}, purchase("12.45"), 0, 124, {"base": 124},
            id="floor drops the half point",
        ),
        pytest.param(
            {"rounding": "round"}, purchase("12.45"), 0, 125, {"base": 125},
            id="round: half up",
        ),
        pytest.param(
            {"rounding": "round"}, purchase("12.44"), 0, 124, {"base": 124},
            id="round: below half down",
        ),
        pytest.param(
            {"rounding": "ceil"}, purchase("12.41"), 0, 125, {"base": 125},
            id="ceil",
        ),
        pytest.param(
            {"rounding": "ceil"}, purchase("12.40"), 0, 124, {"base": 124},
            id="ceil of a whole number stays",
        ),
        pytest.param(
            {"points_per_unit": 1, "rounding": "round"}, purchase("10.50"), 0, 11, {"base": 11},
            id="1 pt/PLN round 10.50 -> 11",
        ),
        pytest.param(
            {"points_per_unit": "0.1"}, purchase("99.99"), 0, 9, {"base": 9},
            id="fractional rate",
        ),
        pytest.param(
            {"points_per_unit": 0}, purchase("12.40"), 0, 0, {"base": 0},
            id="zero rate",
        ),
        pytest.param(
            {}, purchase("0.00"), 0, 0, {"base": 0},
            id="zero total",
        ),
        pytest.param(
            {"min_total": "5.00"}, purchase("4.99"), 0, 0, {"min_total": 0},
            id="below min_total earns nothing",
        ),
        pytest.param(
            {"min_total": "5.00"}, purchase("5.00"), 0, 50, {"base": 50},
            id="exactly min_total earns",
        ),
        pytest.param(
            BEVERAGES_X2, purchase("12.40", LATTES), 0, 198,
            {"base": 124, "category:beverages": 74},
            id="category x2 on 7.40 of 12.40 (rest unlisted)",
        ),
        pytest.param(
            BEVERAGES_X2, purchase("12.40", LATTES, CROISSANT), 0, 198,
            {"base": 124, "category:beverages": 74},
            id="category only on its lines",
        ),
        pytest.param(
            BEVERAGES_X2, purchase("9.30", LATTES, CROISSANT), 0, 148,
            {"base": 93, "category:beverages": 55},
            id="25% order discount scales lines down: 93 + 55.5",
        ),
        pytest.param(
            {"category_multipliers": {"beverages": 2, "bakery": 1.5}},
            purchase("12.40", LATTES, CROISSANT), 0, 223,
            {"base": 124, "category:beverages": 74, "category:bakery": 25},
            id="two categories",
        ),
        pytest.param(
            {"category_multipliers": {"beverages": 2}},
            purchase("14.80", LATTES, LATTES), 0, 296,
            {"base": 148, "category:beverages": 148},
            id="lines of one category add up",
        ),
        pytest.param(
            {"category_multipliers": {"beverages": 0.5}}, purchase("12.40", LATTES), 0, 87,
            {"base": 124, "category:beverages": -37},
            id="multiplier below 1 reduces",
        ),
        pytest.param(
            {"points_per_unit": 1, "category_multipliers": {"beverages": 2}},
            purchase("0.50", line("ESPRESSO", "beverages", "1", "0.50")), 0, 1,
            {"base": 0, "category:beverages": 1},
            id="rounding once: 0.5 + 0.5 = 1, not 0 + 0",
        ),
        pytest.param(
            {"sku_bonus": {"BEANS-1KG": 100}}, purchase("18.90", BEANS), 0, 289,
            {"base": 189, "sku_bonus:BEANS-1KG": 100},
            id="sku bonus",
        ),
        pytest.param(
            {"sku_bonus": {"BEANS-1KG": 100}},
            purchase("37.80", line("BEANS-1KG", "coffee", "2", "18.90")), 0, 578,
            {"base": 378, "sku_bonus:BEANS-1KG": 200},
            id="sku bonus per unit",
        ),
        pytest.param(
            {"sku_bonus": {"BEANS-1KG": 100}},
            purchase("9.45", line("BEANS-1KG", "coffee", "0.5", "18.90")), 0, 144,
            {"base": 94, "sku_bonus:BEANS-1KG": 50},
            id="sku bonus for half a unit",
        ),
        pytest.param(
            {"campaigns": [DOUBLE_WEEKEND]}, purchase("12.40", at=SATURDAY), 0, 248,
            {"base": 124, "campaign:double-weekend": 124},
            id="campaign doubles",
        ),
        pytest.param(
            {"campaigns": [DOUBLE_WEEKEND]}, purchase("12.40", at=WEEKEND_START), 0, 248,
            {"base": 124, "campaign:double-weekend": 124},
            id="campaign active from its first instant",
        ),
        pytest.param(
            {"campaigns": [DOUBLE_WEEKEND]}, purchase("12.40", at=WEEKEND_END), 0, 124,
            {"base": 124},
            id="campaign over at ends_at",
        ),
        pytest.param(
            {"campaigns": [DOUBLE_WEEKEND]},
            purchase("12.40", at=WEEKEND_START - timedelta(microseconds=1)), 0, 124,
            {"base": 124},
            id="campaign not yet started",
        ),
        pytest.param(
            {"campaigns": [DOUBLE_WEEKEND]},
            purchase("12.40", at=SATURDAY, channel="ecommerce"), 0, 124, {"base": 124},
            id="campaign on another channel",
        ),
        pytest.param(
            {"campaigns": [DOUBLE_WEEKEND]},
            purchase("12.40", at=SATURDAY.astimezone(UTC)), 0, 248,
            {"base": 124, "campaign:double-weekend": 124},
            id="campaign window compares instants, not wall clocks",
        ),
        pytest.param(
            {"campaigns": [DOUBLE_WEEKEND, {**DOUBLE_WEEKEND, "id": "black-friday",
                                            "multiplier": 1.5, "channels": ["pos", "ecommerce"]}]},
            purchase("12.40", at=SATURDAY), 0, 372,
            {"base": 124, "campaign:double-weekend": 124, "campaign:black-friday": 124},
            id="two campaigns multiply: x2 x1.5",
        ),
        pytest.param(
            {}, purchase("12.40"), 5000, 186, {"base": 124, "tier:gold": 62},
            id="gold tier x1.5",
        ),
        pytest.param(
            {}, purchase("12.40"), 4999, 124, {"base": 124},
            id="just below gold",
        ),
        pytest.param(
            {"max_points_per_order": 5000}, purchase("1000.00"), 0, 5000,
            {"base": 10000, "cap": -5000},
            id="cap",
        ),
        pytest.param(
            {"max_points_per_order": 5000}, purchase("500.00"), 0, 5000, {"base": 5000},
            id="exactly the cap",
        ),
        pytest.param(
            {"max_points_per_order": 5000, "sku_bonus": {"BEANS-1KG": 100}},
            purchase("499.00", line("BEANS-1KG", "coffee", "1", "18.90")), 0, 5000,
            {"base": 4990, "sku_bonus:BEANS-1KG": 100, "cap": -90},
            id="cap includes sku bonuses",
        ),
        pytest.param(
            {**BEVERAGES_X2, "sku_bonus": {"BEANS-1KG": 100}, "campaigns": [DOUBLE_WEEKEND],
             "max_points_per_order": 5000},
            purchase("31.30", LATTES, BEANS, CROISSANT, at=SATURDAY), 5000, 1261,
            {"base": 313, "category:beverages": 74, "campaign:double-weekend": 387,
             "tier:gold": 387, "sku_bonus:BEANS-1KG": 100},
            id="all together: (313 + 74) x2 x1.5 + 100 = 1261",
        ),
    ],
)  # fmt: skip
def test_compute_points(earning, bought, last_12_months, points, breakdown):
    earned = compute_points(program(**earning), bought, last_12_months)

    assert earned.points == points
    assert {line.rule: line.points for line in earned.breakdown} == breakdown
    assert sum(line.points for line in earned.breakdown) == points


@pytest.mark.parametrize(
    ("earning", "bought", "last_12_months", "reason"),
    [
        pytest.param(
            BEVERAGES_X2, purchase("12.40", LATTES), 5000,
            "12.40 EUR × 10 pts/EUR = 124; beverages ×2 +74; tier gold ×1.5 +99",  # noqa: RUF001
            id="contract example",
        ),
        pytest.param(
            {"max_points_per_order": 5000, "campaigns": [DOUBLE_WEEKEND],
             "sku_bonus": {"BEANS-1KG": 100}},
            purchase("3000.00", line("BEANS-1KG", "coffee", "2", "18.90"), at=SATURDAY), 0,
            "3000.00 EUR × 10 pts/EUR = 30000; campaign double-weekend ×2 +30000;"  # noqa: RUF001
            " BEANS-1KG 2 × 100 +200; capped at 5000",  # noqa: RUF001
            id="campaign, bonus and cap",
        ),
        pytest.param(
            {"min_total": "5.00"}, purchase("4.99"), 0,
            "total 4.99 EUR below the minimum 5.00 EUR",
            id="min_total",
        ),
    ],
)  # fmt: skip
def test_reason(earning, bought, last_12_months, reason):
    assert compute_points(program(**earning), bought, last_12_months).reason == reason


@pytest.mark.parametrize(("last_12_months", "tier_id"), [(0, "member"), (7000, "gold")])
def test_earning_names_the_tier(last_12_months, tier_id):
    assert compute_points(program(), purchase("1.00"), last_12_months).tier_id == tier_id


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: purchase("-1.00"), "total"),
        (lambda: purchase("1.00", channel="web"), "channel"),
        (lambda: Purchase(Decimal("1.00"), "pos", datetime(2026, 11, 22)), "occurred_at"),
        (lambda: line("LATTE", "beverages", "-1", "3.70"), "quantity"),
        (lambda: line("LATTE", "beverages", "1", "-3.70"), "unit_price"),
    ],
)
def test_invalid_purchase(build, message):
    with pytest.raises(InvalidPurchase, match=message):
        build()


@pytest.mark.parametrize(
    ("activity", "points"),
    [("survey", 50), ("review", 20), ("birthday", 200), ("share", 0), ("film", None)],
)
def test_activity_points(activity, points):
    rules = program(activities={"survey": 50, "review": 20, "birthday": 200, "share": 0})

    assert activity_points(rules, activity) == points


@pytest.mark.parametrize(
    ("earned", "total", "returned_before", "reversed_before", "amount", "expected"),
    [
        pytest.param(124, "12.40", "0", 0, "12.40", 124, id="full return"),
        pytest.param(124, "12.40", "0", 0, "3.70", 37, id="one latte of 12.40"),
        pytest.param(124, "12.40", "0", 0, "6.20", 62, id="half"),
        pytest.param(124, "12.40", "6.20", 62, "6.20", 62, id="second half"),
        pytest.param(124, "12.40", "0", 0, "4.13", 41, id="third, floor of 41.3"),
        pytest.param(124, "12.40", "4.13", 41, "4.13", 41, id="second third: 82 - 41"),
        pytest.param(124, "12.40", "8.26", 82, "4.14", 42, id="last third takes the rest"),
        pytest.param(124, "12.40", "12.40", 124, "1.00", 0, id="nothing left"),
        pytest.param(124, "12.40", "0", 0, "20.00", 124, id="more than paid"),
        pytest.param(124, "12.40", "0", 0, "0", 0, id="zero amount"),
        pytest.param(5000, "1000.00", "0", 0, "100.00", 500, id="capped order, pro rata"),
        pytest.param(100, "0", "0", 0, "0", 100, id="free order: all back"),
        pytest.param(100, "0", "0", 40, "0", 60, id="free order: what is left"),
        pytest.param(0, "12.40", "0", 0, "12.40", 0, id="earned nothing"),
    ],
)
def test_return_points(earned, total, returned_before, reversed_before, amount, expected):
    assert (
        return_points(
            earned, Decimal(total), Decimal(returned_before), reversed_before, Decimal(amount)
        )
        == expected
    )


@pytest.mark.parametrize(
    "arguments",
    [
        (-1, Decimal("1"), Decimal("0"), 0, Decimal("1")),
        (10, Decimal("1"), Decimal("0"), -1, Decimal("1")),
        (10, Decimal("1"), Decimal("0"), 0, Decimal("-1")),
        (10, Decimal("-1"), Decimal("0"), 0, Decimal("1")),
    ],
)
def test_return_points_refuses_negative_inputs(arguments):
    with pytest.raises(ValueError):
        return_points(*arguments)


# Properties ---------------------------------------------------------------------------------

money = st.decimals(min_value=0, max_value=100_000, places=2, allow_nan=False)
multipliers = st.decimals(min_value=Decimal("0.1"), max_value=5, places=2, allow_nan=False)
lines = st.builds(
    Line,
    sku=st.sampled_from(["LATTE", "BEANS-1KG", "MUG"]),
    category=st.sampled_from(["beverages", "coffee", None]),
    quantity=st.decimals(min_value=0, max_value=50, places=3, allow_nan=False),
    unit_price=st.decimals(min_value=0, max_value=500, places=2, allow_nan=False),
)
earning_rules = st.fixed_dictionaries(
    {
        "points_per_unit": st.decimals(min_value=0, max_value=100, places=2, allow_nan=False),
        "rounding": st.sampled_from(["floor", "round", "ceil"]),
        "min_total": st.decimals(min_value=0, max_value=50, places=2, allow_nan=False),
        "category_multipliers": st.dictionaries(
            st.sampled_from(["beverages", "coffee"]), multipliers
        ),
        "sku_bonus": st.dictionaries(st.sampled_from(["BEANS-1KG", "MUG"]), st.integers(0, 500)),
        "max_points_per_order": st.none() | st.integers(1, 10_000),
        "campaigns": st.lists(
            st.builds(
                lambda index, multiplier, channels: {
                    **DOUBLE_WEEKEND,
                    "id": f"c{index}",
                    "multiplier": multiplier,
                    "channels": channels,
                },
                st.integers(0, 1000),
                multipliers,
                st.sampled_from([["pos"], ["ecommerce"], ["pos", "ecommerce"]]),
            ),
            max_size=3,
            unique_by=lambda campaign: campaign["id"],
        ),
    }
)


# Any program's rules, any purchase, any member's recent earning.
any_purchase = given(
    rules=earning_rules,
    total=money,
    items=st.lists(lines, max_size=5),
    channel=st.sampled_from(["pos", "ecommerce"]),
    at=st.sampled_from([SUNDAY_IN_NOVEMBER, SATURDAY, WEEKEND_END]),
    last_12_months=st.integers(0, 20_000),
)


@any_purchase
def test_points_are_never_negative_and_the_breakdown_adds_up(
    rules, total, items, channel, at, last_12_months
):
    earned = compute_points(
        program(**rules), Purchase(total, channel, at, tuple(items)), last_12_months
    )

    assert earned.points >= 0
    assert sum(line.points for line in earned.breakdown) == earned.points
    cap = rules["max_points_per_order"]
    assert cap is None or earned.points <= cap
    assert earned.reason


def _points_by_fractions(program: ProgramDefinition, purchase: Purchase, last_12_months: int
                         ) -> list[int]:
    """Each breakdown line's points, straight from the rules in the module docstring, with
    Python's Fraction: the reference the integer arithmetic of `compute_points` must equal."""
    rules = program.earning
    if purchase.total < rules.min_total:
        return [0]
    rounding = {"floor": math.floor, "ceil": math.ceil,
                "round": lambda x: math.floor(x + Fraction(1, 2))}[rules.rounding]
    rate = Fraction(rules.points_per_unit)
    running = Fraction(purchase.total) * rate
    shown = [rounding(running)]
    lines_total = sum((Fraction(i.quantity * i.unit_price) for i in purchase.items), Fraction(0))
    scale = Fraction(purchase.total) / lines_total if lines_total > purchase.total else 1
    factors = []
    in_order = list(dict.fromkeys(i.category for i in purchase.items))
    for category in (c for c in in_order if c in rules.category_multipliers):
        multiplier = Fraction(rules.category_multipliers[category])
        amount = sum(Fraction(i.quantity * i.unit_price) for i in purchase.items
                     if i.category == category)
        if multiplier != 1:
            factors.append(lambda r, a=amount, m=multiplier: r + a * scale * rate * (m - 1))
    factors += [lambda r, m=c.multiplier: r * Fraction(m) for c in rules.campaigns
                if c.is_active(purchase.occurred_at, purchase.channel)]
    tier = program.tier_for(last_12_months)
    if tier.multiplier != 1:
        factors.append(lambda r: r * Fraction(tier.multiplier))
    for factor in factors:
        running = factor(running)
        shown.append(rounding(running))
    lines = [shown[0], *(b - a for a, b in pairwise(shown))]
    for sku in dict.fromkeys(i.sku for i in purchase.items):
        if bonus := rules.sku_bonus.get(sku):
            quantity = sum(Fraction(i.quantity) for i in purchase.items if i.sku == sku)
            lines.append(math.floor(bonus * quantity))
    cap = rules.max_points_per_order
    if cap is not None and sum(lines) > cap:
        lines.append(cap - sum(lines))
    return lines


@any_purchase
def test_the_integer_arithmetic_equals_exact_fractions(
    rules, total, items, channel, at, last_12_months
):
    definition = program(**rules)
    purchase = Purchase(total, channel, at, tuple(items))

    earned = compute_points(definition, purchase, last_12_months)

    assert [line.points for line in earned.breakdown] == _points_by_fractions(
        definition, purchase, last_12_months)


@given(earned=st.integers(0, 1_000_000), total=money)
def test_a_full_return_reverses_exactly_the_credit(earned, total):
    assert return_points(earned, total, Decimal(0), 0, total) == earned


@st.composite
def partial_returns(draw: st.DrawFn) -> tuple[int, Decimal, list[Decimal]]:
    """An order and returns that add up to exactly its total, in cents."""
    earned = draw(st.integers(0, 1_000_000))
    total_cents = draw(st.integers(1, 10_000_000))
    cuts = sorted(draw(st.lists(st.integers(0, total_cents), max_size=8)))
    bounds = [0, *cuts, total_cents]
    amounts = [Decimal(high - low) / 100 for low, high in pairwise(bounds)]
    return earned, Decimal(total_cents) / 100, amounts


def _reverse_in_turn(earned: int, total: Decimal, amounts: list[Decimal]) -> list[int]:
    returned, reversed_points, taken = Decimal(0), 0, []
    for amount in amounts:
        points = return_points(earned, total, returned, reversed_points, amount)
        returned += amount
        reversed_points += points
        taken.append(points)
    return taken


@given(order=partial_returns())
def test_partial_returns_adding_up_to_the_total_reverse_exactly_all(order):
    earned, total, amounts = order

    taken = _reverse_in_turn(earned, total, amounts)

    assert all(points >= 0 for points in taken)
    assert sum(taken) == earned


@given(
    earned=st.integers(0, 1_000_000),
    total=money,
    amounts=st.lists(money, max_size=8),
)
def test_partial_returns_never_take_back_more_than_was_earned(earned, total, amounts):
    taken = _reverse_in_turn(earned, total, amounts)

    assert all(points >= 0 for points in taken)
    assert sum(taken) <= earned


@given(earned=st.integers(0, 1_000_000), total=money, amount=money)
def test_one_return_is_at_most_its_share(earned, total, amount):
    assume(total > 0 and amount < total)

    assert return_points(earned, total, Decimal(0), 0, amount) <= earned * amount / total
