"""Bootstrap: builds the ledger service from settings (the one place that wires things)."""

from __future__ import annotations

from ledger.adapters.queries import LedgerReads
from ledger.entrypoints import consumers, http
from ledger.settings import LedgerSettings
from loyalty import db
from loyalty.service import Runtime, ServiceSpec

MIGRATIONS = db.package_migrations(__file__)


def wire(runtime: Runtime) -> None:
    consumers.wire(runtime)
    http.add_routes(runtime.app, LedgerReads(runtime.pool))


def build(settings: LedgerSettings | None = None) -> ServiceSpec:
    settings = settings or LedgerSettings()
    return ServiceSpec(name="ledger", schema="ledger", migrations_dir=MIGRATIONS,
                       settings=settings, http_port=settings.http_port, wire=wire)
