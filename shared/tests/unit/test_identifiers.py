"""Identifier normalisation: the same shopper typed differently must be the same member."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty.contracts import Customer
from loyalty.identifiers import (
    Identifiers,
    InvalidIdentifier,
    mask,
    normalise_customer,
    normalise_email,
    normalise_phone,
    parse_ref,
)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("+37060000001", "+37060000001"),
        ("+370 600 00001", "+37060000001"),
        ("+370-600-00001", "+37060000001"),
        ("(+370) 600.00001", "+37060000001"),
        ("0037060000001", "+37060000001"),
        ("00 370 600 00001", "+37060000001"),
        ("  +37060000001\t", "+37060000001"),
        ("+370\u00a0600\u00a000001", "+37060000001"),  # no-break spaces from a copy-paste
        ("+48 123 456 789", "+48123456789"),
        ("+66 81 234 5678", "+66812345678"),
        ("+7 (912) 345-67-89", "+79123456789"),
        ("+1234567", "+1234567"),  # 7 digits: the shortest accepted
        ("+123456789012345", "+123456789012345"),  # 15 digits: the E.164 maximum
    ],
)
def test_phone_normalised_to_e164(raw, normal):
    assert normalise_phone(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "860000001",  # national format: the country is unknown
        "+0370600000",
        "000370600000",
        "+123456",  # too short
        "+1234567890123456",  # 16 digits
        "+3706000000a",
        "+370/600/00001",
        "++37060000001",
        "",
        "+",
    ],
)
def test_invalid_phone(raw):
    with pytest.raises(InvalidIdentifier) as raised:
        normalise_phone(raw)

    assert raised.value.code == "invalid_phone"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("john@example.com", "john@example.com"),
        ("  John.Doe@Example.COM ", "john.doe@example.com"),
        ("a+tag@mail.example.lt", "a+tag@mail.example.lt"),
    ],
)
def test_email_normalised(raw, normal):
    assert normalise_email(raw) == normal


@pytest.mark.parametrize(
    "raw",
    ["john", "john@example", "a@@b.lt", "a@b@c.lt", "@example.com", "a b@example.com",
     "a@.com", "a@com.", "", "a@" + "x" * 250 + ".lt"],
)  # fmt: skip
def test_invalid_email(raw):
    with pytest.raises(InvalidIdentifier) as raised:
        normalise_email(raw)

    assert raised.value.code == "invalid_email"


@pytest.mark.parametrize(
    ("customer", "expected"),
    [
        ({"phone": "+370 600 00001"}, Identifiers(phone="+37060000001")),
        ({"email": "A@B.LT"}, Identifiers(email="a@b.lt")),
        ({"customer_id": " C-42 "}, Identifiers(customer_id="C-42")),
        ({"card_token": "tok_AbC"}, Identifiers(card_token="tok_AbC")),
        ({"phone": "", "email": "a@b.lt"}, Identifiers(email="a@b.lt")),
        ({"phone": None, "customer_id": "C-1"}, Identifiers(customer_id="C-1")),
        ({"phone": "+37060000001", "loyalty_tier": "gold"}, Identifiers(phone="+37060000001")),
        (
            {"customer_id": "C-1", "card_token": "T", "phone": "+37060000001", "email": "a@b.lt"},
            Identifiers(customer_id="C-1", card_token="T", phone="+37060000001", email="a@b.lt"),
        ),
    ],
)
def test_normalise_customer(customer, expected):
    assert normalise_customer(customer) == expected


@pytest.mark.parametrize(
    ("customer", "code"),
    [
        ({}, "missing_identifier"),
        ({"phone": "", "email": "  "}, "missing_identifier"),
        ({"customer_id": "   "}, "missing_identifier"),
        ({"loyalty_number": "123"}, "missing_identifier"),
        ({"phone": "860000001"}, "invalid_phone"),
        ({"phone": 37060000001}, "invalid_phone"),
        ({"email": "not-an-email", "phone": "+37060000001"}, "invalid_email"),
        ({"email": ["a@b.lt"]}, "invalid_email"),
        ({"customer_id": 42}, "invalid_identifier"),
        ({"card_token": "x" * 129}, "invalid_identifier"),
    ],
)
def test_invalid_customer(customer, code):
    with pytest.raises(InvalidIdentifier) as raised:
        normalise_customer(customer)

    assert raised.value.code == code


def test_items_follow_the_documented_precedence():
    identifiers = normalise_customer(
        {"email": "a@b.lt", "phone": "+37060000001", "card_token": "T-1", "customer_id": "C-1"}
    )

    assert identifiers.items() == [
        ("customer", "C-1"),
        ("card", "T-1"),
        ("phone", "+37060000001"),
        ("email", "a@b.lt"),
    ]
    assert normalise_customer({"email": "a@b.lt", "phone": "+37060000001"}).items() == [
        ("phone", "+37060000001"),
        ("email", "a@b.lt"),
    ]


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("phone:+37060000001", ("phone", "+37060000001")),
        ("phone:+370 600 00001", ("phone", "+37060000001")),
        ("email:John@Example.com", ("email", "john@example.com")),
        ("card:TOKEN-1", ("card", "TOKEN-1")),
        ("customer: C-42", ("customer", "C-42")),
        ("customer:a:b", ("customer", "a:b")),
        ("6f1c2b1e-8d1e-4c5a-9a57-3f0c3c1f2a10", None),  # a member_id
        ("member:123", None),
        ("Phone:+37060000001", None),  # prefixes are lower-case, like the contract's
    ],
)
def test_parse_ref(ref, parsed):
    assert parse_ref(ref) == parsed


@pytest.mark.parametrize(
    ("ref", "code"),
    [
        ("phone:860000001", "invalid_phone"),
        ("email:nobody", "invalid_email"),
        ("customer:", "invalid_identifier"),
        ("card:  ", "invalid_identifier"),
    ],
)
def test_parse_ref_with_a_bad_value(ref, code):
    with pytest.raises(InvalidIdentifier) as raised:
        parse_ref(ref)

    assert raised.value.code == code


@pytest.mark.parametrize(
    ("kind", "value", "masked"),
    [
        ("phone", "+37060000001", "+3706*****01"),
        ("phone", "+48123456789", "+4812*****89"),
        ("phone", "+123", "***"),
        ("email", "john@example.com", "j***@example.com"),
        ("email", "@example.com", "***@example.com"),
        ("card", "TOKEN-123", "TO***"),
        ("customer", "C-42", "***"),
        ("customer", "", "***"),
    ],
)
def test_mask(kind, value, masked):
    assert mask(kind, value) == masked


def test_error_messages_do_not_leak_the_value():
    with pytest.raises(InvalidIdentifier) as raised:
        normalise_phone("+3706000000123456")

    assert "3706000000123456" not in str(raised.value)


e164 = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)
separators = st.sampled_from([" ", "-", ".", "(", ")", "\u00a0"])


@given(number=e164, noise=st.lists(st.tuples(st.integers(0, 20), separators), max_size=6))
def test_formatting_noise_never_changes_the_phone(number, noise):
    digits = list(number[1:])
    for position, separator in noise:
        digits.insert(min(position, len(digits)), separator)
    typed = "+" + "".join(digits)

    assert normalise_phone(typed) == number
    assert normalise_phone("00" + typed[1:]) == number


@given(number=e164)
def test_masked_phone_hides_the_middle(number):
    masked = mask("phone", number)

    assert len(masked) == len(number)
    assert masked != number
    assert masked.startswith(number[:5]) and masked.endswith(number[-2:])


@given(
    local=st.from_regex(r"[A-Za-z0-9._+-]{1,20}", fullmatch=True),
    domain=st.from_regex(r"[A-Za-z0-9-]{1,20}\.[A-Za-z]{2,6}", fullmatch=True),
)
def test_email_normalisation_is_idempotent_and_case_blind(local, domain):
    email = f"{local}@{domain}"
    normal = normalise_email(email)

    assert normalise_email(normal) == normal
    assert normalise_email(f"  {email.upper()} ") == normal


def test_a_customer_object_gives_its_normalised_identifiers_and_stays_an_equal_value() -> None:
    typed = Customer(phone="+370 600 00001", email=" Jonas@Example.COM")
    assert typed.identifiers.items() == [("phone", "+37060000001"),
                                         ("email", "jonas@example.com")]
    assert typed.identifiers is typed.identifiers  # worked out once
    # What the contract says of the object is unchanged by having asked.
    assert typed == Customer(phone="+370 600 00001", email=" Jonas@Example.COM")
    assert typed.model_dump(exclude_none=True) == {"phone": "+370 600 00001",
                                                   "email": " Jonas@Example.COM"}
    with pytest.raises(InvalidIdentifier) as refused:
        _ = Customer(phone="600 00001").identifiers
    assert refused.value.code == "invalid_phone"
