"""`python -m rewards`: run the reward-fulfilment service."""

from loyalty.service import main
from rewards.app import build

if __name__ == "__main__":
    main(build)
