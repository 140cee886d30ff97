"""Bootstrap: builds the reward-fulfilment service from settings (the one place that wires)."""

from __future__ import annotations

from loyalty import db
from loyalty.service import Runtime, ServiceSpec
from rewards import handlers
from rewards.adapters.postgres import RewardsReads
from rewards.adapters.vault import CodeVault
from rewards.entrypoints import consumers, http, jobs
from rewards.settings import Settings

MIGRATIONS = db.package_migrations(__file__)


def build(settings: Settings | None = None) -> ServiceSpec:
    settings = settings or Settings()

    def wire(runtime: Runtime) -> None:
        vault = CodeVault.from_settings()  # a bad key fails the start, before consuming
        deps = handlers.Deps(clock=runtime.clock, hold_timeout_s=settings.hold_timeout_s,
                             step_timeout_s=settings.step_timeout_s,
                             member_wait_s=settings.member_wait_s)
        consumers.wire(runtime, deps)
        http.add_routes(runtime.app, RewardsReads(runtime.pool))
        delivery = jobs.Delivery(runtime, deps, vault, settings.delivery_batch_size_max)
        runtime.background.extend([delivery.run, jobs.sweeper(runtime, deps),
                                   jobs.open_orders_gauge(runtime)])

    return ServiceSpec(name="reward-fulfilment", schema="rewards", migrations_dir=MIGRATIONS,
                       settings=settings, http_port=settings.http_port, wire=wire)
