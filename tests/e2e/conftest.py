"""Fixtures of the end-to-end tests: HTTP clients of the running services."""

from __future__ import annotations

import pytest

from loyalty.testing import Api


@pytest.fixture
def ledger(platform, api_token) -> Api:
    return Api(platform.services["ledger"].url, api_token)


@pytest.fixture
def earn(platform, api_token) -> Api:
    return Api(platform.services["earn"].url, api_token)


@pytest.fixture
def rewards(platform, api_token) -> Api:
    return Api(platform.services["reward-fulfilment"].url, api_token)
