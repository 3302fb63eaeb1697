"""PMD destination: Pasientens måledata (NHN), domain.md §1.6.

PMD's FHIR API follows R5 and is backward compatible with R4 for Observation, its only
resource type. The event's Observations are POSTed to `{base_url}/` as a `collection`
Bundle in PMD's conventions:

- `Bundle.meta.tag` = the municipality number (system: Geonorge kommunenummer);
- `Bundle.identifier` = system `https://www.nhn.no/komlink/bundle-identifier`, value the
  event's deterministic Bundle id (the same on every retry);
- `performer` = the municipality by organisation number when the Observation has none;
- no `entry.request` (a collection Bundle has none, bdl-3), no other resource types.

`r5_problems` checks each Observation uses only elements R4 and R5 share (R4 elements R5
renamed or reshaped would be refused): see `R4_R5_OBSERVATION` below. Auth: HelseID with
DPoP.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import Field, field_validator

from hub import hookimpl
from hub.auth import AuthError, RequestAuthorizer, outcome_for_auth_error
from hub.contracts import DestinationType, RegisterDestination
from hub.domain.model import OutboundDelivery, Outcome
from hub.httpclient import TransportFailure

from .national import (
    NationalSettings,
    OrganisationMixin,
    make_authorizer,
    make_client,
    outcome_for_status,
    request,
)

MUNICIPALITY_TAG_SYSTEM = (
    "https://register.geonorge.no/sosi-kodelister/inndelinger/inndelingsbase/kommunenummer")
BUNDLE_IDENTIFIER_SYSTEM = "https://www.nhn.no/komlink/bundle-identifier"
ORGNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.101"
FHIR_JSON = "application/fhir+json"

# Observation elements that are in both R4 (4.0.1) and R5 (5.0.0) with the same meaning
# and JSON shape. R5 only adds elements (instantiates[x], triggeredBy, bodyStructure) and
# value types (Attachment, Reference); nothing here is R4-only.
R4_R5_OBSERVATION = frozenset({
    "resourceType", "id", "meta", "implicitRules", "language", "text", "contained",
    "extension", "modifierExtension", "identifier", "basedOn", "partOf", "status",
    "category", "code", "subject", "focus", "encounter", "effectiveDateTime",
    "effectivePeriod", "effectiveTiming", "effectiveInstant", "issued", "performer",
    "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger",
    "valueRange", "valueRatio", "valueTime", "valueDateTime", "valuePeriod",
    "dataAbsentReason", "interpretation", "note", "bodySite", "method", "specimen", "device",
    "referenceRange", "hasMember", "derivedFrom", "component",
})
# R4 SampledData has `period` (required); R5 renamed it `interval` + `intervalUnit`, so
# valueSampledData is not R4/R5 compatible.
R4_ONLY_VALUES = frozenset({"valueSampledData"})
_COMPONENT = frozenset({"id", "extension", "modifierExtension", "code", "valueQuantity",
                        "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger",
                        "valueRange", "valueRatio", "valueTime", "valueDateTime",
                        "valuePeriod", "dataAbsentReason", "interpretation", "referenceRange"})


class PmdSettings(NationalSettings, OrganisationMixin):
    requires_dpop: ClassVar[bool] = True
    municipality: str = Field(description="kommunenummer (4 digits), the Bundle's tag")
    scope: str = Field(description="the HelseID scope NHN granted the PMD client (ask NHN)")

    @field_validator("municipality")
    @classmethod
    def _kommunenummer(cls, value: str) -> str:
        if not re.fullmatch(r"\d{4}", value):
            raise ValueError(f"municipality {value!r} is not a 4-digit kommunenummer")
        return value


def r5_problems(bundle: dict[str, Any]) -> list[str]:
    """What in a PMD Bundle an R5 server would refuse, one line each."""
    problems = []
    if bundle.get("type") != "collection":
        problems.append(f"Bundle.type is {bundle.get('type')!r}, PMD takes 'collection'")
    for i, entry in enumerate(bundle.get("entry", [])):
        where = f"Bundle.entry[{i}]"
        for key in set(entry) - {"fullUrl", "resource"}:
            problems.append(f"{where}.{key}: not allowed in a collection Bundle")
        r = entry.get("resource") or {}
        if r.get("resourceType") != "Observation":
            problems.append(f"{where}: {r.get('resourceType')!r}, PMD stores Observation only")
            continue
        for key in sorted(set(r) - R4_R5_OBSERVATION):
            kind = "R4-only shape (R5 renamed SampledData.period)" \
                if key in R4_ONLY_VALUES else "not an R4/R5 Observation element"
            problems.append(f"{where}.resource.{key}: {kind}")
        for j, comp in enumerate(r.get("component", [])):
            for key in sorted(set(comp) - _COMPONENT):
                problems.append(f"{where}.resource.component[{j}].{key}: not R4/R5 compatible")
    return problems


def pmd_bundle(transaction: dict[str, Any], municipality: str,
               organisation_number: str) -> tuple[dict[str, Any], int]:
    """The PMD collection Bundle of an event's transaction, and how many resources of
    other types were left out (PMD stores Observations only)."""
    entries, skipped = [], 0
    for e in transaction.get("entry", []):
        r = e.get("resource")
        if not isinstance(r, dict):
            continue
        if r.get("resourceType") != "Observation":
            skipped += 1
            continue
        r = dict(r)
        r.setdefault("performer", [{"identifier": {"system": ORGNR_SYSTEM,
                                                   "value": organisation_number}}])
        entries.append({"fullUrl": e["fullUrl"], "resource": r})
    bundle = {
        "resourceType": "Bundle",
        "meta": {"tag": [{"system": MUNICIPALITY_TAG_SYSTEM, "code": municipality}]},
        "identifier": {"system": BUNDLE_IDENTIFIER_SYSTEM, "value": str(transaction.get("id"))},
        "type": "collection",
        "timestamp": transaction.get("timestamp"),
        "entry": entries,
    }
    return bundle, skipped


class PmdDestination:
    def __init__(self, name: str, settings: PmdSettings, auth: RequestAuthorizer) -> None:
        self.name = name
        self.settings = settings
        self.auth = auth
        self.client = make_client(settings, {"accept": "application/fhir+json",
                                             "content-type": FHIR_JSON})

    async def send(self, delivery: OutboundDelivery) -> Outcome:
        try:
            bundle, skipped = pmd_bundle(json.loads(delivery.payload),
                                         self.settings.municipality,
                                         self.settings.organisation_number)
        except (ValueError, KeyError, AttributeError) as exc:
            return Outcome.rejected(f"the delivery is not a Bundle: {exc}")
        if not bundle["entry"]:
            return Outcome.rejected("no Observation in this event: PMD stores Observations "
                                    "only (route only measurements to this destination)")
        problems = r5_problems(bundle)
        if problems:
            return Outcome.rejected("not R5-compatible for PMD: " + "; ".join(problems[:5]))
        body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            response = await request(self.client, self.auth, "POST", "", content=body)
        except TransportFailure as exc:
            return Outcome.retry(f"no answer from PMD ({exc}); will send again")
        except AuthError as exc:
            return outcome_for_auth_error(exc)
        outcome = outcome_for_status(response, datetime.now(UTC), "PMD")
        if outcome.kind == "delivered":
            left = f"; {skipped} resources of other types not sent" if skipped else ""
            return Outcome.delivered(f"{len(bundle['entry'])} Observations stored by PMD{left}",
                                     response.status)
        return outcome

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.auth.aclose()


def _factory(name: str, settings: PmdSettings) -> PmdDestination:
    return PmdDestination(name, settings, make_authorizer(name, settings, [settings.scope]))


@hookimpl(trylast=True)
def hub_register_destinations(register: RegisterDestination) -> None:
    register(DestinationType("pmd", PmdSettings, _factory))
