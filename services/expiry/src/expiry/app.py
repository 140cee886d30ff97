"""Bootstrap: builds the expiry-scheduler service from settings (the one place that wires things)."""

from __future__ import annotations

from pathlib import Path

from expiry.settings import Settings
from loyalty.service import Runtime, ServiceSpec

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def wire(runtime: Runtime) -> None:
    pass  # TODO(issue): subscribers, background jobs and routes


def build(settings: Settings | None = None) -> ServiceSpec:
    settings = settings or Settings()
    return ServiceSpec(name="expiry-scheduler", schema="expiry", migrations_dir=MIGRATIONS,
                       settings=settings, http_port=settings.http_port, wire=wire)
