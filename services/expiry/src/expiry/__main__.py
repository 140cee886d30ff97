"""`python -m expiry`: run the expiry-scheduler service."""

import asyncio

from expiry.app import build
from loyalty.service import run_service

if __name__ == "__main__":
    asyncio.run(run_service(build()))
