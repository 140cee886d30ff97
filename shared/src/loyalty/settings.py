"""Settings from environment variables (pydantic-settings): one class per service.

Shared names are the contract's (`LOYALTY_KAFKA_BOOTSTRAP`, `LOYALTY_PG_DSN`,
`LOYALTY_API_TOKEN`, `LOYALTY_LOG_LEVEL`). A service's own database role is given by
`LOYALTY_<SERVICE>_PG_DSN`; without it the service falls back to `LOYALTY_PG_DSN`.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class ServiceSettings(BaseSettings):
    """What every service needs; subclasses name their DSN and port variables."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    kafka_bootstrap: str = Field("127.0.0.1:9092", validation_alias=_env("LOYALTY_KAFKA_BOOTSTRAP"))
    api_token: str = Field("", validation_alias=_env("LOYALTY_API_TOKEN"))
    log_level: str = Field("INFO", validation_alias=_env("LOYALTY_LOG_LEVEL"))
    http_host: str = Field("127.0.0.1", validation_alias=_env("LOYALTY_HTTP_HOST"))
    # Limits, units last in names.
    batch_size_max: int = Field(500, validation_alias=_env("LOYALTY_BATCH_SIZE_MAX"), ge=1,
                                le=10_000)
    batch_timeout_ms: int = Field(20, validation_alias=_env("LOYALTY_BATCH_TIMEOUT_MS"), ge=1)
    pool_size_max: int = Field(10, validation_alias=_env("LOYALTY_POOL_SIZE_MAX"), ge=2, le=100)
    outbox_batch_size_max: int = Field(
        1000, validation_alias=_env("LOYALTY_OUTBOX_BATCH_SIZE_MAX"), ge=1, le=10_000)
    outbox_poll_interval_ms: int = Field(
        50, validation_alias=_env("LOYALTY_OUTBOX_POLL_INTERVAL_MS"), ge=1)
    retry_backoff_max_ms: int = Field(
        5_000, validation_alias=_env("LOYALTY_RETRY_BACKOFF_MAX_MS"), ge=10)
    # A service's own stop: `loyalty up` has drained already, and kills after 3 s.
    shutdown_drain_timeout_s: float = Field(
        3.0, validation_alias=_env("LOYALTY_SHUTDOWN_DRAIN_TIMEOUT_S"), ge=0)
