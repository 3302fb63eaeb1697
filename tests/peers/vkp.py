"""A local VKP R4 peer (Velferdsteknologisk knutepunkt), written from NHN's published
documentation as summarised in shared/docs/domain.md §1.2–1.4.

Why: VKP's test environment is not reachable from tests. This peer serves the R4 API shape
`/epj/r4/{orgnr}/{resource}` on 127.0.0.1 with real sockets and checks, as VKP does:
- the access token (through a swappable `Verifier`, see tests/peers/_national.py), the
  scope `nhn:vkp/api/user/<resource>.<read|write>`, the claim `client_amr` =
  `private_key_jwt`, and the claim `nhn:vkp/client/claims/vkp-id` against its
  authorisation register (which sender may call which organisation);
- the organisation number in the path (9 digits, mod-11, known to VKP);
- the resource: JSON, type and id matching the path, R4 structure (hub.fhir), the
  patient's fødselsnummer (mod-11), and that the patient has an active service in that
  municipality ("tjenstlig behov").

Errors are OperationOutcomes coded with vkp-operation-outcome-v090 (1.x forbidden, 2.x
invalid, 3.1 timed out). domain.md gives the codes, not the HTTP statuses VKP sends with
them: this peer answers 1.x with 403, 2.x with 400 and 3.x with 503, and the hub decides by
the code. A test can queue failures (`fail_next("3.1")`) and seed Patients for the read side.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
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

OUTCOME_SYSTEM = "http://ehelse.no/fhir/CodeSystem/vkp-operation-outcome-v090"
FNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"
DNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.2"
VKP_ID_CLAIM = "nhn:vkp/client/claims/vkp-id"
DISPLAY = {"1.1": "NotActive", "1.2": "NotAllowed", "1.3": "MissingActiveService",
           "1.4": "NoAccess", "1.5": "NotAuthorized", "2.1": "InvalidSsn", "2.2": "InvalidOrg",
           "2.3": "InvalidParameterCount", "2.4": "InvalidFormat", "3.1": "TimedOut"}
PERSON_ELEMENT = {"DetectedIssue": "patient", "Encounter": "subject", "Composition": "subject",
                  "MedicationDispense": "subject", "Observation": "subject"}


def national_id_ok(value: str) -> bool:
    """Fødselsnummer / D-nummer check digits (mod 11), written here on its own."""
    if not re.fullmatch(r"\d{11}", value):
        return False
    d = [int(c) for c in value]
    k1 = 11 - sum(a * b for a, b in zip(d[:9], (3, 7, 6, 1, 8, 9, 4, 5, 2), strict=True)) % 11
    k1 = 0 if k1 == 11 else k1
    k2 = 11 - sum(a * b for a, b in zip(d[:10], (5, 4, 3, 2, 7, 6, 5, 4, 3, 2),
                                         strict=True)) % 11
    k2 = 0 if k2 == 11 else k2
    return k1 == d[9] and k2 == d[10] and k1 != 10 and k2 != 10


def orgnr_ok(value: str) -> bool:
    if not re.fullmatch(r"\d{9}", value):
        return False
    rest = sum(int(c) * w for c, w in zip(value[:8], (3, 2, 7, 6, 5, 4, 3, 2), strict=True)) % 11
    check = 0 if rest == 0 else 11 - rest
    return check != 10 and check == int(value[8])


def vkp_error(code: str, text: str) -> Response:
    status = 503 if code.startswith("3") else 400 if code.startswith("2") else 403
    severity = "error"
    issue_code = {"1": "forbidden", "2": "invalid", "3": "timeout"}[code[0]]
    return fhir_json(operation_outcome(severity, issue_code, text, {
        "system": OUTCOME_SYSTEM, "code": code, "display": DISPLAY.get(code, code)}), status)


@dataclass
class Received:
    orgnr: str
    resource_type: str
    id: str
    resource: dict[str, Any]
    scheme: str
    vkp_id: str | None


@dataclass
class Municipality:
    orgnr: str
    # fødselsnummer of patients with an active service ("tjenstlig behov") here
    active_service: set[str] = field(default_factory=set)
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)  # fnr -> Patient


class VkpPeer(HttpPeer):
    """Usage::

        with VkpPeer() as vkp:
            vkp.add_municipality("974778742", active_service={"01819012012"})
            token = vkp.tokens.issue(["nhn:vkp/api/user/detectedissue.write", …],
                                     **vkp.client_claims("Leverandor_Alarm_Oslo"))
            vkp.allow("Leverandor_Alarm_Oslo", "974778742")
            … hub sends to f"{vkp.url}/epj/r4" …
    """

    name = "vkp"

    def __init__(self, verifier: Verifier | None = None) -> None:
        self.tokens = StaticTokens(require_dpop=False)  # VKP documents Bearer (domain §1.2)
        self.verifier: Verifier = verifier or self.tokens
        self.municipalities: dict[str, Municipality] = {}
        self.register: dict[str, set[str]] = {}  # vkp-id -> organisation numbers it may call
        self.received: list[Received] = []
        self.searches = 0
        super().__init__(Starlette(routes=[
            Route("/epj/r4/{orgnr}/patient/_search", self._search, methods=["POST"]),
            Route("/epj/r4/{orgnr}/{resource}/{id}", self._put, methods=["PUT"]),
        ]))

    # -- test control -----------------------------------------------------------------------

    def add_municipality(self, orgnr: str, active_service: set[str] | None = None) -> Municipality:
        m = Municipality(orgnr, set(active_service or ()))
        self.municipalities[orgnr] = m
        return m

    def allow(self, vkp_id: str, orgnr: str) -> None:
        self.register.setdefault(vkp_id, set()).add(orgnr)

    @staticmethod
    def client_claims(vkp_id: str) -> dict[str, Any]:
        return {VKP_ID_CLAIM: vkp_id, "client_amr": "private_key_jwt"}

    def resources(self, resource_type: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received
                    if resource_type is None or r.resource_type == resource_type]

    # -- HTTP side --------------------------------------------------------------------------

    def _access(self, request: Request, orgnr: str, scope: str) -> Response | Grant:
        result = self.verifier.verify(request.method, str(request.url), request.headers)
        if isinstance(result, Refusal):
            return fhir_json(operation_outcome("error", "login", result.reason), result.status,
                             result.headers())
        if not orgnr_ok(orgnr) or orgnr not in self.municipalities:
            return vkp_error("2.2", f"Organisation {orgnr} is not a VKP recipient")
        if scope not in result.scopes:
            return vkp_error("1.5", f"The token lacks the scope {scope}")
        if result.claims.get("client_amr") != "private_key_jwt":
            return vkp_error("1.5", "client_amr must be private_key_jwt")
        vkp_id = str(result.claims.get(VKP_ID_CLAIM, ""))
        if orgnr not in self.register.get(vkp_id, set()):
            return vkp_error("1.2", f"The client {vkp_id or '(no vkp-id)'} is not granted "
                                    f"access to organisation {orgnr}")
        return result

    async def _put(self, request: Request) -> Response:
        orgnr = request.path_params["orgnr"]
        rtype_path, rid = request.path_params["resource"], request.path_params["id"]
        access = self._access(request, orgnr, f"nhn:vkp/api/user/{rtype_path.lower()}.write")
        if not isinstance(access, Grant):
            return access
        if (code := self.next_failure()) is not None:
            return vkp_error(code, f"Simulated {DISPLAY.get(code, code)}")
        try:
            resource = json.loads(await request.body())
        except ValueError:
            return vkp_error("2.4", "The body is not JSON")
        if not isinstance(resource, dict):
            return vkp_error("2.4", "The body is not a FHIR resource")
        rtype = str(resource.get("resourceType"))
        if rtype.lower() != rtype_path.lower() or resource.get("id") != rid:
            return vkp_error("2.4", f"{rtype}/{resource.get('id')} does not match the URL")
        problems = structure_problems({"resourceType": "Bundle", "type": "collection",
                                       "entry": [{"resource": resource}]})
        if problems:
            return vkp_error("2.4", "; ".join(problems[:3]))
        element = PERSON_ELEMENT.get(rtype)
        if element:
            ident = (resource.get(element) or {}).get("identifier") or {}
            value = str(ident.get("value", ""))
            if ident.get("system") not in (FNR_SYSTEM, DNR_SYSTEM) or not national_id_ok(value):
                return vkp_error("2.1", f"{rtype}.{element}: no valid fødselsnummer")
            if value not in self.municipalities[orgnr].active_service:
                return vkp_error("1.3", "Ikke oppfylt tjenstlig behov: the patient has no "
                                        f"active service in organisation {orgnr}")
        with self.lock:
            existed = any(r.orgnr == orgnr and r.resource_type == rtype and r.id == rid
                          for r in self.received)
            self.received = [r for r in self.received
                             if not (r.orgnr == orgnr and r.resource_type == rtype and r.id == rid)]
            self.received.append(Received(orgnr, rtype, rid, resource, access.scheme,
                                          str(access.claims.get(VKP_ID_CLAIM))))
            self.lock.notify_all()
        return fhir_json(resource, 200 if existed else 201)

    async def _search(self, request: Request) -> Response:
        orgnr = request.path_params["orgnr"]
        access = self._access(request, orgnr, "nhn:vkp/api/user/patient.read")
        if not isinstance(access, Grant):
            return access
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if list(form.keys()) != ["identifier"]:
            return vkp_error("2.3", "Patient search takes exactly one parameter: identifier")
        system, _, value = str(form["identifier"]).partition("|")
        if system not in (FNR_SYSTEM, DNR_SYSTEM) or not national_id_ok(value):
            return vkp_error("2.1", "identifier is not a valid fødselsnummer")
        with self.lock:
            self.searches += 1
        patient = self.municipalities[orgnr].patients.get(value)
        entries = [{"fullUrl": f"{self.url}/epj/r4/{orgnr}/patient/{patient['id']}",
                    "resource": patient, "search": {"mode": "match"}}] if patient else []
        return fhir_json({"resourceType": "Bundle", "type": "searchset",
                          "total": len(entries), "entry": entries})
