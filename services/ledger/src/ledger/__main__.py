"""`python -m ledger`: run the ledger service."""

from ledger.app import build
from loyalty.service import main

if __name__ == "__main__":
    main(build)
