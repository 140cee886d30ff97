"""Settings from environment variables (pydantic-settings): one class per service.

Shared names are the contract's (`LOYALTY_KAFKA_BOOTSTRAP`, `LOYALTY_PG_DSN`,
`LOYALTY_API_TOKEN`, `LOYALTY_LOG_LEVEL`). A service's own database role is given by
`LOYALTY_<SERVICE>_PG_DSN`; without it the service falls back to `LOYALTY_PG_DSN`.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PgSslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class KafkaSecurity(BaseSettings):
    """How every Kafka client of a process (consumers, the outbox relay, the admin client, the
    CLI) reaches the brokers: TLS with a CA file, SASL with a mechanism and credentials."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    kafka_security_protocol: KafkaProtocol = Field(
        "PLAINTEXT", validation_alias=_env("LOYALTY_KAFKA_SECURITY_PROTOCOL"))
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        None, validation_alias=_env("LOYALTY_KAFKA_SASL_MECHANISM"))
    kafka_sasl_username: str | None = Field(
        None, validation_alias=_env("LOYALTY_KAFKA_SASL_USERNAME"))
    kafka_sasl_password: SecretStr | None = Field(
        None, validation_alias=_env("LOYALTY_KAFKA_SASL_PASSWORD"))
    # PEM bundle of the CA that signed the brokers' certificates; unset: the system's CAs.
    kafka_ssl_cafile: str | None = Field(None, validation_alias=_env("LOYALTY_KAFKA_SSL_CAFILE"))

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username
                         and self.kafka_sasl_password):
            raise ValueError(f"{self.kafka_security_protocol} needs LOYALTY_KAFKA_SASL_MECHANISM,"
                             " LOYALTY_KAFKA_SASL_USERNAME and LOYALTY_KAFKA_SASL_PASSWORD")
        if not sasl and self.kafka_sasl_mechanism:
            raise ValueError("LOYALTY_KAFKA_SASL_MECHANISM is set but the security protocol "
                             f"{self.kafka_security_protocol} has no SASL")
        if self.kafka_ssl_cafile and not self.uses_tls:
            raise ValueError("LOYALTY_KAFKA_SSL_CAFILE is set but the security protocol "
                             f"{self.kafka_security_protocol} has no TLS")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the brokers' certificates and host names (against the CA file if given)."""
        if not self.uses_tls:
            return None
        return ssl.create_default_context(cafile=self.kafka_ssl_cafile)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        kwargs: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.uses_tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.kafka_sasl_mechanism:
            kwargs.update(sasl_mechanism=self.kafka_sasl_mechanism,
                          sasl_plain_username=self.kafka_sasl_username,
                          sasl_plain_password=self.kafka_sasl_password.get_secret_value()
                          if self.kafka_sasl_password else None)
        return kwargs


class PostgresTls(BaseSettings):
    """TLS to PostgreSQL for every pool and connection of a process. A `sslmode` or
    `sslrootcert` written in the DSN itself wins over these."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    pg_sslmode: PgSslMode | None = Field(None, validation_alias=_env("LOYALTY_PG_SSLMODE"))
    # PEM file of the CA that signed the server's certificate (verify-ca, verify-full).
    pg_sslrootcert: str | None = Field(None, validation_alias=_env("LOYALTY_PG_SSLROOTCERT"))

    def apply(self, dsn: str) -> str:
        """The DSN with `sslmode` / `sslrootcert` added where it does not say them itself."""
        extra = {k: v for k, v in (("sslmode", self.pg_sslmode),
                                   ("sslrootcert", self.pg_sslrootcert)) if v}
        if not extra:
            return dsn
        parts = urlsplit(dsn)
        query = parse_qsl(parts.query, keep_blank_values=True)
        given = {k for k, _ in query}
        query += [(k, v) for k, v in extra.items() if k not in given]
        return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def kafka_client_kwargs() -> dict[str, Any]:
    """Security keyword arguments for an aiokafka client, from the environment."""
    return KafkaSecurity().client_kwargs()


class ServiceSettings(KafkaSecurity, PostgresTls):
    """What every service needs; subclasses name their DSN and port variables. The Kafka and
    Postgres security settings are validated with the rest at start."""

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
    # A safety net only: a commit that adds outbox rows wakes the relay (LISTEN/NOTIFY).
    outbox_poll_interval_ms: int = Field(
        1000, validation_alias=_env("LOYALTY_OUTBOX_POLL_INTERVAL_MS"), ge=1)
    retry_backoff_max_ms: int = Field(
        5_000, validation_alias=_env("LOYALTY_RETRY_BACKOFF_MAX_MS"), ge=10)
    # How long an inbox keeps a consumed record's id (`loyalty.retention`); 0, the default,
    # keeps them forever, as CONTRACT.md's "no further effect, ever" reads. A window must be
    # longer than the topics' retention and than any producer may send an event again.
    inbox_retention_days: int = Field(
        0, validation_alias=_env("LOYALTY_INBOX_RETENTION_DAYS"), ge=0, le=3650)
    # A service's own stop: `loyalty up` has drained already, and kills after 3 s.
    shutdown_drain_timeout_s: float = Field(
        3.0, validation_alias=_env("LOYALTY_SHUTDOWN_DRAIN_TIMEOUT_S"), ge=0)
