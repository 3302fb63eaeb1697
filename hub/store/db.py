"""Database engines, durability self-check and migrations.

SQLite: WAL with ``synchronous=FULL`` on every connection (NORMAL may lose the last
commits on power loss, reliability.md §1.3), writes in ``BEGIN IMMEDIATE`` so two writers
never deadlock on a lock upgrade, one write connection per process (writers queue in
the pool, not in SQLite's busy handler), and one owning process per database file.
PostgreSQL: ``synchronous_commit`` must not be ``off`` and ``fsync`` must be on.
The gateway refuses to start when either check fails: an acknowledgement must mean the
message is on disk.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, make_url

from hub.errors import StorageError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# The newest migration's revision. upgrade() and /readyz compare the database's stored
# revision with it and, when it matches (every start but the first after an upgrade), do
# not import Alembic at all: ~0.25 s of imports (Mako, Pygments) and ~0.1 s to read the
# scripts, in every process of a `serve`. tests/integration/test_storage.py checks it
# against Alembic's script directory, so a new migration that does not move it fails.
HEAD_REVISION = "0007"

SQLITE_BUSY_TIMEOUT_MS = 10_000
_MIGRATION_LOCK_ID = 0x7472_7967  # "tryg": serialises start-up migrations on PostgreSQL


@dataclass
class Database:
    """The write engine and the read engine (the same on PostgreSQL)."""

    url: str
    engine: Engine
    read_engine: Engine
    dialect: str
    lock_file: IO[str] | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
        if self.lock_file is not None:
            self.lock_file.close()
            self.lock_file = None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The driver must not BEGIN on its own: we emit BEGIN (IMMEDIATE for writers) ourselves.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _begin_deferred(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def open_database(url: str, *, pool_size: int = 5, check: bool = True) -> Database:
    """Create engines for `url` and verify the durability settings."""
    parsed = make_url(url)
    dialect = parsed.get_backend_name()
    if dialect == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise StorageError(
                f"{url}: an in-memory SQLite database cannot be durable (no WAL, lost on exit); "
                "use a file path such as sqlite:///var/tryggbro.db"
            )
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        # One write connection per process: SQLite has one writer anyway, and threads that
        # queue for the pool are woken the moment the last commit returns it, where
        # BEGIN IMMEDIATE on a connection of their own would sleep in SQLite's busy
        # handler (steps up to 100 ms) and lose the lock again and again to busier
        # threads (a flapping destination's retries doubled a healthy one's latency).
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                               pool_size=1, max_overflow=0,
                               pool_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        read_engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        for eng, begin in ((engine, _begin_immediate), (read_engine, _begin_deferred)):
            event.listen(eng, "connect", _sqlite_pragmas)
            event.listen(eng, "begin", begin)
    elif dialect == "postgresql":
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                               pool_pre_ping=True)
        read_engine = engine
    else:
        raise StorageError(f"{url}: unsupported database; use SQLite or PostgreSQL")
    db = Database(url, engine, read_engine, dialect)
    if check:
        try:
            verify_durability(db)
        except Exception:
            db.dispose()
            raise
    return db


def verify_durability(db: Database) -> None:
    """Refuse settings under which an acknowledged message could be lost."""
    if db.is_sqlite:
        for eng in (db.engine, db.read_engine):
            with eng.connect() as conn:
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            if str(mode).lower() != "wal":
                raise StorageError(
                    f"{db.url}: SQLite journal_mode is {mode!r}, not 'wal' (is the file on a "
                    "filesystem without shared-memory support?); refusing to run"
                )
            if sync != 2:
                raise StorageError(
                    f"{db.url}: SQLite synchronous is {sync}, not 2 (FULL); refusing to run"
                )
    else:
        with db.engine.connect() as conn:
            commit = conn.execute(text("SHOW synchronous_commit")).scalar()
            fsync = conn.execute(text("SHOW fsync")).scalar()
        if commit == "off":
            raise StorageError(
                "PostgreSQL synchronous_commit is 'off': a commit may be lost on a crash after "
                "we acknowledged it; set it to 'on' for this database or role; refusing to run"
            )
        if fsync != "on":
            raise StorageError("PostgreSQL fsync is off: refusing to run")


def acquire_owner_lock(db: Database) -> None:
    """On SQLite only one serve/worker process may own the database file."""
    if not db.is_sqlite:
        return
    path = Path(make_url(db.url).database or "") .with_suffix(".lock")
    handle = path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StorageError(
            f"another tryggbro process already owns {make_url(db.url).database}; on SQLite "
            "only one serve or worker process may run (use PostgreSQL for several workers)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    db.lock_file = handle


def alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "hub.store:migrations")
    return cfg


def upgrade(db: Database) -> None:
    """Apply migrations up to head; on PostgreSQL under an advisory lock."""
    if stored_revisions(db) == {HEAD_REVISION}:
        return  # at head: nothing to apply (the common start)
    from alembic import command

    cfg = alembic_config()
    with db.engine.connect() as conn:
        if not db.is_sqlite:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if not db.is_sqlite:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_ID})
                conn.commit()


def stored_revisions(db: Database) -> set[str]:
    """The revisions in Alembic's version table (none on a new database), read with plain
    SQL: Alembic is imported only when there is something to migrate."""
    with db.read_engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return set()
        return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}


def schema_is_current(db: Database) -> bool:
    return stored_revisions(db) == {HEAD_REVISION}


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.read_engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()

