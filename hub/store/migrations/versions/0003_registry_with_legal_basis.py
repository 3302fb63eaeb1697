"""Device registry with legal basis: devices, enrolments over time, last seen.

The one-row-per-device table of 0001 becomes two: `device` (what it is, when it was last
heard) and `enrolment` (device ↔ patient for a period, with the legal basis). Existing
enrolments are kept without a legal basis: they route nothing until re-enrolled with one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "enrolment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("patient_system", sa.String(length=64), nullable=False),
        sa.Column("patient_value", sa.String(length=32), nullable=False),
        sa.Column("patient_assigner", sa.String(length=9), nullable=True),
        sa.Column("municipality", sa.String(length=4), nullable=False),
        sa.Column("organisation", sa.String(length=9), nullable=True),
        sa.Column("care_team", sa.String(length=128), nullable=True),
        sa.Column("legal_basis", sa.String(length=16), nullable=True),
        sa.Column("legal_basis_ref", sa.String(length=128), nullable=True),
        sa.Column("plans", sa.Text(), server_default="", nullable=False),
        sa.Column("valid_from", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("valid_to", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("ended_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrolment")),
    )
    op.create_index("ix_enrolment_device", "enrolment", ["source", "device_id", "valid_from"])
    op.create_table(
        "measurement_seen",
        sa.Column("patient_system", sa.String(length=64), nullable=False),
        sa.Column("patient_value", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("last_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("missing_alerted_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("patient_system", "patient_value", "type",
                                name=op.f("pk_measurement_seen")),
    )
    op.execute(
        "INSERT INTO enrolment (source, device_id, patient_system, patient_value, municipality,"
        " organisation, care_team, plans, valid_from, valid_to, created_at)"
        " SELECT source, device_id, patient_system, patient_value, municipality, organisation,"
        " care_team, '', valid_from, valid_to, created_at FROM device"
    )
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device_type", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("vendor", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("model", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_seen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("no_contact_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        for column in ("patient_system", "patient_value", "municipality", "organisation",
                       "care_team", "valid_from", "valid_to"):
            batch_op.drop_column(column)


def downgrade() -> None:
    raise NotImplementedError("0003 keeps enrolment history that 0002 cannot hold; restore "
                              "a backup to go back")
