"""Purchase to SMS over TLS: every Kafka client and every Postgres connection of the platform
encrypted and verified against a CA the test makes (LOYALTY_KAFKA_SECURITY_PROTOCOL=SSL with
LOYALTY_KAFKA_SSL_CAFILE; LOYALTY_PG_SSLMODE=verify-full with LOYALTY_PG_SSLROOTCERT).

A database and a broker of its own. Neither the embedded Postgres nor Tansu can serve TLS
themselves (see `loyalty.tls.TlsTerminator`), so the only addresses the platform is given are
TLS terminators in front of them: the clients' side, which is ours, is the real thing."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from loyalty.infra import EmbeddedPostgres, TansuBroker, free_port
from loyalty.testing import contract_purchase_becomes_sms, running_platform
from loyalty.tls import TlsTerminator, make_tls_files

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PLAINTEXT_REFUSAL_TIMEOUT_S = 10
SCHEMAS = ("earn", "ledger", "expiry", "rewards")


async def test_purchase_to_sms_over_tls_to_the_broker_and_to_postgres(
        tmp_path, api_token, monkeypatch) -> None:
    tls = make_tls_files(tmp_path / "tls")
    postgres = EmbeddedPostgres(tmp_path / "pg", fsync=False)
    postgres.start()
    pg_tls = TlsTerminator(tls, target_port=postgres.port, port=free_port(), postgres=True)
    pg_tls.start()
    tls_dsn = postgres.dsn.replace(f":{postgres.port}/", f":{pg_tls.port}/")
    terminator = TlsTerminator(tls, target_port=free_port(), port=free_port())
    broker = TansuBroker(tmp_path / "tansu", port=terminator.target_port,
                         advertised_port=terminator.port)
    broker.start()
    terminator.start()
    # Every client of this process and of the service processes it starts reads these.
    monkeypatch.setenv("LOYALTY_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("LOYALTY_KAFKA_SSL_CAFILE", str(tls.ca_cert))
    monkeypatch.setenv("LOYALTY_PG_SSLMODE", "verify-full")
    monkeypatch.setenv("LOYALTY_PG_SSLROOTCERT", str(tls.ca_cert))
    try:
        async with running_platform(tls_dsn, broker.bootstrap, api_token,
                                    tmp_path / "platform") as platform:
            sms = await contract_purchase_becomes_sms(platform, api_token)
            assert sms["template"] == "points_earned"

            # Every service's pool came through the TLS address (the only one it was given), and
            # that address takes no plaintext.
            admin = await asyncpg.connect(postgres.dsn)
            try:
                names = {r["application_name"] for r in await admin.fetch(
                    "SELECT application_name FROM pg_stat_activity")}
            finally:
                await admin.close()
            assert names >= {f"loyalty-{s}" for s in SCHEMAS}
            assert pg_tls.handshakes >= len(SCHEMAS)
            with pytest.raises((ConnectionError, OSError, asyncpg.PostgresError)):
                await asyncpg.connect(tls_dsn, ssl=False, timeout=PLAINTEXT_REFUSAL_TIMEOUT_S)
            # The broker's only address speaks TLS: every client above handshook, and a
            # plaintext client gets nowhere.
            assert terminator.handshakes >= len(SCHEMAS) * 2
            plaintext = AIOKafkaProducer(bootstrap_servers=broker.bootstrap,
                                         request_timeout_ms=2_000, enable_idempotence=False)
            with pytest.raises((KafkaConnectionError, asyncio.TimeoutError)):
                await asyncio.wait_for(plaintext.start(), PLAINTEXT_REFUSAL_TIMEOUT_S)
            await plaintext.stop()
    finally:
        terminator.stop()
        broker.stop()
        pg_tls.stop()
        postgres.stop()
