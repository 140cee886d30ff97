"""Notification texts and messages, shared by every service that tells a member something.

Pure code: renders a template in the member's language for SMS or e-mail, and builds the
`notification.requested` message of CONTRACT.md for the sender topics. Sending is not here.

Conventions:
- Locales: en, lt, pl, ru, th. "lt-LT" / "lt_LT" mean "lt"; anything unknown falls back to en,
  and the message states the locale actually used.
- Numbers are formatted by babel for the locale (1,240 / 1 240); dates as babel's "medium"
  date, in the program's time zone when a `time_zone` param is given (expiry instants are the
  end of a local day, so the date in UTC could be a different day).
- The word after a number agrees with it: `{points_word}` / `{balance_word}` are derived
  from `points` / `balance` with the locale's plural rules (1 tašką, 2 taškus, 10 taškų).
  Sentences are phrased so that one form set per locale fits everywhere.
- The tone is friendly, the expiry warning above all: an invitation, never a threat.
- `notification_id` is a uuid5 of (template, channel, fact_id): the same business fact gives
  the same id on every retry or replay, so a sender can drop duplicates.
"""

# The templates are natural text in five languages: Cyrillic letters and typographic dashes
# and quotes are meant, not look-alikes of ASCII.
# ruff: noqa: RUF001

from __future__ import annotations

import functools
import string
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_date
from babel.numbers import format_decimal

from loyalty.clock import uuid5_text

Channel = Literal["sms", "email"]

CHANNELS: tuple[Channel, ...] = ("sms", "email")
LOCALES = ("en", "lt", "pl", "ru", "th")
DEFAULT_LOCALE = "en"
MESSAGE_TYPE = "notification.requested"

# Fixed forever: changing it would change every notification_id and defeat de-duplication.
NOTIFICATION_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:loyalty:notifications")


@dataclass(frozen=True)
class Text:
    """One template in one locale: the SMS line, and the e-mail's subject and body."""

    sms: str
    subject: str
    body: str


@dataclass(frozen=True)
class Rendered:
    """A rendered notification; `subject` is None for SMS."""

    subject: str | None
    body: str


# The noun after a count, by CLDR plural category, in the form the sentences below need
# (accusative: "gavote 1 tašką", "вы получили 5 баллов"). Thai nouns do not inflect.
_POINT_WORDS: dict[str, dict[str, str]] = {
    "en": {"one": "point", "other": "points"},
    "lt": {"one": "tašką", "few": "taškus", "many": "taško", "other": "taškų"},
    "pl": {"one": "punkt", "few": "punkty", "many": "punktów", "other": "punktu"},
    "ru": {"one": "балл", "few": "балла", "many": "баллов", "other": "балла"},
    "th": {"other": "คะแนน"},
}

# Placeholders computed by `render`, and the param each is computed from.
_DERIVED = {"points_word": "points", "balance_word": "balance"}

# E-mail bodies are framed by a greeting and a sign-off; SMS bodies are not.
_EMAIL_FRAME: dict[str, tuple[str, str]] = {
    "en": ("Hello!", "The {program_name} team"),
    "lt": ("Sveiki!", "Jūsų {program_name} komanda"),
    "pl": ("Dzień dobry!", "Zespół {program_name}"),
    "ru": ("Здравствуйте!", "Команда {program_name}"),
    "th": ("สวัสดีค่ะ", "ทีมงาน {program_name}"),
}

TEMPLATES: dict[str, dict[str, Text]] = {
    "welcome": {
        "en": Text(
            sms="Welcome to {program_name}! From now on you collect points with every purchase.",
            subject="Welcome to {program_name}",
            body="We're glad to have you! You collect points with every purchase, no card "
            "needed, and can swap them for rewards you like.",
        ),
        "lt": Text(
            sms="Sveiki atvykę į {program_name}! Nuo šiol už kiekvieną pirkinį gausite taškų.",
            subject="Sveiki atvykę į {program_name}",
            body="Džiaugiamės, kad esate su mumis! Už kiekvieną pirkinį gausite taškų – "
            "kortelės nereikia – ir galėsite juos iškeisti į jums patinkančias dovanas.",
        ),
        "pl": Text(
            sms="Witamy w {program_name}! Od teraz za każde zakupy zbierasz punkty.",
            subject="Witamy w {program_name}",
            body="Cieszymy się, że jesteś z nami! Za każde zakupy zbierasz punkty – bez karty – "
            "i wymieniasz je na nagrody, które lubisz.",
        ),
        "ru": Text(
            sms="Добро пожаловать в {program_name}! Теперь за каждую покупку вы получаете баллы.",
            subject="Добро пожаловать в {program_name}",
            body="Рады, что вы с нами! За каждую покупку вы получаете баллы — карта не нужна — "
            "и можете обменять их на награды, которые вам нравятся.",
        ),
        "th": Text(
            sms="ยินดีต้อนรับสู่ {program_name}! ต่อจากนี้คุณจะได้รับคะแนนทุกครั้งที่ซื้อสินค้า",
            subject="ยินดีต้อนรับสู่ {program_name}",
            body="ยินดีที่คุณมาเป็นสมาชิกกับเรา! คุณจะได้รับคะแนนทุกครั้งที่ซื้อสินค้าโดยไม่ต้องใช้บัตร "
            "และนำไปแลกของรางวัลที่คุณชอบได้",
        ),
    },
    "points_earned": {
        "en": Text(
            sms="{program_name}: you earned {points} {points_word}. "
            "You now have {balance} {balance_word}.",
            subject="You earned {points} {points_word}",
            body="Thank you for shopping with us! You earned {points} {points_word} and now "
            "have {balance} {balance_word} to spend on rewards.",
        ),
        "lt": Text(
            sms="{program_name}: gavote {points} {points_word}. "
            "Dabar turite {balance} {balance_word}.",
            subject="Gavote {points} {points_word}",
            body="Ačiū, kad apsiperkate pas mus! Gavote {points} {points_word}, dabar turite "
            "{balance} {balance_word} dovanoms.",
        ),
        "pl": Text(
            sms="{program_name}: otrzymujesz {points} {points_word}. "
            "Masz teraz {balance} {balance_word}.",
            subject="Otrzymujesz {points} {points_word}",
            body="Dziękujemy za zakupy! Otrzymujesz {points} {points_word}, a na koncie masz "
            "teraz {balance} {balance_word} do wymiany na nagrody.",
        ),
        "ru": Text(
            sms="{program_name}: вы получили {points} {points_word}. "
            "Теперь у вас {balance} {balance_word}.",
            subject="Вы получили {points} {points_word}",
            body="Спасибо за покупку! Вы получили {points} {points_word}, и теперь у вас "
            "{balance} {balance_word} для обмена на награды.",
        ),
        "th": Text(
            sms="{program_name}: คุณได้รับ {points} คะแนน ตอนนี้คุณมีทั้งหมด {balance} คะแนน",
            subject="คุณได้รับ {points} คะแนน",
            body="ขอบคุณที่ซื้อสินค้ากับเรา! คุณได้รับ {points} คะแนน "
            "ตอนนี้คุณมีคะแนนสะสมทั้งหมด {balance} คะแนนสำหรับแลกของรางวัล",
        ),
    },
    "points_returned": {
        "en": Text(
            sms="{program_name}: after your return we took back {points} {points_word}. "
            "You now have {balance} {balance_word}.",
            subject="Your points after your return",
            body="We've processed your return and took back the {points} {points_word} "
            "earned on the returned items. You now have {balance} {balance_word}.",
        ),
        "lt": Text(
            sms="{program_name}: dėl grąžintų prekių nurašėme {points} {points_word}. "
            "Dabar turite {balance} {balance_word}.",
            subject="Jūsų taškai po prekių grąžinimo",
            body="Sutvarkėme jūsų prekių grąžinimą ir nurašėme {points} {points_word} už "
            "grąžintas prekes. Dabar turite {balance} {balance_word}.",
        ),
        "pl": Text(
            sms="{program_name}: w związku ze zwrotem odjęliśmy {points} {points_word}. "
            "Masz teraz {balance} {balance_word}.",
            subject="Twoje punkty po zwrocie",
            body="Twój zwrot został rozliczony, dlatego odjęliśmy {points} {points_word} za "
            "zwrócone produkty. Masz teraz {balance} {balance_word}.",
        ),
        "ru": Text(
            sms="{program_name}: в связи с возвратом мы списали {points} {points_word}. "
            "Теперь у вас {balance} {balance_word}.",
            subject="Ваши баллы после возврата",
            body="Мы оформили ваш возврат и списали {points} {points_word} за возвращённые "
            "товары. Теперь у вас {balance} {balance_word}.",
        ),
        "th": Text(
            sms="{program_name}: เราหักคืน {points} คะแนนจากการคืนสินค้า "
            "คะแนนคงเหลือ {balance} คะแนน",
            subject="คะแนนของคุณหลังการคืนสินค้า",
            body="เราดำเนินการคืนสินค้าของคุณเรียบร้อยแล้ว และหักคืน {points} คะแนน"
            "ที่ได้รับจากสินค้าที่คืน ตอนนี้คุณมีคะแนนคงเหลือ {balance} คะแนน",
        ),
    },
    "points_adjusted": {
        "en": Text(
            sms="{program_name}: your points were adjusted by {points} ({reason}). "
            "You now have {balance} {balance_word}.",
            subject="Your points balance was updated",
            body="Our team adjusted your points by {points}. Reason: {reason}. "
            "You now have {balance} {balance_word}.",
        ),
        "lt": Text(
            sms="{program_name}: jūsų taškų likutis pakoreguotas: {points} ({reason}). "
            "Dabar turite {balance} {balance_word}.",
            subject="Jūsų taškų likutis atnaujintas",
            body="Mūsų komanda pakoregavo jūsų taškų likutį: {points}. Priežastis: {reason}. "
            "Dabar turite {balance} {balance_word}.",
        ),
        "pl": Text(
            sms="{program_name}: skorygowaliśmy Twoje saldo o {points} {points_word} "
            "({reason}). Masz teraz {balance} {balance_word}.",
            subject="Twoje saldo punktów zostało zaktualizowane",
            body="Nasz zespół skorygował Twoje saldo punktów o {points} {points_word}. "
            "Powód: {reason}. Masz teraz {balance} {balance_word}.",
        ),
        "ru": Text(
            sms="{program_name}: ваш баланс изменён на {points} {points_word} ({reason}). "
            "Теперь у вас {balance} {balance_word}.",
            subject="Ваш баланс баллов обновлён",
            body="Наша команда изменила ваш баланс на {points} {points_word}. "
            "Причина: {reason}. Теперь у вас {balance} {balance_word}.",
        ),
        "th": Text(
            sms="{program_name}: คะแนนของคุณถูกปรับ {points} คะแนน ({reason}) "
            "คะแนนคงเหลือ {balance} คะแนน",
            subject="คะแนนของคุณได้รับการอัปเดต",
            body="ทีมงานของเราปรับคะแนนของคุณ {points} คะแนน เหตุผล: {reason} "
            "ตอนนี้คุณมีคะแนนคงเหลือ {balance} คะแนน",
        ),
    },
    "expiry_warning": {
        "en": Text(
            sms="{program_name}: you have {points} {points_word} to use by {expires_at}. "
            "Treat yourself to something you like!",
            subject="A friendly reminder about your points",
            body="Just a friendly reminder: you have {points} {points_word} to use by "
            "{expires_at}. Why not treat yourself to something you like?",
        ),
        "lt": Text(
            sms="{program_name}: iki {expires_at} galite panaudoti {points} {points_word}. "
            "Išsirinkite ką nors, kas jums patinka!",
            subject="Draugiškas priminimas apie jūsų taškus",
            body="Draugiškai primename: iki {expires_at} galite panaudoti {points} "
            "{points_word}. Išsirinkite ką nors, kas jums patinka!",
        ),
        "pl": Text(
            sms="{program_name}: do {expires_at} możesz wykorzystać {points} {points_word}. "
            "Wybierz coś, co lubisz!",
            subject="Przyjazne przypomnienie o Twoich punktach",
            body="Przypominamy: do {expires_at} możesz wykorzystać {points} {points_word}. "
            "Wybierz coś, co lubisz!",
        ),
        "ru": Text(
            sms="{program_name}: до {expires_at} вы можете потратить {points} {points_word}. "
            "Выберите что-нибудь по душе!",
            subject="Дружеское напоминание о ваших баллах",
            body="Напоминаем: до {expires_at} вы можете потратить {points} {points_word}. "
            "Выберите что-нибудь по душе!",
        ),
        "th": Text(
            sms="{program_name}: คุณมี {points} คะแนนที่ใช้ได้ถึง {expires_at} "
            "นำไปแลกสิ่งที่คุณชอบได้เลยนะคะ",
            subject="แจ้งเตือนเรื่องคะแนนของคุณ",
            body="ขอแจ้งให้ทราบว่าคุณมี {points} คะแนนที่ใช้ได้ถึง {expires_at} "
            "อย่าลืมนำไปแลกสิ่งที่คุณชอบนะคะ",
        ),
    },
    "points_expired": {
        "en": Text(
            sms="{program_name}: we've removed {points} expired {points_word}. "
            "You now have {balance} {balance_word}.",
            subject="Some of your points have expired",
            body="We've removed {points} expired {points_word} from your balance. "
            "You now have {balance} {balance_word}. Keep collecting: your next reward is "
            "closer than you think!",
        ),
        "lt": Text(
            sms="{program_name}: pasibaigus galiojimui nurašėme {points} {points_word}. "
            "Dabar turite {balance} {balance_word}.",
            subject="Baigėsi dalies jūsų taškų galiojimas",
            body="Pasibaigus galiojimui nurašėme {points} {points_word}. Dabar turite "
            "{balance} {balance_word}. Rinkite toliau – kita dovana arčiau, nei atrodo!",
        ),
        "pl": Text(
            sms="{program_name}: po upływie ważności odjęliśmy {points} {points_word}. "
            "Masz teraz {balance} {balance_word}.",
            subject="Część Twoich punktów straciła ważność",
            body="Po upływie ważności odjęliśmy {points} {points_word}. Masz teraz {balance} "
            "{balance_word}. Zbieraj dalej – kolejna nagroda jest bliżej, niż myślisz!",
        ),
        "ru": Text(
            sms="{program_name}: по истечении срока действия мы списали {points} "
            "{points_word}. Теперь у вас {balance} {balance_word}.",
            subject="У части ваших баллов истёк срок действия",
            body="По истечении срока действия мы списали {points} {points_word}. Теперь у вас "
            "{balance} {balance_word}. Копите дальше — следующая награда ближе, чем кажется!",
        ),
        "th": Text(
            sms="{program_name}: {points} คะแนนหมดอายุแล้ว คะแนนคงเหลือ {balance} คะแนน",
            subject="คะแนนบางส่วนของคุณหมดอายุแล้ว",
            body="{points} คะแนนของคุณหมดอายุแล้ว ตอนนี้คุณมีคะแนนคงเหลือ {balance} คะแนน "
            "สะสมต่อไปนะคะ ของรางวัลชิ้นต่อไปอยู่ใกล้กว่าที่คิด!",
        ),
    },
    "reward_fulfilled": {
        "en": Text(
            sms="{program_name}: your {reward_name} code is {code}. Enjoy!",
            subject="Your {reward_name} code",
            body="Thank you for redeeming your points! Here is your {reward_name} code:\n\n"
            "{code}\n\nEnjoy!",
        ),
        "lt": Text(
            sms="{program_name}: jūsų „{reward_name}“ kodas: {code}. Smagaus naudojimo!",
            subject="Jūsų „{reward_name}“ kodas",
            body="Ačiū, kad iškeitėte taškus! Jūsų „{reward_name}“ kodas:\n\n{code}\n\n"
            "Smagaus naudojimo!",
        ),
        "pl": Text(
            sms="{program_name}: Twój kod „{reward_name}”: {code}. Miłego korzystania!",
            subject="Twój kod „{reward_name}”",
            body="Dziękujemy za wymianę punktów! Oto Twój kod „{reward_name}”:\n\n{code}\n\n"
            "Miłego korzystania!",
        ),
        "ru": Text(
            sms="{program_name}: ваш код «{reward_name}»: {code}. Приятного использования!",
            subject="Ваш код «{reward_name}»",
            body="Спасибо, что обменяли баллы! Ваш код «{reward_name}»:\n\n{code}\n\n"
            "Приятного использования!",
        ),
        "th": Text(
            sms="{program_name}: รหัส {reward_name} ของคุณคือ {code} ขอให้สนุกนะคะ!",
            subject="รหัส {reward_name} ของคุณ",
            body="ขอบคุณที่แลกคะแนนกับเรา! รหัส {reward_name} ของคุณคือ\n\n{code}\n\n"
            "ขอให้สนุกนะคะ!",
        ),
    },
    "reward_failed": {
        "en": Text(
            sms="{program_name}: sorry, we can't deliver your {reward_name} right now. "
            "We've returned {points} {points_word} to your balance.",
            subject="We couldn't complete your reward order",
            body="Sorry, we can't deliver your {reward_name} right now. You lose nothing: "
            "we've returned {points} {points_word} to your balance.",
        ),
        "lt": Text(
            sms="{program_name}: atsiprašome, šiuo metu negalime išduoti „{reward_name}“. "
            "Grąžinome jums {points} {points_word}.",
            subject="Nepavyko įvykdyti jūsų užsakymo",
            body="Atsiprašome, šiuo metu negalime išduoti „{reward_name}“. Nieko neprarandate: "
            "grąžinome jums {points} {points_word}.",
        ),
        "pl": Text(
            sms="{program_name}: przepraszamy, nie możemy teraz wydać „{reward_name}”. "
            "Zwróciliśmy Ci {points} {points_word}.",
            subject="Nie udało się zrealizować zamówienia",
            body="Przepraszamy, nie możemy teraz wydać „{reward_name}”. Nic nie tracisz: "
            "zwróciliśmy Ci {points} {points_word}.",
        ),
        "ru": Text(
            sms="{program_name}: к сожалению, сейчас мы не можем выдать «{reward_name}». "
            "Мы вернули вам {points} {points_word}.",
            subject="Не удалось выполнить ваш заказ",
            body="К сожалению, сейчас мы не можем выдать «{reward_name}». Вы ничего не теряете: "
            "мы вернули вам {points} {points_word}.",
        ),
        "th": Text(
            sms="{program_name}: ขออภัย ขณะนี้เราไม่สามารถส่ง {reward_name} ได้ "
            "เราคืน {points} คะแนนให้คุณแล้ว",
            subject="ไม่สามารถดำเนินการคำสั่งแลกของคุณได้",
            body="ขออภัย ขณะนี้เราไม่สามารถส่ง {reward_name} ให้คุณได้ คะแนนของคุณไม่สูญหาย "
            "เราคืน {points} คะแนนให้คุณแล้ว",
        ),
    },
    "reward_cancelled": {
        "en": Text(
            sms="{program_name}: your {reward_name} order was cancelled. "
            "We've returned {points} {points_word} to your balance.",
            subject="Your reward order was cancelled",
            body="Your {reward_name} order was cancelled and we've returned {points} "
            "{points_word} to your balance, ready for something else you like.",
        ),
        "lt": Text(
            sms="{program_name}: jūsų „{reward_name}“ užsakymas atšauktas. "
            "Grąžinome jums {points} {points_word}.",
            subject="Jūsų užsakymas atšauktas",
            body="Jūsų „{reward_name}“ užsakymas atšauktas. Grąžinome jums {points} "
            "{points_word} – išsirinkite ką nors kita, kas jums patinka.",
        ),
        "pl": Text(
            sms="{program_name}: zamówienie „{reward_name}” zostało anulowane. "
            "Zwróciliśmy Ci {points} {points_word}.",
            subject="Twoje zamówienie zostało anulowane",
            body="Zamówienie „{reward_name}” zostało anulowane. Zwróciliśmy Ci {points} "
            "{points_word} – wybierz coś innego, co lubisz.",
        ),
        "ru": Text(
            sms="{program_name}: ваш заказ «{reward_name}» отменён. "
            "Мы вернули вам {points} {points_word}.",
            subject="Ваш заказ отменён",
            body="Ваш заказ «{reward_name}» отменён. Мы вернули вам {points} {points_word} — "
            "выберите что-нибудь другое по душе.",
        ),
        "th": Text(
            sms="{program_name}: คำสั่งแลก {reward_name} ของคุณถูกยกเลิกแล้ว "
            "เราคืน {points} คะแนนให้คุณแล้ว",
            subject="คำสั่งแลกของคุณถูกยกเลิกแล้ว",
            body="คำสั่งแลก {reward_name} ของคุณถูกยกเลิกแล้ว เราคืน {points} คะแนนให้คุณแล้ว "
            "เลือกของรางวัลอื่นที่คุณชอบได้เลยนะคะ",
        ),
    },
    "program_closing": {
        "en": Text(
            sms="{program_name} is closing. You can spend your {balance} {balance_word} "
            "until {closes_at}.",
            subject="{program_name} is closing",
            body="{program_name} is coming to an end. You can still spend your {balance} "
            "{balance_word} on rewards until {closes_at}, so pick something you like! "
            "Thank you for being with us.",
        ),
        "lt": Text(
            sms="{program_name} baigia veiklą. Savo {balance} {balance_word} galite "
            "panaudoti iki {closes_at}.",
            subject="{program_name} baigia veiklą",
            body="Programa {program_name} baigia veiklą. Savo {balance} {balance_word} galite "
            "iškeisti į dovanas iki {closes_at}, tad išsirinkite ką nors, kas jums patinka! "
            "Ačiū, kad buvote su mumis.",
        ),
        "pl": Text(
            sms="{program_name} kończy działalność. Masz {balance} {balance_word} do "
            "wykorzystania – najpóźniej {closes_at}.",
            subject="{program_name} kończy działalność",
            body="Program {program_name} kończy działalność. Masz {balance} {balance_word} "
            "do wymiany na nagrody – najpóźniej {closes_at}. Wybierz coś, co lubisz! "
            "Dziękujemy za wspólny czas.",
        ),
        "ru": Text(
            sms="{program_name} завершает работу. Успейте потратить баллы до {closes_at}: "
            "у вас {balance} {balance_word}.",
            subject="{program_name} завершает работу",
            body="Программа {program_name} завершает работу. Успейте обменять баллы на "
            "награды до {closes_at}: у вас {balance} {balance_word}. Выберите что-нибудь по "
            "душе! Спасибо, что были с нами.",
        ),
        "th": Text(
            sms="{program_name} กำลังจะปิดตัว คุณมี {balance} คะแนน ใช้ได้ถึง {closes_at}",
            subject="{program_name} กำลังจะปิดตัว",
            body="{program_name} กำลังจะปิดตัว คุณมี {balance} คะแนน ซึ่งนำไปแลกของรางวัลได้ถึง "
            "{closes_at} เลือกสิ่งที่คุณชอบได้เลยนะคะ ขอบคุณที่อยู่กับเรามาตลอด",
        ),
    },
}


def resolve_locale(locale: str | None) -> str:
    """The supported locale to write in: "lt-LT" → "lt", unknown or missing → "en"."""
    language = (locale or "").replace("-", "_").split("_")[0].lower()
    return language if language in LOCALES else DEFAULT_LOCALE


def required_params(template: str) -> frozenset[str]:
    """The params `render` needs for `template` (the same in every locale and channel)."""
    texts = _texts(template).values()
    names = {name for text in texts for part in _parts(text) for name in _placeholders(part)}
    names.add("program_name")  # the e-mail sign-off
    return frozenset(_DERIVED.get(name, name) for name in names)


def render(template: str, locale: str, channel: str, params: dict[str, Any]) -> Rendered:
    """`template` in `locale` for `channel`, with numbers and dates formatted for the locale.

    `params` may hold more than the template uses; a missing one raises ValueError. A
    datetime is shown as its date in `params["time_zone"]` when given, else in its own zone.
    """
    lang = resolve_locale(locale)
    text = _texts(template)[lang]
    if channel == "sms":
        return Rendered(subject=None, body=_fill(text.sms, lang, params, template))
    if channel == "email":
        greeting, sign_off = _EMAIL_FRAME[lang]
        body = "\n\n".join((greeting, text.body, sign_off))
        return Rendered(
            subject=_fill(text.subject, lang, params, template),
            body=_fill(body, lang, params, template),
        )
    raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")


def build_notification(
    *,
    template: str,
    locale: str,
    channel: str,
    to: str,
    program_id: str,
    member_id: str,
    params: dict[str, Any],
    fact_id: str,
    occurred_at: datetime,
) -> dict[str, Any]:
    """The `notification.requested` message of CONTRACT.md, ready for the sender topic.

    `fact_id` names the business fact (a ledger entry, an order, a lot and warning
    threshold ...) and must be unique across programs; it makes the id stable.
    """
    if not to:
        raise ValueError("a notification needs a recipient address ('to')")
    if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
        raise ValueError(f"occurred_at must be timezone-aware, got {occurred_at!r}")
    rendered = render(template, locale, channel, params)
    message: dict[str, Any] = {
        "notification_id": notification_id(template, channel, fact_id),
        "type": MESSAGE_TYPE,
        "occurred_at": occurred_at.astimezone(UTC).isoformat(),
        "channel": channel,
        "to": to,
        "locale": resolve_locale(locale),
        "template": template,
        "body": rendered.body,
        "program_id": program_id,
        "member_id": member_id,
    }
    if rendered.subject is not None:
        message["subject"] = rendered.subject
    return message


def notification_id(template: str, channel: str, fact_id: str) -> str:
    """The stable id of the notification about `fact_id` by `template` on `channel`."""
    # JSON keeps the parts apart: ("a:b", "c") and ("a", "b:c") must not collide. These are
    # the bytes json.dumps([template, channel, fact_id]) writes, without its encoder's set-up
    # (ids already sent must not change: a unit test compares the two).
    parts = ", ".join(map(encode_basestring_ascii, (template, channel, fact_id)))
    return uuid5_text(NOTIFICATION_NAMESPACE, f"[{parts}]")


def choose_channel(
    preferred: str | None, phone: str | None, email: str | None
) -> tuple[Channel, str] | None:
    """Where to reach a member: the preferred channel if its address is known, else SMS,
    else e-mail; None when the member can't be reached."""
    # SMS is both the fallback and the only other preference, so it needs no branch of its own.
    if preferred == "email" and email:
        return "email", email
    if phone:
        return "sms", phone
    if email:
        return "email", email
    return None


def _texts(template: str) -> dict[str, Text]:
    if template not in TEMPLATES:
        raise ValueError(f"unknown notification template {template!r}")
    return TEMPLATES[template]


def _parts(text: Text) -> tuple[str, ...]:
    return (text.sms, text.subject, text.body)


@functools.cache  # the templates are a fixed set: parsed once each
def _placeholders(pattern: str) -> frozenset[str]:
    return frozenset(name for _, name, _, _ in string.Formatter().parse(pattern) if name)


def _fill(pattern: str, lang: str, params: dict[str, Any], template: str) -> str:
    needed = _placeholders(pattern)
    missing = sorted({_DERIVED.get(name, name) for name in needed} - params.keys())
    if missing:
        raise ValueError(f"template {template!r} needs params {missing}")
    tz = params.get("time_zone")
    values = {}
    for name in needed:
        if name in _DERIVED:
            values[name] = _point_word(params[_DERIVED[name]], lang)
        else:
            values[name] = _format_value(params[name], lang, tz)
    return pattern.format_map(values)


def _format_value(value: Any, lang: str, tz: str | None) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return _format_int(value, lang)
    if _is_number(value):
        return format_decimal(value, locale=_babel_locale(lang))
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"datetime params must be timezone-aware, got {value!r}")
        local = value.astimezone(_zone(tz)) if tz else value
        return format_date(local.date(), format="medium", locale=_babel_locale(lang))
    if isinstance(value, date):
        return format_date(value, format="medium", locale=_babel_locale(lang))
    return str(value)


def _point_word(count: Any, lang: str) -> str:
    forms = _POINT_WORDS[lang]
    if not _is_number(count):
        return forms["other"]
    magnitude = abs(count)  # CLDR rules look at the magnitude: -1 takes the same word as 1
    category = (_plural_of_int(magnitude, lang) if isinstance(magnitude, int)
                else _babel_locale(lang).plural_form(magnitude))
    return forms.get(category, forms["other"])


@functools.lru_cache(maxsize=16_384)
def _plural_of_int(count: int, lang: str) -> str:
    """The CLDR plural category of a count: babel evaluates the rule's ranges each time (two
    counts a message, the same few thousand numbers again and again)."""
    return _babel_locale(lang).plural_form(count)


@functools.lru_cache(maxsize=16_384)
def _format_int(value: int, lang: str) -> str:
    """Points and balances: the same few thousand numbers again and again (babel formats one
    in about 10 microseconds, the most of what rendering a message costs)."""
    return format_decimal(value, locale=_babel_locale(lang))


@functools.cache
def _babel_locale(lang: str) -> Locale:
    """Parsed once per language (a few of them): babel parses a locale name on every call
    otherwise, the most of what formatting a number costs."""
    return Locale.parse(lang)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown IANA time zone {tz!r}") from error
