"""SQLModel tables: the journal, events, deliveries, attempts, devices.

Every arrow of the flow is a row here, never an in-memory queue (ARCHITECTURE §1).
Times are aware datetimes, stored as UTC (SQLModel's UTCDateTime refuses naive ones).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, Integer, LargeBinary, MetaData, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

# Stable constraint names on both SQLite and PostgreSQL (Alembic batch mode needs them).
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Journal(SQLModel, table=True):
    """Every message a source received, as received, committed before it is answered."""

    __tablename__ = "journal"
    __table_args__ = (
        UniqueConstraint("source", "dedup_key"),
        Index("ix_journal_state_id", "state", "id"),
        Index("ix_journal_state_priority_id", "state", "priority", "id"),
        Index("ix_journal_received_at", "received_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64)
    dedup_key: str = Field(max_length=255)
    body_sha256: str = Field(max_length=64)
    content_type: str = Field(max_length=255)
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    transport: str = Field(default="{}", sa_column=Column(Text, nullable=False,
                                                          server_default=text("'{}'")))
    received_at: datetime
    # Processing takes the highest priority first (alarm sources: hub.domain.model.Priority).
    priority: int = Field(default=50, sa_column=Column(Integer, nullable=False,
                                                       server_default=text("50")))
    # The answer the sender got (an HL7 ACK), stored with the message so that a resent
    # copy is answered with exactly the same bytes.
    answer: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    state: str = Field(max_length=16)
    state_reason: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = None
    processed_at: datetime | None = None
    updated_at: datetime


class EventRecord(SQLModel, table=True):
    """One canonical event of a message, with its FHIR Bundle once mapped."""

    __tablename__ = "event"
    __table_args__ = (
        UniqueConstraint("journal_id", "seq"),
        Index("ix_event_source_business_key", "source", "business_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    journal_id: int = Field(foreign_key="journal.id")
    seq: int
    source: str = Field(max_length=64)
    business_key: str = Field(max_length=255)
    kind: str = Field(max_length=64)
    category: str = Field(max_length=32)
    code: str | None = Field(default=None, max_length=32)
    device_id: str = Field(max_length=128)
    occurred_at: datetime
    priority: int
    snapshot: bool = False
    state: str = Field(max_length=16)
    filtered_by: str | None = Field(default=None, max_length=255)
    bundle_id: str | None = Field(default=None, max_length=64)
    payload: str | None = Field(default=None, sa_column=Column(Text))  # FHIR Bundle JSON
    summary: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class Delivery(SQLModel, table=True):
    """One event to one destination: the outbox row dispatchers lease and send."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("event_id", "destination"),
        Index("ix_delivery_claim", "destination", "state", "priority", "journal_id"),
        # Per-key FIFO looks only at unfinished deliveries of a key: a partial index keeps
        # that check independent of how much history the key has.
        Index("ix_delivery_open_by_key", "destination", "order_key", "journal_id", "id",
              sqlite_where=text("state IN ('pending', 'leased')"),
              postgresql_where=text("state IN ('pending', 'leased')")),
        Index("ix_delivery_state_created", "state", "created_at"),
        # Receipts find their delivery by the id the destination gave the message.
        Index("ix_delivery_destination_correlation_id", "destination", "correlation_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(foreign_key="event.id")
    journal_id: int = Field(foreign_key="journal.id")
    destination: str = Field(max_length=64)
    order_key: str = Field(max_length=64)
    priority: int
    state: str = Field(max_length=16)
    attempts: int = 0
    not_before: datetime
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    last_status: int | None = None
    escalated: bool = False
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None = None
    # Awaiting a receipt (state awaiting_receipt): what the receipt will name, by when it
    # is due, and when the monitor alerted that it is overdue.
    correlation_id: str | None = Field(default=None, max_length=255)
    receipt_deadline: datetime | None = None
    receipt_alerted_at: datetime | None = None
    # The transport's own id for the message (EDI 2.0 AssignedId) and its last reported
    # transport state (e.g. Unconfirmed, Acknowledged), while awaiting a receipt.
    transport_ref: str | None = Field(default=None, max_length=255)
    transport_state: str | None = Field(default=None, max_length=32)


class DeliveryAttempt(SQLModel, table=True):
    """Each send attempt, for the trace an operator reads with `tryggbro show`."""

    __tablename__ = "delivery_attempt"
    __table_args__ = (Index("ix_delivery_attempt_delivery_id", "delivery_id"),)

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(foreign_key="delivery.id")
    number: int
    worker: str = Field(max_length=128)
    started_at: datetime
    finished_at: datetime
    # e.g. retry, awaiting, receipt:delivered, transport:resend
    outcome: str = Field(max_length=32)
    status_code: int | None = None
    detail: str | None = Field(default=None, sa_column=Column(Text))
    retry_after: float | None = None


class Device(SQLModel, table=True):
    """A vendor device the municipality knows: what it is and when it was last heard.

    `last_seen_at` moves on every message from the device (heartbeats and tests too);
    `no_contact_at` is set when silence past `heartbeat_seconds` raised a "no contact"
    event, and cleared when the device is heard again.
    """

    __tablename__ = "device"

    source: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(primary_key=True, max_length=128)
    device_type: str | None = Field(default=None, max_length=32)  # None: from before 0003
    vendor: str | None = Field(default=None, max_length=128)
    model: str | None = Field(default=None, max_length=128)
    heartbeat_seconds: int | None = None
    last_seen_at: datetime | None = None
    no_contact_at: datetime | None = None
    created_at: datetime
    updated_at: datetime | None = None


class EnrolmentRecord(SQLModel, table=True):
    """Device ↔ patient for a period, with the legal basis that allows it.

    A device has at most one enrolment valid at any instant. `legal_basis` is NULL only
    for enrolments made before the registry recorded it: those route nothing until an
    operator enrols the device again with a basis.
    """

    __tablename__ = "enrolment"
    __table_args__ = (Index("ix_enrolment_device", "source", "device_id", "valid_from"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64)
    device_id: str = Field(max_length=128)
    patient_system: str = Field(max_length=64)
    patient_value: str = Field(max_length=32)
    patient_assigner: str | None = Field(default=None, max_length=9)
    municipality: str = Field(max_length=4)
    organisation: str | None = Field(default=None, max_length=9)
    care_team: str | None = Field(default=None, max_length=128)
    legal_basis: str | None = Field(default=None, max_length=16)
    legal_basis_ref: str | None = Field(default=None, max_length=128)
    plans: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    valid_from: datetime
    valid_to: datetime | None = None
    ended_at: datetime | None = None  # set when an operator ended it early
    created_at: datetime


class MeasurementSeen(SQLModel, table=True):
    """The newest measurement of each type per patient, for the missing-measurement check."""

    __tablename__ = "measurement_seen"

    patient_system: str = Field(primary_key=True, max_length=64)
    patient_value: str = Field(primary_key=True, max_length=32)
    type: str = Field(primary_key=True, max_length=32)
    last_at: datetime
    missing_alerted_at: datetime | None = None


class DestinationStatus(SQLModel, table=True):
    """A destination paused after it refused us (401/403, misconfiguration)."""

    __tablename__ = "destination_status"

    name: str = Field(primary_key=True, max_length=64)
    paused_until: datetime | None = None
    reason: str | None = Field(default=None, sa_column=Column(Text))
    updated_at: datetime


metadata: MetaData = SQLModel.metadata
