"""The answer a sender got (an HL7 ACK) is stored with its message.

A resent copy of a message is answered with exactly the bytes the first copy got
(reliability.md §2.2: "for a duplicate with a stored ACK/NAK, send the stored one").

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("journal", schema=None) as batch_op:
        batch_op.add_column(sa.Column("answer", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("journal", schema=None) as batch_op:
        batch_op.drop_column("answer")
