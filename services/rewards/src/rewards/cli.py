"""The `loyalty` subcommands of this service (registered by `loyalty.cli`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this service's subcommands to the `loyalty` parser."""
