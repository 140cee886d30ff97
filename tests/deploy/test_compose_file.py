"""docker-compose.yml is valid against the Compose specification's JSON schema, and runs the
whole platform: four services (earn and the ledger replicated) with health checks.

The schema is vendored (tests/deploy/schemas/compose-spec.json, from the compose-spec project
as check-jsonschema ships it, Apache-2.0), so the check runs offline and without Docker.
`${VAR:-default}` interpolation is applied first, as `docker compose` does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
SERVICES = {"earn": ("earn", 8081), "ledger": ("ledger", 8082),
            "expiry-scheduler": ("expiry", 8083), "reward-fulfilment": ("rewards", 8084)}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def interpolate(text: str) -> str:
    return INTERPOLATION.sub(lambda m: m.group(2) or "", text)


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(interpolate((ROOT / "docker-compose.yml").read_text()))


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    errors = sorted(validator().iter_errors(load_compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_would() -> None:
    """The check above can fail: an unknown key and a wrong type are refused."""
    compose = load_compose()
    compose["services"]["earn"]["healthcheck"]["intervall"] = "10s"
    assert list(validator().iter_errors(compose))
    compose = load_compose()
    compose["services"]["ledger"]["depends_on"] = 5
    assert list(validator().iter_errors(compose))


def test_all_four_services_with_health_checks_and_replicas_of_earn_and_the_ledger() -> None:
    services = load_compose()["services"]
    assert set(SERVICES) <= set(services)
    for name, (module, port) in SERVICES.items():
        service = services[name]
        assert service["command"] == ["python", "-m", module]
        assert str(service["environment"][f"LOYALTY_{module.upper()}_HTTP_PORT"]) == str(port)
        check = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in check
        assert {"kafka", "postgres"} <= set(service["depends_on"])
        # The services' roles from deploy/postgres/init.sql, never the superuser.
        assert f"loyalty_{module}:" in service["environment"][f"LOYALTY_{module.upper()}_PG_DSN"]
    for name in ("earn", "ledger"):
        assert services[name]["deploy"]["replicas"] >= 2
        # A fixed host port would make the second replica fail to start.
        for mapping in services[name].get("ports", []):
            assert mapping.split(":")[-2] == "", mapping


@pytest.mark.parametrize("name", list(SERVICES))
def test_prometheus_scrapes_every_replica_of_every_service(name: str) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    [discovery] = jobs[name]["dns_sd_configs"]
    assert discovery["names"] == [name] and discovery["port"] == SERVICES[name][1]
