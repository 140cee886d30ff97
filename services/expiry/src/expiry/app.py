"""Bootstrap: builds the expiry-scheduler service from settings (the one place that wires)."""

from __future__ import annotations

from expiry.adapters.queries import ExpiryReads
from expiry.entrypoints import consumers, http
from expiry.settings import Settings
from loyalty import db
from loyalty.service import Runtime, ServiceSpec

MIGRATIONS = db.package_migrations(__file__)


def wire(runtime: Runtime) -> None:
    consumers.wire(runtime)
    http.add_routes(runtime.app, ExpiryReads(runtime.pool), runtime.clock)


def build(settings: Settings | None = None) -> ServiceSpec:
    settings = settings or Settings()
    return ServiceSpec(name="expiry-scheduler", schema="expiry", migrations_dir=MIGRATIONS,
                       settings=settings, http_port=settings.http_port, wire=wire)
