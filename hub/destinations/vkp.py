"""VKP R4 destination: Velferdsteknologisk knutepunkt (NHN), domain.md §1.2–1.4.

The receiving municipality is addressed by its organisation number in the URL path
(`{base_url}/{orgnr}/{resource}`); one destination per municipality, as NHN issues one
HelseID client per municipality per system, with `[[routes]]` matching the municipality.
Each resource of an event's Bundle (the alarm's DetectedIssue + Encounter (+ Composition),
a dispenser's MedicationDispense …) is PUT at its deterministic id, so a retry converges,
with a token for the scope `nhn:vkp/api/user/<resource>.write`.

VKP's errors are OperationOutcomes coded with vkp-operation-outcome-v090; the code decides,
not the HTTP status:
- 3.x (3.1 TimedOut) is transient: retried with backoff;
- 1.2 NotAllowed, 1.4 NoAccess, 1.5 NotAuthorized, 2.2 InvalidOrg say our addressing or
  our grant is wrong, for every delivery alike: the destination is paused (messages stay
  ready) and escalated, as a 403 is (reliability.md §3.2);
- 1.3 MissingActiveService (no "tjenstlig behov") and the other 1.x/2.x are about this
  payload: dead letter with the code and VKP's text shown.

Read side: `VkpPatientDirectory` searches a Patient by fødselsnummer, with a short-lived
cache keyed by a keyed hash of the number (never the number itself). With
`enrich_patients = true` the destination also answers `hub_patient_context` in
processing (`VkpPatientEnricher`): each routed event of an enrolled patient is mapped
with the care zone, household and e-lock system VKP's Patient carries (the extensions
`vkp-sone-v090`, `vkp-household-v090` and, on the address, `vkp-elock-v090`). Best
effort: a search that fails or takes longer than `enrich_timeout_seconds` is logged and
counted, and searches pause for `enrich_backoff_seconds`, so an outage of VKP costs each
event at most that timeout once and processing goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from pydantic import Field

from hub import hookimpl
from hub.auth import AuthError, RequestAuthorizer, outcome_for_auth_error
from hub.contracts import DestinationType, RegisterDestination
from hub.domain.model import Enrolment, Event, OutboundDelivery, Outcome, PatientContext
from hub.domain.privacy import FNR_SYSTEM
from hub.errors import HubError
from hub.httpclient import HttpClient, HttpResponse, TransportFailure
from hub.logging import get_logger

from .national import (
    NationalSettings,
    OrganisationMixin,
    diagnostics,
    make_authorizer,
    make_client,
    operation_outcome,
    outcome_for_status,
    request,
)

log = get_logger("hub.destinations.vkp")

FHIR_JSON = "application/fhir+json; fhirVersion=4.0"
OUTCOME_SYSTEM_SUFFIX = "vkp-operation-outcome-v090"
OUTCOME_NAMES = {
    "1": "Forbidden", "1.1": "NotActive", "1.2": "NotAllowed",
    "1.3": "MissingActiveService (ikke oppfylt tjenstlig behov: the patient has no active "
           "service in this municipality)",
    "1.4": "NoAccess", "1.5": "NotAuthorized",
    "2": "Invalid", "2.1": "InvalidSsn", "2.2": "InvalidOrg", "2.3": "InvalidParameterCount",
    "2.4": "InvalidFormat", "3": "Other", "3.1": "TimedOut",
}
# Codes about our address or grant, not about the payload: pause, keep messages ready.
PAUSE_CODES = {"1.2", "1.4", "1.5", "2.2"}


def write_scope(resource_type: str) -> str:
    return f"nhn:vkp/api/user/{resource_type.lower()}.write"


def read_scope(resource_type: str) -> str:
    return f"nhn:vkp/api/user/{resource_type.lower()}.read"


# What the built-in mappings send to VKP, and the read side's Patient search.
DEFAULT_SCOPES = [*(write_scope(t) for t in ("DetectedIssue", "Encounter", "Composition",
                                             "Location", "MedicationDispense", "Observation")),
                  read_scope("Patient")]


class VkpSettings(NationalSettings, OrganisationMixin):
    scopes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SCOPES),
        description="HelseID scopes to ask for: nhn:vkp/api/user/<resource>.<read|write>")
    patient_cache_seconds: float = Field(
        60.0, ge=0, le=3600,
        description="read side: how long a Patient search result is kept (0: not cached)")
    enrich_patients: bool = Field(
        False, description="read side: map events with the zone, household and e-lock "
        "system of VKP's Patient (needs the patient.read scope)")
    enrich_timeout_seconds: float = Field(
        2.0, gt=0, le=30, description="read side: longest wait for a Patient search")
    enrich_backoff_seconds: float = Field(
        30.0, ge=0, le=3600,
        description="read side: after a failed search, map without VKP for this long")


def vkp_codes(body: bytes) -> list[str]:
    """The vkp-operation-outcome codes of an OperationOutcome body (any host spelling)."""
    outcome = operation_outcome(body)
    if outcome is None:
        return []
    codes = []
    for issue in outcome.get("issue", []):
        if not isinstance(issue, dict):
            continue
        for coding in (issue.get("details") or {}).get("coding", []):
            if isinstance(coding, dict) and str(coding.get("system", "")).lower().endswith(
                    OUTCOME_SYSTEM_SUFFIX.lower()) and coding.get("code"):
                codes.append(str(coding["code"]))
    return codes


def outcome_for_vkp(response: HttpResponse, now: datetime, where: str) -> Outcome:
    """Map one VKP answer to an outcome: the vkp-operation-outcome code first, then the
    HTTP status policy."""
    status, body = response.status, response.body
    if 200 <= status < 300:
        return Outcome.delivered(f"VKP HTTP {status}", status)
    codes = vkp_codes(body)
    if not codes:
        generic = outcome_for_status(response, now, "VKP")
        return Outcome(generic.kind, f"{generic.detail} ({where})", generic.status_code,
                       generic.retry_after)
    code = codes[0]
    why = diagnostics(body)
    detail = (f"VKP {code} {OUTCOME_NAMES.get(code, 'unknown code')} (HTTP {status}, {where})"
              + (f": {why}" if why else ""))
    if code.startswith("3"):
        base = outcome_for_status(response, now, "VKP")
        return Outcome.retry(detail, status, base.retry_after)
    if code in PAUSE_CODES:
        hint = ("check organisation_number: VKP does not know this organisation"
                if code == "2.2" else
                "check the HelseID client's scopes and that the municipality has granted "
                "this system access in VKP's register")
        return Outcome.pause(f"{detail}; the destination is paused: {hint}", status)
    return Outcome.rejected(detail, status)


class VkpDestination:
    def __init__(self, name: str, settings: VkpSettings, auth: RequestAuthorizer) -> None:
        self.name = name
        self.settings = settings
        self.auth = auth
        self.client: HttpClient = make_client(
            settings, {"accept": "application/fhir+json", "content-type": FHIR_JSON})
        self.directory = VkpPatientDirectory(self.client, auth, settings.organisation_number,
                                             settings.patient_cache_seconds)

    def url(self, resource_type: str, resource_id: str | None = None) -> str:
        tail = f"/{resource_id}" if resource_id else ""
        return f"{self.settings.organisation_number}/{resource_type.lower()}{tail}"

    async def send(self, delivery: OutboundDelivery) -> Outcome:
        try:
            bundle: dict[str, Any] = json.loads(delivery.payload)
        except ValueError as exc:
            return Outcome.rejected(f"the delivery is not JSON: {exc}")
        entries = [e.get("resource") for e in bundle.get("entry", [])]
        resources = [r for r in entries if isinstance(r, dict)]
        if not resources:
            return Outcome.rejected("the Bundle has no resources to send to VKP")
        last = Outcome.delivered("nothing sent")
        for resource in resources:
            rtype, rid = str(resource.get("resourceType")), str(resource.get("id"))
            body = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
            url = self.url(rtype, rid)
            try:
                response = await request(self.client, self.auth, "PUT", url, content=body)
            except TransportFailure as exc:
                return Outcome.retry(f"no answer from VKP ({exc}); will resend (PUTs at "
                                     "the same ids are idempotent)")
            except AuthError as exc:
                return outcome_for_auth_error(exc)
            last = outcome_for_vkp(response, datetime.now(UTC), f"PUT {rtype}")
            if last.kind != "delivered":
                return last
        return Outcome.delivered(f"{len(resources)} resources written to VKP for "
                                 f"organisation {self.settings.organisation_number}",
                                 last.status_code)

    def patient_context_plugin(self) -> VkpPatientEnricher:
        return VkpPatientEnricher(self.name, self.directory, self.settings)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.auth.aclose()


def _extension_value(extensions: Any, suffix: str) -> str | None:
    for ext in extensions if isinstance(extensions, list) else []:
        if not isinstance(ext, dict) or not str(ext.get("url", "")).lower().endswith(suffix):
            continue
        coding = ext.get("valueCoding") or {}
        concept = ext.get("valueCodeableConcept") or {}
        value = (ext.get("valueString") or coding.get("display") or coding.get("code")
                 or concept.get("text"))
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return None


def patient_context(patient: dict[str, Any]) -> PatientContext:
    """The care zone, household and e-lock system of a vkp-Patient (any host spelling of
    the extension URLs: ehelse.no or hl7.no)."""
    lock = None
    for address in patient.get("address") or []:
        if isinstance(address, dict):
            lock = lock or _extension_value(address.get("extension"), "vkp-elock-v090")
    return PatientContext(
        zone=_extension_value(patient.get("extension"), "vkp-sone-v090"),
        household=_extension_value(patient.get("extension"), "vkp-household-v090"),
        door_lock=lock)


class VkpPatientEnricher:
    """`hub_patient_context` from one VKP destination's Patient search (best effort).

    Asked only about patients of its own organisation: an enrolment naming another
    organisation number is not searched. Counters: `hits`, `not_found`, `misses`
    (failed or timed out) and `skipped` (during the back-off after a miss)."""

    def __init__(self, name: str, directory: VkpPatientDirectory,
                 settings: VkpSettings, clock: Any = time.monotonic) -> None:
        self.name = name
        self.directory = directory
        self.organisation_number = settings.organisation_number
        self.timeout = settings.enrich_timeout_seconds
        self.backoff = settings.enrich_backoff_seconds
        self._clock = clock
        self._quiet_until = 0.0
        self.hits = self.not_found = self.misses = self.skipped = 0

    def __repr__(self) -> str:
        return f"VkpPatientEnricher({self.name!r})"

    @hookimpl
    def hub_patient_context(self, event: Event,
                            enrolment: Enrolment) -> Awaitable[PatientContext | None] | None:
        if enrolment.organisation not in (None, self.organisation_number):
            return None
        if self._clock() < self._quiet_until:
            self.skipped += 1
            return None
        return self._lookup(enrolment)

    async def _lookup(self, enrolment: Enrolment) -> PatientContext | None:
        try:
            patient = await asyncio.wait_for(
                self.directory.patient(enrolment.patient.value, enrolment.patient.system),
                self.timeout)
        except (VkpLookupError, TimeoutError) as exc:
            self.misses += 1
            self._quiet_until = self._clock() + self.backoff
            reason = str(exc) or f"no answer within {self.timeout:g} s"
            log.warning("VKP patient context not available; mapping without it",
                        destination=self.name, reason=reason, misses=self.misses,
                        backoff_seconds=self.backoff)
            return None
        if patient is None:
            self.not_found += 1
            return None
        self.hits += 1
        return patient_context(patient)


@dataclass(frozen=True, slots=True)
class _Cached:
    at: float
    patient: dict[str, Any] | None


class VkpLookupError(HubError):
    """VKP did not answer a Patient search usably (the reason names no person)."""


class VkpPatientDirectory:
    """Patient search by fødselsnummer on VKP R4 (`POST {orgnr}/patient/_search`), for
    enriching events with what the EPJ knows (zone, household, door-lock system).

    Results (found or not found) are cached for `ttl` seconds under an HMAC of the
    number with a per-process random key, so neither the number nor a reversible form of
    it is ever a cache key, a log field or an error text.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, client: HttpClient, auth: RequestAuthorizer, organisation_number: str,
                 ttl: float, clock: Any = time.monotonic) -> None:
        self._client = client
        self._auth = auth
        self._orgnr = organisation_number
        self._ttl = ttl
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self.searches = 0  # requests actually sent (for tests and metrics)

    def _cache_key(self, national_id: str) -> str:
        return hmac.new(self._key, national_id.encode(), hashlib.sha256).hexdigest()

    async def patient(self, national_id: str, system: str = FNR_SYSTEM) -> dict[str, Any] | None:
        key = self._cache_key(f"{system}|{national_id}")
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and now - hit.at < self._ttl:
            self._cache.move_to_end(key)
            return hit.patient
        form = urlencode({"identifier": f"{system}|{national_id}"}).encode()
        url = f"{self._orgnr}/patient/_search"
        try:
            response = await request(
                self._client, self._auth, "POST", url, content=form,
                headers={"content-type": "application/x-www-form-urlencoded"})
        except TransportFailure as exc:
            raise VkpLookupError(f"VKP Patient search not answered ({exc})") from exc
        except AuthError as exc:
            raise VkpLookupError(f"no HelseID token for the Patient search: {exc}") from exc
        self.searches += 1
        if response.status != 200:
            codes = vkp_codes(response.body)
            raise VkpLookupError(f"VKP Patient search refused: HTTP {response.status}"
                                 + (f", code {codes[0]}" if codes else ""))
        try:
            bundle = json.loads(response.body)
        except ValueError as exc:
            raise VkpLookupError("VKP Patient search answer is not JSON") from exc
        found = [e.get("resource") for e in bundle.get("entry", [])
                 if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                 and e["resource"].get("resourceType") == "Patient"]
        patient = found[0] if found else None
        if self._ttl > 0:
            self._cache[key] = _Cached(now, patient)
            while len(self._cache) > self.MAX_ENTRIES:
                self._cache.popitem(last=False)
        return patient


def _factory(name: str, settings: VkpSettings) -> VkpDestination:
    # VKP documents Bearer tokens, not DPoP (domain.md §1.2): an [auth.X] section for VKP
    # sets dpop = false.
    return VkpDestination(name, settings, make_authorizer(name, settings, settings.scopes))


@hookimpl(trylast=True)
def hub_register_destinations(register: RegisterDestination) -> None:
    register(DestinationType("vkp", VkpSettings, _factory))
