"""`python -m expiry`: run the expiry-scheduler service."""

from expiry.app import build
from loyalty.service import main

if __name__ == "__main__":
    main(build)
