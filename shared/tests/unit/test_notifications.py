"""Notification rendering and messages: every template in every locale on both channels,
numbers and words formatted for the locale, and ids stable per business fact."""

# Expected texts are Russian: Cyrillic letters are meant, not look-alikes of ASCII.
# ruff: noqa: RUF001

from __future__ import annotations

import json
import string
import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from babel import Locale
from hypothesis import given
from hypothesis import strategies as st

from loyalty import notifications
from loyalty.notifications import (
    CHANNELS,
    LOCALES,
    TEMPLATES,
    build_notification,
    choose_channel,
    render,
    required_params,
    resolve_locale,
)

CONTRACT_TEMPLATES = {
    "welcome",
    "points_earned",
    "points_returned",
    "points_adjusted",
    "expiry_warning",
    "points_expired",
    "reward_fulfilled",
    "reward_failed",
    "reward_cancelled",
    "program_closing",
}

ALL_PARAMS = {
    "points": 1240,
    "balance": 35210,
    "program_name": "Coffee Club",
    "expires_at": datetime(2025, 3, 31, 20, 59, 59, tzinfo=UTC),
    "time_zone": "Europe/Vilnius",
    "code": "GIFT-7Q2K-99XZ",
    "reward_name": "10 EUR gift card",
    "reason": "missing purchase A-0999",
    "closes_at": datetime(2027, 1, 31, 21, 59, 59, tzinfo=UTC),
}

NBSP = "\u00a0"  # babel's group separator for lt, pl and ru


def _placeholders(pattern: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(pattern) if name}


def test_the_contract_templates_exist_in_every_locale():
    assert set(TEMPLATES) == CONTRACT_TEMPLATES
    for template, texts in TEMPLATES.items():
        assert set(texts) == set(LOCALES), template


@pytest.mark.parametrize("template", sorted(CONTRACT_TEMPLATES))
def test_every_locale_asks_for_the_same_params(template):
    # A translation that forgets a placeholder would silently drop a number or a code.
    derived = {"points_word", "balance_word"}
    english = {p for part in _parts(template, "en") for p in _placeholders(part)} - derived
    for locale in LOCALES:
        names = {p for part in _parts(template, locale) for p in _placeholders(part)} - derived
        assert names == english, locale


def _parts(template: str, locale: str) -> tuple[str, ...]:
    text = TEMPLATES[template][locale]
    # The code is in the SMS and the body; the other facts may be left out of a subject.
    return (text.sms, text.body)


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("template", sorted(CONTRACT_TEMPLATES))
def test_every_template_renders_in_every_locale_on_both_channels(template, locale, channel):
    rendered = render(template, locale, channel, ALL_PARAMS)
    assert "{" not in rendered.body and "}" not in rendered.body
    assert "Coffee Club" in rendered.body
    if channel == "sms":
        assert rendered.subject is None
        assert "\n" not in rendered.body
        assert len(rendered.body) <= 160
    else:
        assert rendered.subject
        assert "\n" not in rendered.subject
        assert "{" not in rendered.subject
        assert rendered.body.count("\n\n") >= 2  # greeting, text, sign-off
    if template == "reward_fulfilled":
        assert "GIFT-7Q2K-99XZ" in rendered.body


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("en", "1,240"),
        ("lt", f"1{NBSP}240"),
        ("pl", f"1{NBSP}240"),
        ("ru", f"1{NBSP}240"),
        ("th", "1,240"),
    ],
)
def test_numbers_are_formatted_for_the_locale(locale, expected):
    body = render("points_earned", locale, "sms", {**ALL_PARAMS, "points": 1240}).body
    assert f"{expected} " in body


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("en", "Coffee Club: you earned 120 points. You now have 1,240 points."),
        ("lt", f"Coffee Club: gavote 120 taškų. Dabar turite 1{NBSP}240 taškų."),
        ("pl", f"Coffee Club: otrzymujesz 120 punktów. Masz teraz 1{NBSP}240 punktów."),
        ("ru", f"Coffee Club: вы получили 120 баллов. Теперь у вас 1{NBSP}240 баллов."),
        ("th", "Coffee Club: คุณได้รับ 120 คะแนน ตอนนี้คุณมีทั้งหมด 1,240 คะแนน"),
    ],
)
def test_points_earned_sms_reads_naturally(locale, expected):
    params = {"program_name": "Coffee Club", "points": 120, "balance": 1240}
    assert render("points_earned", locale, "sms", params).body == expected


@pytest.mark.parametrize(
    ("locale", "points", "phrase"),
    [
        ("en", 1, "earned 1 point."),
        ("en", 2, "earned 2 points."),
        ("lt", 1, "gavote 1 tašką."),
        ("lt", 2, "gavote 2 taškus."),
        ("lt", 10, "gavote 10 taškų."),
        ("lt", 21, "gavote 21 tašką."),
        ("pl", 1, "otrzymujesz 1 punkt."),
        ("pl", 3, "otrzymujesz 3 punkty."),
        ("pl", 5, "otrzymujesz 5 punktów."),
        ("pl", 22, "otrzymujesz 22 punkty."),
        ("ru", 1, "получили 1 балл."),
        ("ru", 3, "получили 3 балла."),
        ("ru", 11, "получили 11 баллов."),
        ("ru", 21, "получили 21 балл."),
    ],
)
def test_the_word_after_a_number_agrees_with_it(locale, points, phrase):
    params = {"program_name": "Coffee Club", "points": points, "balance": 5}
    assert phrase in render("points_earned", locale, "sms", params).body


def test_a_negative_adjustment_takes_the_word_of_its_magnitude():
    params = {**ALL_PARAMS, "points": -1, "balance": 0}
    assert "o -1 punkt (" in render("points_adjusted", "pl", "sms", params).body


def test_expiry_date_is_shown_in_the_program_time_zone():
    # 21:30 UTC on 31 March is already 1 April in Vilnius.
    params = {**ALL_PARAMS, "expires_at": datetime(2025, 3, 31, 21, 30, tzinfo=UTC)}
    assert "by Apr 1, 2025." in render("expiry_warning", "en", "sms", params).body
    assert "iki 2025-04-01 " in render("expiry_warning", "lt", "sms", params).body
    without_zone = {k: v for k, v in params.items() if k != "time_zone"}
    assert "by Mar 31, 2025." in render("expiry_warning", "en", "sms", without_zone).body


def test_dates_are_formatted_for_the_locale():
    params = {**ALL_PARAMS, "expires_at": date(2025, 3, 31)}
    assert "do 31 mar 2025 " in render("expiry_warning", "pl", "sms", params).body
    # babel puts a narrow no-break space before the Russian year mark.
    assert "до 31 мар. 2025\u202fг. " in render("expiry_warning", "ru", "sms", params).body


def test_the_expiry_warning_is_an_invitation():
    rendered = render("expiry_warning", "en", "email", ALL_PARAMS)
    assert rendered.subject == "A friendly reminder about your points"
    assert "something you like" in rendered.body


@pytest.mark.parametrize(
    ("asked", "used"),
    [("lt", "lt"), ("lt-LT", "lt"), ("ru_RU", "ru"), ("TH", "th"), ("de", "en"), (None, "en")],
)
def test_locale_resolution_and_fallback_to_english(asked, used):
    assert resolve_locale(asked) == used
    expected = render("welcome", used, "sms", ALL_PARAMS)
    assert render("welcome", asked, "sms", ALL_PARAMS) == expected


def test_a_missing_param_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"'reward_fulfilled' needs params \['code'\]"):
        render("reward_fulfilled", "en", "sms", {"program_name": "P", "reward_name": "R"})
    # A derived word names the param it comes from.
    with pytest.raises(ValueError, match=r"\['balance'\]"):
        render("points_earned", "lt", "email", {"program_name": "P", "points": 5})


def test_required_params_lists_what_a_template_needs():
    assert required_params("points_earned") == {"program_name", "points", "balance"}
    assert required_params("reward_fulfilled") == {"program_name", "reward_name", "code"}


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="unknown notification template"):
        render("birthday", "en", "sms", ALL_PARAMS)
    with pytest.raises(ValueError, match="unknown channel"):
        render("welcome", "en", "push", ALL_PARAMS)
    with pytest.raises(ValueError, match="timezone-aware"):
        render("expiry_warning", "en", "sms", {**ALL_PARAMS, "expires_at": datetime(2025, 3, 1)})
    with pytest.raises(ValueError, match="time zone"):
        render("expiry_warning", "en", "sms", {**ALL_PARAMS, "time_zone": "Mars/Olympus"})


def _notification(**overrides):
    arguments = {
        "template": "points_earned",
        "locale": "lt",
        "channel": "sms",
        "to": "+37060000001",
        "program_id": "coffee-club",
        "member_id": "m-1",
        "params": ALL_PARAMS,
        "fact_id": "ledger:e-42",
        "occurred_at": datetime(2026, 11, 22, 10, 15, tzinfo=timezone(timedelta(hours=2))),
    }
    return build_notification(**{**arguments, **overrides})


def test_build_notification_sms_follows_the_contract():
    message = _notification()
    assert message == {
        "notification_id": message["notification_id"],
        "type": "notification.requested",
        "occurred_at": "2026-11-22T08:15:00+00:00",
        "channel": "sms",
        "to": "+37060000001",
        "locale": "lt",
        "template": "points_earned",
        "body": render("points_earned", "lt", "sms", ALL_PARAMS).body,
        "program_id": "coffee-club",
        "member_id": "m-1",
    }
    assert uuid.UUID(message["notification_id"]).version == 5


def test_build_notification_email_has_a_subject():
    message = _notification(channel="email", to="ona@example.lt")
    rendered = render("points_earned", "lt", "email", ALL_PARAMS)
    assert message["subject"] == rendered.subject
    assert message["body"] == rendered.body
    assert message["to"] == "ona@example.lt"


def test_build_notification_states_the_locale_it_wrote_in():
    assert _notification(locale="de")["locale"] == "en"
    assert _notification(locale="pl-PL")["locale"] == "pl"


def test_notification_id_is_stable_for_the_same_fact():
    first = _notification()["notification_id"]
    # A redelivery renders later, perhaps with a newer balance: still the same fact.
    again = _notification(
        params={**ALL_PARAMS, "balance": 1}, occurred_at=datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert again["notification_id"] == first


def test_notification_id_differs_per_channel_template_and_fact():
    ids = {
        _notification()["notification_id"],
        _notification(channel="email", to="a@b.c")["notification_id"],
        _notification(template="points_returned")["notification_id"],
        _notification(fact_id="ledger:e-43")["notification_id"],
    }
    assert len(ids) == 4


def test_build_notification_rejects_what_a_sender_could_not_use():
    with pytest.raises(ValueError, match="recipient"):
        _notification(to="")
    with pytest.raises(ValueError, match="timezone-aware"):
        _notification(occurred_at=datetime(2026, 11, 22, 10, 15))


@pytest.mark.parametrize(
    ("preferred", "phone", "email", "expected"),
    [
        ("email", "+37060000001", "a@b.c", ("email", "a@b.c")),
        ("sms", "+37060000001", "a@b.c", ("sms", "+37060000001")),
        ("email", "+37060000001", None, ("sms", "+37060000001")),  # preference unreachable
        ("sms", None, "a@b.c", ("email", "a@b.c")),
        (None, "+37060000001", "a@b.c", ("sms", "+37060000001")),  # SMS first by default
        (None, None, "a@b.c", ("email", "a@b.c")),
        ("push", "", "a@b.c", ("email", "a@b.c")),  # unknown preference, empty phone
        (None, None, None, None),
        ("email", "", "", None),
    ],
)
def test_choose_channel(preferred, phone, email, expected):
    assert choose_channel(preferred, phone, email) == expected


@given(st.text(), st.sampled_from(["sms", "email"]), st.text())
def test_notification_ids_are_those_of_the_json_formula(template, channel, fact_id):
    # Ids already sent must not change with the faster formatting of their name.
    name = json.dumps([template, channel, fact_id])
    assert notifications.notification_id(template, channel, fact_id) == str(
        uuid.uuid5(notifications.NOTIFICATION_NAMESPACE, name))


@given(st.integers(min_value=-10**12, max_value=10**12),
       st.sampled_from(sorted(notifications._POINT_WORDS)))
def test_the_cached_plural_category_is_babels(count, lang):
    forms = notifications._POINT_WORDS[lang]
    expected = Locale.parse(lang).plural_form(abs(count))
    assert notifications._point_word(count, lang) == forms.get(expected, forms["other"])
