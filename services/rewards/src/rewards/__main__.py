"""`python -m rewards`: run the reward-fulfilment service."""

import asyncio

from rewards.app import build
from loyalty.service import run_service

if __name__ == "__main__":
    asyncio.run(run_service(build()))
