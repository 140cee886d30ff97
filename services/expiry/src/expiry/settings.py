"""expiry-scheduler's settings (environment variables)."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from loyalty.settings import ServiceSettings


class Settings(ServiceSettings):
    pg_dsn: str = Field(validation_alias=AliasChoices("LOYALTY_EXPIRY_PG_DSN", "LOYALTY_PG_DSN"))
    http_port: int = Field(8083, validation_alias=AliasChoices("LOYALTY_EXPIRY_HTTP_PORT"))
