"""JSON logs through structlog, with a correlation id and personal data masked.

Phone numbers, e-mail addresses and reward codes never reach a log line: every string value
(and the event text) passes `mask_pii`, and values under keys that name a secret (`code`,
`token`, `password`) are replaced whole.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar, Token
from typing import Any

import structlog

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# Digit runs that stand alone (not inside an id such as a UUID or an order number).
_PHONE = re.compile(r"(?<![\w.-])(\+?\d[\d \-]{5,}\d)(\d{2})(?![\w-])")
_SECRET_KEYS = {"code", "codes", "reward_code", "token", "api_token", "password", "to"}


def _mask_phone(m: re.Match[str]) -> str:
    head = m.group(1)
    keep = head[:5] if head.startswith("+") else head[:3]
    return keep + "*" * (len(head) - len(keep)) + m.group(2)


def mask_pii(text: str) -> str:
    """Mask e-mails (`j***@example.com`) and phone-like digit runs (`+3706*****01`)."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE.sub(_mask_phone, text)


def _mask_value(key: str, value: Any) -> Any:
    if key in _SECRET_KEYS and value is not None:
        return "***"
    if isinstance(value, str):
        return mask_pii(value)
    if isinstance(value, dict):
        return {k: _mask_value(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(key, v) for v in value]
    return value


def _mask_processor(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: _mask_value(k, v) for k, v in event_dict.items()}


class _CurrentStderr:
    """Whatever `sys.stderr` is at write time (test runners swap it), not at configure time."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines on stderr; the standard library's loggers (aiokafka, asyncpg) go there too."""
    level_no = logging.getLevelName(level.upper())
    if not isinstance(level_no, int):
        level_no = logging.INFO
    shared = [
        structlog.contextvars.merge_contextvars,
        _add_correlation_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks are rendered to text before masking: a database error quotes the values of
    # the row it refused (a phone number, say).
    render = [structlog.processors.format_exc_info, _mask_processor,
              structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level_no, logging.WARNING))
    # faststream logs every message at INFO; our own metrics and logs cover that.
    logging.getLogger("loyalty.faststream").setLevel(logging.WARNING)


# The correlation id lives in a variable of its own, which a processor adds to each log line:
# every record sets it, and binding it through structlog's contextvars cost ~7 us a record
# (a copy of the whole context each time), where setting a ContextVar costs a fraction of one.
_correlation_id: ContextVar[str | None] = ContextVar("loyalty_correlation_id", default=None)


class correlation:  # lower case: it reads as the function it replaced, `with correlation(id):`
    """Bind a correlation id to every log line written inside the block (and to the headers
    of the messages it adds to an outbox)."""

    __slots__ = ("_id", "_token")

    def __init__(self, correlation_id: str | None) -> None:
        self._id = correlation_id or None
        self._token: Token[str | None] | None = None

    def __enter__(self) -> None:
        if self._id:
            self._token = _correlation_id.set(self._id)

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _correlation_id.reset(self._token)
            self._token = None


def _add_correlation_id(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    if (cid := _correlation_id.get()) is not None:
        event_dict.setdefault("correlation_id", cid)
    return event_dict


def current_correlation_id() -> str | None:
    return _correlation_id.get()
