"""Builders for resources in the VKP R4 shape (domain.md §1.3), as plain JSON dicts.

Dicts, not models: building with fhir.resources costs ~50× a dict, and every Bundle is
validated once as a whole anyway (`hub.fhir.validate`). Identifiers use the no-basis
OIDs; patients are referenced by identifier (a logical reference), never by id.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from hub.domain.ids import TRYGGBRO_NAMESPACE
from hub.domain.model import DeviceRef, OrganisationRef, Performer, PersonId
from hub.domain.privacy import HNR_SYSTEM, HNR_TYPE_SYSTEM
from hub.mappings import MappingStore

SD = "http://ehelse.no/fhir/StructureDefinition/"
PROFILE_DETECTED_ISSUE = SD + "vkp-DetectedIssue-v090"
PROFILE_ENCOUNTER = SD + "vkp-Encounter-v090"
PROFILE_DIGITAL_ENCOUNTER = SD + "vkp-digital-Encounter-v090"
PROFILE_COMPOSITION = SD + "vkp-Composition-v090"
EXT_ENCOUNTER_DEVICE = SD + "vkp-encounterDevice-v090"
PROFILE_MEDICATION_DISPENSE = SD + "vkp-MedicationDispense-v090"
# The extension's fixed url (VKP-R4 vkp-medicationDispenseDevice-v090, Extension.url).
EXT_MEDICATION_DISPENSE_DEVICE = SD + "vkp-medicationDispenseDevice-v090"
# vkp-MedicationDispense fixes medicationCodeableConcept.text to this value: the
# dispenser does not know the medicine; the free text goes in dosageInstruction.text.
UNKNOWN_MEDICATION = "Ukjent medisin"

UUID_SYSTEM = "urn:ietf:rfc:3986"
ORG_NUMBER_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.101"  # Enhetsregisteret
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"
# Identifier systems for vendor ids when the vendor publishes none of its own; the
# configured source name completes them (urn:tryggbro:alarm:<source>).
DEVICE_ID_SYSTEM_PREFIX = "urn:tryggbro:device:"
ALARM_ID_SYSTEM_PREFIX = "urn:tryggbro:alarm:"

ALERT_CODE = "vkp-alert-code"
COMPOSITION_EVENT = "vkp-composition-event"
COMPOSITION_CATEGORY = "vkp-composition-category"
COMPOSITION_SECTION = "vkp-composition-section"
ENCOUNTER_MODE = "vkp-encounter-mode"
ENCOUNTER_REASON = "vkp-encounter-reason"
MEDICATION_DISPENSE_EVENTS = "vkp-medicationdispense-events"


def instant(value: datetime) -> str:
    """FHIR dateTime/instant text; naive datetimes are refused (a time without a zone
    is ambiguous across the DST change, and alarms happen at night)."""
    if value.tzinfo is None:
        raise ValueError("datetime without a time zone")
    return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")


def coding(mappings: MappingStore, codesystem: str, code: str) -> dict[str, str]:
    cs = mappings.codesystem(codesystem)
    return {"system": cs.url, "code": code, "display": cs.display(code)}


def concept(mappings: MappingStore, codesystem: str, code: str) -> dict[str, Any]:
    return {"coding": [coding(mappings, codesystem, code)]}


def person_reference(person: PersonId) -> dict[str, Any]:
    if person.system == HNR_SYSTEM:
        # no-basis slice HNR: no national system; the type says what it is and the
        # assigner says whose number it is.
        identifier: dict[str, Any] = {
            "type": {"coding": [{"system": HNR_TYPE_SYSTEM, "code": "HNR"}]},
            "value": person.value,
        }
        if person.assigner:
            identifier["assigner"] = {"identifier": {"system": ORG_NUMBER_SYSTEM,
                                                     "value": person.assigner}}
        return {"identifier": identifier}
    return {"identifier": {"system": person.system, "value": person.value}}


def organisation_reference(org: OrganisationRef) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "type": "Organization",
        "identifier": {"system": ORG_NUMBER_SYSTEM, "value": org.org_number},
    }
    if org.name:
        ref["display"] = org.name
    return ref


def device_reference(source: str, device: DeviceRef) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "type": "Device",
        "identifier": {"system": DEVICE_ID_SYSTEM_PREFIX + source, "value": device.id},
    }
    if device.model:
        ref["display"] = device.model
    return ref


def uuid_identifier(resource_id: str) -> dict[str, str]:
    return {"system": UUID_SYSTEM, "value": f"urn:uuid:{resource_id}"}


def encounter_device_extension(source: str, device: DeviceRef) -> dict[str, Any]:
    """vkp-encounterDevice-v090: the device that raised the event, as the EHR shows it."""
    parts: list[dict[str, Any]] = [
        {
            "url": "deviceIdentifier",
            "valueIdentifier": {"system": DEVICE_ID_SYSTEM_PREFIX + source, "value": device.id},
        },
        {"url": "display", "valueString": device.model or device.id},
    ]
    if device.type:
        parts.append({"url": "type", "valueString": device.type})
    if device.model:
        parts.append({"url": "typeName", "valueString": device.model})
    if device.location:
        parts.append({"url": "location", "valueString": device.location})
    return {"url": EXT_ENCOUNTER_DEVICE, "extension": parts}


def performer_identifier(performer: Performer) -> dict[str, Any]:
    """A logical reference by identifier: vkp-MedicationDispense forbids
    `performer.actor.reference`."""
    ref: dict[str, Any] = {"identifier": {"system": performer.system, "value": performer.value}}
    if performer.display:
        ref["display"] = performer.display
    return ref


def device_performer(source: str, device: DeviceRef) -> Performer:
    """The device as a performer, in the same identifier system as `device_reference`."""
    return Performer(DEVICE_ID_SYSTEM_PREFIX + source, device.id, device.model)


def medication_dispense_device_extension(
    device: DeviceRef, generic_type: str
) -> dict[str, Any]:
    """vkp-medicationDispenseDevice-v090: `identifier` and `displayName` and `type` 1..1
    (strings), `typeName` and `location` optional."""
    parts: list[dict[str, Any]] = [
        {"url": "identifier", "valueString": device.id},
        {"url": "displayName", "valueString": device.model or device.id},
        {"url": "type", "valueString": device.type or generic_type},
    ]
    if device.model:
        parts.append({"url": "typeName", "valueString": device.model})
    if device.location:
        parts.append({"url": "location", "valueString": device.location})
    return {"url": EXT_MEDICATION_DISPENSE_DEVICE, "extension": parts}


def narrative(lines: Sequence[str]) -> dict[str, str]:
    """A generated XHTML narrative; every line escaped (free text may hold '<' or '&')."""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><ul>{items}</ul></div>',
    }


def entry_handle(resource_type: str, resource_id: str) -> str:
    return str(uuid.uuid5(TRYGGBRO_NAMESPACE, f"fullUrl|{resource_type}/{resource_id}"))


def transaction_bundle(
    bundle_id: str, timestamp: datetime, resources: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A transaction of idempotent PUTs: each resource at its deterministic id.

    Update-as-create converges on retries and replays (reliability.md §3.1); a
    transaction makes the EHR see an alarm's resources together or not at all.
    Each entry's fullUrl is a handle of its own, never equal to the resource's
    `urn:uuid` identifier: some servers (Medplum among them) rewrite every string equal
    to a fullUrl, identifiers included, into the new resource's location.
    """
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "transaction",
        "timestamp": instant(timestamp),
        "entry": [
            {
                "fullUrl": f"urn:uuid:{entry_handle(r['resourceType'], r['id'])}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }
