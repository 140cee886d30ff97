"""Bulk loading of codes into a pool: encrypt, fingerprint, COPY, skip what is known.

One transaction: the new codes are COPYed into a temporary table, inserted with
`ON CONFLICT DO NOTHING` on (program, pool, fingerprint) so codes already loaded are skipped
(and counted), and the pool's inventory grows by what was really inserted. Duplicates within
the file are dropped before the COPY. Nothing is loaded unless all of it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from rewards.adapters.vault import CodeVault

ROTATE_BATCH_SIZE = 2000


@dataclass(frozen=True)
class ImportResult:
    loaded: int
    duplicates_in_file: int
    already_loaded: int

    @property
    def skipped(self) -> int:
        return self.duplicates_in_file + self.already_loaded


async def import_codes(conn: asyncpg.Connection, vault: CodeVault, program_id: str, pool: str,
                       codes: list[str], import_id: str) -> ImportResult:
    unique: dict[bytes, str] = {}
    for code in codes:
        unique.setdefault(vault.fingerprint(code), code)
    records = [(fingerprint, vault.encrypt(code)) for fingerprint, code in unique.items()]
    async with conn.transaction():
        await conn.execute("CREATE TEMPORARY TABLE code_import (fingerprint bytea NOT NULL,"
                           " ciphertext bytea NOT NULL) ON COMMIT DROP")
        await conn.copy_records_to_table("code_import", records=records,
                                         columns=["fingerprint", "ciphertext"])
        status = await conn.execute(
            "INSERT INTO codes (program_id, pool, fingerprint, ciphertext, import_id)"
            " SELECT $1, $2, fingerprint, ciphertext, $3 FROM code_import"
            " ON CONFLICT (program_id, pool, fingerprint) DO NOTHING",
            program_id, pool, import_id)
        loaded = int(status.split()[-1])
        await conn.execute(
            "INSERT INTO inventory (program_id, kind, name, total) VALUES ($1, 'pool', $2, $3)"
            " ON CONFLICT (program_id, kind, name)"
            " DO UPDATE SET total = inventory.total + EXCLUDED.total", program_id, pool, loaded)
    return ImportResult(loaded, len(codes) - len(unique), len(unique) - loaded)


async def rotate_keys(conn: asyncpg.Connection, vault: CodeVault) -> int:
    """Re-encrypt every stored code with the newest key, a batch per transaction."""
    rotated, after = 0, 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(
                "SELECT id, ciphertext FROM codes WHERE id > $1 ORDER BY id LIMIT $2"
                " FOR UPDATE", after, ROTATE_BATCH_SIZE)
            if not rows:
                return rotated
            await conn.executemany("UPDATE codes SET ciphertext = $2 WHERE id = $1",
                                   [(r["id"], vault.rotate(r["ciphertext"])) for r in rows])
        rotated += len(rows)
        after = rows[-1]["id"]
