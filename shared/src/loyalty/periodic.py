"""Background jobs that run every few seconds and outlive their own failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def every(interval_s: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    """Run `job` now and then every `interval_s` until cancelled; a failure is logged and the
    next round tries again (a metric sample or a sweep is worth retrying, not dying for)."""
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("background.failed", job=name, exc_info=True)
        await asyncio.sleep(interval_s)
