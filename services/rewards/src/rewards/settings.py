"""reward-fulfilment's settings (environment variables).

Code secrets (`CodeSecrets`, read by the service and by `loyalty rewards import-codes`):
- `LOYALTY_REWARDS_CODE_KEYS`: comma-separated Fernet keys (urlsafe base64 of 32 bytes,
  `Fernet.generate_key()`), newest first, each optionally labelled `v2:KEY`. Codes are
  encrypted with the first and decrypted with any (MultiFernet): rotation = put a new key
  first, run `loyalty rewards rotate-keys`, then drop the old key.
- `LOYALTY_REWARDS_CODE_HMAC_KEY`: the key of the keyed hash (HMAC-SHA256) that finds
  duplicate codes without storing them in clear. It is not rotated with the encryption keys
  (changing it would make every loaded code look new); keep it as secret as they are.
Neither set: a fixed local development key is derived (documented in README, so it protects
nothing) and a warning is logged. Production must set both.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from loyalty.settings import ServiceSettings

HOLD_TIMEOUT_S_DEFAULT = 300


class CodeSecrets(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    code_keys: str = Field("", validation_alias=AliasChoices("LOYALTY_REWARDS_CODE_KEYS"))
    code_hmac_key: str = Field("",
                               validation_alias=AliasChoices("LOYALTY_REWARDS_CODE_HMAC_KEY"))


class Settings(ServiceSettings):
    pg_dsn: str = Field(validation_alias=AliasChoices("LOYALTY_REWARDS_PG_DSN", "LOYALTY_PG_DSN"))
    http_port: int = Field(8084, validation_alias=AliasChoices("LOYALTY_REWARDS_HTTP_PORT"))
    # Limits and timeouts of the saga, units last.
    hold_timeout_s: int = Field(HOLD_TIMEOUT_S_DEFAULT, ge=10, le=7 * 24 * 3600,
                                validation_alias=AliasChoices("LOYALTY_REWARDS_HOLD_TIMEOUT_S"))
    step_timeout_s: float = Field(
        30.0, ge=1, validation_alias=AliasChoices("LOYALTY_REWARDS_STEP_TIMEOUT_S"))
    # An order of a member earn enrolled a moment ago waits this long for loyalty.members.v1.
    member_wait_s: float = Field(
        10.0, ge=0, validation_alias=AliasChoices("LOYALTY_REWARDS_MEMBER_WAIT_S"))
    delivery_batch_size_max: int = Field(
        200, ge=1, le=5000, validation_alias=AliasChoices("LOYALTY_REWARDS_DELIVERY_BATCH_MAX"))
