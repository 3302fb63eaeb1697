"""The journal keeps a processing priority per message, set at intake.

Alarm sources (SOS Access, SIA DC-09, alarm webhooks, nurse call, ...) are journalled with
the alarm priority, so processing takes them ahead of a backlog of other traffic
(`Repository.claim_messages`). Existing rows get the normal priority (50).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 21:15:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("journal", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False,
                                      server_default=sa.text("50")))
        batch_op.create_index("ix_journal_state_priority_id", ["state", "priority", "id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("journal", schema=None) as batch_op:
        batch_op.drop_index("ix_journal_state_priority_id")
        batch_op.drop_column("priority")
