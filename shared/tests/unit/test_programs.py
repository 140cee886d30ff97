"""Program definition schema: the CONTRACT.md example parses, every invalid case names its field,
and the message form round-trips exactly."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from loyalty.programs import (
    ProgramDefinition,
    ProgramFileError,
    load_programs_file,
    parse_programs_yaml,
)

DEMO_FILE = Path(__file__).resolve().parents[3] / "programs" / "demo.yaml"

# CONTRACT.md "Program definition", with real dates instead of the `...` placeholders.
CONTRACT_EXAMPLE = """
programs:
  - id: coffee-club
    name: Coffee Club
    currency: EUR
    time_zone: Europe/Vilnius        # IANA; expiry instants are end of day here (default UTC)
    default_locale: en
    lifecycle:                       # all optional; see DOMAIN.md "program sunset"
      enrolment_closes_at: null
      earning_closes_at: null
      redemption_closes_at: null
    earning:
      points_per_unit: 10            # per 1.00 of currency
      rounding: floor                # floor | round | ceil
      min_total: "0.00"
      category_multipliers: {beverages: 2}
      sku_bonus: {BEANS-1KG: 100}
      max_points_per_order: 5000
      campaigns:
        - {id: double-weekend, starts_at: "2026-11-28T00:00:00+02:00",
           ends_at: "2026-11-30T00:00:00+02:00", multiplier: 2, channels: [pos]}
      activities: {survey: 50, review: 20, birthday: 200}
    tiers:                           # by points earned in the last 12 months
      - {id: member, min_points: 0, multiplier: 1}
      - {id: gold, min_points: 5000, multiplier: 1.5}
    expiry:
      policy: rolling                # none | rolling | fixed | inactivity
      months: 12                     # rolling: after each earning
      round_to: end_of_quarter
      fixed_date: "12-31"            # fixed: every year on this month-day
      inactivity_months: 12
      warn_days_before: [30, 7]
    rewards:
      - {id: gift-card-10, name: "10 EUR gift card", points: 1000, kind: code, pool: gift10}
      - {id: cinema-ticket, name: "Cinema ticket", points: 600, kind: code, pool: cinema}
      - {id: mug, name: "Branded mug", points: 300, kind: physical, stock: 50}
"""

MINIMAL = {"id": "tiny", "name": "Tiny", "currency": "EUR", "earning": {"points_per_unit": 1}}

DELETE = object()


def _example() -> dict[str, Any]:
    return yaml.safe_load(CONTRACT_EXAMPLE)


def _mutated(changes: list[tuple[str, Any]]) -> str:
    """The CONTRACT example with `path = value` changes applied (path like "earning.rounding",
    relative to the first program; a number is a list index, one past the end appends)."""
    document = _example()
    for path, value in changes:
        target: Any = document["programs"][0]
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        for part in parents:
            target = target[part]
        if value is DELETE:
            del target[last]
        elif isinstance(target, list) and last == len(target):
            target.append(value)
        else:
            target[last] = value
    return yaml.safe_dump(document)


def test_contract_example_parses():
    [program] = parse_programs_yaml(CONTRACT_EXAMPLE)

    assert program.id == "coffee-club"
    assert program.time_zone == "Europe/Vilnius"
    assert program.earning.points_per_unit == Decimal("10")
    assert program.earning.category_multipliers == {"beverages": Decimal("2")}
    assert program.earning.sku_bonus == {"BEANS-1KG": 100}
    assert program.earning.max_points_per_order == 5000
    [campaign] = program.earning.campaigns
    # Stored in UTC (CONTRACT.md "Times"): midnight in Vilnius is 22:00 UTC the day before.
    assert campaign.starts_at == datetime(2026, 11, 27, 22, tzinfo=UTC)
    assert campaign.starts_at.tzinfo == UTC
    assert campaign.channels == ["pos"]
    assert [(tier.id, tier.multiplier) for tier in program.tiers] == [
        ("member", Decimal("1")),
        ("gold", Decimal("1.5")),
    ]
    assert program.expiry.policy == "rolling"
    assert program.expiry.months == 12
    assert program.expiry.warn_days_before == [30, 7]
    assert [reward.id for reward in program.rewards] == ["gift-card-10", "cinema-ticket", "mug"]
    assert program.reward("mug").stock == 50
    assert program.reward("nope") is None


def test_demo_programs_parse():
    programs = {program.id: program for program in load_programs_file(DEMO_FILE)}

    assert set(programs) == {"coffee-club", "fashion-club"}
    coffee, fashion = programs["coffee-club"], programs["fashion-club"]
    assert (coffee.currency, coffee.time_zone, coffee.default_locale) == (
        "EUR",
        "Europe/Vilnius",
        "lt",
    )
    assert coffee.earning.activities == {"survey": 50, "review": 20, "birthday": 200}
    assert coffee.expiry.round_to == "end_of_quarter"
    assert (fashion.currency, fashion.earning.rounding, fashion.expiry.policy) == (
        "PLN",
        "round",
        "inactivity",
    )
    assert {reward.kind for reward in fashion.rewards} == {"code", "physical"}


def test_defaults_of_a_minimal_program():
    program = ProgramDefinition.model_validate(MINIMAL)

    assert program.time_zone == "UTC"
    assert program.default_locale == "en"
    assert [(t.id, t.min_points, t.multiplier) for t in program.tiers] == [
        ("member", 0, Decimal("1"))
    ]
    assert program.earning.rounding == "floor"
    assert program.earning.min_total == Decimal("0")
    assert program.earning.max_points_per_order is None
    assert program.expiry.policy == "none"
    assert program.expiry.warn_days_before == [30, 7]
    assert program.rewards == []
    assert program.is_earning_open(datetime(2099, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            [("earning.rounding", "nearest")],
            "programs[0].earning.rounding: Input should be 'floor', 'round' or 'ceil'",
            id="rounding",
        ),
        pytest.param([("id", "coffee club")], "programs[0].id:", id="id-with-space"),
        pytest.param([("name", DELETE)], "programs[0].name: Field required", id="no-name"),
        pytest.param([("currency", "eur")], "programs[0].currency:", id="currency-lower"),
        pytest.param([("currency", "EURO")], "programs[0].currency:", id="currency-4"),
        pytest.param(
            [("time_zone", "Europe/Vilnus")],
            "programs[0].time_zone: unknown IANA time zone 'Europe/Vilnus'",
            id="time-zone",
        ),
        pytest.param([("default_locale", "de")], "programs[0].default_locale:", id="locale"),
        pytest.param(
            [("earning.point_per_unit", 10)],
            "programs[0].earning.point_per_unit: Extra inputs are not permitted",
            id="typo-key",
        ),
        pytest.param(
            [("earning.points_per_unit", DELETE)],
            "programs[0].earning.points_per_unit: Field required",
            id="no-rate",
        ),
        pytest.param(
            [("earning.points_per_unit", -1)],
            "programs[0].earning.points_per_unit: Input should be greater than or equal to 0",
            id="negative-rate",
        ),
        pytest.param(
            [("earning.min_total", "-0.01")], "programs[0].earning.min_total:", id="min-total"
        ),
        pytest.param(
            [("earning.category_multipliers.beverages", 0)],
            "programs[0].earning.category_multipliers.beverages: Input should be greater than 0",
            id="category-zero",
        ),
        pytest.param(
            [("earning.sku_bonus.BEANS-1KG", -5)],
            "programs[0].earning.sku_bonus.BEANS-1KG:",
            id="sku-negative",
        ),
        pytest.param(
            [("earning.sku_bonus.BEANS-1KG", 1.5)],
            "programs[0].earning.sku_bonus.BEANS-1KG:",
            id="sku-fraction",
        ),
        pytest.param(
            [("earning.max_points_per_order", 0)],
            "programs[0].earning.max_points_per_order:",
            id="cap-zero",
        ),
        pytest.param(
            [("earning.campaigns.0.ends_at", "2026-11-28T00:00:00+02:00")],
            "programs[0].earning.campaigns[0].ends_at: must be after starts_at",
            id="campaign-empty-window",
        ),
        pytest.param(
            [("earning.campaigns.0.starts_at", "2026-11-28T00:00:00")],
            "programs[0].earning.campaigns[0].starts_at: Input should have timezone info",
            id="campaign-naive",
        ),
        pytest.param(
            [("earning.campaigns.0.channels", ["web"])],
            "programs[0].earning.campaigns[0].channels[0]:",
            id="campaign-channel",
        ),
        pytest.param(
            [("earning.campaigns.0.multiplier", 0)],
            "programs[0].earning.campaigns[0].multiplier:",
            id="campaign-multiplier",
        ),
        pytest.param(
            [
                (
                    "earning.campaigns.1",
                    {
                        "id": "double-weekend",
                        "starts_at": "2026-12-05T00:00:00+02:00",
                        "ends_at": "2026-12-07T00:00:00+02:00",
                        "multiplier": 2,
                    },
                )
            ],
            "programs[0].earning.campaigns[1]: duplicate id 'double-weekend'",
            id="campaign-duplicate",
        ),
        pytest.param(
            [("earning.activities.survey", "many")],
            "programs[0].earning.activities.survey:",
            id="activity-points",
        ),
        pytest.param(
            [("tiers.0.min_points", 100)],
            "programs[0].tiers[0]: the first tier must have min_points 0",
            id="tiers-start",
        ),
        pytest.param(
            [("tiers.1.min_points", 0)],
            "programs[0].tiers[1]: tiers must be sorted by strictly increasing min_points",
            id="tiers-order",
        ),
        pytest.param(
            [("tiers.1.id", "member")],
            "programs[0].tiers[1]: duplicate id 'member'",
            id="tiers-duplicate",
        ),
        pytest.param([("tiers", [])], "programs[0].tiers:", id="tiers-empty"),
        pytest.param(
            [("tiers.1.multiplier", -1.5)], "programs[0].tiers[1].multiplier:", id="tier-mult"
        ),
        pytest.param([("expiry.policy", "monthly")], "programs[0].expiry.policy:", id="policy"),
        pytest.param(
            [("expiry.months", DELETE)],
            "programs[0].expiry.months: rolling expiry needs months >= 1",
            id="rolling-months",
        ),
        pytest.param([("expiry.months", 0)], "programs[0].expiry.months:", id="rolling-zero"),
        pytest.param(
            [("expiry.policy", "fixed"), ("expiry.fixed_date", DELETE)],
            "programs[0].expiry.fixed_date: fixed expiry needs fixed_date 'MM-DD'",
            id="fixed-no-date",
        ),
        pytest.param(
            [("expiry.fixed_date", "13-01")],
            "programs[0].expiry.fixed_date: must be a month-day 'MM-DD', not '13-01'",
            id="fixed-month",
        ),
        pytest.param(
            [("expiry.fixed_date", "02-30")], "programs[0].expiry.fixed_date:", id="fixed-day"
        ),
        pytest.param(
            [("expiry.fixed_date", "1-31")], "programs[0].expiry.fixed_date:", id="fixed-format"
        ),
        pytest.param(
            [("expiry.policy", "inactivity"), ("expiry.inactivity_months", DELETE)],
            "programs[0].expiry.inactivity_months: inactivity expiry needs inactivity_months",
            id="inactivity-months",
        ),
        pytest.param(
            [("expiry.round_to", "end_of_week")], "programs[0].expiry.round_to:", id="round-to"
        ),
        pytest.param(
            [("expiry.warn_days_before", [30, 0])],
            "programs[0].expiry.warn_days_before[1]:",
            id="warn-zero",
        ),
        pytest.param(
            [("expiry.warn_days_before", [7, 7])],
            "programs[0].expiry.warn_days_before: must not repeat",
            id="warn-repeat",
        ),
        pytest.param(
            [("rewards.0.pool", DELETE)],
            "programs[0].rewards[0].pool: a code reward needs the pool",
            id="code-no-pool",
        ),
        pytest.param(
            [("rewards.2.stock", DELETE)],
            "programs[0].rewards[2].stock: a physical reward needs its stock",
            id="physical-no-stock",
        ),
        pytest.param([("rewards.2.stock", -1)], "programs[0].rewards[2].stock:", id="stock"),
        pytest.param([("rewards.0.points", 0)], "programs[0].rewards[0].points:", id="price"),
        pytest.param([("rewards.0.kind", "voucher")], "programs[0].rewards[0].kind:", id="kind"),
        pytest.param(
            [("rewards.1.id", "gift-card-10")],
            "programs[0].rewards[1]: duplicate id 'gift-card-10'",
            id="reward-duplicate",
        ),
        pytest.param(
            [
                ("lifecycle.enrolment_closes_at", "2027-06-01T00:00:00Z"),
                ("lifecycle.earning_closes_at", "2027-05-01T00:00:00Z"),
            ],
            "programs[0].lifecycle.earning_closes_at: must not be before enrolment_closes_at",
            id="sunset-order",
        ),
        pytest.param(
            [("lifecycle.redemption_closes_at", "2027-06-01")],
            "programs[0].lifecycle.redemption_closes_at:",
            id="sunset-date-only",
        ),
    ],
)
def test_invalid_definition_names_the_field(changes, expected):
    with pytest.raises(ProgramFileError) as raised:
        parse_programs_yaml(_mutated(changes))

    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("programs: [\n  - id: x\n", "invalid YAML", id="syntax"),
        pytest.param("", "programs: Field required", id="empty-file"),
        pytest.param("programs:\n", "programs: Input should be a valid list", id="null"),
        pytest.param("programs: []\n", "programs: List should have at least 1 item", id="none"),
        pytest.param("- id: x\n", "(file): must be a mapping", id="top-level-list"),
        pytest.param(
            f"programs: [{json.dumps(MINIMAL)}, {json.dumps(MINIMAL)}]",
            "programs[1]: duplicate id 'tiny'",
            id="duplicate-program",
        ),
        pytest.param(
            f"programs: [{json.dumps(MINIMAL)}]\nprogram: []\n",
            "program: Extra inputs are not permitted",
            id="top-level-typo",
        ),
    ],
)
def test_invalid_file(text, expected):
    with pytest.raises(ProgramFileError) as raised:
        parse_programs_yaml(text)

    assert expected in str(raised.value)


def test_every_problem_is_reported_on_its_own_line():
    text = _mutated([("currency", "eur"), ("earning.rounding", "nearest")])

    with pytest.raises(ProgramFileError) as raised:
        parse_programs_yaml(text)

    assert len(raised.value.problems) == 2
    assert str(raised.value).splitlines() == raised.value.problems


def test_load_programs_file_reports_unreadable_and_oversized_files(tmp_path):
    with pytest.raises(ProgramFileError, match="cannot read"):
        load_programs_file(tmp_path / "missing.yaml")

    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ProgramFileError, match="larger than"):
        load_programs_file(huge)

    valid = tmp_path / "valid.yaml"
    valid.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    assert [program.id for program in load_programs_file(valid)] == ["coffee-club"]


@pytest.mark.parametrize(
    "program",
    [
        pytest.param(parse_programs_yaml(CONTRACT_EXAMPLE)[0], id="contract"),
        *[pytest.param(p, id=p.id) for p in load_programs_file(DEMO_FILE)],
        pytest.param(ProgramDefinition.model_validate(MINIMAL), id="minimal"),
    ],
)
def test_message_round_trip_is_exact(program):
    message = program.to_message()
    # Through real JSON, as on the topic.
    rebuilt = ProgramDefinition.from_message(json.loads(json.dumps(message)))

    assert rebuilt == program
    assert rebuilt.to_message() == message
    assert rebuilt.content_hash() == program.content_hash()


def test_from_message_ignores_the_envelope_but_not_unknown_keys():
    program = parse_programs_yaml(CONTRACT_EXAMPLE)[0]
    envelope = {"type": "program.defined", "event_id": "e-1"}

    assert ProgramDefinition.from_message({**envelope, **program.to_message()}) == program
    with pytest.raises(ValidationError, match="owner"):
        ProgramDefinition.from_message({**program.to_message(), "owner": "ops"})


def test_message_uses_strings_for_decimals_and_rfc3339_for_times():
    message = parse_programs_yaml(CONTRACT_EXAMPLE)[0].to_message()

    assert message["earning"]["points_per_unit"] == "10"
    assert message["earning"]["min_total"] == "0.00"
    assert message["tiers"][1]["multiplier"] == "1.5"
    assert message["earning"]["campaigns"][0]["starts_at"] == "2026-11-27T22:00:00Z"


def test_content_hash_changes_with_any_rule():
    program = parse_programs_yaml(CONTRACT_EXAMPLE)[0]
    message = program.to_message()
    changed = copy.deepcopy(message)
    changed["earning"]["sku_bonus"]["BEANS-1KG"] = 101

    assert len(program.content_hash()) == 64
    assert ProgramDefinition.from_message(changed).content_hash() != program.content_hash()
    # Key order does not matter, only content.
    reordered = dict(reversed(list(message.items())))
    assert ProgramDefinition.from_message(reordered).content_hash() == program.content_hash()


decimals = st.decimals(
    min_value=Decimal("0.001"), max_value=Decimal("1000"), allow_nan=False, places=3
)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(
    rate=decimals,
    multiplier=decimals,
    start=instants,
    length=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)),
    offset=offsets,
)
def test_round_trip_property(rate, multiplier, start, length, offset):
    definition = {
        **MINIMAL,
        "earning": {
            "points_per_unit": rate,
            "category_multipliers": {"drinks": multiplier},
            "campaigns": [
                {
                    "id": "c1",
                    "starts_at": start.astimezone(offset),
                    "ends_at": (start + length).astimezone(offset),
                    "multiplier": multiplier,
                }
            ],
        },
    }
    program = ProgramDefinition.model_validate(definition)

    rebuilt = ProgramDefinition.from_message(json.loads(json.dumps(program.to_message())))

    assert rebuilt == program
    assert rebuilt.content_hash() == program.content_hash()
    assert rebuilt.earning.campaigns[0].starts_at == start


TIERED = ProgramDefinition.model_validate(
    {
        **MINIMAL,
        "tiers": [
            {"id": "member", "min_points": 0, "multiplier": 1},
            {"id": "silver", "min_points": 1000, "multiplier": 1.2},
            {"id": "gold", "min_points": 5000, "multiplier": 1.5},
        ],
    }
)


@pytest.mark.parametrize(
    ("points", "tier_id"),
    [(-5, "member"), (0, "member"), (999, "member"), (1000, "silver"), (4999, "silver"),
     (5000, "gold"), (10**9, "gold")],
)  # fmt: skip
def test_tier_for(points, tier_id):
    assert TIERED.tier_for(points).id == tier_id


CLOSING = ProgramDefinition.model_validate(
    {
        **MINIMAL,
        "lifecycle": {
            "enrolment_closes_at": "2027-01-01T00:00:00+02:00",
            "earning_closes_at": "2027-03-01T00:00:00+02:00",
            "redemption_closes_at": "2027-06-01T00:00:00+03:00",
        },
    }
)


@pytest.mark.parametrize(
    ("at", "enrolment_open", "earning_open", "redemption_open"),
    [
        (datetime(2026, 12, 31, 21, 59, 59, tzinfo=UTC), True, True, True),
        (datetime(2026, 12, 31, 22, 0, tzinfo=UTC), False, True, True),
        (datetime(2027, 3, 1, 0, 0, tzinfo=timezone(timedelta(hours=2))), False, False, True),
        (datetime(2027, 5, 31, 20, 59, 59, tzinfo=UTC), False, False, True),
        (datetime(2027, 5, 31, 21, 0, tzinfo=UTC), False, False, False),
    ],
)
def test_lifecycle_helpers(at, enrolment_open, earning_open, redemption_open):
    assert CLOSING.is_enrolment_open(at) is enrolment_open
    assert CLOSING.is_earning_open(at) is earning_open
    assert CLOSING.is_redemption_open(at) is redemption_open


def test_lifecycle_helpers_refuse_naive_times():
    with pytest.raises(ValueError, match="timezone-aware"):
        CLOSING.is_earning_open(datetime(2027, 1, 1))
