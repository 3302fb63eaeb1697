"""The `hl7v2` adapter and mapping: what each message becomes, and what is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from tryggbro_dho.vendor import DhoJsonAdapter

from hub.builtin import hl7v2_mapping, measurement_mapping
from hub.contracts import AdapterSetup, IntakeRequest, MapContext
from hub.domain.model import (
    AdtAction,
    Category,
    Enrolment,
    Event,
    LegalBasis,
    LegalBasisKind,
    PersonId,
    StoredMessage,
)
from hub.domain.privacy import DNR_SYSTEM, FNR_SYSTEM
from hub.errors import ConfigError, InputError
from hub.fhir import transaction_bundle, validate_bundle
from hub.hl7v2.adapter import Hl7Refusal, Hl7v2Adapter
from hub.mappings import MappingStore

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared/corpus/microsoft-fhir-converter/hl7v2"
CASES = REPO / "fixtures/hl7v2/cases"
OPTIONS = {"municipality": "0301", "organisation": "974778882", "legal_basis": "agreement",
           "legal_basis_ref": "SA-2024-017", "hospital_organisation": "993467049"}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def store() -> MappingStore:
    return MappingStore.load(REPO / "mappings")


@pytest.fixture(scope="module")
def adapter(store: MappingStore) -> Hl7v2Adapter:
    return Hl7v2Adapter(AdapterSetup("sykehus", OPTIONS, store))


def stored(body: bytes, source: str = "sykehus") -> StoredMessage:
    return StoredMessage(1, source, "k", "application/hl7-v2", body, NOW, {}, 1)


def intake(adapter: Hl7v2Adapter, body: bytes) -> str | None:
    return adapter.intake_key(IntakeRequest("sykehus", "application/hl7-v2", body, {}))


def adt(trigger: str, pid3: str = "01819012012^^^^FNR", pv1: str = "PV1|1|I|||||||||||||||||"
        "V1^^^OUS^VN") -> bytes:
    return (f"MSH|^~\\&|DIPS|OUS|TRYGGBRO|OSLO|20260110083000+0100||ADT^{trigger}|C1|P|2.5"
            f"||||||UNICODE UTF-8\rEVN|{trigger}|20260110083000+0100\r"
            f"PID|1||{pid3}||Ærlig^Øystein||19900101|M\r{pv1}").encode()


def mapped(store: MappingStore, event: Event, enrolment: Enrolment | None = None,
           ) -> list[dict[str, Any]]:
    enrolment = enrolment or event.enrolment
    assert enrolment is not None
    ctx = MapContext(1, "k", 0, enrolment, store)
    resources = (hl7v2_mapping.hub_map_event(event, ctx)
                 or measurement_mapping.hub_map_event(event, ctx))
    assert resources
    validate_bundle(transaction_bundle("b", event.occurred_at, resources), store)
    return resources


# --- the peer corpus: every one of the 139 is mapped or refused with a reason ----------


def test_every_corpus_message_is_mapped_or_refused_at_intake_with_a_reason(adapter, store):
    files = sorted(CORPUS.glob("*.hl7"))
    assert len(files) == 139
    mapped_count, refused = 0, {}
    for f in files:
        body = f.read_bytes()
        try:
            key = intake(adapter, body)
        except Hl7Refusal as exc:
            refused[f.stem] = (exc.error.code, exc.detail)
            continue
        assert key
        events = adapter.parse(stored(body))
        assert events, f.name
        for event in events:
            mapped(store, event)
        mapped_count += 1
    assert mapped_count == 30
    unsupported = [s for s, (code, why) in refused.items()
                   if code in ("200", "201") and "is not mapped by this hub" in why]
    assert len(unsupported) == 108  # BAR, DFT, MDM, ORM, SIU, VXU … and ADT A05/A06/…
    assert refused["ORU-R01-01"] == (
        "100", "OBX before the first OBR: ORU^R01 results belong to an order (OBR)")
    assert refused["ADT-A05-01"][1].startswith("MSH-9 ADT^A05 is not mapped")
    assert refused["SIU-S12-01"][0] == "200"
    assert refused["ADT-A05-01"][0] == "201"


# --- ADT ------------------------------------------------------------------------------


def test_a01_with_a_fodselsnummer_is_a_no_basis_patient_under_the_agreement(adapter, store):
    [event] = adapter.parse(stored(adt("A01")))
    assert event.category is Category.PATIENT_ADMINISTRATION
    assert event.kind == "adt.admit"
    assert event.enrolment is not None
    assert event.enrolment.patient == PersonId(FNR_SYSTEM, "01819012012")
    assert event.enrolment.legal_basis == LegalBasis(LegalBasisKind.AGREEMENT, "SA-2024-017")
    assert event.enrolment.municipality == "0301"
    patient, encounter = mapped(store, event)
    assert patient["meta"]["profile"] == [hl7v2_mapping.NO_BASIS_PATIENT]
    assert patient["identifier"][0] == {"use": "official", "system": FNR_SYSTEM,
                                        "value": "01819012012"}
    assert patient["name"][0] == {"use": "official", "family": "Ærlig", "given": ["Øystein"]}
    assert encounter["class"]["code"] == "IMP"
    assert encounter["status"] == "in-progress"
    assert encounter["serviceProvider"]["identifier"]["value"] == "993467049"


def test_a_d_number_by_nnnor_type_is_recognised_and_a_bad_checksum_refused(adapter):
    [event] = adapter.parse(stored(adt("A28", "41055810034^^^^NNNOR")))
    assert event.enrolment is not None
    assert event.enrolment.patient.system == DNR_SYSTEM
    with pytest.raises(InputError, match=r"PID-3\[1\]: FNR is not 11 digits"):
        intake(adapter, adt("A01", "01819012013^^^^FNR"))


def test_visit_statuses_follow_the_trigger(adapter, store):
    statuses = {}
    for trigger in ("A01", "A02", "A03", "A04", "A08", "A11", "A13"):
        [event] = adapter.parse(stored(adt(trigger)))
        statuses[trigger] = next(r for r in mapped(store, event)
                             if r["resourceType"] == "Encounter")["status"]
    assert statuses == {"A01": "in-progress", "A02": "in-progress", "A03": "finished",
                        "A04": "in-progress", "A08": "in-progress", "A11": "cancelled",
                        "A13": "in-progress"}


def test_the_same_visit_is_the_same_encounter_across_messages(adapter, store):
    ids = {next(r for r in mapped(store, e) if r["resourceType"] == "Encounter")["id"]
           for t in ("A01", "A03", "A13") for e in adapter.parse(stored(adt(t)))}
    assert len(ids) == 1


def test_a40_links_the_surviving_and_the_merged_record(adapter, store):
    body = adt("A40", pv1="MRG|5550001^^^OUS^MR")
    [event] = adapter.parse(stored(body))
    assert event.adt is not None
    assert event.adt.action is AdtAction.MERGE
    surviving, merged = mapped(store, event)
    assert surviving["link"] == [{"other": {"reference": f"Patient/{merged['id']}"},
                                  "type": "replaces"}]
    assert merged["active"] is False
    assert merged["link"][0]["type"] == "replaced-by"
    with pytest.raises(InputError, match="without a PID \\+ MRG pair"):
        intake(adapter, adt("A40", pv1=""))


def test_a_local_record_number_is_kept_with_its_assigning_authority(adapter, store):
    [event] = adapter.parse(stored(adt("A01", "5554321^^^OUS^MR")))
    assert event.enrolment is not None
    assert event.enrolment.patient == PersonId("urn:tryggbro:hl7v2:sykehus:OUS", "5554321",
                                               "OUS")
    _, encounter = mapped(store, event)
    subject = encounter["subject"]["identifier"]
    assert subject["type"]["coding"][0]["code"] == "MR"
    assert subject["assigner"] == {"display": "OUS"}


def test_a_local_id_is_never_accepted_in_a_vkp_resource(adapter, store):
    [event] = adapter.parse(stored(adt("A01", "5554321^^^OUS^MR")))
    _, encounter = mapped(store, event)
    encounter["meta"] = {"profile": ["http://ehelse.no/fhir/StructureDefinition/"
                                     "vkp-Encounter-v090"]}
    with pytest.raises(Exception, match="not a national person id"):
        validate_bundle(transaction_bundle("b", NOW, [encounter]), store)


# --- ORU lab --------------------------------------------------------------------------


def test_lab_report_with_ucum_units_ranges_and_comparators(adapter, store):
    body = (CASES / "11-oru-lab-result/01.hl7").read_bytes()
    [event] = adapter.parse(stored(body))
    assert event.lab is not None
    resources = mapped(store, event)
    types = [r["resourceType"] for r in resources]
    assert types == ["Patient", "Observation", "Observation", "Observation", "Observation",
                     "DiagnosticReport"]
    chol, hdl, crp, comment, report = resources[1:]
    assert chol["valueQuantity"] == {"value": 5.9, "unit": "mmol/L",
                                     "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    assert chol["referenceRange"][0]["high"]["value"] == 5.0
    assert hdl["valueQuantity"]["code"] == "mmol/L"  # mmol/l through the unit table
    assert crp["valueQuantity"]["comparator"] == "<"
    assert comment["valueString"] == "Prøven er lett hemolysert"
    assert report["status"] == "final"
    assert [r["reference"] for r in report["result"]] == [
        f"Observation/{o['id']}" for o in (chol, hdl, crp, comment)]


def test_a_unit_not_in_ucum_is_kept_as_text_only(adapter, store):
    body = (CORPUS / "LAB-ORU-1.hl7").read_bytes()
    events = adapter.parse(stored(body))
    obs = [r for e in events for r in mapped(store, e) if r["resourceType"] == "Observation"]
    tera = [o for o in obs if o.get("valueQuantity", {}).get("unit") == "tera.l-1"]
    assert tera
    assert "code" not in tera[0]["valueQuantity"]


def test_unmapped_value_types_are_refused_naming_the_field(adapter):
    body = (b"MSH|^~\\&|LAB|OUS|T|O|20260112143000+0100||ORU^R01|L1|P|2.5\r"
            b"PID|1||01819012012^^^^FNR\rOBR|1||F1|24331-1^Lipid^LN\r"
            b"OBX|1|ED|11502-2^Report^LN||^AP^PDF^Base64^JVBERi0=\r")
    with pytest.raises(InputError, match=r"OBR\[1\] OBX\[1\] OBX-2: value type ED"):
        intake(adapter, body)


# --- PCD-01: identical to what the DHO plugin emits -----------------------------------


def test_pcd01_observation_is_the_dho_observation(store):
    enrolment = Enrolment("x", "dev", PersonId(FNR_SYSTEM, "01819012012"), "0301")
    pcd = Hl7v2Adapter(AdapterSetup("continua", {}, store))
    body = (CASES / "12-pcd01-vital-signs/01.hl7").read_bytes()
    pcd_events = pcd.parse(stored(body, "continua"))
    assert [e.measurement.type for e in pcd_events if e.measurement] == [
        "spo2", "pulse", "blood_pressure"]
    dho = DhoJsonAdapter(AdapterSetup("dho", {}, store))
    upload = {"messageId": "m1", "sentAt": "2026-01-10T08:17:30+01:00",
              "station": {"id": "0012A1FFFE3B4C5D"},
              "readings": [{"readingId": "r1", "kind": "oxygenSaturation", "unit": "%",
                            "takenAt": "2026-01-10T08:17:00+01:00", "value": 96}]}
    [dho_event] = dho.parse(stored(json.dumps(upload).encode(), "dho"))
    [ours] = mapped(store, pcd_events[0], enrolment)
    [theirs] = mapped(store, dho_event, enrolment)
    for key in ("code", "valueQuantity", "category", "meta", "status", "effectiveDateTime",
                "subject"):
        assert ours[key] == theirs[key], key
    assert ours["id"] != theirs["id"]  # ids differ by source
    assert pcd_events[0].kind == dho_event.kind
    assert pcd_events[0].category is dho_event.category


def test_pcd01_blood_pressure_parts_and_time(store):
    pcd = Hl7v2Adapter(AdapterSetup("continua", {}, store))
    body = (CASES / "12-pcd01-vital-signs/01.hl7").read_bytes()
    bp = pcd.parse(stored(body, "continua"))[2].measurement
    assert bp is not None
    assert [(c.type, c.value.value, c.value.unit) for c in bp.components] == [
        ("systolic", Decimal(132), "mm[Hg]"), ("diastolic", Decimal(84), "mm[Hg]"),
        ("mean_arterial_pressure", Decimal(100), "mm[Hg]")]
    assert bp.effective_at.isoformat() == "2026-01-10T08:15:00+01:00"


def test_pcd01_takes_its_patient_from_the_device_registry(store):
    pcd = Hl7v2Adapter(AdapterSetup("continua", {}, store))
    body = (CASES / "12-pcd01-vital-signs/01.hl7").read_bytes()
    assert all(e.enrolment is None for e in pcd.parse(stored(body, "continua")))


# --- options --------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"municipality": "301", "legal_basis": "agreement", "legal_basis_ref": "x"},
     "municipality: expected 4 digits"),
    ({"municipality": "0301", "legal_basis": "agreement"}, "legal_basis_ref: required"),
    ({"municipality": "0301"}, "municipality and legal_basis go together"),
    ({"default_charset": "latin-9"}, "not an HL7 table 0211 set"),
    ({"timezone": "Mars/Olympus"}, "not an IANA time zone"),
    ({"legal_basis": "hope", "municipality": "0301"}, "not agreement, consent or vedtak"),
    ({"kommune": "0301"}, "unknown option"),
])
def test_bad_options_are_refused_at_start(store, options, message):
    with pytest.raises(ConfigError, match=message):
        Hl7v2Adapter(AdapterSetup("s", options, store))


def test_without_an_agreement_adt_is_refused_at_intake(store):
    bare = Hl7v2Adapter(AdapterSetup("s", {}, store))
    with pytest.raises(InputError, match="no municipality and legal basis"):
        intake(bare, adt("A01"))


def test_latin1_by_msh18_and_by_the_configured_default(store):
    body = adt("A01").replace(b"UNICODE UTF-8", b"").decode().encode("iso-8859-1")
    latin = Hl7v2Adapter(AdapterSetup("s", {**OPTIONS, "default_charset": "8859/1"}, store))
    [event] = latin.parse(stored(body))
    assert event.patient is not None
    assert event.patient.names[0].family == "Ærlig"
