"""Validation of mapped output: FHIR R4 structure, then the VKP rules we rely on.

fhir.resources checks structure and datatypes but not required bindings, profiles or
identifier systems (stack.md §2.1), so those are checked here explicitly, each with an
error that names the resource, the element and what was expected.

fhir.resources 8.x has no plain R4 package; R4B (4.3.0) is the closest model set and the
resources we emit are identical in R4 and R4B.
"""

from __future__ import annotations

import contextlib
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import BaseModel, TypeAdapter, ValidationError

from hub.domain.privacy import HNR_SYSTEM, HNR_TYPE_SYSTEM, PERSON_ID_SYSTEMS, person_id_problem
from hub.errors import ValidationFailure
from hub.fhir import vkp
from hub.mappings import MappingStore

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

# Required bindings fhir.resources does not enforce (nazrulworld/fhir.resources#76).
_STATUS = {
    "DetectedIssue": {"registered", "preliminary", "final", "amended", "corrected",
                      "cancelled", "entered-in-error", "unknown"},
    "Encounter": {"planned", "arrived", "triaged", "in-progress", "onleave", "finished",
                  "cancelled", "entered-in-error", "unknown"},
    "Composition": {"preliminary", "final", "amended", "entered-in-error"},
}
_SEVERITY = {"high", "moderate", "low"}


def structure_problems(bundle: dict[str, Any]) -> list[str]:
    """R4(B) structural problems of a Bundle, one line each.

    The envelope and each resource are validated with their own model: the same checks
    as validating the whole Bundle at once, ~18% faster (bench/RESULTS.md), because the
    Bundle model first has to find each entry's resource class.
    """
    problems: list[str] = []
    entries = bundle.get("entry", [])
    envelope = {**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"}
                                     for e in entries]}
    _check(Bundle, envelope, "Bundle", problems)
    for i, entry in enumerate(entries):
        resource = entry.get("resource")
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        try:
            model = get_fhir_model_class(str(rtype))
        except (KeyError, ValueError):
            problems.append(f"Bundle.entry[{i}].resource: unknown resourceType {rtype!r}")
            continue
        _check(model, resource, f"Bundle.entry[{i}].resource({rtype})", problems)
    return problems


# Resource types the built-in mappings emit; more are loaded on first use.
_WARM = ("Bundle", "DetectedIssue", "Encounter", "Composition", "MedicationDispense",
         "Observation")


def warm_up() -> None:
    """Import and build the validators of the common resource models now, so the first
    alarm after a start does not wait a second for them."""
    for name in _WARM:
        model = get_fhir_model_class(name)
        with contextlib.suppress(ValidationError):
            model.model_validate({"resourceType": name})


def _check(model: Any, data: Any, where: str, problems: list[str]) -> None:
    if _SHAPES.known_valid(model, data):
        return
    try:
        model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{where}.{loc}: {err['msg']}")


# ---------------------------------------------------------------------------------------
# Validation once per shape
# ---------------------------------------------------------------------------------------

class _Unresolvable(Exception):
    """A leaf whose FHIR primitive type cannot be told from the models alone."""


_Leaf = Callable[[Any], Any]
_Skeleton = tuple[Any, ...]


class ShapeCache:
    """Full fhir.resources validation once per *shape*, then only the values that differ.

    The mappers build resources from fixed templates: the keys, list lengths and value
    types (the shape) are the same for every alarm, only some values (ids, times, codes,
    identifiers) change. Everything fhir.resources checks about the structure (unknown
    keys, which choice of `value[x]`, required elements, null or empty elements, the
    resourceType) depends on the shape alone, and each primitive value is checked on its
    own by its type (`Id`, `DateTime`, `Code`, ...). So once one instance of a shape has
    passed full validation, another instance of the same shape is valid exactly when each
    primitive value that differs from that instance passes its own type's validator, which
    is the very validator fhir.resources runs for that element (the field's annotation,
    through a pydantic TypeAdapter). If any value fails, or a leaf's type cannot be told
    from the model (a polymorphic `contained` resource, say), the full validation runs, so
    the problems reported are always fhir.resources' own.
    """

    def __init__(self, max_shapes: int = 512) -> None:
        self.max_shapes = max_shapes
        # (model, skeleton) -> (the validated instance's leaf values, each leaf's validator)
        self._shapes: dict[tuple[Any, _Skeleton], tuple[list[Any], list[_Leaf]]] = {}
        self._adapters: dict[Any, _Leaf] = {}
        self._fields: dict[Any, dict[str, Any]] = {}

    def known_valid(self, model: Any, data: Any) -> bool:
        """True if `data` is valid for `model` without running the model; False means
        "not known": validate it fully (it is remembered if it passes)."""
        if not isinstance(data, dict):
            return False
        leaves: list[Any] = []
        skeleton = _skeleton(data, leaves)
        known = self._shapes.get((model, skeleton))
        if known is not None:
            values, validators = known
            for value, seen, validate in zip(leaves, values, validators, strict=True):
                if value != seen:
                    try:
                        validate(value)
                    except (ValidationError, ValueError, TypeError):
                        return False
            return True
        try:
            model.model_validate(data)
        except ValidationError:
            return False
        try:
            validators = self._leaf_validators(model, data)
        except _Unresolvable:
            return True  # valid, but this shape is always validated in full
        if len(self._shapes) >= self.max_shapes:
            self._shapes.clear()
        self._shapes[(model, skeleton)] = (leaves, validators)
        return True

    def _leaf_validators(self, model: Any, data: dict[str, Any]) -> list[_Leaf]:
        """One validator per leaf of `data`, in the order `_skeleton` lists the leaves."""
        out: list[_Leaf] = []
        self._walk_model(model, data, out)
        return out

    def _walk_model(self, model: Any, data: dict[str, Any], out: list[_Leaf]) -> None:
        fields = self._field_map(model)
        for key in sorted(data):
            value = data[key]
            if key == "resourceType":
                continue  # part of the skeleton: checked by the shape itself
            if key not in fields:
                raise _Unresolvable(key)
            self._walk_value(fields[key], value, out)

    def _walk_value(self, annotation: Any, value: Any, out: list[_Leaf]) -> None:
        annotation = _strip_optional(annotation)
        if isinstance(value, list):
            if typing.get_origin(annotation) is not list:
                raise _Unresolvable(annotation)
            (item,) = typing.get_args(annotation)
            for element in value:
                self._walk_value(item, element, out)
        elif isinstance(value, dict):
            klass = getattr(annotation, "get_model_klass", None)
            model = klass() if klass is not None else None
            if not (isinstance(model, type) and issubclass(model, BaseModel)) \
                    or model.__name__ in ("Resource", "DomainResource"):
                raise _Unresolvable(annotation)  # polymorphic: the type is in the data
            self._walk_model(model, value, out)
        else:
            if typing.get_origin(annotation) is not typing.Annotated:
                raise _Unresolvable(annotation)
            adapter = self._adapters.get(annotation)
            if adapter is None:
                adapter = self._adapters[annotation] = TypeAdapter(annotation).validate_python
            out.append(adapter)

    def _field_map(self, model: Any) -> dict[str, Any]:
        fields = self._fields.get(model)
        if fields is None:
            fields = {}
            for name, info in model.model_fields.items():
                fields[name] = info.annotation  # populate_by_name: the name works too
                if info.alias:
                    fields[info.alias] = info.annotation
            self._fields[model] = fields
        return fields


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise _Unresolvable(annotation)
        return args[0]
    return annotation


def _skeleton(value: Any, leaves: list[Any]) -> Any:
    """The shape of a JSON value (keys, list lengths, leaf types, resourceType); its leaf
    values are appended to `leaves` in a fixed order (sorted keys, depth first)."""
    if isinstance(value, dict):
        shape: list[Any] = []
        for key in sorted(value):
            item = value[key]
            shape.append(key)
            shape.append(item if key == "resourceType" else _skeleton(item, leaves))
        return tuple(shape)
    if isinstance(value, list):
        return ("list", *[_skeleton(item, leaves) for item in value])
    leaves.append(value)
    return type(value)


_SHAPES = ShapeCache()


def validate_bundle(bundle: dict[str, Any], mappings: MappingStore) -> None:
    """Raise ValidationFailure listing every problem of a mapped transaction Bundle."""
    problems = structure_problems(bundle)
    if not problems:
        problems = list(_vkp_problems(bundle, mappings))
    if problems:
        raise ValidationFailure(problems)


def _vkp_problems(bundle: dict[str, Any], mappings: MappingStore) -> Iterable[str]:
    if bundle.get("type") != "transaction":
        yield "Bundle.type: expected 'transaction'"
    ids = set()
    for i, entry in enumerate(bundle.get("entry", [])):
        resource = entry.get("resource", {})
        rtype, rid = resource.get("resourceType"), resource.get("id", "")
        where = f"{rtype}/{rid}"
        if not _ID.match(rid):
            yield f"Bundle.entry[{i}] {rtype}: id {rid!r} is not a valid FHIR id"
        if (rtype, rid) in ids:
            yield f"Bundle.entry[{i}] {where}: appears twice in the Bundle"
        ids.add((rtype, rid))
        request = entry.get("request", {})
        if request.get("method") != "PUT" or request.get("url") != f"{rtype}/{rid}":
            yield f"Bundle.entry[{i}] {where}: request must be PUT {rtype}/{rid} (idempotent)"
        statuses = _STATUS.get(rtype)
        if statuses is not None and resource.get("status") not in statuses:
            yield f"{where}: status {resource.get('status')!r} is not one of {sorted(statuses)}"
        check = _RULES.get(rtype)
        if check is not None:
            for problem in check(resource, mappings):
                yield f"{where}: {problem}"


def _code_in(mappings: MappingStore, concept: Any, codesystem: str, element: str) -> Iterable[str]:
    cs = mappings.codesystem(codesystem)
    codings = concept.get("coding", []) if isinstance(concept, dict) else []
    ours = [c for c in codings if c.get("system") == cs.url]
    if not ours:
        yield f"{element}: needs a coding from {codesystem} ({cs.url})"
    for c in ours:
        if c.get("code") not in cs:
            yield f"{element}: code {c.get('code')!r} is not in {codesystem}"


def _vkp_profiled(resource: dict[str, Any]) -> bool:
    return any(str(p).startswith((vkp.SD, "http://hl7.no/fhir/vkp"))
               for p in resource.get("meta", {}).get("profile", []))


# A hospital's own record number (HL7 v2 messages without a national id, docs/hl7v2.md):
# accepted only in resources that claim no VKP profile, and only marked as one.
_LOCAL_ID_TYPES = {"MR", "PI", "PT"}
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _is_local(ident: dict[str, Any]) -> bool:
    codings = (ident.get("type") or {}).get("coding", [])
    return (any(c.get("system") == _V2_0203 and c.get("code") in _LOCAL_ID_TYPES
                for c in codings)
            and ident.get("system") not in PERSON_ID_SYSTEMS)


def _person(ref: Any, element: str, local_ok: bool = False) -> Iterable[str]:
    ident = ref.get("identifier") if isinstance(ref, dict) else None
    if not isinstance(ident, dict):
        yield f"{element}: must reference the patient by identifier (no-basis FNR/DNR/FHN)"
        return
    if "reference" in ref:
        yield f"{element}: VKP references the patient by identifier only, not by literal reference"
    if local_ok and _is_local(ident):
        if not ident.get("system") or not ident.get("value"):
            yield f"{element}.identifier: a local record number needs its system and value"
        return
    if "system" not in ident and _is_hnr(ident):
        if not isinstance(ident.get("assigner"), dict):
            yield f"{element}.identifier: an H-number needs its assigner (the issuing organisation)"
        problem = person_id_problem(HNR_SYSTEM, str(ident.get("value", "")))
    else:
        problem = person_id_problem(str(ident.get("system")), str(ident.get("value", "")))
    if problem:
        yield f"{element}.identifier: {problem}"


def _is_hnr(ident: dict[str, Any]) -> bool:
    codings = (ident.get("type") or {}).get("coding", [])
    return any(c.get("system") == HNR_TYPE_SYSTEM and c.get("code") == "HNR" for c in codings)


def _uuid_identifier(resource: dict[str, Any]) -> Iterable[str]:
    idents = resource.get("identifier", [])
    if isinstance(idents, dict):
        idents = [idents]
    if not any(i.get("system") == vkp.UUID_SYSTEM for i in idents):
        yield f"identifier: needs one with system {vkp.UUID_SYSTEM} (a urn:uuid)"


def _detected_issue(r: dict[str, Any], m: MappingStore) -> Iterable[str]:
    yield from _code_in(m, r.get("code"), vkp.ALERT_CODE, "code")
    yield from _person(r.get("patient"), "patient")
    if "identifiedDateTime" not in r:
        yield "identifiedDateTime: required (when the alarm was raised)"
    if "severity" in r and r["severity"] not in _SEVERITY:
        yield f"severity: {r['severity']!r} is not one of {sorted(_SEVERITY)}"


def _encounter(r: dict[str, Any], m: MappingStore) -> Iterable[str]:
    yield from _uuid_identifier(r)
    profiles = r.get("meta", {}).get("profile", [])
    vkp_profiled = any(str(p).startswith(vkp.SD) for p in profiles)
    # A hospital stay from an HL7 v2 ADT message (class IMP/EMER/AMB/PRENC…, no VKP
    # profile) may name its patient by the hospital's record number and need not have a
    # participant or a start yet (a pre-admission); every other Encounter keeps the rules.
    hospital = not vkp_profiled and r.get("class", {}).get("code") in _HOSPITAL_CLASSES
    yield from _person(r.get("subject"), "subject", local_ok=hospital)
    participants = r.get("participant", [])
    if not participants and not hospital:
        yield "participant: at least one is required (vkp-Encounter)"
    # vkp-encounter-mode only has remote modes (image, speech, listening-in): an Encounter
    # that claims no VKP profile (a physical visit) codes its participants otherwise.
    for i, p in enumerate(participants):
        types = p.get("type", [])
        if len(types) != 1:
            yield f"participant[{i}].type: exactly one is required (vkp-encounter-mode)"
        for t in types if vkp_profiled else ():
            yield from _code_in(m, t, vkp.ENCOUNTER_MODE, f"participant[{i}].type")
    if "start" not in r.get("period", {}) and not hospital:
        yield "period.start: required (vkp-Encounter)"
    reasons = r.get("reasonCode", [])
    if len(reasons) > 1:
        yield "reasonCode: at most one (vkp-Encounter)"
    for reason in reasons:
        yield from _code_in(m, reason, vkp.ENCOUNTER_REASON, "reasonCode")


_HOSPITAL_CLASSES = {"IMP", "AMB", "EMER", "PRENC", "OBSENC", "ACUTE", "NONAC", "SS"}


def _composition(r: dict[str, Any], m: MappingStore) -> Iterable[str]:
    categories = r.get("category", [])
    if not categories:
        yield "category: at least one is required (vkp-composition-category)"
    for c in categories:
        yield from _code_in(m, c, vkp.COMPOSITION_CATEGORY, "category")
    yield from _person(r.get("subject"), "subject")
    for i, ev in enumerate(r.get("event", [])):
        for c in ev.get("code", []):
            yield from _code_in(m, c, vkp.COMPOSITION_EVENT, f"event[{i}].code")
    for i, section in enumerate(r.get("section", [])):
        if "code" in section:
            yield from _code_in(m, section["code"], vkp.COMPOSITION_SECTION, f"section[{i}].code")


# ---------------------------------------------------------------------------------------
# vkp-Observation (DHO measurements; domain.md §1.3, §4.1–4.2)
# ---------------------------------------------------------------------------------------

_OBSERVATION_STATUS = {"registered", "preliminary", "final", "amended", "corrected",
                       "cancelled", "entered-in-error", "unknown"}
_VITAL_SIGNS = ("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")


def _ucum_quantity(quantity: Any, element: str) -> Iterable[str]:
    if not isinstance(quantity, dict):
        return
    if quantity.get("system") != vkp.UCUM:
        yield f"{element}.system: must be UCUM ({vkp.UCUM})"
    if not quantity.get("code"):
        yield f"{element}.code: required (the UCUM unit code)"


def _coded_quantity(quantity: Any, element: str) -> Iterable[str]:
    """qty-3: a unit code needs its system; a lab unit the sender did not code is text."""
    if isinstance(quantity, dict) and quantity.get("code") and not quantity.get("system"):
        yield f"{element}.system: required when a unit code is given (qty-3)"


def _observation(r: dict[str, Any], m: MappingStore) -> Iterable[str]:
    if r.get("status") not in _OBSERVATION_STATUS:
        yield f"status: {r.get('status')!r} is not one of {sorted(_OBSERVATION_STATUS)}"
    yield from _uuid_identifier(r)
    vital = any((c.get("system"), c.get("code")) == _VITAL_SIGNS
                for cat in r.get("category", []) for c in cat.get("coding", []))
    # A hospital lab result (no VKP profile, not a vital sign) may name its patient by the
    # record number and keep a unit the sender did not code in UCUM as text only.
    lab = not vital and not _vkp_profiled(r)
    yield from _person(r.get("subject"), "subject", local_ok=lab)
    if vital and not any(c.get("system") == vkp.LOINC
                         for c in r.get("code", {}).get("coding", [])):
        yield f"code: a vital-signs Observation needs a LOINC coding ({vkp.LOINC})"
    check = _coded_quantity if lab else _ucum_quantity
    yield from check(r.get("valueQuantity"), "valueQuantity")
    for i, comp in enumerate(r.get("component", [])):
        yield from check(comp.get("valueQuantity"), f"component[{i}].valueQuantity")
    has_value = any(k.startswith("value") for k in r)
    if has_value and "dataAbsentReason" in r:
        yield "dataAbsentReason: only when there is no value (obs-6)"
    if not has_value and "dataAbsentReason" not in r and not r.get("component") \
            and not r.get("hasMember"):
        yield "value[x]: a value, components or a dataAbsentReason is required (vs-2)"


_RULES: dict[str, Callable[[dict[str, Any], MappingStore], Iterable[str]]] = {
    "DetectedIssue": _detected_issue,
    "Encounter": _encounter,
    "Composition": _composition,
    "Observation": _observation,
}


# --- vkp-MedicationDispense-v090 (medication dispenser, issue 3) -----------------------
# Kept in one block so it merges on its own. Profile: VKP-R4 StructureDefinition
# vkp-MedicationDispense-v090 (domain.md §1.3).

_DISPENSE_STATUS = {"in-progress", "completed"}  # vkp-medicationdispense-message-status
_DISPENSE_FORBIDDEN = ("partOf", "context", "supportingInformation", "authorizingPrescription",
                       "type", "quantity", "daysSupply", "whenPrepared", "destination",
                       "receiver", "note", "substitution", "detectedIssue")


def _medication_dispense(r: dict[str, Any], m: MappingStore) -> Iterable[str]:
    yield from _uuid_identifier(r)
    if r.get("status") not in _DISPENSE_STATUS:
        yield (f"status {r.get('status')!r} is not one of {sorted(_DISPENSE_STATUS)} "
               "(vkp-MedicationDispense)")
    category = r.get("category")
    if not isinstance(category, dict):
        yield "category: required, one coding from vkp-medicationdispense-events"
    else:
        yield from _code_in(m, category, vkp.MEDICATION_DISPENSE_EVENTS, "category")
    yield from _person(r.get("subject"), "subject")
    performers = r.get("performer", [])
    if not performers:
        yield "performer: at least one is required (the dispenser device, by identifier)"
    for i, p in enumerate(performers):
        actor = p.get("actor") if isinstance(p, dict) else None
        if not isinstance(actor, dict):
            yield f"performer[{i}].actor: required"
            continue
        if "reference" in actor:
            yield (f"performer[{i}].actor.reference: not allowed in vkp-MedicationDispense "
                   "(0..0); name the device or person by actor.identifier (system + value)")
        ident = actor.get("identifier")
        if not isinstance(ident, dict) or not ident.get("system") or not ident.get("value"):
            yield (f"performer[{i}].actor.identifier: required with system and value "
                   "(the dispenser's serial number or the person's HPR number)")
    if "whenHandedOver" not in r:
        yield "whenHandedOver: required (when the dose was handed over)"
    medication = r.get("medicationCodeableConcept")
    if not isinstance(medication, dict) or medication.get("text") != vkp.UNKNOWN_MEDICATION:
        yield (f"medicationCodeableConcept.text: fixed to {vkp.UNKNOWN_MEDICATION!r} in "
               "vkp-MedicationDispense; put the dispenser's free text in dosageInstruction.text")
    for element in _DISPENSE_FORBIDDEN:
        if element in r:
            yield f"{element}: not allowed in vkp-MedicationDispense (0..0)"


_RULES["MedicationDispense"] = _medication_dispense


# --- HL7 v2 hospital resources: Patient, DiagnosticReport (docs/hl7v2.md) ---------------

_REPORT_STATUS = {"registered", "partial", "preliminary", "final", "amended", "corrected",
                  "appended", "cancelled", "entered-in-error", "unknown"}


def _patient(r: dict[str, Any], m: MappingStore) -> Iterable[str]:
    """Every national id a Patient carries is a valid one (mod-11, D-/H-number rules)."""
    for i, ident in enumerate(r.get("identifier", [])):
        system = ident.get("system")
        if system in PERSON_ID_SYSTEMS or (system is None and _is_hnr(ident)):
            problem = person_id_problem(system or HNR_SYSTEM, str(ident.get("value", "")))
            if problem:
                yield f"identifier[{i}]: {problem}"


def _diagnostic_report(r: dict[str, Any], m: MappingStore) -> Iterable[str]:
    if r.get("status") not in _REPORT_STATUS:
        yield f"status: {r.get('status')!r} is not one of {sorted(_REPORT_STATUS)}"
    yield from _uuid_identifier(r)
    yield from _person(r.get("subject"), "subject", local_ok=True)


_RULES["Patient"] = _patient
_RULES["DiagnosticReport"] = _diagnostic_report
