"""HL7 PHD IG Observations as a gateway uploads them (adapter `phd-fhir`) → measurement events.

The body is one PHD Observation or a Bundle (transaction, batch or collection) holding
Observations and the Patient/Device resources they reference. Each measurement
Observation becomes one event:

- its type from the MDC coding in `code` (mappings/measurements.toml; an unknown MDC code
  fails the message), its value from `valueQuantity` (UCUM, `code` required) converted to
  the type's canonical unit, or its parts from `component` (blood pressure);
- `dataAbsentReason` (NaN and other special FLOAT values) → a measurement without a value;
- the device: the PHD Device's IEEE system id (SYSID) when the Bundle holds it, else the id
  in `Observation.device.reference`; the patient comes from that device's enrolment, not
  from the gateway's Patient;
- the dedupe key: the PHD `conditionalCreate` identifier when present, else the same
  recipe from what the Observation has: device id, MDC code, effectiveDateTime.

Coincident-time-stamp Observations (the gateway's clock, MDC_ATTR_TIME_*) are skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import (
    Category,
    DeviceRef,
    Event,
    Measurement,
    MeasurementComponent,
    Quantity,
    StoredMessage,
)
from hub.errors import InputError, MappingError
from hub.measurements import MeasurementTable
from tryggbro_dho.common import loads_exact, measured_value

MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
PHD_IDENTIFIER = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
SYSID = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"  # IEEE EUI-64 system id
# MDC_ATTR_TIME_ABS, _TIME_BO, _TIME_REL, _TIME_REL_HI_RES: clock observations, no measurement
TIME_CODES = frozenset({"67975", "68226", "67983", "68072"})
KIND = "measurement"


def _fail(detail: str) -> InputError:
    return InputError("malformed-payload", detail)


class PhdFhirAdapter:
    def __init__(self, setup: AdapterSetup) -> None:
        self.source = setup.source
        self.measurements: MeasurementTable = setup.mappings.measurements

    # -- intake ------------------------------------------------------------------------

    def intake_key(self, request: IntakeRequest) -> str | None:
        data = loads_exact(request.body)
        observations, devices = _observations(data)
        if data.get("resourceType") == "Bundle":
            ident = data.get("identifier")
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                return f"bundle|{ident.get('system', '')}|{ident['value']}"
            recipes = sorted(_recipe(o, f"entry[{i}]", devices) for i, o in observations)
            if not recipes:
                raise _fail("the Bundle holds no measurement Observation")
            digest = hashlib.sha256("\n".join(recipes).encode()).hexdigest()[:40]
            return f"bundle-sha256|{digest}"
        if not observations:
            raise _fail("the Observation is a clock observation, not a measurement")
        return _recipe(observations[0][1], "(body)", devices)

    # -- parse ---------------------------------------------------------------------------

    def parse(self, message: StoredMessage) -> list[Event]:
        data = loads_exact(message.body)
        observations, devices = _observations(data)
        return [self._event(obs, where, devices) for where, obs in observations]

    def _event(self, obs: dict[str, Any], where: str,
               devices: Mapping[str, dict[str, Any]]) -> Event:
        mdc = _mdc_code(obs, where)
        mtype = self.measurements.by_mdc(mdc)
        effective = _effective(obs, where)
        device = _device(obs, where, devices)
        absent = _absent(obs)
        components: tuple[MeasurementComponent, ...] = ()
        value: Quantity | None = None
        if absent is None and mtype.components:
            parts = []
            for i, comp in enumerate(obs.get("component") or []):
                if "valueQuantity" not in comp:
                    continue  # supplemental information (valueCodeableConcept)
                cwhere = f"{where}.component[{i}]"
                ctype = self.measurements.by_mdc(_mdc_code(comp, cwhere))
                if ctype.key not in mtype.components:
                    raise MappingError(f"{cwhere}: {ctype.key} is not a part of {mtype.key}")
                q = self._quantity(comp, cwhere, ctype.key)
                if q is None:
                    absent = "not-a-number"
                    break
                parts.append(MeasurementComponent(ctype.key, q))
            if absent is None and not parts:
                raise _fail(f"{where}: a {mtype.key} Observation needs components with values")
            components = tuple(parts) if absent is None else ()
        elif absent is None:
            value = self._quantity(obs, where, mtype.key)
            if value is None:
                absent = "not-a-number"
        if mtype.components and value is not None:
            raise _fail(f"{where}: {mtype.key} has components, not a valueQuantity")
        measurement = Measurement(
            measurement_id=_recipe(obs, where, devices), type=mtype.key, effective_at=effective,
            value=value, components=components, mdc_code=mdc, device_display=device.model,
            data_absent=absent, note=_note(obs), phd=True)
        return Event(source=self.source, business_key=measurement.measurement_id, kind=KIND,
                     category=Category.HOME_FOLLOW_UP, occurred_at=effective, device=device,
                     measurement=measurement)

    def _quantity(self, element: dict[str, Any], where: str, type_key: str) -> Quantity | None:
        q = element.get("valueQuantity")
        if not isinstance(q, dict):
            raise _fail(f"{where}.valueQuantity: required (or dataAbsentReason)")
        if q.get("system") != UCUM or not isinstance(q.get("code"), str) or not q["code"]:
            raise _fail(f"{where}.valueQuantity: system must be {UCUM} with a unit code")
        value = measured_value(q.get("value"), f"{where}.valueQuantity.value")
        if value is None:
            return None
        return self.measurements.type(type_key).to_canonical(value, q["code"])


# -- helpers -------------------------------------------------------------------------------


def _observations(data: Any) -> tuple[list[tuple[str, dict[str, Any]]],
                                      dict[str, dict[str, Any]]]:
    """(where, Observation) pairs that are measurements, and Devices by fullUrl/Type/id."""
    if not isinstance(data, dict):
        raise _fail("the body must be a FHIR Observation or Bundle (a JSON object)")
    rtype = data.get("resourceType")
    if rtype == "Observation":
        found = [("(body)", data)]
        devices: dict[str, dict[str, Any]] = {}
    elif rtype == "Bundle":
        entries = data.get("entry")
        if not isinstance(entries, list):
            raise _fail("Bundle.entry: required, a list")
        found, devices = [], {}
        for i, entry in enumerate(entries):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                raise _fail(f"Bundle.entry[{i}].resource: required, an object")
            if resource.get("resourceType") == "Device":
                for key in (entry.get("fullUrl"), f"Device/{resource.get('id')}"):
                    if isinstance(key, str):
                        devices[key] = resource
            elif resource.get("resourceType") == "Observation":
                found.append((f"Bundle.entry[{i}]", resource))
    else:
        raise _fail(f"resourceType {rtype!r}: expected Observation or Bundle")
    return [(w, o) for w, o in found if _mdc_code(o, w) not in TIME_CODES], devices


def _mdc_code(element: dict[str, Any], where: str) -> str:
    code = element.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    for c in codings if isinstance(codings, list) else []:
        if isinstance(c, dict) and c.get("system") == MDC and isinstance(c.get("code"), str):
            return str(c["code"])
    raise _fail(f"{where}.code: needs an MDC coding (system {MDC})")


def _effective(obs: dict[str, Any], where: str) -> datetime:
    text = obs.get("effectiveDateTime")
    if not isinstance(text, str):
        raise _fail(f"{where}.effectiveDateTime: required")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _fail(f"{where}.effectiveDateTime: {text[:40]!r} is not a dateTime") from None
    if value.tzinfo is None:
        raise _fail(f"{where}.effectiveDateTime: needs a UTC offset (PHD IG)")
    return value


def _device(obs: dict[str, Any], where: str, devices: Mapping[str, dict[str, Any]]) -> DeviceRef:
    ref = obs.get("device", {}).get("reference") if isinstance(obs.get("device"), dict) else None
    if not isinstance(ref, str) or not ref:
        raise _fail(f"{where}.device.reference: required (the PHD Device)")
    resource = devices.get(ref)
    if resource is None:
        if not ref.startswith("Device/"):
            raise _fail(f"{where}.device.reference: {ref[:80]!r} is not in the Bundle")
        return DeviceRef(id=ref.removeprefix("Device/"))
    sysid = next((i.get("value") for i in resource.get("identifier", [])
                  if isinstance(i, dict) and i.get("system") == SYSID), None)
    model = " ".join(str(p) for p in (resource.get("manufacturer"),
                                      _model_number(resource)) if p) or None
    return DeviceRef(id=str(sysid or resource.get("id") or ref), model=model)


def _model_number(device: dict[str, Any]) -> str | None:
    model = device.get("modelNumber")
    return str(model) if model else None


def _absent(obs: dict[str, Any]) -> str | None:
    reason = obs.get("dataAbsentReason")
    if reason is None:
        return None
    codings = reason.get("coding") if isinstance(reason, dict) else None
    code = next((c.get("code") for c in codings or [] if isinstance(c, dict)), None)
    return str(code) if code else "unknown"


def _note(obs: dict[str, Any]) -> str | None:
    notes = [n.get("text") for n in obs.get("note") or [] if isinstance(n, dict)]
    text = "\n".join(t for t in notes if isinstance(t, str) and t)
    return text or None


def _recipe(obs: dict[str, Any], where: str, devices: Mapping[str, dict[str, Any]]) -> str:
    for ident in obs.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == PHD_IDENTIFIER \
                and isinstance(ident.get("value"), str) and ident["value"]:
            return str(ident["value"])
    effective = obs.get("effectiveDateTime")
    if not isinstance(effective, str):
        raise _fail(f"{where}.effectiveDateTime: required")
    return "-".join((_device(obs, where, devices).id, _mdc_code(obs, where), effective))
