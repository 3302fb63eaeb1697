"""The hub's canonical vocabulary: what arrives, what it becomes, and where it stands.

Pure data: no framework, database or FHIR imports. Adapters (vendor plugins) produce
`Event`s from `RawMessage`s; the rest of the pipeline works on these types only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Category(enum.StrEnum):
    """Welfare-technology area of an event (the VKP alert-code top level)."""

    MEDICATION = "medication"  # vkp-alert-code 1
    LOCATION = "location"  # 2
    SAFETY_ALARM = "safety_alarm"  # 3 trygghetsalarm
    SUPERVISION = "supervision"  # 4 digitalt tilsyn
    HOME_FOLLOW_UP = "home_follow_up"  # 5 digital hjemmeoppfølging (DHO)
    DOOR_LOCK = "door_lock"  # 6
    NURSE_CALL = "nurse_call"  # 7 sykesignalanlegg
    DEVICE_HEALTH = "device_health"  # heartbeats, tests, batteries: never journaled


class Priority(enum.IntEnum):
    """Dispatch order: higher first. Alarms are never given up on automatically."""

    LOW = 10
    NORMAL = 50
    ALARM = 100


DEFAULT_PRIORITY: Mapping[Category, Priority] = {
    Category.SAFETY_ALARM: Priority.ALARM,
    Category.NURSE_CALL: Priority.ALARM,
    Category.SUPERVISION: Priority.ALARM,
    Category.LOCATION: Priority.ALARM,
    Category.MEDICATION: Priority.NORMAL,
    Category.DOOR_LOCK: Priority.NORMAL,
    Category.HOME_FOLLOW_UP: Priority.NORMAL,
    Category.DEVICE_HEALTH: Priority.LOW,
}


def is_alarm(priority: int) -> bool:
    return priority >= Priority.ALARM


@dataclass(frozen=True, slots=True)
class RawMessage:
    """What a source received, before anything is interpreted.

    `dedup_key` identifies the sender's message (vendor event id, MSH-3/4/10, alarm
    reference); a second message with the same key is the same message.
    """

    source: str
    dedup_key: str
    content_type: str
    body: bytes
    received_at: datetime
    transport: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A journaled RawMessage as the processor sees it."""

    id: int
    source: str
    dedup_key: str
    content_type: str
    body: bytes
    received_at: datetime
    transport: Mapping[str, str]
    attempts: int


@dataclass(frozen=True, slots=True)
class PersonId:
    """A national person identifier: `system` is a no-basis OID URI (FNR, DNR, FHN)."""

    system: str
    value: str


@dataclass(frozen=True, slots=True)
class OrganisationRef:
    """An organisation by Enhetsregisteret number (no-basis `…4.1.4.101`)."""

    org_number: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """The vendor's device as the event names it."""

    id: str
    model: str | None = None
    type: str | None = None
    location: str | None = None


class AlarmStatus(enum.StrEnum):
    """Where an alarm stands at the response centre when the event was sent."""

    RAISED = "raised"
    IN_PROGRESS = "in_progress"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One step in the response centre's handling, already coded (vkp-composition-event)."""

    code: str
    at: datetime
    note: str | None = None  # free text: personal data, never logged


@dataclass(frozen=True, slots=True)
class AlarmDetails:
    """An alarm's case at the response centre: a snapshot sent at each change."""

    alarm_id: str
    status: AlarmStatus
    raised_at: datetime
    closed_at: datetime | None = None
    encounter_mode: str | None = None  # vkp-encounter-mode code
    call_out: bool = False
    timeline: tuple[TimelineEntry, ...] = ()
    operator_id: str | None = None
    response_centre: OrganisationRef | None = None
    display_url: str | None = None
    trigger_text: str | None = None  # coded description, e.g. "Alarmknapp"


@dataclass(frozen=True, slots=True)
class Event:
    """One canonical event parsed from a message.

    `business_key` names the thing the event is about (an alarm case, a dispense); FHIR
    resource ids derive from it so that later events about the same thing update the
    same resources. `snapshot` events carry the whole state of that thing: an older
    snapshot arriving after a newer one is superseded, not delivered.
    """

    source: str
    business_key: str
    kind: str
    category: Category
    occurred_at: datetime
    device: DeviceRef
    code: str | None = None  # vkp-alert-code
    severity: str | None = None  # DetectedIssue.severity: high | moderate | low
    priority: int | None = None  # None: the category's default
    snapshot: bool = False
    alarm: AlarmDetails | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def effective_priority(self) -> int:
        return self.priority if self.priority is not None else int(DEFAULT_PRIORITY[self.category])


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A device's enrolment: who it serves, where, and on which basis."""

    source: str
    device_id: str
    patient: PersonId
    municipality: str  # kommunenummer, 4 digits
    organisation: str | None = None  # org.nr of the municipality or its unit
    care_team: str | None = None


class MessageState(enum.StrEnum):
    """Life of a journaled message. Terminal: processed, filtered; held: failed, unmatched."""

    RECEIVED = "received"
    PROCESSING = "processing"
    PROCESSED = "processed"
    FILTERED = "filtered"
    FAILED = "failed"
    UNMATCHED = "unmatched"


REPROCESSABLE_STATES = frozenset(
    {MessageState.FAILED, MessageState.UNMATCHED, MessageState.FILTERED}
)


class EventState(enum.StrEnum):
    ROUTED = "routed"
    FILTERED = "filtered"


class DeliveryState(enum.StrEnum):
    """Life of one delivery to one destination."""

    PENDING = "pending"  # due at not_before
    LEASED = "leased"  # a dispatcher holds it until lease_until
    DELIVERED = "delivered"
    DEAD = "dead"  # rejected or given up: kept until an operator acts


class OutcomeKind(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # transient: back off, try again
    REJECTED = "rejected"  # permanent for this payload: dead letter
    PAUSE = "pause"  # the destination is misconfigured or refuses us: hold all its work


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a destination says about one send attempt."""

    kind: OutcomeKind
    detail: str
    status_code: int | None = None
    retry_after: float | None = None  # seconds, from Retry-After

    @classmethod
    def delivered(cls, detail: str = "delivered", status_code: int | None = None) -> Outcome:
        return cls(OutcomeKind.DELIVERED, detail, status_code)

    @classmethod
    def retry(
        cls, detail: str, status_code: int | None = None, retry_after: float | None = None
    ) -> Outcome:
        return cls(OutcomeKind.RETRY, detail, status_code, retry_after)

    @classmethod
    def rejected(cls, detail: str, status_code: int | None = None) -> Outcome:
        return cls(OutcomeKind.REJECTED, detail, status_code)

    @classmethod
    def pause(
        cls, detail: str, status_code: int | None = None, retry_after: float | None = None
    ) -> Outcome:
        return cls(OutcomeKind.PAUSE, detail, status_code, retry_after)


@dataclass(frozen=True, slots=True)
class OutboundDelivery:
    """One delivery handed to a destination plugin."""

    id: int
    message_id: int
    destination: str
    payload: bytes  # JSON: a FHIR transaction Bundle in the VKP R4 shape
    bundle_id: str
    priority: int
    attempt: int  # 1 for the first try

    @property
    def is_alarm(self) -> bool:
        return is_alarm(self.priority)
