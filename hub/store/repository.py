"""Every database operation of the hub, on SQLite and PostgreSQL.

Claims take rows with a lease that expires, so a dead worker's rows are taken over:
PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``; SQLite (which compiles that away
silently, stack.md §2.4) claims with one ``UPDATE … RETURNING`` inside ``BEGIN IMMEDIATE``.
Every state change checks the lease owner, so a worker whose lease expired cannot
overwrite what its successor recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.sql.elements import BindParameter

from hub.domain.model import (
    REPROCESSABLE_STATES,
    DeliveryState,
    Enrolment,
    EventState,
    LegalBasis,
    LegalBasisKind,
    MessageState,
    PersonId,
    Priority,
    RawMessage,
    Receipt,
    ReceiptStatus,
    StoredMessage,
    TransportAction,
    TransportCheck,
    is_alarm,
)
from hub.domain.privacy import PERSON_ID_SYSTEMS, safe_error_text
from hub.errors import HubError
from hub.faults import crashpoint
from hub.logging import get_logger
from hub.registry import EnrolmentRequest, format_plans, parse_plans
from hub.store.db import Database
from hub.store.tables import (
    Delivery,
    DeliveryAttempt,
    DestinationStatus,
    Device,
    EnrolmentRecord,
    EventRecord,
    Journal,
    MeasurementSeen,
)
from hub.store.transient import transient

J: Table = Journal.__table__  # type: ignore[attr-defined]
E: Table = EventRecord.__table__  # type: ignore[attr-defined]
D: Table = Delivery.__table__  # type: ignore[attr-defined]
A: Table = DeliveryAttempt.__table__  # type: ignore[attr-defined]
DEV: Table = Device.__table__  # type: ignore[attr-defined]
EN: Table = EnrolmentRecord.__table__  # type: ignore[attr-defined]
MS: Table = MeasurementSeen.__table__  # type: ignore[attr-defined]
DS: Table = DestinationStatus.__table__  # type: ignore[attr-defined]

# The order barrier: deliveries of messages accepted after a message not yet processed
# wait for it, because its order key (the patient) is unknown until it is parsed; so
# per-key order holds with several processors. It has no age limit: after an outage the
# whole backlog is old, and two processors finish its batches out of order. A message
# that cannot be processed stops holding others back when it fails (`max_attempts`
# claims, each bounded by the processing lease), which is visible on its own.

log = get_logger("hub.store")


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_db(value: datetime) -> datetime:
    """Aware UTC, as SQLModel's UTCDateTime columns require (naive means UTC here)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def from_db(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class IntakeResult:
    id: int
    duplicate: bool
    same_body: bool = True  # False: the dedup key was reused for a different body
    answer: bytes | None = None  # the answer stored with the message (its first copy's)


# A confirmed transport is stored as this state, whatever the transport calls it.
TRANSPORT_CONFIRMED = "acknowledged"
# Attempt-log outcomes (at most 16 characters) for transport states.
TRANSPORT_OUTCOMES = {TransportAction.WAIT: "transport:wait",
                      TransportAction.CONFIRMED: "transport:ok",
                      TransportAction.RESEND: "transport:resend",
                      TransportAction.DEAD: "transport:dead",
                      TransportAction.DELIVERED: "transport:delivered"}


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    destination: str
    priority: int
    order_key: str


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    seq: int
    source: str
    business_key: str
    kind: str
    category: str
    code: str | None
    device_id: str
    occurred_at: datetime
    priority: int
    snapshot: bool
    state: EventState
    summary: Mapping[str, Any]
    filtered_by: str | None = None
    bundle_id: str | None = None
    payload: str | None = None
    deliveries: Sequence[PlannedDelivery] = ()
    # A receipt or answer: the delivery it names is settled in this message's transaction.
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    """What processing decided for one message, written atomically."""

    message_id: int
    state: MessageState
    reason: str | None = None
    events: Sequence[PlannedEvent] = ()
    # Observations kept beside the result: devices heard (source, device id, when) and
    # measurements taken (patient system, patient value, measurement type, when).
    seen: Sequence[tuple[str, str, datetime]] = ()
    measured: Sequence[tuple[str, str, str, datetime]] = ()


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    id: int
    message_id: int
    event_id: int
    destination: str
    priority: int
    attempt: int
    bundle_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    delivery_id: int
    attempt: int
    started_at: datetime
    finished_at: datetime
    outcome: str
    status_code: int | None
    detail: str | None
    retry_after: float | None
    new_state: DeliveryState
    not_before: datetime
    error: str | None = None  # why the delivery is not delivered (None when it is)
    escalate: bool = False
    pause_until: datetime | None = None
    correlation_id: str | None = None  # awaiting a receipt: what it will name
    receipt_deadline: datetime | None = None
    transport_ref: str | None = None  # awaiting: the transport's id, to ask its status


@dataclass(frozen=True, slots=True)
class Origin:
    """What the hub sent that a receipt or answer names (found by its correlation id)."""

    delivery_id: int
    destination: str
    state: str
    source: str
    device_id: str
    category: str
    references: tuple[str, ...]  # "DetectedIssue/<id>" … of the resources it carried


@dataclass(frozen=True, slots=True)
class OverdueReceipt:
    delivery_id: int
    destination: str
    correlation_id: str
    deadline: datetime
    source: str
    device_id: str
    category: str


@dataclass(frozen=True, slots=True)
class EnrolmentPeriod:
    id: int
    enrolment: Enrolment
    enrolment_ok: bool  # has a legal basis
    valid_from: datetime
    valid_to: datetime | None  # the earlier of the planned end and an operator's end
    ended_at: datetime | None

    def valid_at(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)

    def describe(self) -> dict[str, Any]:
        """For listings: everything but the patient's identifier."""
        e = self.enrolment
        return {
            "id": self.id, "source": e.source, "device_id": e.device_id,
            "patient_type": PERSON_ID_SYSTEMS.get(e.patient.system, "?"),
            "municipality": e.municipality, "organisation": e.organisation,
            "care_team": e.care_team,
            "legal_basis": e.legal_basis.kind.value if self.enrolment_ok else None,
            "legal_basis_ref": e.legal_basis.reference if self.enrolment_ok else None,
            "plans": format_plans(e.measurement_plans) or None,
            "valid_from": self.valid_from, "valid_to": self.valid_to,
            "ended_at": self.ended_at,
        }


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device and its enrolments over time, as processing needs them."""

    source: str
    device_id: str
    device_type: str | None
    periods: list[EnrolmentPeriod]

    def period_at(self, at: datetime) -> EnrolmentPeriod | None:
        return next((p for p in self.periods if p.valid_at(at)), None)

    def enrolment_at(self, at: datetime) -> Enrolment | None:
        period = self.period_at(at)
        return period.enrolment if period is not None and period.enrolment_ok else None

    def state_at(self, at: datetime) -> str:
        period = self.period_at(at)
        if period is not None:
            return "enrolled" if period.enrolment_ok else "no legal basis"
        if any(p.valid_from > at for p in self.periods):
            return "enrolment not yet valid"
        return "enrolment ended" if self.periods else "not enrolled"


@dataclass
class StatusReport:
    messages: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, dict[str, int]] = field(default_factory=dict)
    oldest_pending_seconds: dict[str, float] = field(default_factory=dict)
    oldest_pending_alarm_seconds: dict[str, float] = field(default_factory=dict)
    escalated: dict[str, int] = field(default_factory=dict)
    paused: dict[str, dict[str, Any]] = field(default_factory=dict)
    oldest_unprocessed_seconds: float | None = None
    receipts_overdue: dict[str, int] = field(default_factory=dict)
    # Deliveries awaiting a receipt, per destination and transport state (JFT: accepted,
    # registered, read; "-" for a delivery whose transport state is not known yet).
    awaiting_by_transport_state: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "receipts_overdue": self.receipts_overdue,
            "awaiting_by_transport_state": self.awaiting_by_transport_state,
            "messages": self.messages,
            "deliveries": self.deliveries,
            "oldest_pending_seconds": self.oldest_pending_seconds,
            "oldest_pending_alarm_seconds": self.oldest_pending_alarm_seconds,
            "oldest_unprocessed_seconds": self.oldest_unprocessed_seconds,
            "escalated": self.escalated,
            "paused": self.paused,
        }


class Repository:
    """The hub's persistence: one instance per process, safe to use from many threads."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = sqlite.insert if db.is_sqlite else postgresql.insert

    # ---------------------------------------------------------------------------------
    # Intake
    # ---------------------------------------------------------------------------------

    @transient
    def insert_messages(self, raws: Sequence[RawMessage]) -> list[IntakeResult]:
        """Journal a batch in one transaction (group commit); duplicates create nothing.

        Returns only after the commit returned, i.e. after the fsync. The batch is written
        with one lookup of the keys it already knows and one multi-row insert; if another
        process inserts one of the keys meanwhile (PostgreSQL), the batch is written again
        row by row with ON CONFLICT DO NOTHING.
        """
        digests = [hashlib.sha256(raw.body).hexdigest() for raw in raws]
        try:
            return self._insert_batch(raws, digests)
        except IntegrityError:
            return self._insert_each(raws, digests)

    def _insert_batch(self, raws: Sequence[RawMessage], digests: Sequence[str]
                      ) -> list[IntakeResult]:
        now = utcnow()
        with self.db.engine.begin() as conn:
            known: dict[tuple[str, str], tuple[int, str, bytes | None]] = {}
            by_source: dict[str, set[str]] = {}
            for raw in raws:
                by_source.setdefault(raw.source, set()).add(raw.dedup_key)
            for source, keys in by_source.items():
                for chunk in chunks(sorted(keys), 500):
                    for row in conn.execute(select(J.c.id, J.c.dedup_key, J.c.body_sha256,
                                                   J.c.answer)
                                            .where(J.c.source == source,
                                                   J.c.dedup_key.in_(chunk))):
                        known[(source, row.dedup_key)] = (int(row.id), row.body_sha256,
                                                          row.answer)
            new_rows: list[dict[str, Any]] = []
            new_keys: list[tuple[str, str]] = []
            for raw, digest in zip(raws, digests, strict=True):
                key = (raw.source, raw.dedup_key)
                if key in known or key in new_keys:
                    continue
                new_keys.append(key)
                new_rows.append(_journal_row(raw, digest, now))
            if new_rows:
                ids = conn.execute(insert(J).returning(J.c.id, sort_by_parameter_order=True),
                                   new_rows).scalars().all()
                for key, row_id, new in zip(new_keys, ids, new_rows, strict=True):
                    known[key] = (int(row_id), new["body_sha256"], new["answer"])
                crashpoint("mid_group_commit")
        results = []
        first_seen: set[tuple[str, str]] = set(new_keys)
        for raw, digest in zip(raws, digests, strict=True):
            key = (raw.source, raw.dedup_key)
            row_id, stored, answer = known[key]
            if key in first_seen:
                first_seen.discard(key)
                results.append(IntakeResult(row_id, duplicate=False, answer=answer))
            else:
                results.append(IntakeResult(row_id, duplicate=True, same_body=stored == digest,
                                            answer=answer))
        return results

    def _insert_each(self, raws: Sequence[RawMessage], digests: Sequence[str]
                     ) -> list[IntakeResult]:
        now = utcnow()
        results: list[IntakeResult] = []
        with self.db.engine.begin() as conn:
            for raw, digest in zip(raws, digests, strict=True):
                stmt = (
                    self._insert(J).values(**_journal_row(raw, digest, now))
                    .on_conflict_do_nothing(index_elements=["source", "dedup_key"])
                    .returning(J.c.id)
                )
                new_id = conn.execute(stmt).scalar()
                if new_id is not None:
                    results.append(IntakeResult(int(new_id), duplicate=False, answer=raw.answer))
                    continue
                row = conn.execute(
                    select(J.c.id, J.c.body_sha256, J.c.answer).where(
                        J.c.source == raw.source, J.c.dedup_key == raw.dedup_key)
                ).one()
                results.append(IntakeResult(int(row.id), True, row.body_sha256 == digest,
                                            row.answer))
        return results

    # ---------------------------------------------------------------------------------
    # Processing
    # ---------------------------------------------------------------------------------

    @transient
    def release_all_leases(self) -> None:
        """At start-up on SQLite (one owning process): leases of a killed predecessor are
        void at once, so work resumes immediately instead of after the lease time."""
        now = utcnow()
        with self.db.engine.begin() as conn:
            conn.execute(
                update(J)
                .where(J.c.state == MessageState.PROCESSING.value)
                .values(state=MessageState.RECEIVED.value, lease_owner=None,
                        lease_until=None, updated_at=now)
            )
            conn.execute(
                update(D)
                .where(D.c.state == DeliveryState.LEASED.value)
                .values(state=DeliveryState.PENDING.value, lease_owner=None,
                        lease_until=None, updated_at=now)
            )

    @transient
    def release_leases(self, owner: str) -> None:
        """A worker died: what it held is free at once (no need to wait for expiry)."""
        now = utcnow()
        with self.db.engine.begin() as conn:
            conn.execute(update(J).where(J.c.state == MessageState.PROCESSING.value,
                                         J.c.lease_owner == owner)
                         .values(state=MessageState.RECEIVED.value, lease_owner=None,
                                 lease_until=None, updated_at=now))
            conn.execute(update(D).where(D.c.state == DeliveryState.LEASED.value,
                                         D.c.lease_owner == owner)
                         .values(state=DeliveryState.PENDING.value, lease_owner=None,
                                 lease_until=None, updated_at=now))

    @transient
    def claim_messages(
        self, worker: str, limit: int, lease_seconds: float, max_attempts: int
    ) -> list[StoredMessage]:
        """Lease up to `limit` received messages: highest priority first, oldest first
        within a priority.

        Alarms (priority ≥ `Priority.ALARM`, set at intake) come in a batch of their own,
        not topped up with other traffic: the batch is committed as a whole, so every
        message added to it would delay the alarm. Other levels fill the batch from the
        highest down. Priority decides only which messages are processed first; the
        order of deliveries per key is kept by dispatch (`claim_deliveries`).

        A message claimed more than `max_attempts` times (its processing kept crashing)
        is failed instead, with the reason kept.
        """
        now = utcnow()
        until = now + timedelta(seconds=lease_seconds)
        with self.db.engine.begin() as conn:
            conn.execute(
                update(J)
                .where(J.c.state == MessageState.PROCESSING.value, J.c.lease_until < now)
                .values(state=MessageState.RECEIVED.value, lease_owner=None, lease_until=None,
                        updated_at=now)
            )
            received = J.c.state == MessageState.RECEIVED.value
            ids: list[int] = []
            # One priority level at a time, so ix_journal_state_priority_id gives the
            # order and each probe reads only the rows it takes.
            level = conn.execute(select(func.max(J.c.priority)).where(received)).scalar()
            top = level
            while level is not None and len(ids) < limit:
                candidates = (
                    select(J.c.id)
                    .where(received, J.c.priority == level)
                    .order_by(J.c.id)
                    .limit(limit - len(ids))
                )
                if not self.db.is_sqlite:
                    # Several workers: rows another worker is claiming are skipped.
                    candidates = candidates.with_for_update(skip_locked=True)
                ids += conn.execute(candidates).scalars()
                if ids and top is not None and is_alarm(top):
                    break
                level = conn.execute(select(func.max(J.c.priority))
                                     .where(received, J.c.priority < level)).scalar()
            if not ids:
                return []
            rows = conn.execute(
                update(J)
                .where(J.c.id.in_(ids), received)
                .values(state=MessageState.PROCESSING.value, lease_owner=worker,
                        lease_until=until, attempts=J.c.attempts + 1, updated_at=now)
                .returning(J.c.id, J.c.source, J.c.dedup_key, J.c.content_type, J.c.body,
                           J.c.received_at, J.c.transport, J.c.attempts)
            ).all()
            claimed = []
            for row in sorted(rows, key=lambda r: r.id):
                if row.attempts > max_attempts:
                    conn.execute(
                        update(J).where(J.c.id == row.id).values(
                            state=MessageState.FAILED.value,
                            state_reason=f"processing did not complete in {max_attempts} "
                            "attempts (the worker crashed or hung each time); fix the cause "
                            "and run `tryggbro reprocess`",
                            lease_owner=None, lease_until=None, updated_at=now,
                        )
                    )
                    continue
                claimed.append(
                    StoredMessage(
                        id=row.id, source=row.source, dedup_key=row.dedup_key,
                        content_type=row.content_type, body=bytes(row.body),
                        received_at=from_db(row.received_at) or row.received_at,
                        transport=json.loads(row.transport or "{}"), attempts=row.attempts,
                    )
                )
        return claimed

    @transient
    def newest_snapshots(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
        """Newest routed snapshot time per (source, business key), for one batch at once."""
        by_source: dict[str, set[str]] = {}
        for source, key in keys:
            by_source.setdefault(source, set()).add(key)
        newest: dict[tuple[str, str], datetime] = {}
        with self.db.read_engine.connect() as conn:
            for source, business_keys in by_source.items():
                for chunk in chunks(sorted(business_keys), 500):
                    for key, when in conn.execute(
                        select(E.c.business_key, func.max(E.c.occurred_at)).where(
                            E.c.source == source, E.c.business_key.in_(chunk),
                            E.c.snapshot.is_(True), E.c.state == EventState.ROUTED.value,
                        ).group_by(E.c.business_key)
                    ):
                        newest[(source, key)] = from_db(when) or when
        return newest

    @transient
    def save_outcomes(self, worker: str, outcomes: Sequence[MessageOutcome]) -> list[int]:
        """Write each message's events, deliveries and new state atomically.

        Returns the ids whose lease was lost to another worker (their result is dropped).
        The whole batch is written with a few multi-row statements in one transaction;
        if that fails, each message is written alone in a savepoint, so one bad result
        fails only its own message. The devices' last-seen times and the newest
        measurements ride in the same transaction: no extra commit per batch.
        """
        try:
            return self._save_batch(worker, outcomes)
        except OperationalError:
            raise  # the connection, not a message: retried by @transient
        except Exception:
            return self._save_each(worker, outcomes)

    def _save_batch(self, worker: str, outcomes: Sequence[MessageOutcome]) -> list[int]:
        now = utcnow()
        with self.db.engine.begin() as conn:
            owned_query = select(J.c.id).where(
                J.c.id.in_([o.message_id for o in outcomes]),
                J.c.state == MessageState.PROCESSING.value, J.c.lease_owner == worker)
            if not self.db.is_sqlite:  # SQLite holds the write lock already (BEGIN IMMEDIATE)
                owned_query = owned_query.with_for_update()
            owned = set(conn.execute(owned_query).scalars())
            mine = [o for o in outcomes if o.message_id in owned]
            if mine:
                conn.execute(
                    update(J).where(J.c.id == bindparam("b_id")).values(
                        state=bindparam("b_state"), state_reason=bindparam("b_reason"),
                        processed_at=now, lease_owner=None, lease_until=None, updated_at=now),
                    [{"b_id": o.message_id, "b_state": o.state.value,
                      "b_reason": safe_error_text(o.reason) if o.reason else None}
                     for o in mine],
                )
            events = [(o.message_id, ev) for o in mine for ev in o.events]
            if events:
                ids = conn.execute(
                    insert(E).returning(E.c.id, sort_by_parameter_order=True),
                    [_event_row(mid, ev) for mid, ev in events],
                ).scalars().all()
                deliveries = [_delivery_row(event_id, mid, d, now)
                              for event_id, (mid, ev) in zip(ids, events, strict=True)
                              for d in ev.deliveries]
                if deliveries:
                    conn.execute(insert(D), deliveries)
            for _, ev in events:
                if ev.receipt is not None:
                    self._settle(conn, ev.receipt, now)
            self._record_observations(conn, mine)
        return [o.message_id for o in outcomes if o.message_id not in owned]

    def _save_each(self, worker: str, outcomes: Sequence[MessageOutcome]) -> list[int]:
        now = utcnow()
        lost: list[int] = []
        with self.db.engine.begin() as conn:
            for outcome in outcomes:
                savepoint = conn.begin_nested()
                try:
                    if not self._save_outcome(conn, worker, outcome, now):
                        lost.append(outcome.message_id)
                        savepoint.rollback()
                        continue
                    savepoint.commit()
                except OperationalError:
                    raise
                except Exception as exc:
                    savepoint.rollback()
                    self._fail_message(conn, worker, outcome.message_id,
                                       f"storing the processing result failed: "
                                       f"{type(exc).__name__}: {exc}", now)
            # Observations are corrected by the next message: never worth a result.
            savepoint = conn.begin_nested()
            try:
                self._record_observations(conn, [o for o in outcomes
                                                 if o.message_id not in lost])
                savepoint.commit()
            except OperationalError:
                raise
            except Exception:
                savepoint.rollback()
                log.exception("recording last-seen times failed; the next message corrects them")
        return lost

    def _record_observations(self, conn: Connection, outcomes: Sequence[MessageOutcome]
                             ) -> None:
        """Last-seen times (any message, heartbeats included; a device heard again after a
        "no contact" alert is in contact again) and the newest measurement per patient
        and type, for the missing-measurement check."""
        seen: dict[tuple[str, str], datetime] = {}
        measured: dict[tuple[str, str, str], datetime] = {}
        for o in outcomes:
            for source, device_id, at in o.seen:
                seen[(source, device_id)] = max(at, seen.get((source, device_id), at))
            for system, value, mtype, at in o.measured:
                key = (system, value, mtype)
                measured[key] = max(at, measured.get(key, at))
        # One executemany per kind for the whole batch (sorted: the same lock order in
        # every worker), not one statement built and compiled per device.
        if seen:
            when: BindParameter[datetime] = bindparam("b_when")
            conn.execute(
                update(DEV).where(
                    DEV.c.source == bindparam("b_source"),
                    DEV.c.device_id == bindparam("b_device"),
                    or_(DEV.c.last_seen_at.is_(None), DEV.c.last_seen_at < when),
                ).values(last_seen_at=when, no_contact_at=None),
                [{"b_source": source, "b_device": device_id, "b_when": to_db(at)}
                 for (source, device_id), at in sorted(seen.items())])
        if measured:
            stmt = self._insert(MS).values(
                patient_system=bindparam("b_system"), patient_value=bindparam("b_value"),
                type=bindparam("b_type"), last_at=bindparam("b_when"))
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["patient_system", "patient_value", "type"],
                    set_={"last_at": stmt.excluded.last_at, "missing_alerted_at": None},
                    where=MS.c.last_at < stmt.excluded.last_at),
                [{"b_system": system, "b_value": value, "b_type": mtype, "b_when": to_db(at)}
                 for (system, value, mtype), at in sorted(measured.items())])

    def _save_outcome(self, conn: Connection, worker: str, outcome: MessageOutcome,
                      now: datetime) -> bool:
        res = conn.execute(
            update(J)
            .where(J.c.id == outcome.message_id, J.c.state == MessageState.PROCESSING.value,
                   J.c.lease_owner == worker)
            .values(state=outcome.state.value,
                    state_reason=safe_error_text(outcome.reason) if outcome.reason else None,
                    processed_at=now, lease_owner=None, lease_until=None, updated_at=now)
        )
        if res.rowcount != 1:
            return False
        for ev in outcome.events:
            event_id = conn.execute(
                insert(E).values(**_event_row(outcome.message_id, ev)).returning(E.c.id)
            ).scalar_one()
            for d in ev.deliveries:
                conn.execute(insert(D).values(**_delivery_row(event_id, outcome.message_id, d,
                                                             now)))
            if ev.receipt is not None:
                self._settle(conn, ev.receipt, now)
        return True

    def _fail_message(self, conn: Connection, worker: str, message_id: int, reason: str,
                      now: datetime) -> None:
        conn.execute(
            update(J)
            .where(J.c.id == message_id, J.c.lease_owner == worker)
            .values(state=MessageState.FAILED.value, state_reason=safe_error_text(reason),
                    lease_owner=None, lease_until=None, updated_at=now)
        )

    # ---------------------------------------------------------------------------------
    # Dispatch
    # ---------------------------------------------------------------------------------

    @transient
    def paused_until(self, destination: str) -> datetime | None:
        with self.db.read_engine.connect() as conn:
            value = conn.execute(
                select(DS.c.paused_until).where(DS.c.name == destination)
            ).scalar()
        if value is None or value <= utcnow():
            return None
        return from_db(value)

    @transient
    def has_due(self, destination: str) -> bool:
        """Cheap read-only probe so an idle dispatcher does not take the write lock."""
        now = utcnow()
        with self.db.read_engine.connect() as conn:
            due = conn.execute(
                select(D.c.id).where(
                    D.c.destination == destination,
                    or_(
                        and_(D.c.state == DeliveryState.PENDING.value, D.c.not_before <= now),
                        and_(D.c.state == DeliveryState.LEASED.value, D.c.lease_until < now),
                    ),
                ).limit(1)
            ).first()
        return due is not None

    @transient
    def claim_deliveries(
        self, destination: str, worker: str, limit: int, lease_seconds: float,
        expire_leases: bool = True,
    ) -> list[ClaimedDelivery]:
        """Lease due deliveries of one destination: highest priority first, and at most
        one in flight per order key, the oldest (key_strict_fifo, reliability.md §1.2).

        `expire_leases`: first return expired leases (a worker that died or hung) to
        pending. A dispatcher does it every few seconds, not every round: leases last
        minutes, and the sweep is one more statement per round."""
        now = utcnow()
        until = now + timedelta(seconds=lease_seconds)
        with self.db.engine.begin() as conn:
            if expire_leases:
                conn.execute(
                    update(D)
                    .where(D.c.destination == destination,
                           D.c.state == DeliveryState.LEASED.value, D.c.lease_until < now)
                    .values(state=DeliveryState.PENDING.value, lease_owner=None,
                            lease_until=None, updated_at=now)
                )
            barrier = conn.execute(
                select(func.min(J.c.id)).where(
                    J.c.state.in_([MessageState.RECEIVED.value, MessageState.PROCESSING.value]),
                )
            ).scalar()
            # The head of each order key is its oldest unfinished delivery; only a head
            # may be sent, and only if it is pending and due (key_strict_fifo). Walk the
            # due pending rows in claim order, one priority level at a time so that
            # ix_delivery_claim gives the order and the walk stops at `limit`, and keep
            # the rows with no older open row of their key (one probe of the partial
            # index ix_delivery_open_by_key each). A round then reads about `limit`
            # rows however long the outbox is; the window over every open row it
            # replaces cost a full scan per round (100k queued: ~115 deliveries/s).
            older = D.alias("older")
            head = ~exists().where(
                older.c.destination == D.c.destination,
                older.c.order_key == D.c.order_key,
                text("older.state IN ('pending', 'leased')"),  # the partial index's own
                older.c.journal_id <= D.c.journal_id,
                or_(older.c.journal_id < D.c.journal_id, older.c.id < D.c.id),
            )
            base = [D.c.destination == destination,
                    D.c.state == DeliveryState.PENDING.value]
            if barrier is not None:
                base.append(D.c.journal_id < barrier)
            ids: list[int] = []
            level = conn.execute(select(func.max(D.c.priority)).where(*base)).scalar()
            while level is not None and len(ids) < limit:
                candidates = (
                    select(D.c.id)
                    .where(*base, D.c.priority == level, D.c.not_before <= now, head)
                    .order_by(D.c.journal_id, D.c.id)
                    .limit(limit - len(ids))
                )
                if not self.db.is_sqlite:
                    # Two workers: a head another worker holds is skipped; one leased
                    # and committed meanwhile no longer matches state = 'pending'.
                    candidates = candidates.with_for_update(skip_locked=True)
                ids += conn.execute(candidates).scalars()
                level = conn.execute(select(func.max(D.c.priority))
                                     .where(*base, D.c.priority < level)).scalar()
            if not ids:
                return []
            rows = conn.execute(
                update(D)
                .where(D.c.id.in_(ids))
                .values(state=DeliveryState.LEASED.value, lease_owner=worker,
                        lease_until=until, attempts=D.c.attempts + 1, updated_at=now)
                .returning(D.c.id, D.c.journal_id, D.c.event_id, D.c.priority, D.c.attempts)
            ).all()
            if not rows:
                return []
            payloads = {
                r.id: r for r in conn.execute(
                    select(E.c.id, E.c.bundle_id, E.c.payload)
                    .where(E.c.id.in_([r.event_id for r in rows]))
                ).all()
            }
        claimed = [
            ClaimedDelivery(
                id=r.id, message_id=r.journal_id, event_id=r.event_id,
                destination=destination, priority=r.priority, attempt=r.attempts,
                bundle_id=payloads[r.event_id].bundle_id or "",
                payload=(payloads[r.event_id].payload or "").encode(),
            )
            for r in rows
        ]
        return sorted(claimed, key=lambda c: (-c.priority, c.message_id, c.id))

    @transient
    def record_attempts(self, worker: str, destination: str,
                        records: Sequence[AttemptRecord]) -> list[int]:
        """Record outcomes and new states; returns delivery ids whose lease was lost.

        Only the worker that still holds a delivery's lease changes its state (a worker
        whose lease expired is fenced off); every attempt is logged either way.
        """
        if not records:
            return []
        now = utcnow()
        with self.db.engine.begin() as conn:
            owned_query = select(D.c.id).where(
                D.c.id.in_([r.delivery_id for r in records]),
                D.c.state == DeliveryState.LEASED.value, D.c.lease_owner == worker)
            if not self.db.is_sqlite:
                owned_query = owned_query.with_for_update()
            owned = set(conn.execute(owned_query).scalars())
            # Deliveries with the same new values (a group sent in one request: same
            # outcome, same finish time) are updated by one statement over their ids,
            # instead of one executemany row each (bench/RESULTS.md, delivery side).
            groups: dict[tuple[Any, ...], list[int]] = {}
            for r in records:
                if r.delivery_id not in owned:
                    continue
                delivered = r.new_state is DeliveryState.DELIVERED
                key = (
                    delivered, r.escalate, r.new_state.value, to_db(r.not_before),
                    safe_error_text(r.error) if r.error else None, r.status_code,
                    to_db(r.finished_at) if delivered else None, r.correlation_id,
                    to_db(r.receipt_deadline) if r.receipt_deadline else None,
                    r.transport_ref, "unconfirmed" if r.transport_ref else None,
                )
                groups.setdefault(key, []).append(r.delivery_id)
            for key, ids in groups.items():
                (delivered, escalate, state, not_before, error, status, at, corr, deadline,
                 tref, tstate) = key
                values: dict[str, Any] = {
                    "state": state, "not_before": not_before, "last_error": error,
                    "last_status": status, "correlation_id": corr,
                    "receipt_deadline": deadline, "receipt_alerted_at": None,
                    "transport_ref": tref, "transport_state": tstate,
                    "lease_owner": None, "lease_until": None, "updated_at": now,
                }
                if delivered:
                    values["delivered_at"] = at
                if escalate:
                    values["escalated"] = True
                conn.execute(update(D).where(D.c.id.in_(ids)).values(**values))
            conn.execute(insert(A), [{
                "delivery_id": r.delivery_id, "number": r.attempt, "worker": worker,
                "started_at": to_db(r.started_at), "finished_at": to_db(r.finished_at),
                "outcome": r.outcome, "status_code": r.status_code,
                "detail": safe_error_text(r.detail) if r.detail else None,
                "retry_after": r.retry_after,
            } for r in records])
            pauses = [r for r in records if r.pause_until is not None]
            if pauses and pauses[-1].pause_until is not None:
                self._upsert_pause(conn, destination, to_db(pauses[-1].pause_until),
                                   safe_error_text(pauses[-1].detail or "paused"), now)
            elif any(r.new_state is DeliveryState.DELIVERED for r in records):
                conn.execute(update(DS).where(DS.c.name == destination,
                                              DS.c.paused_until.is_not(None))
                             .values(paused_until=None, reason=None, updated_at=now))
        return [r.delivery_id for r in records if r.delivery_id not in owned]

    def _upsert_pause(self, conn: Connection, destination: str, until: datetime, reason: str,
                      now: datetime) -> None:
        stmt = self._insert(DS).values(name=destination, paused_until=until, reason=reason,
                                       updated_at=now)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={"paused_until": until, "reason": reason, "updated_at": now},
        ))

    # ---------------------------------------------------------------------------------
    # Receipts: deliveries accepted by a transport and settled later (AppRec, $status)
    # ---------------------------------------------------------------------------------

    @transient
    def origins(self, correlation_ids: Iterable[str]) -> dict[str, Origin]:
        """The deliveries (and the events they carried) that receipts name, at once."""
        found: dict[str, Origin] = {}
        with self.db.read_engine.connect() as conn:
            for chunk in chunks(sorted(set(correlation_ids)), 500):
                rows = conn.execute(
                    select(D.c.id, D.c.destination, D.c.state, D.c.correlation_id, E.c.source,
                           E.c.device_id, E.c.category, E.c.payload)
                    .join(E, E.c.id == D.c.event_id)
                    .where(D.c.correlation_id.in_(chunk)).order_by(D.c.id)
                ).all()
                for r in rows:
                    found[r.correlation_id] = Origin(
                        int(r.id), r.destination, r.state, r.source, r.device_id, r.category,
                        _references(r.payload))
        return found

    def _settle(self, conn: Connection, receipt: Receipt, now: datetime) -> str:
        """Settle the delivery awaiting `receipt` (inside the caller's transaction).

        Returns what happened: settled, already-settled or not-found. A receipt is
        final: AppRec 2 dead-letters (and escalates) the delivery, kept until an
        operator acts; 1 and 3 deliver it (3 with its errors kept as last_error).
        """
        cond = [D.c.correlation_id == receipt.correlation_id]
        if receipt.destination:
            cond.append(D.c.destination == receipt.destination)
        row = conn.execute(select(D.c.id, D.c.state, D.c.attempts).where(*cond)
                           .order_by(D.c.id.desc()).limit(1)).first()
        if row is None:
            log.warning("receipt names no delivery of ours", status=receipt.status.value)
            return "not-found"
        if row.state != DeliveryState.AWAITING_RECEIPT.value:
            return "already-settled"
        detail = safe_error_text(receipt.detail)
        values: dict[str, Any] = {"updated_at": now}
        if receipt.status is ReceiptStatus.REJECTED:
            values.update(state=DeliveryState.DEAD.value, escalated=True,
                          last_error=f"rejected by the receiver: {detail}")
        else:
            values.update(state=DeliveryState.DELIVERED.value, delivered_at=now,
                          last_error=(f"delivered with errors in part: {detail}"
                                      if receipt.status is ReceiptStatus.PARTIAL else None))
        conn.execute(update(D).where(D.c.id == row.id,
                                     D.c.state == DeliveryState.AWAITING_RECEIPT.value)
                     .values(**values))
        conn.execute(insert(A).values(
            delivery_id=row.id, number=row.attempts, worker="receipt", started_at=now,
            finished_at=now, outcome=f"receipt:{receipt.status.value}", status_code=None,
            detail=detail, retry_after=None))
        return "settled"

    @transient
    def awaiting_transport(self, destination: str, limit: int = 200) -> list[tuple[int, str]]:
        """(delivery id, transport ref) of deliveries awaiting a receipt whose transport
        is not confirmed yet, oldest first."""
        with self.db.read_engine.connect() as conn:
            rows = conn.execute(
                select(D.c.id, D.c.transport_ref)
                .where(D.c.destination == destination,
                       D.c.state == DeliveryState.AWAITING_RECEIPT.value,
                       D.c.transport_ref.is_not(None),
                       or_(D.c.transport_state.is_(None),
                           D.c.transport_state != TRANSPORT_CONFIRMED))
                .order_by(D.c.id).limit(limit)
            ).all()
        return [(int(r.id), str(r.transport_ref)) for r in rows]

    @transient
    def record_transport(self, delivery_id: int, check: TransportCheck) -> bool:
        """Record a transport state of an awaiting delivery. A changed state is logged in
        its attempt log (`transport:<state>`); CONFIRMED stops the asking, DELIVERED
        settles the delivery (the transport's status was the receipt), RESEND makes
        the delivery due again (same payload, same message id), DEAD dead-letters and
        escalates it with the reason. Returns whether anything changed."""
        now = utcnow()
        state = check.state[:32].lower()
        with self.db.engine.begin() as conn:
            row = conn.execute(select(D.c.id, D.c.attempts, D.c.transport_state).where(
                D.c.id == delivery_id, D.c.state == DeliveryState.AWAITING_RECEIPT.value)
            ).first()
            if row is None:
                return False
            stored = TRANSPORT_CONFIRMED if check.action is TransportAction.CONFIRMED else state
            if row.transport_state == stored and check.action is TransportAction.WAIT:
                return False
            detail = safe_error_text(check.detail) if check.detail else None
            values: dict[str, Any] = {"transport_state": stored, "updated_at": now}
            if check.action is TransportAction.DEAD:
                values.update(state=DeliveryState.DEAD.value, escalated=True,
                              last_error=f"transport failed: {detail or state}")
            elif check.action is TransportAction.DELIVERED:
                values.update(state=DeliveryState.DELIVERED.value, delivered_at=now,
                              last_error=None)
            elif check.action is TransportAction.RESEND:
                values.update(state=DeliveryState.PENDING.value, not_before=now,
                              last_error=f"transport gave up; sending again: {detail or state}",
                              correlation_id=None, receipt_deadline=None, transport_ref=None)
            conn.execute(update(D).where(D.c.id == delivery_id,
                                         D.c.state == DeliveryState.AWAITING_RECEIPT.value)
                         .values(**values))
            conn.execute(insert(A).values(
                delivery_id=delivery_id, number=row.attempts, worker="transport",
                started_at=now, finished_at=now,
                outcome=TRANSPORT_OUTCOMES[check.action], status_code=None,
                detail=f"{state}: {detail}" if detail else state,
                retry_after=None))
        return True

    @transient
    def overdue_receipts(self, now: datetime) -> list[OverdueReceipt]:
        """Deliveries still awaiting a receipt past their deadline, not yet alerted."""
        with self.db.read_engine.connect() as conn:
            rows = conn.execute(
                select(D.c.id, D.c.destination, D.c.correlation_id, D.c.receipt_deadline,
                       E.c.source, E.c.device_id, E.c.category)
                .join(E, E.c.id == D.c.event_id)
                .where(D.c.state == DeliveryState.AWAITING_RECEIPT.value,
                       D.c.receipt_deadline < to_db(now), D.c.receipt_alerted_at.is_(None))
                .order_by(D.c.id)
            ).all()
        return [OverdueReceipt(int(r.id), r.destination, r.correlation_id or "",
                               from_db(r.receipt_deadline) or now, r.source, r.device_id,
                               r.category) for r in rows]

    def mark_receipt_alerted(self, delivery_id: int, at: datetime) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(update(D).where(D.c.id == delivery_id)
                         .values(receipt_alerted_at=to_db(at)))

    # ---------------------------------------------------------------------------------
    # Operators
    # ---------------------------------------------------------------------------------

    def retry_delivery(self, delivery_id: int) -> str:
        """Make a dead or backing-off delivery due now. Returns what happened."""
        now = utcnow()
        with self.db.engine.begin() as conn:
            state = conn.execute(select(D.c.state).where(D.c.id == delivery_id)).scalar()
            if state is None:
                return "not-found"
            if state == DeliveryState.DELIVERED.value:
                return "already-delivered"
            if state == DeliveryState.LEASED.value:
                return "in-flight"
            conn.execute(update(D).where(D.c.id == delivery_id).values(
                state=DeliveryState.PENDING.value, not_before=now, escalated=False,
                updated_at=now))
        return "retrying"

    @transient
    def recovered(self, destination: str) -> int:
        """The destination answered again: its deliveries backing off after failures are
        due now, so a backlog drains at once instead of when each backoff expires."""
        now = utcnow()
        with self.db.engine.begin() as conn:
            res = conn.execute(update(D).where(
                D.c.destination == destination, D.c.state == DeliveryState.PENDING.value,
                D.c.not_before > now, D.c.last_error.is_not(None),
            ).values(not_before=now, updated_at=now))
        return int(res.rowcount)

    def retry_all_dead(self, destination: str | None = None) -> int:
        now = utcnow()
        cond = [D.c.state == DeliveryState.DEAD.value]
        if destination:
            cond.append(D.c.destination == destination)
        with self.db.engine.begin() as conn:
            res = conn.execute(update(D).where(*cond).values(
                state=DeliveryState.PENDING.value, not_before=now, escalated=False,
                updated_at=now))
        return int(res.rowcount)

    def reprocess(self, message_id: int) -> str:
        """Put a failed, unmatched or filtered message back to be processed again."""
        now = utcnow()
        with self.db.engine.begin() as conn:
            state = conn.execute(select(J.c.state).where(J.c.id == message_id)).scalar()
            if state is None:
                return "not-found"
            if state not in REPROCESSABLE_STATES:
                return f"state-{state}"
            conn.execute(delete(E).where(E.c.journal_id == message_id))
            conn.execute(update(J).where(J.c.id == message_id).values(
                state=MessageState.RECEIVED.value, state_reason=None, attempts=0,
                processed_at=None, updated_at=now))
        return "queued"

    def requeue_unmatched(self, source: str) -> int:
        """After an enrolment: unmatched messages of the source are tried again."""
        now = utcnow()
        with self.db.engine.begin() as conn:
            ids = [r for (r,) in conn.execute(select(J.c.id).where(
                J.c.source == source, J.c.state == MessageState.UNMATCHED.value)).all()]
            if ids:
                conn.execute(delete(E).where(E.c.journal_id.in_(ids)))
                conn.execute(update(J).where(J.c.id.in_(ids)).values(
                    state=MessageState.RECEIVED.value, state_reason=None, attempts=0,
                    updated_at=now))
        return len(ids)

    def status(self) -> StatusReport:
        now = utcnow()
        report = StatusReport()
        with self.db.read_engine.connect() as conn:
            for state, n in conn.execute(select(J.c.state, func.count()).group_by(J.c.state)):
                report.messages[state] = int(n)
            for dest, state, n in conn.execute(
                select(D.c.destination, D.c.state, func.count())
                .group_by(D.c.destination, D.c.state)
            ):
                report.deliveries.setdefault(dest, {})[state] = int(n)
            for dest, oldest in conn.execute(
                select(D.c.destination, func.min(D.c.created_at))
                .where(D.c.state.in_([DeliveryState.PENDING.value, DeliveryState.LEASED.value]))
                .group_by(D.c.destination)
            ):
                report.oldest_pending_seconds[dest] = max(0.0, (now - oldest).total_seconds())
            for dest, oldest in conn.execute(
                select(D.c.destination, func.min(D.c.created_at))
                .where(D.c.state.in_([DeliveryState.PENDING.value, DeliveryState.LEASED.value]),
                       D.c.priority >= int(Priority.ALARM))
                .group_by(D.c.destination)
            ):
                report.oldest_pending_alarm_seconds[dest] = max(
                    0.0, (now - oldest).total_seconds())
            for dest, n in conn.execute(
                select(D.c.destination, func.count())
                .where(D.c.escalated.is_(True), D.c.state != DeliveryState.DELIVERED.value)
                .group_by(D.c.destination)
            ):
                report.escalated[dest] = int(n)
            for name, until, reason in conn.execute(
                select(DS.c.name, DS.c.paused_until, DS.c.reason)
                .where(DS.c.paused_until > now)
            ):
                report.paused[name] = {"until": from_db(until), "reason": reason}
            for dest, n in conn.execute(
                select(D.c.destination, func.count())
                .where(D.c.state == DeliveryState.AWAITING_RECEIPT.value,
                       D.c.receipt_deadline < now)
                .group_by(D.c.destination)
            ):
                report.receipts_overdue[dest] = int(n)
            for dest, tstate, n in conn.execute(
                select(D.c.destination, D.c.transport_state, func.count())
                .where(D.c.state == DeliveryState.AWAITING_RECEIPT.value)
                .group_by(D.c.destination, D.c.transport_state)
            ):
                report.awaiting_by_transport_state.setdefault(dest, {})[tstate or "-"] = int(n)
            oldest = conn.execute(select(func.min(J.c.received_at)).where(
                J.c.state.in_([MessageState.RECEIVED.value, MessageState.PROCESSING.value])
            )).scalar()
            if oldest is not None:
                report.oldest_unprocessed_seconds = max(0.0, (now - oldest).total_seconds())
        return report

    def search_messages(
        self, *, source: str | None = None, dedup_key: str | None = None,
        state: str | None = None, since: datetime | None = None,
        until: datetime | None = None, limit: int = 50, before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        cond = []
        if source:
            cond.append(J.c.source == source)
        if dedup_key:
            cond.append(J.c.dedup_key == dedup_key)
        if state:
            cond.append(J.c.state == state)
        if since:
            cond.append(J.c.received_at >= to_db(since))
        if until:
            cond.append(J.c.received_at < to_db(until))
        if before_id:
            cond.append(J.c.id < before_id)
        with self.db.read_engine.connect() as conn:
            rows = conn.execute(
                select(J.c.id, J.c.source, J.c.dedup_key, J.c.state, J.c.state_reason,
                       J.c.received_at, J.c.processed_at)
                .where(*cond).order_by(J.c.id.desc()).limit(limit)
            ).all()
            counts: dict[int, dict[str, int]] = {}
            if rows:
                for jid, st, n in conn.execute(
                    select(D.c.journal_id, D.c.state, func.count())
                    .where(D.c.journal_id.in_([r.id for r in rows]))
                    .group_by(D.c.journal_id, D.c.state)
                ):
                    counts.setdefault(jid, {})[st] = int(n)
        return [
            {
                "id": r.id, "source": r.source, "dedup_key": r.dedup_key, "state": r.state,
                "reason": r.state_reason, "received_at": from_db(r.received_at),
                "processed_at": from_db(r.processed_at), "deliveries": counts.get(r.id, {}),
            }
            for r in rows
        ]

    @transient
    def body_and_answer(self, message_id: int) -> tuple[bytes, bytes | None] | None:
        """A journaled message's bytes as received and the answer stored with it."""
        with self.db.read_engine.connect() as conn:
            row = conn.execute(select(J.c.body, J.c.answer).where(J.c.id == message_id)).first()
        return None if row is None else (bytes(row.body), row.answer)

    def message_trace(self, message_id: int, include_body: bool = False) -> dict[str, Any] | None:
        """One message through every stage: journal, events, deliveries, attempts."""
        with self.db.read_engine.connect() as conn:
            j = conn.execute(select(J).where(J.c.id == message_id)).first()
            if j is None:
                return None
            events = conn.execute(
                select(E.c.id, E.c.seq, E.c.kind, E.c.category, E.c.code, E.c.device_id,
                       E.c.occurred_at, E.c.priority, E.c.state, E.c.filtered_by,
                       E.c.bundle_id, E.c.business_key)
                .where(E.c.journal_id == message_id).order_by(E.c.seq)
            ).all()
            deliveries = conn.execute(
                select(D).where(D.c.journal_id == message_id).order_by(D.c.id)
            ).all()
            attempts: dict[int, list[dict[str, Any]]] = {}
            if deliveries:
                for a in conn.execute(
                    select(A).where(A.c.delivery_id.in_([d.id for d in deliveries]))
                    .order_by(A.c.id)
                ).all():
                    attempts.setdefault(a.delivery_id, []).append({
                        "number": a.number, "worker": a.worker,
                        "started_at": from_db(a.started_at),
                        "finished_at": from_db(a.finished_at), "outcome": a.outcome,
                        "status_code": a.status_code, "detail": a.detail,
                        "retry_after": a.retry_after,
                    })
        trace: dict[str, Any] = {
            "id": j.id, "source": j.source, "dedup_key": j.dedup_key,
            "content_type": j.content_type, "body_sha256": j.body_sha256,
            "body_bytes": len(j.body), "received_at": from_db(j.received_at),
            "transport": json.loads(j.transport or "{}"), "state": j.state,
            "reason": j.state_reason, "processing_attempts": j.attempts,
            "priority": j.priority, "processed_at": from_db(j.processed_at),
            "events": [
                {"id": e.id, "seq": e.seq, "kind": e.kind, "category": e.category,
                 "code": e.code, "device_id": e.device_id,
                 "occurred_at": from_db(e.occurred_at), "priority": e.priority,
                 "state": e.state, "filtered_by": e.filtered_by, "bundle_id": e.bundle_id,
                 "business_key": e.business_key}
                for e in events
            ],
            "deliveries": [
                {"id": d.id, "event_id": d.event_id, "destination": d.destination,
                 "state": d.state, "priority": d.priority, "attempts": d.attempts,
                 "not_before": from_db(d.not_before), "last_error": d.last_error,
                 "last_status": d.last_status, "escalated": d.escalated,
                 "correlation_id": d.correlation_id,
                 "receipt_deadline": from_db(d.receipt_deadline),
                 "transport_ref": d.transport_ref, "transport_state": d.transport_state,
                 "created_at": from_db(d.created_at), "delivered_at": from_db(d.delivered_at),
                 "attempt_log": attempts.get(d.id, [])}
                for d in deliveries
            ],
        }
        if include_body:
            trace["body"] = bytes(j.body).decode("utf-8", errors="replace")
        return trace

    def event_payloads(self, message_id: int) -> list[tuple[int, str | None]]:
        with self.db.read_engine.connect() as conn:
            return [(int(s), p) for s, p in conn.execute(
                select(E.c.seq, E.c.payload).where(E.c.journal_id == message_id)
                .order_by(E.c.seq)
            ).all()]

    # ---------------------------------------------------------------------------------
    # Device registry: devices, enrolments with legal basis, last seen
    # ---------------------------------------------------------------------------------

    def enrol(self, requests: Sequence[EnrolmentRequest]) -> list[int]:
        """Enrol devices, all or nothing. A device is created or its description updated.

        Raises `RegistryConflict` listing every request whose period overlaps an
        enrolment the device already has (end that one first).
        """
        now = utcnow()
        ids: list[int] = []
        with self.db.engine.begin() as conn:
            conflicts = []
            for r in requests:
                for row in conn.execute(select(EN).where(
                        EN.c.source == r.device.source, EN.c.device_id == r.device.device_id)):
                    start = from_db(row.valid_from)
                    stop = _effective_end(row)
                    assert start is not None
                    if _overlap(start, stop, r.valid_from, r.valid_to):
                        conflicts.append(
                            f"device {r.device.source}/{r.device.device_id} is already enrolled "
                            f"(enrolment {row.id}, from {start.isoformat()}"
                            f"{' to ' + stop.isoformat() if stop else ', open-ended'}); "
                            "end it first")
            if conflicts:
                raise RegistryConflict(conflicts)
            for r in requests:
                dev = r.device
                values = {"device_type": dev.device_type, "vendor": dev.vendor,
                          "model": dev.model, "updated_at": now,
                          "heartbeat_seconds": int(dev.heartbeat.total_seconds())
                          if dev.heartbeat else None}
                conn.execute(self._insert(DEV).values(
                    source=dev.source, device_id=dev.device_id, created_at=now, **values,
                ).on_conflict_do_update(index_elements=["source", "device_id"], set_=values))
                e = r.enrolment
                res = conn.execute(insert(EN).values(
                    source=dev.source, device_id=dev.device_id,
                    patient_system=e.patient.system, patient_value=e.patient.value,
                    patient_assigner=e.patient.assigner, municipality=e.municipality,
                    organisation=e.organisation, care_team=e.care_team,
                    legal_basis=e.legal_basis.kind.value, legal_basis_ref=e.legal_basis.reference,
                    plans=format_plans(e.measurement_plans), valid_from=to_db(r.valid_from),
                    valid_to=to_db(r.valid_to) if r.valid_to else None, created_at=now,
                ).returning(EN.c.id))
                ids.append(int(res.scalar_one()))
        return ids

    def end_enrolment(self, enrolment_id: int, at: datetime | None = None) -> str:
        """End an enrolment at `at` (default now): later events of the device are held."""
        when = to_db(at or utcnow())
        with self.db.engine.begin() as conn:
            row = conn.execute(select(EN).where(EN.c.id == enrolment_id)).first()
            if row is None:
                return "not-found"
            end = _effective_end(row)
            if end is not None and end <= when:
                return "already-ended"
            start = from_db(row.valid_from)
            assert start is not None
            if when < start:
                when = start  # ended before it began: it never applies
            conn.execute(update(EN).where(EN.c.id == enrolment_id).values(ended_at=when))
        return "ended"

    @transient
    def devices_for(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], DeviceRecord]:
        """Devices and their enrolments for many (source, device id) pairs, few queries."""
        by_source: dict[str, set[str]] = {}
        for source, device_id in keys:
            by_source.setdefault(source, set()).add(device_id)
        found: dict[tuple[str, str], DeviceRecord] = {}
        with self.db.read_engine.connect() as conn:
            for source, device_ids in by_source.items():
                for chunk in chunks(sorted(device_ids), 500):
                    for row in conn.execute(select(DEV).where(DEV.c.source == source,
                                                              DEV.c.device_id.in_(chunk))):
                        found[(row.source, row.device_id)] = DeviceRecord(
                            row.source, row.device_id, row.device_type, [])
                    for row in conn.execute(select(EN).where(
                            EN.c.source == source, EN.c.device_id.in_(chunk))
                            .order_by(EN.c.valid_from)):
                        record = found.setdefault((row.source, row.device_id), DeviceRecord(
                            row.source, row.device_id, None, []))
                        record.periods.append(_period(row))
        return found

    def lookup_device(self, source: str, device_id: str, at: datetime) -> Enrolment | None:
        record = self.devices_for([(source, device_id)]).get((source, device_id))
        return record.enrolment_at(at) if record is not None else None

    def list_devices(self, source: str | None = None) -> list[dict[str, Any]]:
        """Devices with their current enrolment (patient identifiers are not listed)."""
        now = utcnow()
        with self.db.read_engine.connect() as conn:
            stmt = select(DEV).order_by(DEV.c.source, DEV.c.device_id)
            if source:
                stmt = stmt.where(DEV.c.source == source)
            devices = conn.execute(stmt).all()
            records = self.devices_for((d.source, d.device_id) for d in devices)
        items = []
        for d in devices:
            record = records.get((d.source, d.device_id))
            current = record.period_at(now) if record else None
            items.append({
                "source": d.source, "device_id": d.device_id, "device_type": d.device_type,
                "vendor": d.vendor, "model": d.model,
                "heartbeat_minutes": d.heartbeat_seconds // 60 if d.heartbeat_seconds else None,
                "last_seen_at": from_db(d.last_seen_at), "no_contact_at": from_db(d.no_contact_at),
                "enrolment": current.describe() if current else None,
                "state": record.state_at(now) if record else "not enrolled",
            })
        return items

    def list_enrolments(self, source: str | None = None,
                        device_id: str | None = None) -> list[dict[str, Any]]:
        with self.db.read_engine.connect() as conn:
            stmt = select(EN).order_by(EN.c.source, EN.c.device_id, EN.c.valid_from)
            if source:
                stmt = stmt.where(EN.c.source == source)
            if device_id:
                stmt = stmt.where(EN.c.device_id == device_id)
            return [_period(row).describe() for row in conn.execute(stmt).all()]

    def silent_devices(self, now: datetime) -> list[SilentDevice]:
        """Enrolled devices with an expected contact interval, silent past it, and not yet
        alerted. A device never heard is counted from the start of its enrolment."""
        with self.db.read_engine.connect() as conn:
            rows = conn.execute(select(DEV).where(DEV.c.heartbeat_seconds.is_not(None),
                                                  DEV.c.no_contact_at.is_(None))).all()
            records = self.devices_for((r.source, r.device_id) for r in rows)
        silent = []
        for r in rows:
            record = records.get((r.source, r.device_id))
            period = record.period_at(now) if record else None
            if period is None or not period.enrolment_ok:
                continue
            since = max(filter(None, [from_db(r.last_seen_at), period.valid_from]))
            if now - since > timedelta(seconds=r.heartbeat_seconds):
                silent.append(SilentDevice(r.source, r.device_id, r.device_type, since,
                                           from_db(r.last_seen_at), r.heartbeat_seconds))
        return silent

    def mark_no_contact(self, source: str, device_id: str, at: datetime) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(update(DEV).where(DEV.c.source == source,
                                           DEV.c.device_id == device_id)
                         .values(no_contact_at=to_db(at)))

    def missing_measurements(self, now: datetime) -> list[MissingMeasurement]:
        """Measurement plans with a period whose newest measurement (or the enrolment's
        start, if none) is older than the period, not yet alerted."""
        with self.db.read_engine.connect() as conn:
            rows = conn.execute(select(EN).where(EN.c.plans != "",
                                                 EN.c.legal_basis.is_not(None))).all()
            periods = [p for p in (_period(r) for r in rows) if p.valid_at(now)]
            seen = {(r.patient_system, r.patient_value, r.type): r
                    for r in conn.execute(select(MS)).all()}
        missing = []
        for period in periods:
            patient = period.enrolment.patient
            for plan in period.enrolment.measurement_plans:
                if plan.every is None:
                    continue
                row = seen.get((patient.system, patient.value, plan.type))
                if row is not None and row.missing_alerted_at is not None:
                    continue
                since = max(filter(None, [from_db(row.last_at) if row else None,
                                          period.valid_from]))
                if now - since > plan.every:
                    missing.append(MissingMeasurement(period.enrolment, plan.type, since,
                                                      plan.every))
        return missing

    def mark_measurement_alerted(self, patient: PersonId, mtype: str, since: datetime,
                                 at: datetime) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(self._insert(MS).values(
                patient_system=patient.system, patient_value=patient.value, type=mtype,
                last_at=to_db(since), missing_alerted_at=to_db(at),
            ).on_conflict_do_update(index_elements=["patient_system", "patient_value", "type"],
                                    set_={"missing_alerted_at": to_db(at)}))


class RegistryConflict(HubError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class SilentDevice:
    source: str
    device_id: str
    device_type: str | None
    since: datetime
    last_seen_at: datetime | None
    heartbeat_seconds: int


@dataclass(frozen=True, slots=True)
class MissingMeasurement:
    enrolment: Enrolment
    type: str
    since: datetime
    every: timedelta


def _effective_end(row: Any) -> datetime | None:
    ends = [t for t in (from_db(row.valid_to), from_db(row.ended_at)) if t is not None]
    return min(ends) if ends else None


def _overlap(a_start: datetime, a_end: datetime | None, b_start: datetime,
             b_end: datetime | None) -> bool:
    return (a_end is None or b_start < a_end) and (b_end is None or a_start < b_end)


def _period(row: Any) -> EnrolmentPeriod:
    problems: list[str] = []
    plans = parse_plans(row.plans or "", problems)
    basis = (LegalBasis(LegalBasisKind(row.legal_basis), row.legal_basis_ref)
             if row.legal_basis else None)
    enrolment = Enrolment(
        row.source, row.device_id,
        PersonId(row.patient_system, row.patient_value, row.patient_assigner),
        row.municipality, row.organisation, row.care_team,
        basis or LegalBasis(LegalBasisKind.CONSENT), plans)
    start = from_db(row.valid_from)
    assert start is not None
    return EnrolmentPeriod(row.id, enrolment, basis is not None, start, _effective_end(row),
                           from_db(row.ended_at))


def _references(payload: str | None) -> tuple[str, ...]:
    """The resources a delivered Bundle wrote ("DetectedIssue/<id>"), in entry order."""
    if not payload:
        return ()
    try:
        bundle = json.loads(payload)
    except ValueError:
        return ()
    urls = [str((e.get("request") or {}).get("url", "")) for e in bundle.get("entry", [])]
    return tuple(u for u in urls if u.count("/") == 1)


def _journal_row(raw: RawMessage, digest: str, now: datetime) -> dict[str, Any]:
    return {
        "source": raw.source, "dedup_key": raw.dedup_key, "body_sha256": digest,
        "content_type": raw.content_type, "body": raw.body,
        "transport": json.dumps(dict(raw.transport), sort_keys=True),
        "received_at": to_db(raw.received_at), "answer": raw.answer,
        "state": MessageState.RECEIVED.value, "priority": int(raw.priority),
        "attempts": 0, "updated_at": now,
    }


def _event_row(message_id: int, ev: PlannedEvent) -> dict[str, Any]:
    return {
        "journal_id": message_id, "seq": ev.seq, "source": ev.source,
        "business_key": ev.business_key, "kind": ev.kind, "category": ev.category,
        "code": ev.code, "device_id": ev.device_id, "occurred_at": to_db(ev.occurred_at),
        "priority": ev.priority, "snapshot": ev.snapshot, "state": ev.state.value,
        "filtered_by": ev.filtered_by, "bundle_id": ev.bundle_id, "payload": ev.payload,
        "summary": json.dumps(ev.summary, sort_keys=True, default=str),
    }


def _delivery_row(event_id: int, message_id: int, d: PlannedDelivery,
                  now: datetime) -> dict[str, Any]:
    return {
        "event_id": event_id, "journal_id": message_id, "destination": d.destination,
        "order_key": d.order_key, "priority": d.priority,
        "state": DeliveryState.PENDING.value, "attempts": 0, "not_before": now,
        "escalated": False, "created_at": now, "updated_at": now,
    }


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
