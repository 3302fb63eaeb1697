"""Integration fixtures: secrets in the environment, as in production."""

import pytest

from tests.integration.helpers import ENV


@pytest.fixture(autouse=True)
def secrets_in_environment(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
