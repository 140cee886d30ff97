"""LOYALTY_TEST_INFRA: the pytest plugin's choice of test infrastructure, seen from outside.

Each case runs pytest in a subprocess on a one-test project that needs real infrastructure,
so what a developer sees (exit code, summary, skip reason) is what is checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = '''
import pytest

pytestmark = pytest.mark.integration


def test_needs_the_broker(infra):
    assert infra.kafka_bootstrap
'''
INI = """[pytest]
markers =
    integration: real infrastructure
    e2e: real infrastructure
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
"""
RUN_TIMEOUT_S = 120


def run_probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "pytest.ini").write_text(INI)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("LOYALTY_PG_DSN", "LOYALTY_KAFKA_BOOTSTRAP", "LOYALTY_TEST_INFRA")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "loyalty.testing",
         "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env={**clean, **env}, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S)


def test_testcontainers_without_a_docker_engine_skips_and_says_why(tmp_path: Path) -> None:
    # A socket that cannot exist: no engine, whatever this machine has.
    result = run_probe(tmp_path, LOYALTY_TEST_INFRA="testcontainers",
                       DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "1 skipped" in out.splitlines()[-1] and "passed" not in out.splitlines()[-1], out
    assert "SKIPPED [1]" in out and "LOYALTY_TEST_INFRA=testcontainers: no Docker engine" in out
    assert "1 integration/e2e test(s) skipped, not run on Kafka and PostgreSQL" in out


def test_external_without_addresses_is_an_error_not_a_skip(tmp_path: Path) -> None:
    result = run_probe(tmp_path, LOYALTY_TEST_INFRA="external")
    assert result.returncode == 1, result.stdout
    assert "1 error" in result.stdout.splitlines()[-1]
    assert "LOYALTY_TEST_INFRA=external needs LOYALTY_PG_DSN and LOYALTY_KAFKA_BOOTSTRAP" \
        in result.stdout


def test_an_unknown_mode_stops_the_run(tmp_path: Path) -> None:
    result = run_probe(tmp_path, LOYALTY_TEST_INFRA="kubernetes")
    assert result.returncode != 0
    assert "LOYALTY_TEST_INFRA='kubernetes': choose one of embedded, external, testcontainers" \
        in result.stdout + result.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the embedded infrastructure is Linux-only")
def test_embedded_is_the_default_and_runs_the_test(tmp_path: Path) -> None:
    result = run_probe(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout.splitlines()[-1]
