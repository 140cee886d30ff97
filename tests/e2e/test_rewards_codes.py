"""`loyalty rewards import-codes` against the real database: bulk load, duplicates skipped and
counted, a malformed file refused whole with its line named, codes never stored in clear."""

from __future__ import annotations

import asyncpg
import pytest
from test_rewards_helpers import apply_program, import_codes

from loyalty.testing import Api

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def pool_rows(pg_dsn: str, program_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return await conn.fetch("SELECT * FROM rewards.codes WHERE program_id = $1", program_id)
    finally:
        await conn.close()


async def stock_left(rewards: Api, program_id: str) -> int:
    _, body = await rewards.get(f"/v1/programs/{program_id}/rewards")
    return {i["id"]: i["stock_left"] for i in body["items"]}["gift"]


async def test_duplicates_in_the_file_and_already_loaded_are_skipped_and_counted(
        platform, infra, api_token, kafka_client, rewards: Api, tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    # Codes long enough that no ciphertext holds one by chance: the prefix "A-" was found in a
    # stored Fernet token (two base64url characters in a 100-character token: ~10% a run).
    a1, a2, a3, a4 = (f"PLAIN-GIFT-CODE-{i}" for i in range(1, 5))
    first = import_codes(infra.pg_dsn, program_id, [a1, a2, a1, a3], tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (f"loaded 3 codes into {program_id}/gift-pool; skipped 1 "
                                    "(1 duplicated in the file, 0 already loaded)")
    again = import_codes(infra.pg_dsn, program_id, [a3, a4, a4, a2], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "loaded 1 codes" in again.stdout
    assert "skipped 3 (1 duplicated in the file, 2 already loaded)" in again.stdout
    assert await stock_left(rewards, program_id) == 4

    rows = await pool_rows(infra.pg_dsn, program_id)
    assert len(rows) == 4
    stored = [v if isinstance(v, bytes) else v.encode() for row in rows
              for v in dict(row).values() if isinstance(v, str | bytes)]
    for code in (a1, a2, a3, a4):  # only ciphertext and a keyed hash: no column holds a code
        assert not any(code.encode() in value for value in stored)


@pytest.mark.parametrize(("raw", "line"), [
    (b"OK-1\nOK-2\nBAD CODE\nOK-3\n", 3),
    (b"OK-1\n\nOK-2\n", 2),
    (b"code,value\nOK-1,1\n", 1),
])
async def test_a_malformed_file_exits_non_zero_naming_the_line_and_loads_nothing(
        platform, infra, api_token, kafka_client, rewards: Api, tmp_path, raw: bytes,
        line: int) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    result = import_codes(infra.pg_dsn, program_id, [], tmp_path, raw=raw)
    assert result.returncode == 2
    assert f"line {line}:" in result.stderr and "nothing was loaded" in result.stderr
    assert "OK-" not in result.stderr + result.stdout
    assert await pool_rows(infra.pg_dsn, program_id) == []
    assert await stock_left(rewards, program_id) == 0


async def test_an_unknown_program_or_pool_exits_non_zero(
        platform, infra, api_token, kafka_client, rewards: Api, tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    result = import_codes(infra.pg_dsn, program_id, ["X-1"], tmp_path, pool="gift-pooll")
    assert result.returncode == 2 and "gift-pool" in result.stderr
    result = import_codes(infra.pg_dsn, "no-such-program", ["X-1"], tmp_path)
    assert result.returncode == 2 and "not applied" in result.stderr
    assert await pool_rows(infra.pg_dsn, program_id) == []


async def test_twenty_thousand_codes_load_in_one_go(platform, infra, api_token, kafka_client,
                                                    rewards: Api, tmp_path) -> None:
    program_id = await apply_program(platform, kafka_client, api_token, rewards)
    codes = [f"BULK-{i:06d}" for i in range(20_000)]
    result = import_codes(infra.pg_dsn, program_id, codes + codes[:10], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "loaded 20000 codes" in result.stdout and "skipped 10" in result.stdout
    assert await stock_left(rewards, program_id) == 20_000
