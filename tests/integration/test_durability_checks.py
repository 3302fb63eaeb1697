"""The gateway refuses to run where an acknowledgement might not mean "on disk"."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import create_engine, event

from hub.errors import StorageError
from hub.store.db import Database, open_database, verify_durability
from tests.integration.helpers import build_hub
from tests.peers.postgres import PostgresCluster


def test_in_memory_sqlite_is_refused():
    with pytest.raises(StorageError, match="in-memory SQLite database cannot be durable"):
        open_database("sqlite:///:memory:")


@pytest.mark.parametrize(("pragmas", "message"), [
    ({"journal_mode": "DELETE", "synchronous": "FULL"}, "journal_mode is 'delete', not 'wal'"),
    ({"journal_mode": "WAL", "synchronous": "NORMAL"}, "synchronous is 1, not 2 (FULL)"),
    ({"journal_mode": "WAL", "synchronous": "OFF"}, "synchronous is 0, not 2 (FULL)"),
])
def test_sqlite_without_wal_and_full_sync_is_refused(tmp_path, pragmas, message):
    url = f"sqlite:///{tmp_path}/weak.db"
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def weaken(conn, _record):
        for name, value in pragmas.items():
            conn.execute(f"PRAGMA {name}={value}")

    db = Database(url, engine, engine, "sqlite")
    with pytest.raises(StorageError, match=re.escape(message)):
        verify_durability(db)
    engine.dispose()


def test_every_connection_of_ours_is_wal_and_full(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/ok.db")
    for eng in (db.engine, db.read_engine):
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    db.dispose()


@pytest.mark.pg
def test_postgresql_with_synchronous_commit_off_is_refused():
    with PostgresCluster(settings={"synchronous_commit": "off"}) as cluster:
        url = cluster.create_database("weak")
        with pytest.raises(StorageError, match="synchronous_commit is 'off'"):
            open_database(url)


def test_only_one_process_may_own_a_sqlite_database(tmp_path):
    url = f"sqlite:///{tmp_path}/hub.db"
    dest = {"files": {"type": "folder", "path": str(tmp_path / "out")}}
    first = build_hub(tmp_path, url, dest)
    from hub.runtime import Hub

    owner = Hub.build(first.config, own=True)
    try:
        with pytest.raises(StorageError, match="only one serve or worker process may run"):
            Hub.build(first.config, own=True)
        reader = Hub.build(first.config)  # the CLI may still read and retry
        reader.close()
    finally:
        owner.close()
        first.close()
    again = Hub.build(first.config, own=True)  # released with its owner
    again.close()
