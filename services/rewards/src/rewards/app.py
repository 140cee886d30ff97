"""Bootstrap: builds the reward-fulfilment service from settings (the one place that wires things)."""

from __future__ import annotations

from pathlib import Path

from rewards.settings import Settings
from loyalty.service import Runtime, ServiceSpec

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def wire(runtime: Runtime) -> None:
    pass  # TODO(issue): subscribers, background jobs and routes


def build(settings: Settings | None = None) -> ServiceSpec:
    settings = settings or Settings()
    return ServiceSpec(name="reward-fulfilment", schema="rewards", migrations_dir=MIGRATIONS,
                       settings=settings, http_port=settings.http_port, wire=wire)
