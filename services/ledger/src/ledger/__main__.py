"""`python -m ledger`: run the ledger service."""

import asyncio

from ledger.app import build
from loyalty.service import run_service

if __name__ == "__main__":
    asyncio.run(run_service(build()))
