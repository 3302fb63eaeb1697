"""Outbound HL7 v2: an ORU^R01 with vital signs (IHE PCD-01 style) from a VKP Bundle,
and reading the ACK a receiver answers with.

Built by hand: hl7apy would build the same message at ~100× the cost (stack.md §2.2);
the tests parse every built message with hl7apy for its version to prove the structure.

- MSH-10 is the caller's deterministic control id (a retry resends the same id, so a
  receiver that deduplicates does); MSH-18 is UNICODE UTF-8 and the bytes are UTF-8.
- PID-3: the patient's identifier; the Norwegian national id (OID 2.16.578.1.12.4.1.4.1)
  as ``value^^^&2.16.578.1.12.4.1.4.1&ISO^NNNOR``. PID-5 (required) is ``^^^^^^U``, a name
  of unspecified type: the Bundle carries no name and the hub sends none.
- OBR-4: 182777000 "Monitoring of patient" (SNOMED CT), as PCD-01 does; OBR-7 the
  earliest observation time.
- One OBX per Observation: OBX-3 the ISO/IEEE 11073 MDC code (coding system MDC) with
  LOINC as the alternate identifier (or LOINC alone), OBX-5 the value, OBX-6 the UCUM
  unit, OBX-11 F, OBX-14 the observation time, OBX-18 the device identifier. A panel
  (blood pressure) is an OBX without value followed by one OBX per component, with
  OBX-4 sub-ids ``n`` and ``n.1``, ``n.2``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.hl7v2.wire import Hl7Error, decode, escape

FNR_OID = "2.16.578.1.12.4.1.4.1"
DNR_OID = "2.16.578.1.12.4.1.4.2"
SYSTEMS = {"urn:iso:std:iso:11073:10101": "MDC", "http://loinc.org": "LN",
           "http://snomed.info/sct": "SCT"}
UCUM = "http://unitsofmeasure.org"


class OruError(ValueError):
    """The Bundle cannot be expressed as an ORU^R01 (the reason names what is missing)."""


@dataclass(frozen=True, slots=True)
class Party:
    application: str = "TRYGGBRO"
    facility: str = ""


def control_id(destination: str, delivery_id: int, bundle_id: str) -> str:
    """MSH-10 for a delivery: the same on every retry, unique per delivery (≤ 20 chars)."""
    digest = hashlib.sha256(f"{destination}|{bundle_id}".encode()).hexdigest()[:8]
    return f"TB{delivery_id}.{digest}"[:20]


def hl7_time(value: str) -> str:
    """FHIR dateTime/instant → HL7 DTM with offset (``20260110081500+0100``)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise OruError(f"not a FHIR dateTime: {value[:40]!r}") from None
    if moment.tzinfo is None:
        return moment.strftime("%Y%m%d%H%M%S")
    return moment.strftime("%Y%m%d%H%M%S%z")


def _cwe(coding: Sequence[Mapping[str, Any]], text: str) -> str:
    by_system: dict[str, Mapping[str, Any]] = {}
    for c in coding:
        name = SYSTEMS.get(str(c.get("system", "")))
        if name and name not in by_system and c.get("code"):
            by_system[name] = c
    order = [s for s in ("MDC", "LN", "SCT") if s in by_system][:2]
    if not order:
        raise OruError("an Observation code has no MDC, LOINC or SNOMED CT coding")
    parts: list[str] = []
    for name in order:
        c = by_system[name]
        parts += [escape(str(c["code"]), None),
                  escape(str(c.get("display") or text), None), name]
    return "^".join(parts).rstrip("^")


def _value(obs: Mapping[str, Any]) -> tuple[str, str, str]:
    """(OBX-2, OBX-5, OBX-6) for an Observation or a component."""
    if "valueQuantity" in obs:
        q = obs["valueQuantity"]
        if q.get("value") is None:
            raise OruError("a valueQuantity has no value")
        unit = ""
        if q.get("code"):
            unit = f"{escape(str(q['code']), None)}^{escape(str(q.get('unit') or q['code']), None)}"
            unit += "^UCUM" if q.get("system") == UCUM else ""
        return "NM", _number(q["value"]), unit
    if "valueString" in obs:
        return "ST", escape(str(obs["valueString"]), None), ""
    if "valueCodeableConcept" in obs:
        cc = obs["valueCodeableConcept"]
        return "CWE", _cwe(cc.get("coding", []), str(cc.get("text", ""))), ""
    return "", "", ""


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OruError("a valueQuantity value is not a number")
    text = repr(value) if isinstance(value, float) else str(value)
    return text[:-2] if text.endswith(".0") else text


def _patient(bundle: Mapping[str, Any], observations: list[Mapping[str, Any]]) -> str:
    ident: Mapping[str, Any] | None = None
    for obs in observations:
        ident = (obs.get("subject") or {}).get("identifier")
        if ident:
            break
    if not ident:
        for entry in bundle.get("entry", []):
            res = entry.get("resource", {})
            if res.get("resourceType") == "Patient" and res.get("identifier"):
                ident = res["identifier"][0]
                break
    if not ident or not ident.get("value"):
        raise OruError("no patient identifier (Observation.subject.identifier)")
    system = str(ident.get("system", ""))
    value = escape(str(ident["value"]), None)
    if system.startswith("urn:oid:"):
        oid = system[len("urn:oid:"):]
        kind = {FNR_OID: "NNNOR", DNR_OID: "DNNOR"}.get(oid, "PI")
        return f"{value}^^^&{oid}&ISO^{kind}"
    if system:
        return f"{value}^^^&{escape(system, None)}&URI^PI"
    return f"{value}^^^^PI"


def build_oru(bundle: Mapping[str, Any], *, control: str, at: datetime, sender: Party,
              receiver: Party, version: str = "2.6", processing_id: str = "P") -> str:
    """ORU^R01 (CR-separated, UTF-8 text) for the Observations of a transaction Bundle."""
    observations = [e["resource"] for e in bundle.get("entry", [])
                    if isinstance(e.get("resource"), dict)
                    and e["resource"].get("resourceType") == "Observation"]
    if not observations:
        raise OruError("the Bundle holds no Observation: nothing to send as ORU^R01")
    times = [hl7_time(o["effectiveDateTime"]) for o in observations
             if o.get("effectiveDateTime")]
    msh = ["MSH", "^~\\&", escape(sender.application, None), escape(sender.facility, None),
           escape(receiver.application, None), escape(receiver.facility, None),
           at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000"), "", "ORU^R01^ORU_R01",
           control, processing_id, version, "", "", "", "", "", "UNICODE UTF-8"]
    segments = ["|".join(msh), f"PID|1||{_patient(bundle, observations)}||^^^^^^U"]
    bundle_id = escape(str(bundle.get("id", control)), None)
    segments.append(f"OBR|1||{bundle_id}^TRYGGBRO|182777000^Monitoring of patient^SCT"
                    f"|||{min(times) if times else ''}|||||||||||||||||F")
    n = 0
    for obs in observations:
        n += 1
        code = obs.get("code") or {}
        obx3 = _cwe(code.get("coding", []), str(code.get("text", "")))
        when = hl7_time(obs["effectiveDateTime"]) if obs.get("effectiveDateTime") else ""
        device = ((obs.get("device") or {}).get("identifier") or {}).get("value", "")
        device_field = escape(str(device), None)
        kind, value, unit = _value(obs)
        status = "F" if obs.get("status", "final") in ("final", "amended", "corrected") \
            else "P"
        components = obs.get("component") or []
        segments.append(_obx(n, kind, obx3, str(n), value, unit, status, when, device_field))
        for k, comp in enumerate(components, start=1):
            ccode = comp.get("code") or {}
            ckind, cvalue, cunit = _value(comp)
            n += 1
            segments.append(_obx(n, ckind, _cwe(ccode.get("coding", []),
                                                str(ccode.get("text", ""))),
                                 f"{n - k}.{k}", cvalue, cunit, status, when, device_field))
    return "\r".join(segments)


def _obx(set_id: int, kind: str, code: str, sub_id: str, value: str, unit: str,
         status: str, when: str, device: str) -> str:
    fields = ["OBX", str(set_id), kind, code, sub_id, value, unit, "", "", "", "", status,
              "", "", when, "", "", "", device]
    return "|".join(fields).rstrip("|")


# ---------------------------------------------------------------------------------------
# Reading an ACK
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # MSA-3, else ERR-8, else ERR-3.2 / ERR-1's text


def read_ack(data: bytes) -> Ack:
    """Read MSA (and ERR) of an ACK frame. Raises `Hl7Error` if it is not an ACK."""
    try:
        text = decode(data).text
    except Hl7Error:
        # An ACK whose MSH we would refuse inbound (odd version, empty MSH-10) still
        # carries a readable MSA; Latin-1 never fails.
        text = data.decode("iso-8859-1").replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7Error("the answer is not an HL7 message", code="100")
    sep = text[3]
    comp = text[4]
    segments = {}
    for seg in text.split("\r"):
        name = seg[:3]
        if name not in segments:
            segments[name] = seg.split(sep)
    msa = segments.get("MSA")
    if msa is None or len(msa) < 3:
        raise Hl7Error("the answer has no MSA segment with MSA-1 and MSA-2", code="100")
    reason = msa[3] if len(msa) > 3 else ""
    err = segments.get("ERR")
    if not reason and err:
        if len(err) > 8 and err[8]:
            reason = err[8]
        elif len(err) > 3 and err[3]:
            reason = err[3].split(comp)[1] if comp in err[3] else err[3]
        elif len(err) > 1:
            reason = err[1]
    return Ack(msa[1].strip().upper(), msa[2].strip(), " ".join(reason.split())[:200])
