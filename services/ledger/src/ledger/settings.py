"""The ledger's settings (environment variables)."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from loyalty.settings import ServiceSettings


class LedgerSettings(ServiceSettings):
    pg_dsn: str = Field(validation_alias=AliasChoices("LOYALTY_LEDGER_PG_DSN", "LOYALTY_PG_DSN"))
    http_port: int = Field(8082, validation_alias=AliasChoices("LOYALTY_LEDGER_HTTP_PORT"))
