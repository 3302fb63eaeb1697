"""The registry's record rules: one parser for CLI, admin API, CSV import and fixtures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from hub.domain.model import LegalBasisKind, MeasurementPlan
from hub.domain.privacy import DNR_SYSTEM, FNR_SYSTEM, HNR_SYSTEM
from hub.registry import RecordError, format_plans, parse_csv, parse_enrolment, parse_plans

TYPES = ["dispenser", "safety_alarm", "dho_device"]
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
GOOD = {"source": "alarmplatform", "device_id": "TA-1", "device_type": "safety_alarm",
        "patient": "01819012012", "municipality": "0301", "legal_basis": "consent"}


def problems(**fields: str) -> list[str]:
    with pytest.raises(RecordError) as info:
        parse_enrolment({**GOOD, **fields}, device_types=TYPES, now=NOW)
    return info.value.problems


def test_a_good_record_with_defaults():
    req = parse_enrolment(GOOD, device_types=TYPES, now=NOW)
    assert req.enrolment.patient.system == FNR_SYSTEM
    assert req.enrolment.legal_basis.kind is LegalBasisKind.CONSENT
    assert (req.valid_from, req.valid_to, req.device.heartbeat) == (NOW, None, None)


def test_every_bad_field_is_named_at_once():
    found = problems(patient="01819012013", municipality="301", legal_basis="maybe",
                     device_type="toaster", valid_from="yesterday")
    assert found == [
        "device_type: 'toaster' is not one of dho_device, dispenser, safety_alarm",
        "patient: FNR is not 11 digits with valid mod-11 check digits",
        "municipality: expected a kommunenummer (4 digits)",
        "legal_basis: 'maybe' is not consent or vedtak",
        "valid_from: 'yesterday' is not an ISO 8601 date-time",
    ]


def test_nothing_without_a_legal_basis_and_a_vedtak_needs_its_reference():
    assert problems(legal_basis="") == ["legal_basis: required"]
    assert problems(legal_basis="vedtak") == [
        "legal_basis_ref: required for a vedtak (the decision's case reference)"]
    req = parse_enrolment({**GOOD, "legal_basis": "VEDTAK", "legal_basis_ref": "2026/4411"},
                          device_types=TYPES)
    assert (req.enrolment.legal_basis.kind, req.enrolment.legal_basis.reference) == (
        LegalBasisKind.VEDTAK, "2026/4411")


def test_person_number_kinds_are_inferred_and_h_numbers_need_an_assigner():
    dnr = parse_enrolment({**GOOD, "patient": "41819012006"}, device_types=TYPES)
    assert dnr.enrolment.patient.system == DNR_SYSTEM
    # H-number: month + 40, valid mod-11 check digits.
    assert problems(patient="01419010029") == [
        "patient_assigner: required for an H-number (it is unique only within the "
        "organisation that issued it)"]
    hnr = parse_enrolment({**GOOD, "patient": "01419010029", "patient_assigner": "974778882"},
                          device_types=TYPES)
    assert (hnr.enrolment.patient.system, hnr.enrolment.patient.assigner) == (
        HNR_SYSTEM, "974778882")


def test_periods_must_make_sense():
    assert problems(valid_from="2026-01-01T00:00:00+01:00", valid_to="2025-01-01") == [
        "valid_to: must be after valid_from"]
    assert problems(valid_to="2027-01-01T10:00:00") == [
        "valid_to: '2027-01-01T10:00:00' has no UTC offset"]


def test_measurement_plans_round_trip():
    found: list[str] = []
    plans = parse_plans("spo2:92..100@24h; weight@7d;systolic:..160", found)
    assert found == []
    assert plans == (
        MeasurementPlan("spo2", Decimal(92), Decimal(100), None, timedelta(hours=24)),
        MeasurementPlan("weight", None, None, None, timedelta(days=7)),
        MeasurementPlan("systolic", None, Decimal(160), None, None),
    )
    assert format_plans(plans) == "spo2:92..100@1d;weight@7d;systolic:..160"
    assert problems(plans="spo2:100..92") == ["plans: 'spo2:100..92': low is above high"]
    assert problems(plans="spo2=92") == [
        "plans: 'spo2=92' is not type[:low..high][@N(m|h|d)], e.g. spo2:92..100@24h"]


CSV_HEADER = "source;device_id;device_type;patient;municipality;legal_basis;legal_basis_ref\n"


def test_csv_reports_every_bad_row_by_line_number():
    text = (CSV_HEADER
            + "alarmplatform;TA-1;safety_alarm;01819012012;0301;consent;\n"
            + "alarmplatform;TA-2;safety_alarm;01819012013;0301;consent;\n"
            + "\n"
            + "alarmplatform;TA-3;safety_alarm;12894513738;0301;vedtak;\n"
            + "alarmplatform;TA-4;safety_alarm;12894513738;0301;consent;;extra\n")
    report = parse_csv(text, device_types=TYPES, now=NOW)
    assert report.errors == [
        "line 3: patient: FNR is not 11 digits with valid mod-11 check digits",
        "line 5: legal_basis_ref: required for a vedtak (the decision's case reference)",
        "line 6: more cells than the header has columns",
    ]
    assert [r.device.device_id for r in report.requests] == ["TA-1"]


def test_csv_header_problems_and_overlaps_within_the_file():
    report = parse_csv("source,device_id,patient\n", device_types=TYPES)
    assert report.errors == [
        "line 1: missing column(s) device_type, municipality, legal_basis"]
    text = ("source,device_id,device_type,patient,municipality,legal_basis,valid_from\n"
            "alarmplatform,TA-1,safety_alarm,01819012012,0301,consent,2026-01-01\n"
            "alarmplatform,TA-1,safety_alarm,12894513738,0301,consent,2026-06-01\n")
    report = parse_csv(text, device_types=TYPES)
    assert report.errors == ["device alarmplatform/TA-1: enrolled twice for overlapping "
                             "periods in this file"]
    assert parse_csv("", device_types=TYPES).errors == [
        "line 1: the file is empty; expected a header row"]
