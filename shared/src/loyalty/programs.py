"""Program definitions: the schema of `loyalty programs apply FILE.yaml` (CONTRACT.md).

One model tree serves both ends of the `loyalty.programs.v1` topic: the CLI parses and validates
the operator's YAML (`parse_programs_yaml`, `load_programs_file`) and publishes
`ProgramDefinition.to_message()`; the services rebuild the same object with
`ProgramDefinition.from_message()`. Every model forbids unknown keys so a typo in the YAML
(`point_per_unit`) is an error naming the field, not a silently ignored rule.

Datetimes must carry an offset and are stored in UTC (CONTRACT.md "Times").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import pairwise
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from loyalty.contracts import POINTS_MAX

# Ids end up in Kafka keys, URLs and database rows: keep them short and URL-safe.
ID_LENGTH_MAX_CHARS = 64
NAME_LENGTH_MAX_CHARS = 200
# A programs file is written by hand; anything bigger is a mistake (or not a programs file).
PROGRAMS_FILE_SIZE_MAX_BYTES = 1024 * 1024
# Keys a publisher wraps around the definition on the topic (see `from_message`).
ENVELOPE_KEYS = ("type", "event_id")
POINTS_PER_UNIT_MAX = 10_000

Id = Annotated[
    str,
    Field(min_length=1, max_length=ID_LENGTH_MAX_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
]
Name = Annotated[str, Field(min_length=1, max_length=NAME_LENGTH_MAX_CHARS)]
# Strict so that YAML's `yes` or a quoted "5" is not taken for a number of points.
# Bounds keep every figure a program can produce inside what the database columns hold.
NonNegativeInt = Annotated[int, Field(strict=True, ge=0, le=POINTS_MAX)]
PositiveInt = Annotated[int, Field(strict=True, ge=1, le=POINTS_MAX)]
MULTIPLIER_MAX = 1000
PositiveDecimal = Annotated[Decimal, Field(gt=0, le=MULTIPLIER_MAX)]
Channel = Literal["pos", "ecommerce"]
Locale = Literal["en", "lt", "pl", "ru", "th"]


class _FieldError(ValueError):
    """A cross-field check failing on one field: the error message then names that field."""

    def __init__(self, field: str | int, message: str) -> None:
        super().__init__(message)
        self.field = field


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Lifecycle(_Model):
    """The sunset dates (DOMAIN.md "Program sunset"); None means not scheduled."""

    enrolment_closes_at: AwareDatetime | None = None
    earning_closes_at: AwareDatetime | None = None
    redemption_closes_at: AwareDatetime | None = None
    # When members still holding points hear that redemption closes (an addition to
    # CONTRACT's schema: days before `redemption_closes_at`).
    closing_notice_days: list[Annotated[int, Field(strict=True, ge=1, le=3650)]] = Field(
        default_factory=lambda: [30, 7], max_length=10)

    @field_validator("enrolment_closes_at", "earning_closes_at", "redemption_closes_at")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @field_validator("closing_notice_days")
    @classmethod
    def _distinct_days(cls, days: list[int]) -> list[int]:
        if len(set(days)) != len(days):
            raise ValueError("closing_notice_days must not repeat a day")
        return days

    @model_validator(mode="after")
    def _in_order(self) -> Lifecycle:
        # A sunset runs enrolment -> earning -> redemption; a later step closing first is a typo.
        steps = [
            ("enrolment_closes_at", self.enrolment_closes_at),
            ("earning_closes_at", self.earning_closes_at),
            ("redemption_closes_at", self.redemption_closes_at),
        ]
        set_steps = [(name, at) for name, at in steps if at is not None]
        for (earlier_name, earlier), (name, at) in pairwise(set_steps):
            if at < earlier:
                raise _FieldError(name, f"must not be before {earlier_name}")
        return self


class Campaign(_Model):
    """A time-boxed multiplier, active when starts_at <= occurred_at < ends_at on its channels."""

    id: Id
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    multiplier: PositiveDecimal
    channels: list[Channel] = Field(default_factory=lambda: ["pos", "ecommerce"], min_length=1)

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _ends_after_start(self) -> Campaign:
        if self.ends_at <= self.starts_at:
            raise _FieldError("ends_at", "must be after starts_at")
        return self

    def is_active(self, at: datetime, channel: str) -> bool:
        return self.starts_at <= at < self.ends_at and channel in self.channels


class EarningRules(_Model):
    """How purchases and activities earn points (DOMAIN.md "Earning")."""

    points_per_unit: Annotated[Decimal, Field(ge=0, le=POINTS_PER_UNIT_MAX)]
    rounding: Literal["floor", "round", "ceil"] = "floor"  # round = half up
    min_total: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)] = Decimal("0")
    category_multipliers: dict[str, PositiveDecimal] = Field(default_factory=dict)
    sku_bonus: dict[str, NonNegativeInt] = Field(default_factory=dict)
    max_points_per_order: PositiveInt | None = None
    campaigns: list[Campaign] = Field(default_factory=list)
    activities: dict[str, NonNegativeInt] = Field(default_factory=dict)

    @field_validator("campaigns")
    @classmethod
    def _unique_campaign_ids(cls, campaigns: list[Campaign]) -> list[Campaign]:
        _check_unique_ids(campaigns)
        return campaigns


class Tier(_Model):
    id: Id
    min_points: NonNegativeInt
    multiplier: PositiveDecimal


def _default_tiers() -> list[Tier]:
    return [Tier(id="member", min_points=0, multiplier=Decimal("1"))]


class ExpiryPolicy(_Model):
    """When earned points expire (DOMAIN.md "Expiry").

    Fields of the other policies are tolerated (the CONTRACT example lists them all) and ignored.
    """

    policy: Literal["none", "rolling", "fixed", "inactivity"] = "none"
    months: PositiveInt | None = None
    round_to: Literal[
        "none", "end_of_month", "end_of_quarter", "end_of_half_year", "end_of_year"
    ] = "none"
    fixed_date: str | None = None  # "MM-DD", every year
    inactivity_months: PositiveInt | None = None
    warn_days_before: list[PositiveInt] = Field(default_factory=lambda: [30, 7])

    @field_validator("fixed_date")
    @classmethod
    def _month_day(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = f"must be a month-day 'MM-DD', not {value!r}"
        if not re.fullmatch(r"\d\d-\d\d", value):
            raise ValueError(problem)
        try:
            # Checked in a leap year: 02-29 is valid, loyalty.expiry moves it to 28 Feb otherwise.
            date.fromisoformat(f"2024-{value}")
        except ValueError:
            raise ValueError(problem) from None
        return value

    @field_validator("warn_days_before")
    @classmethod
    def _unique_thresholds(cls, days: list[int]) -> list[int]:
        if len(set(days)) != len(days):
            raise ValueError("must not repeat a number of days")
        # Soonest warning last, so the order does not depend on how the file was written.
        return sorted(days, reverse=True)

    @model_validator(mode="after")
    def _policy_has_its_fields(self) -> ExpiryPolicy:
        if self.policy == "rolling" and self.months is None:
            raise _FieldError("months", "rolling expiry needs months >= 1")
        if self.policy == "fixed" and self.fixed_date is None:
            raise _FieldError("fixed_date", "fixed expiry needs fixed_date 'MM-DD'")
        if self.policy == "inactivity" and self.inactivity_months is None:
            raise _FieldError("inactivity_months", "inactivity expiry needs inactivity_months >= 1")
        return self


class Reward(_Model):
    """A catalog item: a digital code from a pool, or a physical item with stock."""

    id: Id
    name: Name
    points: PositiveInt
    kind: Literal["code", "physical"]
    pool: Id | None = None
    stock: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _kind_has_its_fields(self) -> Reward:
        if self.kind == "code" and self.pool is None:
            raise _FieldError("pool", "a code reward needs the pool its codes come from")
        if self.kind == "physical" and self.stock is None:
            raise _FieldError("stock", "a physical reward needs its stock (>= 0)")
        return self


class ProgramDefinition(_Model):
    """One program's whole definition, as published on `loyalty.programs.v1`."""

    id: Id
    name: Name
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]  # ISO 4217
    time_zone: str = "UTC"  # IANA; expiry instants are end of day here
    default_locale: Locale = "en"
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    earning: EarningRules
    tiers: list[Tier] = Field(default_factory=_default_tiers, min_length=1)
    expiry: ExpiryPolicy = Field(default_factory=ExpiryPolicy)
    rewards: list[Reward] = Field(default_factory=list)

    @field_validator("time_zone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @field_validator("tiers")
    @classmethod
    def _tier_ladder(cls, tiers: list[Tier]) -> list[Tier]:
        _check_unique_ids(tiers)
        # Everyone must land in some tier, so the ladder starts at 0.
        if tiers[0].min_points != 0:
            raise _FieldError(0, "the first tier must have min_points 0")
        for index in range(1, len(tiers)):
            if tiers[index].min_points <= tiers[index - 1].min_points:
                raise _FieldError(index, "tiers must be sorted by strictly increasing min_points")
        return tiers

    @field_validator("rewards")
    @classmethod
    def _unique_reward_ids(cls, rewards: list[Reward]) -> list[Reward]:
        _check_unique_ids(rewards)
        return rewards

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def tier_for(self, points_last_12_months: int) -> Tier:
        """The highest tier whose threshold the member's recent earning reaches."""
        reached = [tier for tier in self.tiers if tier.min_points <= points_last_12_months]
        return reached[-1] if reached else self.tiers[0]

    def is_enrolment_open(self, at: datetime) -> bool:
        return _before(at, self.lifecycle.enrolment_closes_at)

    def is_earning_open(self, at: datetime) -> bool:
        return _before(at, self.lifecycle.earning_closes_at)

    def is_redemption_open(self, at: datetime) -> bool:
        return _before(at, self.lifecycle.redemption_closes_at)

    def reward(self, reward_id: str) -> Reward | None:
        return next((reward for reward in self.rewards if reward.id == reward_id), None)

    def to_message(self) -> dict[str, Any]:
        """JSON-safe dict: Decimals as strings (exact), datetimes as RFC 3339 in UTC."""
        return self.model_dump(mode="json")

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> ProgramDefinition:
        """The definition from a `loyalty.programs.v1` value; its envelope keys (`type`,
        `event_id`: CONTRACT.md "every message carries type and a unique id") are not rules."""
        definition = {key: value for key, value in message.items() if key not in ENVELOPE_KEYS}
        return cls.model_validate(definition)

    def content_hash(self) -> str:
        """sha256 of the canonical JSON: equal hashes mean the same rules."""
        canonical = json.dumps(
            self.to_message(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _before(at: datetime, closes_at: datetime | None) -> bool:
    if at.tzinfo is None:
        raise ValueError("`at` must be timezone-aware")
    return closes_at is None or at < closes_at


def _check_unique_ids(items: list[Any]) -> None:
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item.id in seen:
            raise _FieldError(index, f"duplicate id {item.id!r}")
        seen.add(item.id)


class ProgramsFile(_Model):
    """The top level of a programs YAML file."""

    programs: list[ProgramDefinition] = Field(min_length=1)

    @field_validator("programs")
    @classmethod
    def _unique_program_ids(cls, programs: list[ProgramDefinition]) -> list[ProgramDefinition]:
        _check_unique_ids(programs)
        return programs


class ProgramFileError(Exception):
    """A programs file that cannot be applied; each line of the message names the failing field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _format_location(location: tuple[str | int, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _describe(error: dict[str, Any]) -> str:
    location = tuple(error["loc"])
    message = error["msg"]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _FieldError):
        location += (cause.field,)
        message = str(cause)
    elif error["type"] == "value_error":
        message = str(cause) if cause is not None else message
    return f"{_format_location(location) or '(file)'}: {message}"


def parse_programs_yaml(text: str) -> list[ProgramDefinition]:
    """Validate a programs file's text; raises ProgramFileError naming every failing field."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProgramFileError([f"invalid YAML: {exc}"]) from exc
    if document is None:
        document = {}  # an empty file: reported as the missing `programs` key
    if not isinstance(document, dict):
        raise ProgramFileError(["(file): must be a mapping with a `programs` list"])
    try:
        return ProgramsFile.model_validate(document).programs
    except ValidationError as exc:
        raise ProgramFileError([_describe(error) for error in exc.errors()]) from exc


def load_programs_file(path: str | os.PathLike[str]) -> list[ProgramDefinition]:
    """Read and validate a programs YAML file; raises ProgramFileError."""
    try:
        with open(path, "rb") as file:
            raw = file.read(PROGRAMS_FILE_SIZE_MAX_BYTES + 1)
    except OSError as exc:
        raise ProgramFileError([f"cannot read {os.fspath(path)}: {exc.strerror}"]) from exc
    if len(raw) > PROGRAMS_FILE_SIZE_MAX_BYTES:
        raise ProgramFileError(
            [f"{os.fspath(path)}: larger than {PROGRAMS_FILE_SIZE_MAX_BYTES} bytes"]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProgramFileError([f"{os.fspath(path)}: not UTF-8 ({exc.reason})"]) from exc
    return parse_programs_yaml(text)
