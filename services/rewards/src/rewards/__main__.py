"""`python -m rewards`: run the reward-fulfilment service."""

import asyncio

from loyalty.service import run_service
from rewards.app import build

if __name__ == "__main__":
    asyncio.run(run_service(build()))
