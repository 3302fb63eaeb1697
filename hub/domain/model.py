"""The hub's canonical vocabulary: what arrives, what it becomes, and where it stands.

Pure data: no framework, database or FHIR imports. Adapters (vendor plugins) produce
`Event`s from `RawMessage`s; the rest of the pipeline works on these types only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
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
    # Hospital messages (HL7 v2) about the municipality's patients: not vkp-alert-codes.
    PATIENT_ADMINISTRATION = "patient_administration"  # ADT: admissions, discharges, merges
    LABORATORY = "laboratory"  # lab results (ORU^R01)


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
    Category.PATIENT_ADMINISTRATION: Priority.NORMAL,
    Category.LABORATORY: Priority.NORMAL,
}


def is_alarm(priority: int) -> bool:
    return priority >= Priority.ALARM


@dataclass(frozen=True, slots=True)
class RawMessage:
    """What a source received, before anything is interpreted.

    `dedup_key` identifies the sender's message (vendor event id, MSH-3/4/10, alarm
    reference); a second message with the same key is the same message.

    `answer` is what the source will send back once the message is committed (an HL7
    ACK): it is stored with the message, so a resent copy gets the very same answer.
    """

    source: str
    dedup_key: str
    content_type: str
    body: bytes
    received_at: datetime
    transport: Mapping[str, str] = field(default_factory=dict)
    answer: bytes | None = None
    # Processing order only (higher first): intake sets it from the source's adapter
    # (`intake_priority`), so alarms are processed ahead of a backlog of other traffic.
    # Per-key delivery order does not depend on it (the order barrier in dispatch).
    priority: int = Priority.NORMAL


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
    """A national person identifier: `system` is a no-basis OID URI (FNR, DNR, FHN).

    An H-number (FHN, a temporary number) is only unique within its issuer: `assigner`
    names the issuing organisation (org.nr) and is required for it.

    A hospital message (HL7 v2) that names its patient only by the hospital's own record
    number gives a *local* id: `system` is the assigning authority's identifier system
    (never a no-basis person OID) and `assigner` its name. Local ids are accepted only on
    message-borne enrolments and only in resources that claim no VKP profile
    (docs/hl7v2.md "Who the patient is").
    """

    system: str
    value: str
    assigner: str | None = None


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


class EncounterReason(enum.StrEnum):
    """vkp-encounter-reason: why staff looked in."""

    PLANNED = "1"  # planlagt tilsyn
    EVENT_BASED = "2"  # hendelsesbasert tilsyn


@dataclass(frozen=True, slots=True)
class Position:
    """A geographic position (WGS84). Personal data: sent to receivers, never logged."""

    latitude: float
    longitude: float
    accuracy_m: float | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Performer:
    """Who or what performed an act, by identifier (VKP forbids references by id).

    `system` is an identifier system URI: HPR number, a municipal employee register, or
    `urn:tryggbro:device:<source>` for a device.
    """

    system: str
    value: str
    display: str | None = None


@dataclass(frozen=True, slots=True)
class DispenseDetails:
    """A medication dispenser's successful dispense (vkp-MedicationDispense)."""

    dispense_id: str
    category: str  # vkp-medicationdispense-events code: 1.1, 1.2, 1.3, 2.1, 2.2, 3
    handed_over_at: datetime
    planned_at: datetime | None = None
    medication_text: str | None = None  # free text: personal data, never logged
    dosage_text: str | None = None
    assisted_by: Performer | None = None


@dataclass(frozen=True, slots=True)
class Quantity:
    """A measured value with its UCUM unit code. Decimal: measurements are never floats."""

    value: Decimal
    unit: str


@dataclass(frozen=True, slots=True)
class MeasurementComponent:
    type: str  # key in mappings/measurements.toml, e.g. "systolic"
    value: Quantity


@dataclass(frozen=True, slots=True)
class Measurement:
    """One DHO measurement (digital hjemmeoppfølging) in canonical units.

    `type` is a key of the measurement code table (`mappings/measurements.toml`), which
    gives its LOINC, SNOMED CT and MDC codes and its UCUM unit. A compound measurement
    (blood pressure) has no `value` and one component per part.
    """

    measurement_id: str  # the dedupe key: vendor id or the PHD conditionalCreate recipe
    type: str
    effective_at: datetime
    value: Quantity | None = None
    components: tuple[MeasurementComponent, ...] = ()
    mdc_code: str | None = None  # the MDC code the device reported, if any
    device_display: str | None = None
    # A data-absent-reason code (e.g. "not-a-number", "error") when the device reported
    # no usable value: then `value` is None and `components` is empty, never a number.
    data_absent: str | None = None
    note: str | None = None  # free text (patient's or nurse's comment): personal data, never logged
    phd: bool = False  # from an IEEE 11073 personal health device (HL7 PHD IG): phd category


@dataclass(frozen=True, slots=True)
class MeasurementPlan:
    """What a patient's DHO plan expects of one measurement type: its normal range and
    how often it must arrive. A value outside [low, high] raises vkp-alert-code 5.1; no
    measurement within `every` raises 5.3.2."""

    type: str
    low: Decimal | None = None
    high: Decimal | None = None
    unit: str | None = None  # UCUM unit of low/high; the type's canonical unit if None
    every: timedelta | None = None


@dataclass(frozen=True, slots=True)
class DoorAccess:
    """An electronic door lock's access event (elektronisk dørlås)."""

    outcome: str  # "unlocked", "locked", "forced", "failed"
    staff: Performer | None = None  # who unlocked, when the lock knows
    method: str | None = None  # "app", "key-card", "pin" …
    # A staff visit the lock system records (unlock … lock): its id and period.
    visit_id: str | None = None
    visit_start: datetime | None = None
    visit_end: datetime | None = None
    attempts: int | None = None  # failed opening attempts counted by the lock


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
    reason: EncounterReason = EncounterReason.EVENT_BASED
    digital: bool = False  # handled by digital supervision: vkp-digital-Encounter (class VR)


# --- HL7 v2 details (hospital ADT and lab messages; docs/hl7v2.md) ----------------------


@dataclass(frozen=True, slots=True)
class Identifier:
    """An identifier as a message carries it (HL7 v2 CX): personal data, never logged.

    `system` is the identifier system URI (a no-basis OID for national ids, the assigning
    authority's OID or a hub URI otherwise); `type` an HL7 table 0203 code (MR, PI, FNR,
    VN…); `assigner` the assigning authority as the sender names it.
    """

    value: str
    system: str | None = None
    type: str | None = None
    assigner: str | None = None


@dataclass(frozen=True, slots=True)
class PersonName:
    family: str | None = None
    given: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()
    use: str | None = None  # FHIR name-use (official, usual, maiden, nickname…)


@dataclass(frozen=True, slots=True)
class PatientDetails:
    """Who a hospital message is about (PID): personal data, never logged."""

    identifiers: tuple[Identifier, ...]
    names: tuple[PersonName, ...] = ()
    birth_date: str | None = None  # FHIR date: YYYY, YYYY-MM or YYYY-MM-DD
    gender: str | None = None  # FHIR administrative-gender
    deceased: bool | None = None
    deceased_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Visit:
    """A hospital stay or visit (PV1), as FHIR Encounter terms."""

    encounter_class: str  # v3-ActCode: IMP, AMB, EMER, PRENC, …
    status: str  # FHIR Encounter.status
    visit_number: Identifier | None = None  # PV1-19
    start: datetime | None = None  # PV1-44
    end: datetime | None = None  # PV1-45
    location: str | None = None  # PV1-3 point of care/room/bed as text
    discharge_disposition: str | None = None  # PV1-36 code (HL7 table 0112)
    facility: str | None = None  # organisation number of the hospital, when configured


class AdtAction(enum.StrEnum):
    """What an ADT trigger event does to the patient's record."""

    ADMIT = "admit"  # A01
    TRANSFER = "transfer"  # A02
    DISCHARGE = "discharge"  # A03
    REGISTER = "register"  # A04 outpatient registration
    UPDATE = "update"  # A08 update patient information
    CANCEL_ADMIT = "cancel_admit"  # A11
    CANCEL_DISCHARGE = "cancel_discharge"  # A13
    ADD_PERSON = "add_person"  # A28
    UPDATE_PERSON = "update_person"  # A31
    MERGE = "merge"  # A40 merge patient: MRG-1 prior identifiers


@dataclass(frozen=True, slots=True)
class AdtDetails:
    trigger: str  # MSH-9.2 / EVN-1, e.g. A01
    action: AdtAction
    recorded_at: datetime | None = None  # EVN-2
    prior_identifiers: tuple[Identifier, ...] = ()  # A40: MRG-1, the merged-away record


@dataclass(frozen=True, slots=True)
class CodedValue:
    """A code with its system URI (LOINC, SNOMED CT, v2 tables) or the sender's local
    system name when no URI is known."""

    code: str
    system: str | None = None
    display: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceRange:
    low: Decimal | None = None
    high: Decimal | None = None
    text: str | None = None  # as sent (OBX-7)


@dataclass(frozen=True, slots=True)
class LabResult:
    """One OBX of a lab report. Exactly one of the value fields is set, or none when the
    result has no value (cancelled, pending)."""

    result_id: str  # unique within the report: OBX-4 sub-id or OBX-1 set id
    code: CodedValue
    status: str  # FHIR Observation.status (from OBX-11)
    value_type: str  # OBX-2: NM, SN, ST, TX, FT, CE, CWE …
    number: Decimal | None = None  # NM, SN with a plain number
    comparator: str | None = None  # SN: <, <=, >=, >
    unit: str | None = None  # UCUM code when known (OBX-6 UCUM or table), else None
    unit_text: str | None = None  # the unit as sent (OBX-6.1/2)
    text: str | None = None  # ST/TX/FT: free text, personal data, never logged
    coded: CodedValue | None = None  # CE/CWE
    reference_range: ReferenceRange | None = None
    interpretation: tuple[str, ...] = ()  # HL7 table 0078 = v3-ObservationInterpretation
    effective_at: datetime | None = None  # OBX-14


@dataclass(frozen=True, slots=True)
class LabReport:
    """A lab result report (ORU^R01 OBR with its OBXs)."""

    report_id: str  # the filler order number, else the placer's
    code: CodedValue  # OBR-4 universal service id
    status: str  # FHIR DiagnosticReport.status (from OBR-25)
    placer_order: Identifier | None = None  # OBR-2
    filler_order: Identifier | None = None  # OBR-3
    effective_at: datetime | None = None  # OBR-7
    issued: datetime | None = None  # OBR-22
    results: tuple[LabResult, ...] = ()


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
    detail: str | None = None  # short coded description for staff ("Dispenser open")
    priority: int | None = None  # None: the category's default
    snapshot: bool = False
    # At most one of the details below says what the event is about; an event with
    # only `code` is a plain issue (DetectedIssue), e.g. a dispenser fault.
    alarm: AlarmDetails | None = None
    dispense: DispenseDetails | None = None
    measurement: Measurement | None = None
    access: DoorAccess | None = None
    position: Position | None = None  # where it happened (GPS), alongside any of the above
    # A receipt or an answer about something the hub sent (an AppRec, a GP's reply):
    # processing settles or follows up the delivery it names instead of routing anew.
    receipt: Receipt | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Hospital messages (HL7 v2): who the message names, the visit, the ADT action or the
    # lab report. They name their patient themselves, so the adapter sets `enrolment`
    # (the patient under the source's cooperation agreement) instead of a device lookup.
    patient: PatientDetails | None = None
    visit: Visit | None = None
    adt: AdtDetails | None = None
    lab: LabReport | None = None
    enrolment: Enrolment | None = None

    @property
    def effective_priority(self) -> int:
        return self.priority if self.priority is not None else int(DEFAULT_PRIORITY[self.category])


class ReceiptStatus(enum.StrEnum):
    """What a receipt says about a delivery that awaits one."""

    DELIVERED = "delivered"  # e.g. AppRec 1 (OK)
    PARTIAL = "partial"  # e.g. AppRec 3 (OK, errors in part): delivered, errors recorded
    REJECTED = "rejected"  # e.g. AppRec 2 (Avvist): dead letter, final
    ANSWER = "answer"  # a reply to what was sent (a GP's Dialogmelding): settles nothing


@dataclass(frozen=True, slots=True)
class Receipt:
    """Names the delivery a receipt or answer is about, by its correlation id (the id
    the destination gave the message: an EDI MsgId, a JFT $status handle)."""

    correlation_id: str
    status: ReceiptStatus
    detail: str  # coded reasons only (AppRec 8221 codes): shown to operators and logged
    destination: str | None = None  # None: any destination awaiting this correlation id


class LegalBasisKind(enum.StrEnum):
    CONSENT = "consent"  # samtykke
    VEDTAK = "vedtak"  # an administrative decision, with its case reference
    # The cooperation agreement (samarbeidsavtale) between the municipality and the health
    # trust, under which the hospital sends it messages about shared patients; reference
    # required. Only for message-borne enrolments (HL7 v2), never for a device.
    AGREEMENT = "agreement"


@dataclass(frozen=True, slots=True)
class LegalBasis:
    """Why the municipality may process this patient's device data (GDPR art. 6/9)."""

    kind: LegalBasisKind
    reference: str | None = None  # required for a vedtak (case number) and an agreement


@dataclass(frozen=True, slots=True)
class PatientContext:
    """What the municipality's EPJ knows about the patient, for whoever responds to an
    event: the VKP Patient extensions (domain.md §1.3) `vkp-sone-v090` (care zone),
    `vkp-household-v090` (household: lives alone, pets …) and the address extension
    `vkp-elock-v090` (the e-lock system's name). Personal data: payloads only, never logs."""

    zone: str | None = None
    household: str | None = None
    door_lock: str | None = None

    def __bool__(self) -> bool:
        return bool(self.zone or self.household or self.door_lock)

    def merged(self, other: PatientContext) -> PatientContext:
        """This context with the fields it lacks taken from `other`."""
        return PatientContext(self.zone or other.zone, self.household or other.household,
                              self.door_lock or other.door_lock)


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A device's enrolment: who it serves, where, and on which basis.

    Nothing is routed for a device without an enrolment valid at the event's time, and
    every enrolment has a legal basis.
    """

    source: str
    device_id: str
    patient: PersonId
    municipality: str  # kommunenummer, 4 digits
    organisation: str | None = None  # org.nr of the municipality or its unit
    care_team: str | None = None
    legal_basis: LegalBasis = LegalBasis(LegalBasisKind.CONSENT)
    measurement_plans: tuple[MeasurementPlan, ...] = ()
    # Filled in processing by `hub_patient_context` (e.g. VKP's Patient search), just
    # before mapping; None when nobody knows more.
    context: PatientContext | None = None

    def plan_for(self, measurement_type: str) -> MeasurementPlan | None:
        return next((p for p in self.measurement_plans if p.type == measurement_type), None)


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
    RECEIPT = "receipt"  # settled a delivery of ours (an AppRec): nothing new to route


class DeliveryState(enum.StrEnum):
    """Life of one delivery to one destination."""

    PENDING = "pending"  # due at not_before
    LEASED = "leased"  # a dispatcher holds it until lease_until
    DELIVERED = "delivered"
    DEAD = "dead"  # rejected or given up: kept until an operator acts
    # Accepted by the transport; a later receipt (AppRec, $status) settles it. It holds
    # no lease and does not block its order key; past its deadline the monitor alerts.
    AWAITING_RECEIPT = "awaiting_receipt"


class OutcomeKind(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # transient: back off, try again
    REJECTED = "rejected"  # permanent for this payload: dead letter
    PAUSE = "pause"  # the destination is misconfigured or refuses us: hold all its work
    AWAITING = "awaiting"  # accepted by the transport: a receipt will settle it later


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a destination says about one send attempt."""

    kind: OutcomeKind
    detail: str
    status_code: int | None = None
    retry_after: float | None = None  # seconds, from Retry-After
    correlation_id: str | None = None  # AWAITING: what the receipt will name
    deadline: datetime | None = None  # AWAITING: no receipt by then raises an alert
    transport_ref: str | None = None  # AWAITING: the transport's id, to ask its status

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

    @classmethod
    def awaiting(cls, detail: str, correlation_id: str, deadline: datetime,
                 status_code: int | None = None, transport_ref: str | None = None) -> Outcome:
        """Accepted by the transport; a receipt naming `correlation_id` settles it. With
        `transport_ref`, a destination that has `check_transport` is asked the transport
        state of the message until it is confirmed (see TransportCheck)."""
        return cls(OutcomeKind.AWAITING, detail, status_code, None, correlation_id, deadline,
                   transport_ref)


class TransportAction(enum.StrEnum):
    WAIT = "wait"  # not confirmed yet: ask again later
    CONFIRMED = "confirmed"  # the transport has it (e.g. EDI 2.0 Acknowledged): stop asking
    RESEND = "resend"  # the transport gave up: send the delivery again (same payload)
    DEAD = "dead"  # the transport refused it for good: dead letter, escalated
    # The transport's status is itself the receipt (JFT: journaled): the delivery is done.
    DELIVERED = "delivered"


@dataclass(frozen=True, slots=True)
class TransportCheck:
    """A destination's answer about an awaiting delivery's transport state (e.g. EDI 2.0
    GET /Messages/{id}/Status): `state` as the transport names it, what to do, and why."""

    state: str
    action: TransportAction
    detail: str = ""


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
