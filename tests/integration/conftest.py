"""Integration fixtures: secrets in the environment, as in production."""

import pytest

from tests.integration.helpers import ENV
from tests.integration.serve import ServeProcess


@pytest.fixture(autouse=True)
def secrets_in_environment(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def serve_process():
    """``serve_process(config, port, log)``: a `tryggbro serve` killed after the test,
    whatever happened in it (a stray gateway would steal CPU from every later test)."""
    started: list[ServeProcess] = []

    def make(config, port, log):
        server = ServeProcess(config, port, log)
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()
