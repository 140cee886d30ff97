"""Kafka TLS/SASL and Postgres TLS settings: validation, and what the clients are given."""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

import pytest
from faststream.kafka.security import parse_security
from pydantic import ValidationError

from loyalty.kafka import faststream_security
from loyalty.settings import KafkaSecurity, PostgresTls

SASL = {"LOYALTY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LOYALTY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "LOYALTY_KAFKA_SASL_USERNAME": "loyalty-earn",
        "LOYALTY_KAFKA_SASL_PASSWORD": "s3cret"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    for name in [*SASL, "LOYALTY_KAFKA_SSL_CAFILE", "LOYALTY_PG_SSLMODE",
                 "LOYALTY_PG_SSLROOTCERT"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_plaintext_by_default(env) -> None:
    assert KafkaSecurity().client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert faststream_security(KafkaSecurity()) is None


def test_sasl_ssl_gives_every_client_the_same_credentials_and_a_verifying_context(env) -> None:
    for name, value in SASL.items():
        env.setenv(name, value)
    kwargs = KafkaSecurity().client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"],
            kwargs["sasl_plain_password"]) == ("SCRAM-SHA-512", "loyalty-earn", "s3cret")
    context = kwargs["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # The consumers (faststream) get the same as the relay and the admin client (aiokafka).
    broker_kwargs = parse_security(faststream_security(KafkaSecurity()))
    assert {k: broker_kwargs[k] for k in ("security_protocol", "sasl_mechanism",
                                          "sasl_plain_username", "sasl_plain_password")} == \
        {k: kwargs[k] for k in ("security_protocol", "sasl_mechanism", "sasl_plain_username",
                                "sasl_plain_password")}
    assert "s3cret" not in repr(KafkaSecurity())  # a secret, not logged with the settings


def test_a_missing_ca_file_fails_at_start(env, tmp_path) -> None:
    env.setenv("LOYALTY_KAFKA_SECURITY_PROTOCOL", "SSL")
    env.setenv("LOYALTY_KAFKA_SSL_CAFILE", str(tmp_path / "missing.pem"))
    with pytest.raises(FileNotFoundError):
        KafkaSecurity().client_kwargs()


@pytest.mark.parametrize(("settings", "message"), [
    ({"LOYALTY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs LOYALTY_KAFKA_SASL_MECHANISM"),
    ({"LOYALTY_KAFKA_SASL_MECHANISM": "PLAIN"}, "has no SASL"),
    ({"LOYALTY_KAFKA_SSL_CAFILE": "/ca.pem"}, "has no TLS"),
    ({"LOYALTY_KAFKA_SECURITY_PROTOCOL": "TLS"}, "PLAINTEXT"),
    ({"LOYALTY_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
      "LOYALTY_KAFKA_SASL_MECHANISM": "GSSAPI", "LOYALTY_KAFKA_SASL_USERNAME": "u",
      "LOYALTY_KAFKA_SASL_PASSWORD": "p"}, "SCRAM-SHA-256"),
])
def test_inconsistent_kafka_settings_are_refused(env, settings, message) -> None:
    for name, value in settings.items():
        env.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        KafkaSecurity()


def test_postgres_tls_settings_go_into_the_dsn_unless_it_says_otherwise(env) -> None:
    env.setenv("LOYALTY_PG_SSLMODE", "verify-full")
    env.setenv("LOYALTY_PG_SSLROOTCERT", "/etc/loyalty/pg-ca.pem")
    query = parse_qs(urlsplit(PostgresTls().apply(
        "postgresql://loyalty_ledger:pw@db.example:5432/loyalty?application_name=x")).query)
    assert query == {"application_name": ["x"], "sslmode": ["verify-full"],
                     "sslrootcert": ["/etc/loyalty/pg-ca.pem"]}
    query = parse_qs(urlsplit(PostgresTls().apply(
        "postgresql://u@h/db?sslmode=disable")).query)
    assert query["sslmode"] == ["disable"]  # the DSN's own word wins


def test_no_postgres_tls_settings_leave_the_dsn_alone(env) -> None:
    dsn = "postgresql://u:p@h:5432/db?host=/tmp/x%20y"
    assert PostgresTls().apply(dsn) == dsn


def test_bad_sslmode_is_refused(env) -> None:
    env.setenv("LOYALTY_PG_SSLMODE", "on")
    with pytest.raises(ValidationError, match="verify-full"):
        PostgresTls()
