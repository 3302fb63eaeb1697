"""ORU^R01 built from VKP Bundles (validated by hl7apy) and ACKs read back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from hub.hl7v2.outbound import OruError, Party, build_oru, control_id, hl7_time, read_ack
from hub.hl7v2.wire import Hl7Error, build_ack, decode

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
AT = datetime(2026, 1, 10, 7, 20, tzinfo=UTC)


def observation_bundles() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(FIXTURES.glob("*/cases/*/expected.json")):
        for case in json.loads(path.read_text()):
            for event in case.get("events", []):
                bundle = event.get("bundle")
                if bundle and any(e["resource"]["resourceType"] == "Observation"
                                  for e in bundle["entry"]):
                    found.append((f"{path.parent.name}#{event['seq']}", bundle))
    return found


BUNDLES = observation_bundles()


def bp_bundle() -> dict[str, Any]:
    return next(b for name, b in BUNDLES if name.startswith("01-blood-pressure"))


def test_there_are_vital_sign_bundles_to_try():
    assert len(BUNDLES) >= 20


@pytest.mark.parametrize("version", ["2.5", "2.5.1", "2.6"])
def test_every_fixture_bundle_becomes_an_oru_that_hl7apy_validates_strictly(version):
    for name, bundle in BUNDLES:
        text = build_oru(bundle, control="TB1.abc", at=AT, sender=Party(),
                         receiver=Party("EPJ", "KOMMUNE"), version=version)
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT,
                                find_groups=True)
        assert message.validate(), name
        assert message.msh.msh_12.value == version
        result = message.oru_r01_patient_result
        assert result.oru_r01_patient.pid.pid_3.cx_1.value == patient_id(bundle), name


def patient_id(bundle: dict[str, Any]) -> str:
    resources = [e["resource"] for e in bundle["entry"]]
    for res in resources:
        ident = res.get("subject", {}).get("identifier") if \
            res["resourceType"] == "Observation" else None
        if ident:
            return str(ident["value"])
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    return str(patient["identifier"][0]["value"])


def test_blood_pressure_panel_fields():
    text = build_oru(bp_bundle(), control="TB7.1234abcd", at=AT, sender=Party(),
                     receiver=Party("EPJ", "KOMMUNE"))
    segs = text.split("\r")
    assert segs[0] == ("MSH|^~\\&|TRYGGBRO||EPJ|KOMMUNE|20260110072000+0000||ORU^R01^ORU_R01|"
                       "TB7.1234abcd|P|2.6||||||UNICODE UTF-8")
    assert segs[1] == "PID|1||01819012012^^^&2.16.578.1.12.4.1.4.1&ISO^NNNOR||^^^^^^U"
    assert segs[2].startswith("OBR|1||a6f1850c-9882-59a1-a221-ac8396519f68^TRYGGBRO|"
                              "182777000^Monitoring of patient^SCT|||20260110081500+0100|")
    obx = [s.split("|") for s in segs if s.startswith("OBX")]
    assert [o[4] for o in obx] == ["1", "1.1", "1.2"]
    assert obx[0][2:4] == ["", "150020^Blood pressure panel^MDC"
                           "^85354-9^Blood pressure panel with all children optional^LN"]
    assert obx[1][2:7] == ["NM", "150021^Systolic blood pressure^MDC^8480-6^"
                           "Systolic blood pressure^LN", "1.1", "132", "mm[Hg]^mmHg^UCUM"]
    assert obx[1][11] == "F"
    assert obx[1][14] == "20260110081500+0100"
    assert obx[1][18] == "DHO-KIT-1001"


def test_control_id_is_stable_per_delivery_and_short():
    a = control_id("ehr", 123456789, "a6f1850c-9882-59a1-a221-ac8396519f68")
    assert a == control_id("ehr", 123456789, "a6f1850c-9882-59a1-a221-ac8396519f68")
    assert a != control_id("ehr", 123456790, "a6f1850c-9882-59a1-a221-ac8396519f68")
    assert len(a) <= 20


def test_bundle_without_observations_is_refused_clearly():
    with pytest.raises(OruError, match="holds no Observation"):
        build_oru({"resourceType": "Bundle", "entry": []}, control="x", at=AT,
                  sender=Party(), receiver=Party())
    with pytest.raises(OruError, match="not a FHIR dateTime"):
        hl7_time("yesterday")


def test_read_ack_of_our_own_and_peer_acks():
    header = decode(b"MSH|^~\\&|A|B|C|D|20260110||ORU^R01|X9|P|2.5").header
    ours = build_ack(header, "AE", at=AT, text="schema: bad",
                     error=Hl7Error("schema: bad", code="100", reject=False))
    ack = read_ack(ours.encode())
    assert (ack.code, ack.control_id, ack.text) == ("AE", "X9", "schema: bad")
    v28 = decode(b"MSH|^~\\&|A|B|C|D|20260110||ORU^R01|X8|P|2.8").header
    ack = read_ack(build_ack(v28, "AR", at=AT, error=Hl7Error(
        "unsupported", code="200")).encode())  # v2.7+: no MSA-3, reason in ERR-8
    assert (ack.code, ack.control_id, ack.text) == ("AR", "X8", "unsupported")
    node = b"MSH|^~\\&|C|D|A|B|20261122161037||ACK^R01^ACK_R01|ACK|P|2.6\rMSA|AA|X1"
    assert read_ack(node).code == "AA"
    with pytest.raises(Hl7Error, match="no MSA"):
        read_ack(b"MSH|^~\\&|C|D|A|B|2026||ACK|1|P|2.5")
