"""earn's settings (environment variables)."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from loyalty.settings import ServiceSettings


class EarnSettings(ServiceSettings):
    pg_dsn: str = Field(validation_alias=AliasChoices("LOYALTY_EARN_PG_DSN", "LOYALTY_PG_DSN"))
    http_port: int = Field(8081, validation_alias=AliasChoices("LOYALTY_EARN_HTTP_PORT"))
