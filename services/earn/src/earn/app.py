"""Bootstrap: builds the earn service from settings (the one place that wires things)."""

from __future__ import annotations

from earn.adapters.postgres import EarnQueries
from earn.entrypoints import consumers, http
from earn.settings import EarnSettings
from loyalty import db
from loyalty.service import Runtime, ServiceSpec

MIGRATIONS = db.package_migrations(__file__)


def wire(runtime: Runtime) -> None:
    consumers.wire(runtime)
    http.add_routes(runtime.app, EarnQueries(runtime.pool), runtime.clock)


def build(settings: EarnSettings | None = None) -> ServiceSpec:
    settings = settings or EarnSettings()
    return ServiceSpec(name="earn", schema="earn", migrations_dir=MIGRATIONS,
                       settings=settings, http_port=settings.http_port, wire=wire)
