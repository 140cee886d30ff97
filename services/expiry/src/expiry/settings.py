"""expiry-scheduler's settings (environment variables), limits with their units in names."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from loyalty.ledger_commands import EXPIRE_LOTS_MAX
from loyalty.settings import ServiceSettings


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(ServiceSettings):
    pg_dsn: str = Field(validation_alias=AliasChoices("LOYALTY_EXPIRY_PG_DSN", "LOYALTY_PG_DSN"))
    http_port: int = Field(8083, validation_alias=_env("LOYALTY_EXPIRY_HTTP_PORT"))
    # The periodic sweep, as of the service's clock; 0 turns it off (then only
    # `loyalty expiry sweep` sweeps: tests that move time themselves, or an operator's cron).
    sweep_interval_s: float = Field(60.0, validation_alias=_env("LOYALTY_EXPIRY_SWEEP_INTERVAL_S"),
                                    ge=0)
    sweep_batch_lots_max: int = Field(
        1_000, validation_alias=_env("LOYALTY_EXPIRY_SWEEP_BATCH_LOTS_MAX"), ge=1, le=50_000)
    sweep_batch_members_max: int = Field(
        500, validation_alias=_env("LOYALTY_EXPIRY_SWEEP_BATCH_MEMBERS_MAX"), ge=1, le=10_000)
    sweep_batch_notices_max: int = Field(
        1_000, validation_alias=_env("LOYALTY_EXPIRY_SWEEP_BATCH_NOTICES_MAX"), ge=1, le=50_000)
    lots_per_command_max: int = Field(
        EXPIRE_LOTS_MAX, validation_alias=_env("LOYALTY_EXPIRY_LOTS_PER_COMMAND_MAX"), ge=1,
        le=EXPIRE_LOTS_MAX)
