"""The scheduler's three messages in all five languages: the numbers and the local date are
right, and the warning is an invitation ("use them on something you like"), never a threat."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from loyalty.notifications import LOCALES, build_notification

# The end of 31 March 2027 in Vilnius is 20:59:59 UTC: the message must say 31 March.
DUE = datetime(2027, 3, 31, 20, 59, 59, tzinfo=UTC)
FRIENDLY = {"en": "something you like", "lt": "kas jums patinka", "pl": "co lubisz",
            "ru": "по душе", "th": "ที่คุณชอบ"}
# babel's "medium" date of 31 March 2027, and 1 240 grouped the locale's way.
DATE = {"en": "Mar 31, 2027", "lt": "2027-03-31", "pl": "31 mar 2027", "ru": "31 мар. 2027 г.",
        "th": "31 มี.ค. 2027"}
NUMBER = {"en": "1,240", "lt": "1 240", "pl": "1 240", "ru": "1 240", "th": "1,240"}
# ruff: noqa: RUF001  (Cyrillic and Thai text is meant, not look-alikes of ASCII)
THREATS = ("lose", "forfeit", "warning", "last chance", "prarasite", "stracisz", "потеряете")


def message(template: str, locale: str, channel: str, params: dict) -> dict:
    return build_notification(
        template=template, locale=locale, channel=channel,
        to="+37060000001" if channel == "sms" else "a@b.lt", program_id="coffee-club",
        member_id="m-1", params={"program_name": "Coffee Club", "time_zone": "Europe/Vilnius",
                                 **params},
        fact_id=f"{template}:m-1", occurred_at=DUE)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("channel", ["sms", "email"])
def test_the_expiry_warning_is_friendly_and_exact(locale: str, channel: str) -> None:
    m = message("expiry_warning", locale, channel, {"points": 1240, "expires_at": DUE})
    text = m["body"].replace("\u00a0", " ").replace("\u202f", " ")
    assert m["locale"] == locale
    assert NUMBER[locale] in text, text
    assert DATE[locale] in text, text
    assert FRIENDLY[locale] in text, text
    assert not any(word in text.lower() for word in THREATS), text


@pytest.mark.parametrize("locale", LOCALES)
def test_the_expired_and_closing_notices_state_the_numbers(locale: str) -> None:
    expired = message("points_expired", locale, "sms", {"points": 1240, "balance": 60})
    closing = message("program_closing", locale, "sms", {"balance": 1240, "closes_at": DUE})
    for m in (expired, closing):
        assert NUMBER[locale] in m["body"].replace("\u00a0", " ").replace("\u202f", " ")
    assert DATE[locale] in closing["body"].replace("\u00a0", " ").replace("\u202f", " ")
