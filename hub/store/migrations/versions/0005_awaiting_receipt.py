"""Deliveries can await a receipt: correlation id, receipt deadline, overdue alert time.

An EDI 2.0 message is accepted by the transport long before the receiver's AppRec says
whether it was taken; a JFT write answers 202 and is settled by $status polling. The
delivery waits in state `awaiting_receipt` (no new column needed for the state: it is a
string) with what the receipt will name and by when.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("correlation_id",
                                      sqlmodel.sql.sqltypes.AutoString(length=255),
                                      nullable=True))
        batch_op.add_column(sa.Column("receipt_deadline", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("receipt_alerted_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.create_index("ix_delivery_destination_correlation_id",
                              ["destination", "correlation_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_destination_correlation_id")
        batch_op.drop_column("receipt_alerted_at")
        batch_op.drop_column("receipt_deadline")
        batch_op.drop_column("correlation_id")
