"""Partial index for the per-key FIFO check: only unfinished deliveries of a key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 13:39:41.950044
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delivery_order"))
        batch_op.create_index(
            "ix_delivery_open_by_key",
            ["destination", "order_key", "journal_id", "id"],
            unique=False,
            sqlite_where=sa.text("state IN ('pending', 'leased')"),
            postgresql_where=sa.text("state IN ('pending', 'leased')"),
        )


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_delivery_open_by_key",
            sqlite_where=sa.text("state IN ('pending', 'leased')"),
            postgresql_where=sa.text("state IN ('pending', 'leased')"),
        )
        batch_op.create_index(
            batch_op.f("ix_delivery_order"),
            ["destination", "order_key", "journal_id"],
            unique=False,
        )
