"""Benchmark-style run of the hostile-input corpus, many times over (not part of `make test`).

Starts its own platform (embedded Postgres, Tansu, all four services), publishes every case of
`tests/e2e/test_hostile_input.py` `--rounds` times on one key per topic, each followed by a
valid message, then counts: bad messages that reached their `.dlq` with the expected code and
their original bytes, and valid messages that took effect. Prints the counts and the time;
exits 1 if any bad message was missed or misfiled, or any valid one was lost.

    uv run python tests/bench/bench_hostile_input.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from common import own_running_platform

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from test_hostile_input import (
    CORPORA,
    apis_of,
    dead_letters_of,
    not_applied,
    publish_corpus,
)

from loyalty.testing import Kafka, unique

TIMEOUT_S = 300.0


async def run(rounds: int) -> int:
    failures = 0
    async with own_running_platform("earn", "ledger", "expiry-scheduler",
                                    "reward-fulfilment") as (bootstrap, platform):
        client = Kafka(bootstrap)
        await client.producer.start()
        apis = apis_of(platform, platform.api_token)
        print(f"{'topic':<28}{'bad':>7}{'dlq ok':>8}{'valid':>8}{'applied':>9}{'seconds':>9}")
        try:
            for corpus in CORPORA:
                started = time.perf_counter()
                bad, valid = await publish_corpus(client, corpus, unique("bench"), rounds)
                dead = await dead_letters_of(client, bad, TIMEOUT_S)
                good = sum(1 for p in bad if dead.get((p.partition, p.offset))
                           == (p.case.code, p.raw))
                missing = await not_applied(apis, corpus, valid, TIMEOUT_S)
                took = time.perf_counter() - started
                print(f"{corpus.topic:<28}{len(bad):>7}{good:>8}{len(valid):>8}"
                      f"{len(valid) - len(missing):>9}{took:>9.1f}", flush=True)
                failures += (len(bad) - good) + len(missing)
        finally:
            await client.producer.stop()
    print("all bad messages dead-lettered with their codes and bytes; every valid one applied"
          if not failures else f"{failures} failures")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.rounds)))


if __name__ == "__main__":
    main()
