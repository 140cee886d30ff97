"""`python -m earn`: run the earn service."""

from earn.app import build
from loyalty.service import main

if __name__ == "__main__":
    main(build)
