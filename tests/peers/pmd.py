"""A local PMD peer (Pasientens måledata, NHN), written from NHN's published API as
summarised in shared/docs/domain.md §1.6 and §5 (PMD follows FHIR R5, backward
compatible with R4 for Observation).

Why: PMD's environments are not reachable from tests. The peer serves on 127.0.0.1 with
real sockets:
- `POST /` with a Bundle: `type: collection`, Observation entries only, no
  `entry.request`; `Bundle.meta.tag` = a 4-digit kommunenummer (Geonorge system) and
  `Bundle.identifier` (komlink system); each Observation only with elements R5 knows
  (the R5 element list below, written from the R5 Observation page, not from the hub's
  R4∩R5 list), R4 structure (hub.fhir, as PMD reads R4 Observations), and a subject
  identified by fødselsnummer. Token: DPoP-bound, with the scope the test configures.
- `POST /Observation/_search` (form-encoded, `patient.identifier=<fnr>`): a searchset.

domain.md does not give PMD's success body: the peer answers 200 with the stored Bundle.
Errors are OperationOutcomes with 400 (invalid), 401/403 (token), 503 when told to fail.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.fhir import structure_problems

from ._national import (
    Grant,
    HttpPeer,
    Refusal,
    StaticTokens,
    Verifier,
    fhir_json,
    operation_outcome,
)

TAG_SYSTEM = ("https://register.geonorge.no/sosi-kodelister/inndelinger/inndelingsbase/"
              "kommunenummer")
IDENTIFIER_SYSTEM = "https://www.nhn.no/komlink/bundle-identifier"
FNR_SYSTEMS = {"urn:oid:2.16.578.1.12.4.1.4.1", "urn:oid:2.16.578.1.12.4.1.4.2"}

# FHIR R5 (5.0.0) Observation, every element (hl7.org/fhir/R5/observation.html).
R5_OBSERVATION = {
    "resourceType", "id", "meta", "implicitRules", "language", "text", "contained",
    "extension", "modifierExtension", "identifier", "instantiatesCanonical",
    "instantiatesReference", "basedOn", "triggeredBy", "partOf", "status", "category", "code",
    "subject", "focus", "encounter", "effectiveDateTime", "effectivePeriod", "effectiveTiming",
    "effectiveInstant", "issued", "performer", "valueQuantity", "valueCodeableConcept",
    "valueString", "valueBoolean", "valueInteger", "valueRange", "valueRatio",
    "valueSampledData", "valueTime", "valueDateTime", "valuePeriod", "valueAttachment",
    "valueReference", "dataAbsentReason", "interpretation", "note", "bodySite",
    "bodyStructure", "method", "specimen", "device", "referenceRange", "hasMember",
    "derivedFrom", "component",
}
# R5 SampledData (interval + intervalUnit replaced R4's period).
R5_SAMPLED_DATA = {"id", "extension", "origin", "interval", "intervalUnit", "factor",
                   "lowerLimit", "upperLimit", "dimensions", "codeMap", "offsets", "data"}


@dataclass
class StoredBundle:
    municipality: str
    identifier: str
    bundle: dict[str, Any]


def r5_observation_problems(obs: dict[str, Any], where: str) -> list[str]:
    problems = [f"{where}.{k}: unknown element in R5 Observation"
                for k in sorted(set(obs) - R5_OBSERVATION)]
    sampled = obs.get("valueSampledData")
    if isinstance(sampled, dict):
        problems += [f"{where}.valueSampledData.{k}: not in R5 SampledData"
                     for k in sorted(set(sampled) - R5_SAMPLED_DATA)]
    return problems


class PmdPeer(HttpPeer):
    name = "pmd"

    def __init__(self, scope: str, verifier: Verifier | None = None) -> None:
        self.scope = scope
        self.tokens = StaticTokens(require_dpop=True)  # PMD takes DPoP-bound tokens only
        self.verifier: Verifier = verifier or self.tokens
        self.bundles: list[StoredBundle] = []
        super().__init__(Starlette(routes=[
            Route("/", self._post, methods=["POST"]),
            Route("/Observation/_search", self._search, methods=["POST"]),
        ]))

    def stored(self) -> list[StoredBundle]:
        with self.lock:
            return list(self.bundles)

    def _access(self, request: Request) -> Response | Grant:
        result = self.verifier.verify(request.method, str(request.url), request.headers)
        if isinstance(result, Refusal):
            return JSONResponse({"title": "Unauthorized", "detail": result.reason},
                                status_code=result.status,
                                headers=result.headers())
        if self.scope not in result.scopes:
            return fhir_json(operation_outcome("error", "forbidden",
                                               f"scope {self.scope} required"), 403)
        return result

    def _problems(self, bundle: Any) -> list[str]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            return ["not a Bundle"]
        problems = []
        if bundle.get("type") != "collection":
            problems.append(f"Bundle.type must be collection, not {bundle.get('type')!r}")
        tags = [t for t in (bundle.get("meta") or {}).get("tag", [])
                if t.get("system") == TAG_SYSTEM]
        if len(tags) != 1 or not re.fullmatch(r"\d{4}", str(tags[0].get("code", ""))):
            problems.append("Bundle.meta.tag: exactly one kommunenummer tag is required")
        if (bundle.get("identifier") or {}).get("system") != IDENTIFIER_SYSTEM \
                or not (bundle.get("identifier") or {}).get("value"):
            problems.append(f"Bundle.identifier: system {IDENTIFIER_SYSTEM} and a value")
        entries = bundle.get("entry") or []
        if not entries:
            problems.append("Bundle.entry: no Observation")
        for i, entry in enumerate(entries):
            where = f"Bundle.entry[{i}]"
            if "request" in entry or "response" in entry:
                problems.append(f"{where}: request/response not allowed in a collection")
            obs = entry.get("resource") or {}
            if obs.get("resourceType") != "Observation":
                problems.append(f"{where}: only Observation is accepted, not "
                                f"{obs.get('resourceType')!r}")
                continue
            problems += r5_observation_problems(obs, f"{where}.resource")
            ident = (obs.get("subject") or {}).get("identifier") or {}
            if ident.get("system") not in FNR_SYSTEMS:
                problems.append(f"{where}.resource.subject.identifier: a fødselsnummer")
        if not problems:
            problems = structure_problems(bundle)
        return problems

    async def _post(self, request: Request) -> Response:
        access = self._access(request)
        if not isinstance(access, Grant):
            return access
        if (status := self.next_failure()) is not None:
            return fhir_json(operation_outcome("error", "transient", "Simulated"), status)
        try:
            bundle = json.loads(await request.body())
        except ValueError:
            return fhir_json(operation_outcome("error", "invalid", "not JSON"), 400)
        problems = self._problems(bundle)
        if problems:
            return fhir_json(operation_outcome("error", "invalid", "; ".join(problems[:5])),
                             400)
        municipality = next(t["code"] for t in bundle["meta"]["tag"]
                            if t.get("system") == TAG_SYSTEM)
        with self.lock:
            self.bundles.append(StoredBundle(municipality, bundle["identifier"]["value"],
                                             bundle))
            self.lock.notify_all()
        return fhir_json(bundle, 200)

    async def _search(self, request: Request) -> Response:
        access = self._access(request)
        if not isinstance(access, Grant):
            return access
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        fnr = str(form.get("patient.identifier", ""))
        with self.lock:
            found = [e["resource"] for b in self.bundles for e in b.bundle["entry"]
                     if ((e["resource"].get("subject") or {}).get("identifier") or {})
                     .get("value") == fnr]
        return fhir_json({"resourceType": "Bundle", "type": "searchset", "total": len(found),
                          "entry": [{"resource": r} for r in found]})
