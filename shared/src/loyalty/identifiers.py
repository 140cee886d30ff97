"""Normalising how a shopper is identified: the `customer` object of CONTRACT.md and HTTP refs.

The till knows a phone, the web shop an e-mail or its own customer id; all of them must map to
the same stored form whoever typed them, or one shopper becomes several members.

Normal forms:
- phone: E.164 (`+37060000001`); spaces, dashes, dots and parentheses are dropped and a `00`
  international prefix becomes `+`. A number without a country code is refused: guessing the
  country would credit a stranger.
- email: trimmed and lower-cased, checked loosely (one `@`, a dot in the domain).
- customer_id, card_token: trimmed, non-empty, kept case-sensitive (they are opaque tokens).

Precedence, when one event's identifiers point at different members: customer > card > phone >
email. `Identifiers.items()` lists them in that order and the first known one decides. Why: a
customer id is assigned by the operator's own system and a card token by the card issuer, both
bound to one account; a phone can be shared in a household or recycled by the carrier; an
e-mail is typed by the shopper at checkout and is the easiest to get wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# E.164 allows at most 15 digits; the shortest real numbers (small countries) have 7.
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_PHONE_SEPARATORS = re.compile(r"[\s\-.()]")
# RFC 5321 limits a forward path to 256 octets including the angle brackets.
EMAIL_LENGTH_MAX_CHARS = 254
TOKEN_LENGTH_MAX_CHARS = 128

KINDS = ("customer", "card", "phone", "email")  # precedence order, highest first
# The contract's `customer` object keys, by kind.
_CUSTOMER_KEYS = {
    "customer": "customer_id",
    "card": "card_token",
    "phone": "phone",
    "email": "email",
}


class InvalidIdentifier(ValueError):
    """The sender's mistake: `code` is `invalid_phone`, `invalid_email`, `invalid_identifier`
    (customer_id or card_token not a usable string) or `missing_identifier`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Identifiers:
    """A shopper's normalised identifiers; at least one is set."""

    customer_id: str | None = None
    card_token: str | None = None
    phone: str | None = None
    email: str | None = None

    def items(self) -> list[tuple[str, str]]:
        """(kind, value) pairs in precedence order: customer, card, phone, email."""
        values = (self.customer_id, self.card_token, self.phone, self.email)
        return [(kind, value) for kind, value in zip(KINDS, values, strict=True) if value]


def normalise_phone(value: str) -> str:
    candidate = _PHONE_SEPARATORS.sub("", value)
    if candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    if not _E164.match(candidate):
        raise InvalidIdentifier(
            "invalid_phone", f"phone {mask('phone', value)!r} is not an E.164 number (+370...)"
        )
    return candidate


def normalise_email(value: str) -> str:
    candidate = value.strip().lower()
    local, _, domain = candidate.partition("@")
    valid = (
        len(candidate) <= EMAIL_LENGTH_MAX_CHARS
        and candidate.count("@") == 1
        and local
        and "." in domain.strip(".")
        and not any(char.isspace() for char in candidate)
    )
    if not valid:
        raise InvalidIdentifier(
            "invalid_email", f"email {mask('email', candidate)!r} is not an e-mail address"
        )
    return candidate


def normalise_token(kind: str, value: str) -> str:
    """customer_id or card_token: opaque, so only trimmed."""
    candidate = value.strip()
    if not candidate or len(candidate) > TOKEN_LENGTH_MAX_CHARS:
        raise InvalidIdentifier(
            "invalid_identifier",
            f"{kind} must be 1 to {TOKEN_LENGTH_MAX_CHARS} characters",
        )
    return candidate


def normalise(kind: str, value: str) -> str:
    """The normal form of one identifier of `kind` (one of KINDS)."""
    if kind == "phone":
        return normalise_phone(value)
    if kind == "email":
        return normalise_email(value)
    if kind in ("customer", "card"):
        return normalise_token(kind, value)
    raise ValueError(f"unknown identifier kind {kind!r}")


def normalise_customer(customer: Mapping[str, object]) -> Identifiers:
    """The contract's `customer` object, normalised. Blank or null entries count as absent
    (tills send `"phone": ""` when the shopper gave none); other keys are ignored."""
    found: dict[str, str] = {}
    for kind, key in _CUSTOMER_KEYS.items():
        value = customer.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if not isinstance(value, str):
            code = {"phone": "invalid_phone", "email": "invalid_email"}.get(
                kind, "invalid_identifier"
            )
            raise InvalidIdentifier(code, f"{key} must be a string")
        found[key] = normalise(kind, value)
    if not found:
        raise InvalidIdentifier(
            "missing_identifier",
            "customer needs at least one of customer_id, card_token, phone, email",
        )
    return Identifiers(**found)


def parse_ref(ref: str) -> tuple[str, str] | None:
    """An HTTP `{ref}` like `phone:+370...` as (kind, normal value); None for a member_id."""
    kind, separator, value = ref.partition(":")
    if not separator or kind not in KINDS:
        return None
    return kind, normalise(kind, value)


def mask(kind: str, value: str) -> str:
    """A log-safe form: enough to recognise a value when helping a member, not to reuse it."""
    if kind == "phone" and len(value) > 7:
        return value[:5] + "*" * (len(value) - 7) + value[-2:]
    if kind == "email" and "@" in value:
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}***@{domain}"
    # Short values would be shown whole by "two first characters", so they are hidden entirely.
    return value[:2] + "***" if len(value) > 4 else "***"
