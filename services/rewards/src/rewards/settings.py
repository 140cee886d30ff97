"""reward-fulfilment's settings (environment variables)."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from loyalty.settings import ServiceSettings


class Settings(ServiceSettings):
    pg_dsn: str = Field(validation_alias=AliasChoices("LOYALTY_REWARDS_PG_DSN", "LOYALTY_PG_DSN"))
    http_port: int = Field(8084, validation_alias=AliasChoices("LOYALTY_REWARDS_HTTP_PORT"))
