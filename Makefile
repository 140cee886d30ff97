# Two commands a new user needs: `make run` and `make test`. Everything else is installed from
# this repository's own files (uv.lock) into .venv; uv itself goes into .tools if missing.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)

.PHONY: run test test-unit test-integration test-e2e lint bench soak install clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

install: $(UV)
	$(UV) sync --frozen --python $(PYTHON)

run: install
	$(UV) run --frozen loyalty up

# The integration and e2e suites on real Apache Kafka and PostgreSQL images (testcontainers):
# where no Docker engine answers, that run skips them and prints why. Then the whole suite on
# the embedded infrastructure.
test: install
	LOYALTY_TEST_INFRA=testcontainers $(UV) run --frozen pytest -q -m "integration or e2e"
	$(UV) run --frozen pytest -q

test-unit: install
	$(UV) run --frozen pytest -q -m "not integration and not e2e"

test-integration: install
	$(UV) run --frozen pytest -q -m integration

test-e2e: install
	$(UV) run --frozen pytest -q -m e2e

lint: install
	$(UV) run --frozen ruff check .

bench: install
	$(UV) run --frozen python tests/bench/bench_flow.py

soak: install
	$(UV) run --frozen python tests/bench/bench_soak.py

clean:
	rm -rf .loyalty .pytest_cache
