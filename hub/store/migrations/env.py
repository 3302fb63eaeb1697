"""Alembic environment: runs on the connection the hub hands over at start-up."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from hub.store import tables

target_metadata = tables.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite ALTERs go through table rebuilds
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through hub.store.db.upgrade(), which passes a connection")
_run(connection)
