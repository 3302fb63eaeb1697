"""Deliveries awaiting a receipt keep the transport's id and its transport state.

EDI 2.0 answers `POST /Messages` with its own id; `GET /Messages/{id}/Status` then says
whether the receiver's message handler acknowledged the transport (ebXML Acknowledgment)
long before the AppRec comes. The hub asks until it is confirmed and shows the state.

Also widens delivery_attempt.outcome from 16 to 32 characters: "receipt:delivered" (17)
did not fit, so on PostgreSQL an AppRec 1 (OK) could not be recorded.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transport_ref",
                                      sqlmodel.sql.sqltypes.AutoString(length=255),
                                      nullable=True))
        batch_op.add_column(sa.Column("transport_state",
                                      sqlmodel.sql.sqltypes.AutoString(length=32),
                                      nullable=True))
    with op.batch_alter_table("delivery_attempt", schema=None) as batch_op:
        batch_op.alter_column("outcome", existing_type=sa.String(length=16),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=32),
                              existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("delivery_attempt", schema=None) as batch_op:
        batch_op.alter_column("outcome", existing_type=sqlmodel.sql.sqltypes.AutoString(length=32),
                              type_=sa.String(length=16), existing_nullable=False)
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("transport_state")
        batch_op.drop_column("transport_ref")
