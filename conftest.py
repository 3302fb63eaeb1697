"""Shared fixtures for every test suite in the repository (tests/ and plugins/*/tests).

Real peers only: a throwaway PostgreSQL cluster from Debian's binaries, the Medplum FHIR
engine from npm, SQLite files in temporary folders. `make test` installs the peers; a
missing peer is an error with the command that installs it, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.medplum import MedplumPeer
from tests.peers.postgres import PostgresCluster

ROOT = Path(__file__).resolve().parent

# Loggers must not freeze their pipeline on first use in tests: `capture_logs` in a later
# test has to see loggers an earlier test already used (hub.logging).
os.environ["TRYGGBRO_LOG_CACHE"] = "0"

# Issue 5: no 11-digit number, patient name or GPS position in any log line, metric label
# or stored error text over the whole run (tests/privacy_guard.py).
pytest_plugins = ["tests.privacy_guard"]

# A developer's shell must not change which plugins the tests load.
for _var in ("TRYGGBRO_LOAD_PLUGINS", "TRYGGBRO_BLOCK_PLUGINS", "TRYGGBRO_CRASH_AT",
             "TRYGGBRO_CONFIG"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster on 127.0.0.1 for the whole run."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; its stored error texts are scanned
    by the privacy guard before it is dropped."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_cluster.create_database(name)
    yield url
    guard = request.config.pluginmanager.get_plugin("privacy-guard")
    if guard is not None:
        guard.check_database(url, f"postgresql database {name}")
    pg_cluster.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a storage test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hub.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(scope="session")
def medplum() -> Iterator[MedplumPeer]:
    """The Medplum FHIR engine (in memory, STRICT validation) as the municipal EHR."""
    with MedplumPeer() as peer:
        yield peer
