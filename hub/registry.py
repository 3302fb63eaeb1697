"""The device registry's input rules: one parser for every way an enrolment arrives.

The CLI, the admin API, the CSV bulk import and replay fixtures all describe an
enrolment as a flat record of text fields (the CSV columns). `parse_enrolment` turns one
record into an `EnrolmentRequest` or raises `RecordError` naming every bad field, so a
municipality gets the same rules and the same messages whichever door it uses.

Fields (CSV columns):

| field | required | meaning |
|---|---|---|
| source | yes | the configured source the device's messages arrive on |
| device_id | yes | the vendor's id of the device (serial, account, transmitter id) |
| vendor, model | no | what the device is |
| device_type | yes | a key of `mappings/device-types.toml` (safety_alarm, dispenser …) |
| patient | yes | fødselsnummer, D-number, FHN or H-number (11 digits, mod-11) |
| patient_type | no | fnr, dnr, fhn or hnr; inferred from the number when empty |
| patient_assigner | for hnr | org.nr of the organisation that issued the H-number |
| municipality | yes | kommunenummer, 4 digits |
| organisation | no | org.nr (9 digits) of the municipality or its unit |
| care_team | no | the team that follows the patient up |
| legal_basis | yes | consent (samtykke) or vedtak (an administrative decision) |
| legal_basis_ref | for vedtak | the decision's case reference |
| valid_from | no | ISO 8601 with offset; default: now |
| valid_to | no | ISO 8601 with offset; open-ended when empty |
| heartbeat_minutes | no | expected contact interval; silence beyond it raises "no contact" |
| plans | no | DHO measurement plans, `;`-separated: `spo2:92..100@24h;body_weight@7d` |
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hub.domain.model import (
    Enrolment,
    LegalBasis,
    LegalBasisKind,
    MeasurementPlan,
    PersonId,
)
from hub.domain.privacy import (
    DNR_SYSTEM,
    FHN_SYSTEM,
    FNR_SYSTEM,
    HNR_SYSTEM,
    person_id_problem,
)

PERSON_TYPES = {"fnr": FNR_SYSTEM, "dnr": DNR_SYSTEM, "fhn": FHN_SYSTEM, "hnr": HNR_SYSTEM}
FIELDS = ("source", "device_id", "vendor", "model", "device_type", "patient", "patient_type",
          "patient_assigner", "municipality", "organisation", "care_team", "legal_basis",
          "legal_basis_ref", "valid_from", "valid_to", "heartbeat_minutes", "plans")
REQUIRED = ("source", "device_id", "device_type", "patient", "municipality", "legal_basis")
MAX_IMPORT_ROWS = 100_000

_PLAN = re.compile(r"^(?P<type>[a-z][a-z0-9_]*)"
                   r"(?::(?P<low>-?\d+(?:\.\d+)?)?\.\.(?P<high>-?\d+(?:\.\d+)?)?)?"
                   r"(?:@(?P<every>\d+)(?P<unit>min|m|h|d|w))?$")
_UNITS = {"min": timedelta(minutes=1), "m": timedelta(minutes=1), "h": timedelta(hours=1),
          "d": timedelta(days=1), "w": timedelta(weeks=1)}


class RecordError(ValueError):
    """A record that cannot be enrolled; `problems` names each bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    source: str
    device_id: str
    device_type: str
    vendor: str | None = None
    model: str | None = None
    heartbeat: timedelta | None = None


@dataclass(frozen=True, slots=True)
class EnrolmentRequest:
    device: DeviceInfo
    enrolment: Enrolment
    valid_from: datetime
    valid_to: datetime | None = None


@dataclass
class ImportReport:
    requests: list[EnrolmentRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "line N: problem"


def infer_person_type(value: str) -> str:
    """fnr, dnr (first digit + 4) or hnr (month + 40); FHN must be said explicitly."""
    if len(value) == 11 and value.isascii() and value.isdigit():
        if int(value[0]) >= 4:
            return "dnr"
        if int(value[2]) >= 4 and int(value[2:4]) not in range(81, 93):
            return "hnr"
    return "fnr"


def parse_time(text: str, name: str, problems: list[str]) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        problems.append(f"{name}: {text!r} is not an ISO 8601 date-time")
        return None
    if value.tzinfo is None:
        if len(text.strip()) == 10:  # a plain date: midnight UTC
            return value.replace(tzinfo=UTC)
        problems.append(f"{name}: {text!r} has no UTC offset")
        return None
    return value


def parse_plans(text: str, problems: list[str]) -> tuple[MeasurementPlan, ...]:
    plans: list[MeasurementPlan] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        m = _PLAN.match(part)
        if m is None:
            problems.append(f"plans: {part!r} is not type[:low..high][@N(min|h|d|w)], "
                            "e.g. spo2:92..100@24h")
            continue
        low = Decimal(m["low"]) if m["low"] else None
        high = Decimal(m["high"]) if m["high"] else None
        if low is not None and high is not None and low > high:
            problems.append(f"plans: {part!r}: low is above high")
            continue
        every = _UNITS[m["unit"]] * int(m["every"]) if m["every"] else None
        if every is not None and every <= timedelta(0):
            problems.append(f"plans: {part!r}: the period must be positive")
            continue
        if any(p.type == m["type"] for p in plans):
            problems.append(f"plans: {m['type']!r} is given twice")
            continue
        plans.append(MeasurementPlan(m["type"], low, high, None, every))
    return tuple(plans)


def format_plans(plans: Iterable[MeasurementPlan]) -> str:
    parts = []
    for p in plans:
        text = p.type
        if p.low is not None or p.high is not None:
            text += f":{'' if p.low is None else p.low}..{'' if p.high is None else p.high}"
        if p.every is not None:
            seconds = int(p.every.total_seconds())
            for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
                if seconds % size == 0:
                    text += f"@{seconds // size}{unit}"
                    break
        parts.append(text)
    return ";".join(parts)


def parse_enrolment(record: Mapping[str, Any], *, device_types: Iterable[str],
                    now: datetime | None = None) -> EnrolmentRequest:
    """One enrolment from a flat record. Raises RecordError naming every bad field."""
    values = {k: ("" if v is None else str(v)).strip() for k, v in record.items()}
    problems: list[str] = []
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    for name in REQUIRED:
        if not values.get(name):
            problems.append(f"{name}: required")
    get = values.get

    device_type = get("device_type") or ""
    known_types = sorted(device_types)
    if device_type and device_type not in known_types:
        problems.append(f"device_type: {device_type!r} is not one of {', '.join(known_types)}")

    patient = get("patient") or ""
    person_type = (get("patient_type") or infer_person_type(patient)).lower()
    system = PERSON_TYPES.get(person_type)
    assigner = get("patient_assigner") or None
    if system is None:
        problems.append(f"patient_type: {person_type!r} is not one of fnr, dnr, fhn, hnr")
    elif patient:
        problem = person_id_problem(system, patient)
        if problem:
            problems.append(f"patient: {problem}")
        if system == HNR_SYSTEM and not assigner:
            problems.append("patient_assigner: required for an H-number (it is unique only "
                            "within the organisation that issued it)")
    if assigner and not _digits(assigner, 9):
        problems.append("patient_assigner: expected an organisation number (9 digits)")

    municipality = get("municipality") or ""
    if municipality and not _digits(municipality, 4):
        problems.append("municipality: expected a kommunenummer (4 digits)")
    organisation = get("organisation") or None
    if organisation and not _digits(organisation, 9):
        problems.append("organisation: expected an organisation number (9 digits)")

    basis_text = (get("legal_basis") or "").lower()
    basis_ref = get("legal_basis_ref") or None
    basis: LegalBasis | None = None
    if basis_text:
        try:
            kind = LegalBasisKind(basis_text)
        except ValueError:
            problems.append(f"legal_basis: {basis_text!r} is not consent or vedtak")
        else:
            if kind is LegalBasisKind.AGREEMENT:
                problems.append("legal_basis: agreement (samarbeidsavtale) is the basis for "
                                "a hospital's messages (an HL7 v2 source's options), not for "
                                "a device enrolment; use consent or vedtak")
            if kind is LegalBasisKind.VEDTAK and not basis_ref:
                problems.append("legal_basis_ref: required for a vedtak (the decision's "
                                "case reference)")
            basis = LegalBasis(kind, basis_ref)

    valid_from = (parse_time(values["valid_from"], "valid_from", problems)
                  if get("valid_from") else (now or datetime.now(UTC)))
    valid_to = parse_time(values["valid_to"], "valid_to", problems) if get("valid_to") else None
    if valid_from and valid_to and valid_to <= valid_from:
        problems.append("valid_to: must be after valid_from")

    heartbeat: timedelta | None = None
    if get("heartbeat_minutes"):
        text = values["heartbeat_minutes"]
        if not (text.isascii() and text.isdigit()) or int(text) == 0:
            problems.append(f"heartbeat_minutes: {text!r} is not a positive whole number")
        else:
            heartbeat = timedelta(minutes=int(text))
    plans = parse_plans(get("plans") or "", problems)

    for name in ("source", "device_id", "vendor", "model", "care_team", "legal_basis_ref"):
        if len(get(name) or "") > 128:
            problems.append(f"{name}: longer than 128 characters")
    if problems:
        raise RecordError(problems)
    assert system is not None
    assert basis is not None
    assert valid_from is not None
    source, device_id = values["source"], values["device_id"]
    return EnrolmentRequest(
        DeviceInfo(source, device_id, device_type, get("vendor") or None, get("model") or None,
                   heartbeat),
        Enrolment(source, device_id, PersonId(system, patient, assigner), municipality,
                  organisation, get("care_team") or None, basis, plans),
        valid_from, valid_to,
    )


def parse_csv(text: str, *, device_types: Iterable[str],
              now: datetime | None = None) -> ImportReport:
    """Every row of a CSV file, with every bad row reported by its line number.

    The header names the fields (any order; `;` or `,` separated, as spreadsheets in
    Norway often write `;`). Two rows for the same device with overlapping periods are
    an error too: the file must make sense on its own.
    """
    report = ImportReport()
    types = list(device_types)
    if not text.strip():
        report.errors.append("line 1: the file is empty; expected a header row")
        return report
    dialect = ";" if text.split("\n", 1)[0].count(";") > text.split("\n", 1)[0].count(",") \
        else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=dialect, strict=True)
    try:
        header = [h.strip() for h in reader.fieldnames or []]
    except csv.Error as exc:
        report.errors.append(f"line 1: the header row is not CSV: {exc}")
        return report
    missing = [f for f in REQUIRED if f not in header]
    unknown = [h for h in header if h not in FIELDS]
    if missing or unknown:
        if missing:
            report.errors.append(f"line 1: missing column(s) {', '.join(missing)}")
        if unknown:
            report.errors.append(f"line 1: unknown column(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(FIELDS)}")
        return report
    reader.fieldnames = header
    try:
        for row in reader:
            line = reader.line_num
            if len(report.requests) + len(report.errors) >= MAX_IMPORT_ROWS:
                report.errors.append(f"line {line}: more than {MAX_IMPORT_ROWS} rows; split "
                                     "the file")
                break
            if None in row:  # more cells than header columns
                report.errors.append(f"line {line}: more cells than the header has columns")
                continue
            if all(not (v or "").strip() for v in row.values()):
                continue
            try:
                report.requests.append(parse_enrolment(row, device_types=types, now=now))
            except RecordError as exc:
                report.errors.extend(f"line {line}: {p}" for p in exc.problems)
    except csv.Error as exc:
        report.errors.append(f"line {reader.line_num}: {exc}")
    report.errors.extend(overlaps(report.requests))
    return report


def overlaps(requests: list[EnrolmentRequest]) -> list[str]:
    """Problems where two requests enrol one device for overlapping periods."""
    problems = []
    by_device: dict[tuple[str, str], list[EnrolmentRequest]] = {}
    for r in requests:
        by_device.setdefault((r.device.source, r.device.device_id), []).append(r)
    for (source, device_id), items in by_device.items():
        items.sort(key=lambda r: r.valid_from)
        for a, b in itertools.pairwise(items):
            if a.valid_to is None or a.valid_to > b.valid_from:
                problems.append(f"device {source}/{device_id}: enrolled twice for overlapping "
                                "periods in this file")
    return problems


def _digits(text: str, n: int) -> bool:
    return len(text) == n and text.isascii() and text.isdigit()
