"""The built-in `hl7v2` adapter: hospital ADT and lab messages, and IHE PCD-01 vital signs.

- `intake_key` decodes the message by MSH-18 (`wire.decode`), refuses message types the
  hub does not map, and reads the whole message once (python-hl7, ~0.1–0.5 ms) so that
  a message that could not be mapped is refused *at intake* with the field and the reason
  (the sender gets AE/AR), never journaled to fail later. The key is MSH-3|MSH-4|MSH-10.
- `parse` reads the journaled message into canonical events (docs/hl7v2.md):
  ADT A01/A02/A03/A04/A08/A11/A13/A28/A31/A40 → one `patient_administration` event;
  ORU^R01 → one `laboratory` event per OBR; ORU^R01 with MDC-coded OBX-3 (IHE PCD-01,
  Continua gateways) → one `measurement` event per reading, exactly as the DHO plugin's.

ADT and lab messages name their patient themselves (PID-3): the event carries its
enrolment (`Event.enrolment`), built from the identifier and the source's options: the
municipality and organisation the feed belongs to and the cooperation agreement
(samarbeidsavtale) under which the hospital sends it. PCD-01 readings come from a
device, so their patient, plan and legal basis come from the device registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub import hookimpl
from hub.contracts import AdapterSetup, IntakeRequest, RegisterAdapter
from hub.domain.ids import order_key
from hub.domain.model import (
    AdtAction,
    AdtDetails,
    Category,
    CodedValue,
    DeviceRef,
    Enrolment,
    Event,
    Identifier,
    LabReport,
    LabResult,
    LegalBasis,
    LegalBasisKind,
    Measurement,
    MeasurementComponent,
    PatientDetails,
    PersonId,
    PersonName,
    Quantity,
    ReferenceRange,
    StoredMessage,
    Visit,
)
from hub.domain.privacy import (
    DNR_SYSTEM,
    FHN_SYSTEM,
    FNR_SYSTEM,
    HNR_SYSTEM,
    person_id_problem,
)
from hub.errors import ConfigError, HubError, InputError
from hub.hl7v2.reader import (
    Rep,
    Segment,
    component,
    fhir_date,
    parse,
    parse_decimal,
    parse_time,
)
from hub.hl7v2.wire import CHARSETS, Header, Hl7Error, decode
from hub.mappings import MappingSection
from hub.measurements import MeasurementTable

ADAPTER = "hl7v2"
TABLE = "hl7v2"
CONTENT_TYPE = "application/hl7-v2"

ADT_ACTIONS: Mapping[str, AdtAction] = {
    "A01": AdtAction.ADMIT, "A02": AdtAction.TRANSFER, "A03": AdtAction.DISCHARGE,
    "A04": AdtAction.REGISTER, "A08": AdtAction.UPDATE, "A11": AdtAction.CANCEL_ADMIT,
    "A13": AdtAction.CANCEL_DISCHARGE, "A28": AdtAction.ADD_PERSON,
    "A31": AdtAction.UPDATE_PERSON, "A40": AdtAction.MERGE,
}
MAPPED = ", ".join([*(f"ADT^{t}" for t in ADT_ACTIONS), "ORU^R01"])

# OBX-2 value types mapped to an Observation value; others refuse the message.
NUMERIC = ("NM",)
TEXT = ("ST", "TX", "FT")
CODED = ("CE", "CWE", "CNE")
TIMES = ("DT", "DTM", "TS")
VALUE_TYPES = ("NM", "SN", *TEXT, *CODED, *TIMES)

# no-basis person identifier systems by the type codes (CX-5) and OIDs (CX-4.2) a
# Norwegian sender uses for them (domain.md §1.8). NNNOR: HL7 table 0203 "national
# person identifier" with the ISO country code.
NATIONAL_TYPES = {"FNR": FNR_SYSTEM, "NNNOR": FNR_SYSTEM, "NH": FNR_SYSTEM,
                  "DNR": DNR_SYSTEM, "FHN": FHN_SYSTEM, "HNR": HNR_SYSTEM}
NATIONAL_OIDS = {FNR_SYSTEM.removeprefix("urn:oid:"): FNR_SYSTEM,
                 DNR_SYSTEM.removeprefix("urn:oid:"): DNR_SYSTEM,
                 FHN_SYSTEM.removeprefix("urn:oid:"): FHN_SYSTEM}
NATIONAL_PREFERENCE = (FNR_SYSTEM, DNR_SYSTEM, FHN_SYSTEM, HNR_SYSTEM)

MDC = "MDC"
MDC_SYSTEM = "urn:iso:std:iso:11073:10101"
KIND_MEASUREMENT = "measurement"  # as the DHO plugin: routes match both alike
KIND_LAB = "lab.result"


class Hl7Refusal(InputError):
    """An HL7 v2 message refused at intake, with what the ACK must say (`error`: HL7
    table 0357 code, field location, AR/AE). An MLLP source answers with `error`; the
    HTTP intake answers 400/422 with the text."""

    def __init__(self, error: Hl7Error) -> None:
        slug = "hl7v2-unsupported" if error.code in ("200", "201", "203") else "hl7v2-invalid"
        super().__init__(slug, error.text, 422 if not error.reject else 400)
        self.error = error


@dataclass(frozen=True, slots=True)
class Options:
    """The `[sources.X.options]` of an `hl7v2` source (docs/configuration.md)."""

    default_charset: str  # Python codec for a message without MSH-18
    timezone: tzinfo  # for times sent without an offset
    municipality: str | None  # kommunenummer the feed belongs to (ADT/lab)
    organisation: str | None  # org.nr of the municipality or its receiving unit
    legal_basis: LegalBasis | None  # the cooperation agreement (ADT/lab)
    hospital: str | None  # org.nr of the sending health trust: Encounter.serviceProvider


def read_options(source: str, options: Mapping[str, Any]) -> Options:
    where = f"[sources.{source}.options]"
    known = {"default_charset", "timezone", "municipality", "organisation", "legal_basis",
             "legal_basis_ref", "hospital_organisation"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} (known: {sorted(known)})")
    charset = str(options.get("default_charset", "UNICODE UTF-8"))
    codec = CHARSETS.get(charset.upper())
    if codec is None:
        raise ConfigError(f"{where} default_charset: {charset!r} is not an HL7 table 0211 "
                          f"set (supported: {', '.join(CHARSETS)})")
    try:
        zone: tzinfo = ZoneInfo(str(options.get("timezone", "Europe/Oslo")))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where} timezone: not an IANA time zone") from None

    def digits(key: str, n: int) -> str | None:
        value = options.get(key)
        if value is None:
            return None
        text = str(value)
        if len(text) != n or not text.isdigit():
            raise ConfigError(f"{where} {key}: expected {n} digits")
        return text

    municipality = digits("municipality", 4)
    organisation = digits("organisation", 9)
    hospital = digits("hospital_organisation", 9)
    basis: LegalBasis | None = None
    kind = options.get("legal_basis")
    if kind is not None:
        try:
            basis_kind = LegalBasisKind(str(kind))
        except ValueError:
            raise ConfigError(f"{where} legal_basis: {kind!r} is not agreement, consent or "
                              "vedtak") from None
        ref = options.get("legal_basis_ref")
        if basis_kind in (LegalBasisKind.AGREEMENT, LegalBasisKind.VEDTAK) and not ref:
            raise ConfigError(f"{where} legal_basis_ref: required for {basis_kind} (the "
                              "agreement's or decision's reference)")
        basis = LegalBasis(basis_kind, str(ref) if ref else None)
    if (municipality is None) != (basis is None):
        raise ConfigError(f"{where}: municipality and legal_basis go together: a feed of "
                          "hospital messages belongs to one municipality under one basis")
    return Options(codec, zone, municipality, organisation, basis, hospital)


class Hl7v2Adapter:
    def __init__(self, setup: AdapterSetup) -> None:
        self.source = setup.source
        self.options = read_options(setup.source, setup.options)
        table = setup.mappings.table(TABLE)
        self.sections = {name: table.section(name) for name in (
            "patient_class", "gender", "name_use", "obx_status", "obr_status",
            "coding_systems", "units", "mdc_units")}
        self.measurements: MeasurementTable = setup.mappings.measurements

    # --- Adapter protocol ---------------------------------------------------------------

    def intake_key(self, request: IntakeRequest) -> str | None:
        try:
            decoded = decode(request.body, default_charset=self.options.default_charset)
            self._check_type(decoded.header)
            self._read(decoded.header, decoded.text)  # refuse now what could not be mapped
        except Hl7Error as exc:
            raise Hl7Refusal(exc) from None
        return decoded.header.dedup_key

    def parse(self, message: StoredMessage) -> list[Event]:
        # An MLLP source records the codec it decoded (and acknowledged) the message with.
        charset = message.transport.get("charset") or self.options.default_charset
        try:
            decoded = decode(message.body, default_charset=charset)
            self._check_type(decoded.header)
            return self._read(decoded.header, decoded.text)
        except Hl7Error as exc:
            raise Hl7Refusal(exc) from None

    # --- what is mapped -----------------------------------------------------------------

    def _check_type(self, h: Header) -> None:
        if h.message_code == "ADT" and h.trigger_event in ADT_ACTIONS:
            return
        if h.message_code == "ORU" and h.trigger_event == "R01":
            return
        code = "200" if h.message_code not in ("ADT", "ORU") else "201"
        raise Hl7Error(f"MSH-9 {h.message_code}^{h.trigger_event} is not mapped by this hub "
                       f"(mapped: {MAPPED})", code=code, location="MSH-9")

    def _read(self, h: Header, text: str) -> list[Event]:
        segments = parse(text)
        reader = _Message(self, h, segments)
        if h.message_code == "ADT":
            return reader.adt()
        if any(s.name == "OBX" and component(s.rep(3), 3) == MDC for s in segments):
            return reader.pcd01()
        return reader.lab()

    def lookup(self, section: str, code: str, where: str) -> str:
        table: MappingSection = self.sections[section]
        try:
            return table.lookup(code)
        except HubError:
            known = ", ".join(sorted(table.entries))
            raise Hl7Error(f"{where}: code {code[:20]!r} is not in mappings/hl7v2.toml "
                           f"[{section}] (known: {known})", code="103", location=where,
                           reject=False) from None


class _Message:
    """One message being read; every error names its field."""

    def __init__(self, adapter: Hl7v2Adapter, header: Header, segments: list[Segment]) -> None:
        self.a = adapter
        self.h = header
        self.segments = segments
        self.zone = adapter.options.timezone
        msh = segments[0]
        self.sent_at = self.time(msh, 7) or None

    # --- helpers ------------------------------------------------------------------------

    def one(self, name: str) -> Segment:
        found = [s for s in self.segments if s.name == name]
        if not found:
            raise Hl7Error(f"{self.h.message_code}^{self.h.trigger_event} without a {name} "
                           "segment", code="100", location=name, reject=False)
        return found[0]

    def maybe(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def time(self, seg: Segment, n: int, c: int = 1) -> datetime | None:
        return parse_time(seg.comp(n, c), seg.where(n), self.zone)

    def occurred(self, *candidates: datetime | None) -> datetime:
        for t in candidates:
            if t is not None:
                return t
        raise Hl7Error("the message has no time (MSH-7 is empty)", code="101",
                       location="MSH-7", reject=False)

    def coded(self, rep: Rep, where: str) -> CodedValue | None:
        code, display, system_name = component(rep, 1), component(rep, 2), component(rep, 3)
        if not code:
            if display:
                return CodedValue(code="", display=display)
            return None
        system = self.a.sections["coding_systems"].entries.get(system_name.upper()) \
            if system_name else None
        return CodedValue(code, system, display or None)

    # --- the patient --------------------------------------------------------------------

    def identifier(self, rep: Rep, where: str) -> Identifier:
        value = component(rep, 1)
        type_code = component(rep, 5).upper() or None
        namespace, universal, universal_type = (component(rep, 4, 1), component(rep, 4, 2),
                                                component(rep, 4, 3).upper())
        system = NATIONAL_OIDS.get(universal) or NATIONAL_TYPES.get(type_code or "")
        first = value[:1]
        if system == FNR_SYSTEM and first.isascii() and first.isdigit() and int(first) >= 4:
            system = DNR_SYSTEM  # a D-number has 4 added to the first digit of the day
        if system is not None:
            problem = person_id_problem(system, value)
            if problem:
                raise Hl7Error(f"{where}: {problem}", code="102", location=where,
                               reject=False)
        elif universal and universal_type == "ISO":
            system = f"urn:oid:{universal}"
        else:
            ns = namespace or universal
            system = (f"urn:tryggbro:hl7v2:{self.a.source}:{_uri_part(ns)}" if ns
                      else f"urn:tryggbro:hl7v2:{self.a.source}")
        assigner = namespace or universal or None
        return Identifier(value, system, type_code, assigner)

    def order_number(self, rep: Rep) -> Identifier:
        """An order number (EI: entity id^namespace^universal id^universal id type)."""
        value, namespace, universal, utype = (component(rep, 1), component(rep, 2),
                                              component(rep, 3), component(rep, 4).upper())
        if universal and utype == "ISO":
            system = f"urn:oid:{universal}"
        elif namespace or universal:
            system = f"urn:tryggbro:hl7v2:{self.a.source}:order:{_uri_part(namespace or universal)}"
        else:
            system = f"urn:tryggbro:hl7v2:{self.a.source}:order"
        return Identifier(value, system, None, namespace or universal or None)

    def patient(self, pid: Segment) -> PatientDetails:
        identifiers = []
        for i, rep in enumerate(pid.reps(3), start=1):
            if not component(rep, 1):
                continue
            identifiers.append(self.identifier(rep, f"PID-3[{i}]"))
        if not identifiers:
            raise Hl7Error("PID-3 has no patient identifier", code="101", location="PID-3",
                           reject=False)
        names = []
        for rep in pid.reps(5):
            family = component(rep, 1)
            given = tuple(g for g in (component(rep, 2), *component(rep, 3).split(" ")) if g)
            if not family and not given:
                continue
            use = self.a.sections["name_use"].get(component(rep, 7).upper()) or "official"
            names.append(PersonName(
                family=family or None, given=given,
                prefix=tuple(p for p in (component(rep, 5),) if p),
                suffix=tuple(p for p in (component(rep, 4), component(rep, 6)) if p),
                use=use))
        sex = pid.comp(8).upper()
        gender = self.a.lookup("gender", sex, "PID-8") if sex else None
        deceased_at = self.time(pid, 29)
        flag = pid.comp(30).upper()
        deceased = True if deceased_at or flag == "Y" else (False if flag == "N" else None)
        return PatientDetails(tuple(identifiers), tuple(names), fhir_date(pid.comp(7), "PID-7"),
                              gender, deceased, deceased_at)

    def enrolment(self, patient: PatientDetails, device_id: str) -> Enrolment:
        opts = self.a.options
        if opts.municipality is None or opts.legal_basis is None:
            raise Hl7Error(f"source {self.a.source!r} has no municipality and legal basis in "
                           "its options: ADT and lab messages cannot be received",
                           code="207", reject=True)
        national = {i.system: i for i in patient.identifiers if i.system in NATIONAL_PREFERENCE}
        chosen = next((national[s] for s in NATIONAL_PREFERENCE if s in national), None)
        if chosen is not None:
            assigner = chosen.assigner if chosen.system == HNR_SYSTEM else None
            if chosen.system == HNR_SYSTEM and not (
                    assigner and assigner.isascii() and assigner.isdigit()
                    and len(assigner) == 9):
                raise Hl7Error("PID-3: an H-number needs its assigning authority as an "
                               "organisation number (CX-4)", code="101", location="PID-3",
                               reject=False)
            person = PersonId(str(chosen.system), chosen.value, assigner)
        else:
            local = next((i for i in patient.identifiers if i.type in ("MR", "PI", "PT")),
                         patient.identifiers[0])
            person = PersonId(str(local.system), local.value, local.assigner)
        return Enrolment(source=self.a.source, device_id=device_id, patient=person,
                         municipality=opts.municipality, organisation=opts.organisation,
                         legal_basis=opts.legal_basis)

    def sender(self) -> DeviceRef:
        app = self.h.sending_application.split(self.h.component_sep)[0]
        facility = self.h.sending_facility.split(self.h.component_sep)[0]
        return DeviceRef(id=f"{app}@{facility}" if facility else app or "hl7v2",
                         type="hl7v2-sender")

    # --- ADT ----------------------------------------------------------------------------

    def visit(self, pv1: Segment, action: AdtAction, patient_key: str) -> Visit | None:
        cls = pv1.comp(2).upper()
        if not cls and not pv1.reps(19) and not pv1.reps(44):
            return None
        encounter_class = self.a.lookup("patient_class", cls, "PV1-2") if cls else "AMB"
        start, end = self.time(pv1, 44), self.time(pv1, 45)
        number = (self.identifier(pv1.rep(19), "PV1-19")
                  if component(pv1.rep(19), 1) else None)
        if action is AdtAction.CANCEL_ADMIT:
            status = "cancelled"
        elif action is AdtAction.CANCEL_DISCHARGE:
            status, end = "in-progress", None
        elif action is AdtAction.DISCHARGE or end is not None:
            status = "finished"
        else:
            status = "in-progress"
        loc = pv1.rep(3)  # PL: point of care^room^bed^facility^…^description (PL-9)
        location = component(loc, 9) or " ".join(
            p for p in (component(loc, 1), component(loc, 2), component(loc, 3)) if p) or None
        disposition = pv1.comp(36) or None
        return Visit(encounter_class, status, number, start, end, location, disposition,
                     self.a.options.hospital)

    def adt(self) -> list[Event]:
        if ADT_ACTIONS[self.h.trigger_event] is not AdtAction.MERGE:
            return [self.adt_event(self.one("PID"), None)]
        # A40 may merge several patients: one PID + MRG pair each, one event each.
        pairs: list[tuple[Segment, Segment]] = []
        pid: Segment | None = None
        for s in self.segments:
            if s.name == "PID":
                if pid is not None:
                    raise Hl7Error("PID without its MRG (A40 pairs each PID with the MRG "
                                   "naming the record merged into it)", code="100",
                                   location="MRG", reject=False)
                pid = s
            elif s.name == "MRG":
                if pid is None:
                    raise Hl7Error("MRG without a PID before it", code="100", location="MRG",
                                   reject=False)
                pairs.append((pid, s))
                pid = None
        if pid is not None or not pairs:
            raise Hl7Error("A40 without a PID + MRG pair", code="100", location="MRG",
                           reject=False)
        return [self.adt_event(p, m) for p, m in pairs]

    def adt_event(self, pid: Segment, mrg: Segment | None) -> Event:
        trigger = self.h.trigger_event
        action = ADT_ACTIONS[trigger]
        patient = self.patient(pid)
        evn = self.maybe("EVN")
        recorded = self.time(evn, 2) if evn else None
        prior: tuple[Identifier, ...] = ()
        if mrg is not None:
            prior = tuple(self.identifier(r, f"MRG-1[{i}]")
                          for i, r in enumerate(mrg.reps(1), start=1) if component(r, 1))
            if not prior:
                raise Hl7Error("MRG-1 names no prior patient identifier to merge",
                               code="101", location="MRG-1", reject=False)
        device = self.sender()
        enrolment = self.enrolment(patient, device.id)
        # The patient part of a key is pseudonymous: business keys are stored in clear.
        pkey = f"patient|{order_key(enrolment.patient)}"
        visit = None
        pv1 = self.maybe("PV1")
        if pv1 is not None and action not in (AdtAction.ADD_PERSON, AdtAction.UPDATE_PERSON,
                                              AdtAction.MERGE):
            visit = self.visit(pv1, action, pkey)
        if visit is not None and visit.visit_number is not None:
            key = f"visit|{visit.visit_number.system}|{visit.visit_number.value}"
        elif visit is not None:
            # No visit number: the stay is known by patient and admission time, or by this
            # message alone (a later message cannot update it; docs/hl7v2.md).
            key = (f"{pkey}|admit|{visit.start.isoformat()}" if visit.start
                   else f"{pkey}|message|{self.h.dedup_key}")
        else:
            key = pkey
        occurred = self.occurred(recorded, self.sent_at)
        return Event(
            source=self.a.source, business_key=key, kind=f"adt.{action.value}",
            category=Category.PATIENT_ADMINISTRATION, occurred_at=occurred, device=device,
            detail=f"ADT^{trigger}", patient=patient, visit=visit,
            adt=AdtDetails(trigger, action, recorded, prior), enrolment=enrolment)

    # --- ORU lab ------------------------------------------------------------------------

    def groups(self) -> list[tuple[Segment, list[Segment]]]:
        groups: list[tuple[Segment, list[Segment]]] = []
        for s in self.segments:
            if s.name == "OBR":
                groups.append((s, []))
            elif s.name == "OBX":
                if not groups:
                    raise Hl7Error("OBX before the first OBR: ORU^R01 results belong to an "
                                   "order (OBR)", code="100", location="OBX", reject=False)
                groups[-1][1].append(s)
        if not groups:
            raise Hl7Error("ORU^R01 without an OBR segment", code="100", location="OBR",
                           reject=False)
        return groups

    def result(self, obx: Segment, n: int, group: int) -> LabResult:
        where = f"OBR[{group}] OBX[{n}]"
        vtype = obx.comp(2).upper()
        code = self.coded(obx.rep(3), f"{where} OBX-3")
        if code is None or not code.code:
            raise Hl7Error(f"{where} OBX-3: the observation identifier is empty", code="101",
                           location="OBX-3", reject=False)
        status_code = obx.comp(11).upper()
        status = self.a.lookup("obx_status", status_code, "OBX-11") if status_code else "final"
        values = obx.reps(5)
        if vtype and vtype not in VALUE_TYPES:
            raise Hl7Error(f"{where} OBX-2: value type {vtype[:5]} is not mapped (mapped: "
                           f"{', '.join(VALUE_TYPES)})", code="102", location="OBX-2",
                           reject=False)
        if len(values) > 1 and vtype not in TEXT:
            raise Hl7Error(f"{where} OBX-5: a {vtype} value repeats; one result is one value",
                           code="102", location="OBX-5", reject=False)
        unit_rep = obx.rep(6)
        # Quantity.unit is for people: the unit's text (CWE-2) when sent, else its code.
        unit_text = component(unit_rep, 2) or component(unit_rep, 1) or None
        unit = self.ucum(unit_rep)
        result = LabResult(
            result_id=f"{obx.comp(4) or ''}/{obx.comp(1) or n}", code=code, status=status,
            value_type=vtype, unit_text=unit_text, unit=unit,
            reference_range=_range(obx.comp(7)) if obx.comp(7) else None,
            interpretation=tuple(component(r, 1).upper() for r in obx.reps(8)
                                 if component(r, 1)),
            effective_at=self.time(obx, 14))
        if not values:
            return result
        rep = values[0]
        if vtype == "NM":
            return replace(result, number=parse_decimal(component(rep, 1), f"{where} OBX-5"))
        if vtype == "SN":
            comparator, num1, sep, num2 = (component(rep, 1), component(rep, 2),
                                           component(rep, 3), component(rep, 4))
            if comparator not in ("", "<", "<=", ">", ">=", "=", "<>"):
                raise Hl7Error(f"{where} OBX-5: SN comparator is not <, <=, >, >= or =",
                               code="102", location="OBX-5", reject=False)
            if not sep and not num2:
                return replace(result, number=parse_decimal(num1, f"{where} OBX-5"),
                               comparator=comparator if comparator not in ("", "=") else None)
            text = "".join((comparator, num1, sep, num2))
            return replace(result, text=text)  # a range or ratio: kept as sent
        if vtype in TEXT:
            return replace(result, text="\n".join(component(r, 1) for r in values))
        if vtype in CODED:
            return replace(result, coded=self.coded(rep, f"{where} OBX-5"))
        if vtype in TIMES:
            t = self.time(obx, 5)
            return result if t is None else replace(result, text=t.isoformat())
        return result

    def ucum(self, unit_rep: Rep) -> str | None:
        code, system = component(unit_rep, 1), component(unit_rep, 3).upper()
        if not code:
            return None
        if system == "UCUM":
            return code
        alt, alt_system = component(unit_rep, 4), component(unit_rep, 6).upper()
        if alt and alt_system == "UCUM":
            return alt
        return self.a.sections["units"].entries.get(code)

    def lab(self) -> list[Event]:
        patient = self.patient(self.one("PID"))
        device = self.sender()
        enrolment = self.enrolment(patient, device.id)
        events = []
        for g, (obr, obxs) in enumerate(self.groups(), start=1):
            placer = self.order_number(obr.rep(2)) if obr.comp(2) else None
            filler = self.order_number(obr.rep(3)) if obr.comp(3) else None
            order = filler or placer
            if order is None:
                raise Hl7Error(f"OBR[{g}]: neither OBR-3 filler nor OBR-2 placer order "
                               "number: the report could not be updated later",
                               code="101", location="OBR-3", reject=False)
            code = self.coded(obr.rep(4), "OBR-4")
            if code is None:
                raise Hl7Error(f"OBR[{g}] OBR-4: universal service id is empty", code="101",
                               location="OBR-4", reject=False)
            status_code = obr.comp(25).upper()
            status = self.a.lookup("obr_status", status_code, "OBR-25")
            results = tuple(self.result(obx, n, g) for n, obx in enumerate(obxs, start=1))
            ids = [r.result_id for r in results]
            if len(set(ids)) != len(ids):
                results = tuple(LabResult(**{**_fields(r), "result_id": f"{n}"})
                                for n, r in enumerate(results, start=1))
            effective = self.time(obr, 7)
            report = LabReport(
                report_id=f"{order.system}|{order.value}", code=code, status=status,
                placer_order=placer, filler_order=filler, effective_at=effective,
                issued=self.time(obr, 22), results=results)
            events.append(Event(
                source=self.a.source, business_key=f"report|{report.report_id}",
                kind=KIND_LAB, category=Category.LABORATORY,
                occurred_at=self.occurred(effective, self.sent_at), device=device,
                detail="ORU^R01", patient=patient, lab=report, enrolment=enrolment))
        return events

    # --- ORU PCD-01 (Continua / IHE PCD) --------------------------------------------------

    def pcd01(self) -> list[Event]:
        table = self.a.measurements
        obxs = [s for s in self.segments if s.name == "OBX"]
        message_device = next((component(o.rep(18), 1) for o in obxs if o.comp(18)), "")
        obr = self.maybe("OBR")
        obr_time = self.time(obr, 7) if obr else None
        events: list[Event] = []
        used: set[int] = set()
        for n, obx in enumerate(obxs, start=1):
            if obx.index in used:
                continue
            where = f"OBX[{n}]"
            code_rep = obx.rep(3)
            code, system = component(code_rep, 1), component(code_rep, 3)
            if system != MDC or not (code.isascii() and code.isdigit()):
                raise Hl7Error(f"{where} OBX-3: a PCD-01 message codes every observation in "
                               "MDC (code^MDC_REFID^MDC)", code="103", location="OBX-3",
                               reject=False)
            vtype = obx.comp(2).upper()
            try:
                mtype = table.by_mdc(code)
            except HubError as exc:
                if not obx.reps(5):
                    # The device hierarchy (MDS, VMD, channel) and device settings without
                    # a value: context for the readings below them, not a reading.
                    continue
                raise Hl7Error(f"{where} OBX-3: {exc}", code="103", location="OBX-3",
                               reject=False) from None
            device_id = component(obx.rep(18), 1) or message_device
            if not device_id:
                raise Hl7Error(f"{where} OBX-18: no equipment instance identifier (the "
                               "device's EUI-64) in the message", code="101",
                               location="OBX-18", reject=False)
            effective = self.occurred(self.time(obx, 14), obr_time, self.sent_at)
            mid = f"{device_id}|{code}|{effective.isoformat()}"
            if mtype.components:
                prefix = obx.comp(4) + "."
                parts = []
                for m, sub in enumerate(obxs, start=1):
                    if sub.index <= obx.index or not sub.comp(4).startswith(prefix):
                        continue
                    used.add(sub.index)
                    sub_type = self._mdc_type(sub, f"OBX[{m}]")
                    if sub_type.key not in mtype.components:
                        raise Hl7Error(f"OBX[{m}] OBX-3: MDC {sub.comp(3)} is not a part of "
                                       f"{mtype.key}", code="103", location="OBX-3",
                                       reject=False)
                    parts.append(MeasurementComponent(
                        sub_type.key, self._quantity(sub, sub_type, f"OBX[{m}]")))
                if not parts:
                    raise Hl7Error(f"{where}: {mtype.key} without its parts (OBX-4 "
                                   f"{obx.comp(4)}.n)", code="101", location="OBX-4",
                                   reject=False)
                measurement = Measurement(mid, mtype.key, effective, components=tuple(parts),
                                          mdc_code=code)
            else:
                if vtype != "NM":
                    raise Hl7Error(f"{where} OBX-2: a {mtype.key} reading must be NM",
                                   code="102", location="OBX-2", reject=False)
                measurement = Measurement(mid, mtype.key, effective,
                                          value=self._quantity(obx, mtype, where),
                                          mdc_code=code)
            events.append(Event(
                source=self.a.source, business_key=mid, kind=KIND_MEASUREMENT,
                category=Category.HOME_FOLLOW_UP, occurred_at=effective,
                device=DeviceRef(id=device_id), measurement=measurement))
        if not events:
            raise Hl7Error("the PCD-01 message has no reading (no OBX with an NM value)",
                           code="101", location="OBX", reject=False)
        return events

    def _mdc_type(self, obx: Segment, where: str) -> Any:
        try:
            return self.a.measurements.by_mdc(obx.comp(3))
        except HubError as exc:
            raise Hl7Error(f"{where} OBX-3: {exc}", code="103", location="OBX-3",
                           reject=False) from None

    def _quantity(self, obx: Segment, mtype: Any, where: str) -> Quantity:
        value = parse_decimal(obx.comp(5), f"{where} OBX-5")
        unit_rep = obx.rep(6)
        unit = self.ucum(unit_rep) or self.a.sections["mdc_units"].entries.get(
            component(unit_rep, 1)) or self.a.sections["mdc_units"].entries.get(
            component(unit_rep, 2))
        if unit is None:
            raise Hl7Error(f"{where} OBX-6: unit {component(unit_rep, 1)[:20]!r} is not in "
                           "mappings/hl7v2.toml [mdc_units] or UCUM", code="103",
                           location="OBX-6", reject=False)
        try:
            return mtype.to_canonical(value, unit)  # type: ignore[no-any-return]
        except HubError as exc:
            raise Hl7Error(f"{where} OBX-6: {exc}", code="103", location="OBX-6",
                           reject=False) from None


def _uri_part(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-._" else "-" for ch in text.strip()) or "id"


def _fields(r: LabResult) -> dict[str, Any]:
    return {f: getattr(r, f) for f in LabResult.__dataclass_fields__}


def _range(text: str) -> ReferenceRange:
    """OBX-7 as sent ("3.5-5.0", "4.3 to 6.2", "70_105", "<5", ">1"): low/high when the
    text is a plain interval, always the text."""
    t = text.strip()
    low = high = None
    for sep in (" to ", "-", "_", "–"):
        left, found, right = t.partition(sep)
        if found and left.strip() and right.strip():
            try:
                low, high = Decimal(left.strip()), Decimal(right.strip())
            except ArithmeticError:
                low = high = None
            break
    else:
        try:
            if t.startswith("<"):
                high = Decimal(t.lstrip("<=").strip())
            elif t.startswith(">"):
                low = Decimal(t.lstrip(">=").strip())
        except InvalidOperation:
            pass
    return ReferenceRange(low, high, t)


@hookimpl
def hub_register_adapters(register: RegisterAdapter) -> None:
    register(ADAPTER, Hl7v2Adapter)
