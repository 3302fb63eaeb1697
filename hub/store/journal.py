"""The intake writer's path into the journal, and SQLite's WAL checkpoints off that path.

`open_journal_writer(repo)` gives the intake writer thread what it commits with:

- **SQLite**: `SqliteJournalWriter`, a plain DB-API connection of its own (the same
  pragmas as every connection: WAL, ``synchronous=FULL``), one prepared
  ``INSERT … ON CONFLICT DO NOTHING RETURNING id`` per message inside one
  ``BEGIN IMMEDIATE … COMMIT`` per batch. It returns only after the COMMIT returned, i.e.
  after the WAL fsync: acknowledging after it stays "acknowledge only what is on disk".
  The ORM's statement compilation, result wrapping and connection-pool round trip
  (two thirds of the writer's CPU per batch before) are gone; the stored row is the
  same, values converted by the same column types.
  Its connection has ``wal_autocheckpoint=0``: SQLite would otherwise run a checkpoint
  (copy the WAL into the database file and fsync it, tens of ms) inside the COMMIT of
  whichever batch crosses 1,000 pages, and those senders would wait for it. Instead a
  `WalCheckpointer` thread checkpoints on its own connection, PASSIVE (never waits for,
  and never blocks, the writer or readers), shortly after commits. The WAL stays bounded:
  ``journal_size_limit`` truncates it when it restarts, and if it still grows past
  `hard_limit_bytes` (a reader holding an old snapshot keeps PASSIVE from finishing)
  the checkpointer tries a TRUNCATE checkpoint, which waits for readers and blocks
  writers while it runs — for at most `TRUNCATE_WAIT_MS` per try, then it gives up until
  the next interval: a bounded WAL is worth an ACK delayed by that much in that rare case.
- **PostgreSQL**: `Repository.insert_messages` (the server's WAL is its own business).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.engine import make_url

from hub.domain.model import MessageState, RawMessage
from hub.faults import crashpoint
from hub.logging import get_logger
from hub.store.db import SQLITE_BUSY_TIMEOUT_MS, Database, _sqlite_pragmas
from hub.store.repository import IntakeResult, J, Repository, to_db

log = get_logger("hub.store.journal")

WAL_SOFT_LIMIT_BYTES = 64 * 1024 * 1024  # journal_size_limit: the WAL is cut back to this
WAL_HARD_LIMIT_BYTES = 256 * 1024 * 1024  # past this: one TRUNCATE checkpoint
CHECKPOINT_INTERVAL_S = 0.25  # at most this often, and only after commits
TRUNCATE_WAIT_MS = 100  # the longest a TRUNCATE try may hold writers back

_COLUMNS = ("source", "dedup_key", "body_sha256", "content_type", "body", "transport",
            "received_at", "answer", "state", "attempts", "priority", "updated_at")


class JournalWriter(Protocol):
    def insert(self, raws: Sequence[RawMessage]) -> list[IntakeResult]: ...

    def close(self) -> None: ...


class _RepositoryWriter:
    """PostgreSQL: the repository's group insert."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def insert(self, raws: Sequence[RawMessage]) -> list[IntakeResult]:
        return self.repo.insert_messages(raws)

    def close(self) -> None:
        """Nothing of its own to close."""


def open_journal_writer(repo: Repository) -> JournalWriter:
    if repo.db.is_sqlite:
        return SqliteJournalWriter(repo.db)
    return _RepositoryWriter(repo)


def _connect(db: Database) -> sqlite3.Connection:
    path = make_url(db.url).database or ""
    conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False,
                           cached_statements=64)
    _sqlite_pragmas(conn, None)
    return conn


class SqliteJournalWriter:
    """One connection, used by one thread at a time (the intake writer)."""

    def __init__(self, db: Database, *, soft_limit_bytes: int = WAL_SOFT_LIMIT_BYTES,
                 hard_limit_bytes: int = WAL_HARD_LIMIT_BYTES,
                 checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.conn = _connect(db)
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self.conn.execute(f"PRAGMA journal_size_limit={int(soft_limit_bytes)}")
        dialect = db.engine.dialect
        self._convert: list[Callable[[Any], Any] | None] = [
            J.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in _COLUMNS]
        updated = self._convert[-1]
        self._convert_updated_at: Callable[[Any], Any] = (
            updated if updated is not None else (lambda value: value))
        self._insert_sql = (
            "INSERT INTO journal (source, dedup_key, body_sha256, content_type, body, "
            "transport, received_at, answer, state, attempts, priority, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (source, dedup_key) DO NOTHING RETURNING id")
        self._select_sql = ("SELECT id, body_sha256, answer FROM journal "
                            "WHERE source = ? AND dedup_key = ?")
        self.checkpointer = WalCheckpointer(db, hard_limit_bytes, checkpoint_interval_s)
        self.checkpointer.start()

    def _row(self, raw: RawMessage, digest: str, updated_at: Any) -> list[Any]:
        values: list[Any] = [
            raw.source, raw.dedup_key, digest, raw.content_type, raw.body,
            json.dumps(dict(raw.transport), sort_keys=True), to_db(raw.received_at),
            raw.answer, MessageState.RECEIVED.value, 0, int(raw.priority)]
        row = [v if conv is None or v is None else conv(v)
               for v, conv in zip(values, self._convert, strict=False)]
        row.append(updated_at)  # converted once per batch
        return row

    def insert(self, raws: Sequence[RawMessage]) -> list[IntakeResult]:
        """Journal a batch in one transaction; returns after its COMMIT (the fsync)."""
        updated_at = self._convert_updated_at(datetime.now(UTC))
        if len(raws) == 1:
            lone = self._insert_lone(raws[0], updated_at)
            if lone is not None:
                return [lone]
        conn = self.conn
        results: list[IntakeResult] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for raw in raws:
                digest = hashlib.sha256(raw.body).hexdigest()
                row = conn.execute(self._insert_sql,
                                   self._row(raw, digest, updated_at)).fetchone()
                if row is not None:
                    results.append(IntakeResult(int(row[0]), duplicate=False, answer=raw.answer))
                    continue
                stored = conn.execute(self._select_sql, (raw.source, raw.dedup_key)).fetchone()
                results.append(IntakeResult(int(stored[0]), duplicate=True,
                                            same_body=stored[1] == digest, answer=stored[2]))
            crashpoint("mid_group_commit")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._committed()
        return results

    def _insert_lone(self, raw: RawMessage, updated_at: Any) -> IntakeResult | None:
        """A batch of one (one connection, one message outstanding: every commit holds a
        single message): the INSERT is its own transaction, SQLite's autocommit — one
        statement instead of BEGIN IMMEDIATE + INSERT + COMMIT, each a call into SQLite
        that drops and re-takes the GIL. `fetchall()` steps the statement to its end,
        where SQLite commits (with ``synchronous=FULL``: after the WAL fsync) before it
        returns: the same "acknowledge only what is on disk". None when the key is
        already stored (nothing was written): the caller then reads the stored row inside
        a transaction, as for any batch."""
        digest = hashlib.sha256(raw.body).hexdigest()
        rows = self.conn.execute(self._insert_sql,
                                 self._row(raw, digest, updated_at)).fetchall()
        if not rows:
            return None
        if self.conn.in_transaction:  # autocommit ended it; never acknowledge otherwise
            raise RuntimeError("a lone journal insert left its transaction open")
        self._committed()
        return IntakeResult(int(rows[0][0]), duplicate=False, answer=raw.answer)

    def _committed(self) -> None:
        if not self.checkpointer.dirty:  # an attribute read, not the Event's lock
            self.checkpointer.committed()

    def close(self) -> None:
        self.checkpointer.stop()
        self.conn.close()


class WalCheckpointer:
    """Checkpoints the WAL on its own connection and thread, PASSIVE, after commits."""

    def __init__(self, db: Database, hard_limit_bytes: int, interval_s: float) -> None:
        self.db = db
        self.wal_path = (make_url(db.url).database or "") + "-wal"
        self.hard_limit_bytes = hard_limit_bytes
        self.interval_s = interval_s
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0
        self.truncations = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-checkpointer",
                                        daemon=True)
        self._thread.start()

    @property
    def dirty(self) -> bool:
        return self._dirty.is_set()

    def committed(self) -> None:
        self._dirty.set()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._dirty.set()
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        conn = _connect(self.db)
        # PASSIVE never waits; this bounds how long a TRUNCATE try holds the writer back.
        conn.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
        wait = threading.Event()
        try:
            while not self._stopping.is_set():
                self._dirty.wait()
                if self._stopping.is_set():
                    break
                # Let commits gather: one checkpoint per interval at most.
                wait.wait(self.interval_s)
                self._dirty.clear()
                try:
                    self._checkpoint(conn)
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed; retrying after the next commit",
                                error=type(exc).__name__)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        try:
            size = os.stat(self.wal_path).st_size
        except FileNotFoundError:
            return
        if size > self.hard_limit_bytes:
            busy, _pages, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                self.truncations += 1
            log.warning("WAL grew past its limit (a reader holding an old snapshot?); "
                        "TRUNCATE checkpoint, holding writers back meanwhile",
                        wal_bytes=size, limit=self.hard_limit_bytes, complete=not busy)
