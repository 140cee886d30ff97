"""`python -m earn`: run the earn service."""

import asyncio

from earn.app import build
from loyalty.service import run_service

if __name__ == "__main__":
    asyncio.run(run_service(build()))
