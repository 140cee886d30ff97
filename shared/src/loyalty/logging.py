"""JSON logs through structlog, with a correlation id and personal data masked.

Phone numbers, e-mail addresses and reward codes never reach a log line: every string value
(and the event text) passes `mask_pii`, and values under keys that name a secret (`code`,
`token`, `password`) are replaced whole.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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


# The id also in a variable of its own: structlog's get_contextvars() copies the whole
# context to find it, and the outbox asks for it once per message.
_correlation_id: ContextVar[str | None] = ContextVar("loyalty_correlation_id", default=None)


@contextmanager
def correlation(correlation_id: str | None) -> Iterator[None]:
    """Bind a correlation id to every log line written inside the block."""
    if not correlation_id:
        yield
        return
    token = _correlation_id.set(correlation_id)
    try:
        with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
            yield
    finally:
        _correlation_id.reset(token)


def current_correlation_id() -> str | None:
    return _correlation_id.get()
