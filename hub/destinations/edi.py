"""EDI 2.0 destination (`type = "edi2"`): alerts to the patient's GP (fastlege) as
MsgHead v1.2 + Dialogmelding 1.1 or PLO HELSEOPPLYSNINGER_LEGE, through NHN's EDI 2.0
REST interface ("Meldingstjener").

A delivery's payload is the event's FHIR transaction Bundle (VKP shape); its DetectedIssue
(code, detail, severity, time) and its patient become the GP message. `POST /Messages`
answers with the id EDI 2.0 assigned: the transport took it, so the delivery awaits the
GP's AppRec (correlated by our MsgId), due within `receipt_deadline_hours`. Transport
failures (no answer, 408, 429, 5xx) retry; 401/403 pause the destination; other 4xx
reject with the server's reason. See docs/gp-messaging.md.

Auth: `auth = "<name>"` names an `[auth.<name>]` section (HelseID: client credentials with
private_key_jwt and DPoP, hub.auth); `auth = "bearer"` takes a bearer token from the
environment variable `token_env` (the simple option). A token endpoint that refuses the
client pauses the destination; one that does not answer is retried.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub import hookimpl
from hub.auth import (
    NO_AUTH,
    AuthError,
    AuthRef,
    build_authorizer,
    outcome_for_auth_error,
    send_authorized,
)
from hub.contracts import DestinationType, RegisterDestination
from hub.domain.delivery import parse_retry_after
from hub.domain.ids import TRYGGBRO_NAMESPACE
from hub.domain.model import OutboundDelivery, Outcome, TransportAction, TransportCheck
from hub.domain.privacy import DNR_SYSTEM, FNR_SYSTEM
from hub.errors import HubError
from hub.httpclient import HttpClient, HttpResponse, TransportFailure, ssl_context
from hub.logging import get_logger
from hub.messaging.model import ConversationRef, OutgoingMessage, Party, Patient
from hub.messaging.xml import SchemaSet, XmlRejected, build_message

log = get_logger("hub.destinations.edi")

SOURCE_SYSTEM_HEADER = "nhn-source-system"
PATIENT_ID_TYPES: dict[str, Literal["FNR", "DNR", "HNR"]] = {FNR_SYSTEM: "FNR", DNR_SYSTEM: "DNR"}


class PartySettings(BaseModel):
    """An organisation by HER-id, optionally a unit (service) and a person inside it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    her_id: str = Field(pattern=r"^\d{1,9}$", description="HER-id of the organisation")
    unit_name: str | None = None
    unit_her_id: str | None = Field(None, pattern=r"^\d{1,9}$")
    person_name: str | None = None
    person_her_id: str | None = Field(None, pattern=r"^\d{1,9}$",
                                      description="HER-id of the GP (a person)")

    def party(self) -> Party:
        return Party(self.name, self.her_id, self.unit_name, self.unit_her_id,
                     self.person_name, self.person_her_id)


class Edi2ClientSettings(BaseModel):
    """How to reach the EDI 2.0 REST interface (shared by the destination and inbox)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="EDI 2.0 REST base URL")
    source_system: str = Field("tryggbro", min_length=1, max_length=100,
                               description="sent as the nhn-source-system header")
    auth: AuthRef = Field(NO_AUTH, description="\"none\", \"bearer\" (with token_env) or "
                          "the name of an [auth.<name>] section (HelseID)")
    token_env: str | None = Field(None, description="env var holding the bearer token")
    scopes: list[str] = Field(default_factory=list, description="scopes asked for (default: "
                              "the auth section's scopes)")
    timeout_seconds: float = Field(10.0, gt=0)
    connect_timeout_seconds: float = Field(3.0, gt=0)
    ca_file: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Edi2ClientSettings:
        if self.auth.name == "bearer" and not self.token_env:
            raise ValueError("auth = 'bearer' needs token_env (the variable holding the token)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return self


class Edi2Settings(Edi2ClientSettings):
    message: Literal["dialogmelding", "plo"] = Field(
        "dialogmelding", description="Dialogmelding 1.1 (helsefaglig dialog) or PLO "
        "HELSEOPPLYSNINGER_LEGE")
    dialog: Literal["foresporsel", "notat"] = Field(
        "foresporsel", description="Dialogmelding content: a Forespørsel (a question the GP "
        "answers) or a Notat (information only)")
    question: str = Field(
        "Vi ber om din vurdering av varselet og om oppfølging er nødvendig.",
        min_length=1, max_length=2000, description="Forespørsel: the question asked, after "
        "the alert text")
    question_type: Literal["1", "4", "6", "7", "8", "99"] = Field(
        "99", description="Forespørsel TypeForesp, code system 9152 (99 Annen henvendelse)")
    encoding: Literal["UTF-8", "ISO-8859-1"] = "UTF-8"
    sender: PartySettings
    receiver: PartySettings
    receipt_deadline_hours: float = Field(72.0, gt=0, description="an AppRec not received "
                                          "by then raises an alert (default 3 days)")
    subject: str = Field("Varsel fra velferdsteknologi", min_length=1, max_length=500)
    contact_name: str | None = None
    contact_phone: str | None = None
    xsd_dir: Path | None = Field(None, description="folder with the official XSDs to "
                                 "validate every message against before it is sent")
    max_connections: int = Field(4, ge=1, le=64)
    transport_check_seconds: float = Field(
        60.0, gt=0, description="how often GET /Messages/{id}/Status is asked for messages "
        "whose transport is not acknowledged yet")


class Edi2Client:
    """The EDI 2.0 REST calls the hub makes (docs: domain.md §2.3)."""

    def __init__(self, settings: Edi2ClientSettings, key: str, max_connections: int = 4) -> None:
        headers = {"accept": "application/json", SOURCE_SYSTEM_HEADER: settings.source_system}
        self.authorizer = build_authorizer(settings.auth, key=f"{key}.auth",
                                           scopes=settings.scopes,
                                           bearer_token_env=settings.token_env)
        self.http = HttpClient(
            settings.base_url.rstrip("/") + "/", timeout=settings.timeout_seconds,
            connect_timeout=settings.connect_timeout_seconds, max_connections=max_connections,
            verify=ssl_context(settings.ca_file) if settings.ca_file else True, headers=headers)

    async def _request(self, method: str, url: str, content: bytes | None = None,
                       content_type: str | None = None) -> HttpResponse:
        """One call with authorization (raises hub.auth.AuthError or TransportFailure)."""
        headers = {"content-type": content_type} if content_type else None
        return await send_authorized(self.http, self.authorizer, method, url, content=content,
                                     headers=headers)

    async def post_message(self, document: bytes) -> HttpResponse:
        body = {"contentType": "application/xml", "contentTransferEncoding": "base64",
                "businessDocument": base64.b64encode(document).decode("ascii")}
        return await self._request("POST", "Messages", json.dumps(body).encode(),
                                   "application/json")

    async def status(self, message_id: str) -> HttpResponse:
        return await self._request("GET", f"Messages/{quote(message_id)}/Status")

    async def unread(self, receiver_her_id: str) -> list[dict[str, Any]]:
        response = await self._request(
            "GET", f"Messages/Unread?receiverHerIds={quote(receiver_her_id)}")
        _raise_for(response, "GET /Messages/Unread")
        items = json.loads(response.body or b"[]")
        if not isinstance(items, list):
            raise Edi2Error("GET /Messages/Unread did not answer a list")
        return [i if isinstance(i, dict) else {"id": str(i)} for i in items]

    async def business_document(self, message_id: str) -> dict[str, Any]:
        response = await self._request(
            "GET", f"Messages/{quote(message_id)}/BusinessDocument")
        _raise_for(response, "GET /Messages/{id}/BusinessDocument")
        data = json.loads(response.body)
        if not isinstance(data, dict):
            raise Edi2Error("GET /Messages/{id}/BusinessDocument did not answer an object")
        return data

    async def mark_read(self, message_id: str, her_id: str) -> None:
        response = await self._request(
            "PUT", f"Messages/{quote(message_id)}/Read/{quote(her_id)}")
        _raise_for(response, "PUT /Messages/{id}/Read/{herId}")

    async def post_apprec(self, message_id: str, her_id: str, status: str,
                          errors: list[dict[str, str]]) -> None:
        body = {"appRecStatus": status, "appRecErrorList": errors}
        response = await self._request(
            "POST", f"Messages/{quote(message_id)}/Apprec/{quote(her_id)}",
            json.dumps(body, ensure_ascii=False).encode(), "application/json")
        _raise_for(response, "POST /Messages/{id}/Apprec/{herId}")

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.authorizer.aclose()


class Edi2Error(HubError):
    """EDI 2.0 answered something the hub cannot use."""


def _raise_for(response: HttpResponse, what: str) -> None:
    if not 200 <= response.status < 300:
        raise Edi2Error(f"{what}: HTTP {response.status}: {_reason(response.body)}")


def _reason(body: bytes) -> str:
    """The server's reason from a problem-details body, else its first 300 characters."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:300].decode("utf-8", errors="replace")
    if isinstance(data, dict):
        parts = [str(data[k]) for k in ("title", "detail", "message", "errorCode")
                 if data.get(k)]
        if parts:
            return "; ".join(parts)[:500]
    return json.dumps(data)[:300]


@dataclass(frozen=True, slots=True)
class Alert:
    """What the GP message says, read from the delivery's Bundle."""

    patient: Patient
    code: str | None
    display: str | None
    detail: str | None
    severity: str | None
    at: str | None

    def lines(self) -> list[str]:
        out = []
        if self.code or self.display:
            out.append(f"Varsel: {' '.join(p for p in (self.code, self.display) if p)}")
        if self.detail:
            out.append(f"Detaljer: {self.detail}")
        if self.severity:
            out.append(f"Alvorlighetsgrad: {self.severity}")
        if self.at:
            out.append(f"Tidspunkt: {self.at}")
        return out


def read_alert(payload: bytes) -> Alert:
    """The first DetectedIssue of a transaction Bundle, or a HubError saying why not."""
    try:
        bundle = json.loads(payload)
    except ValueError as exc:
        raise HubError(f"the payload is not JSON: {exc}") from None
    issues = [e.get("resource", {}) for e in bundle.get("entry", [])
              if isinstance(e, dict) and e.get("resource", {}).get("resourceType")
              == "DetectedIssue"]
    if not issues:
        raise HubError("the Bundle has no DetectedIssue: only alerts can go to a GP (route "
                       "alert events, not measurements, to an edi2 destination)")
    issue = issues[0]
    ident = (issue.get("patient") or {}).get("identifier") or {}
    id_type = PATIENT_ID_TYPES.get(str(ident.get("system")))
    if any(c.get("code") == "HNR" for c in (ident.get("type") or {}).get("coding", [])):
        id_type = "HNR"
    if id_type is None or not ident.get("value"):
        raise HubError("the DetectedIssue names no patient by FNR, DNR or HNR: a GP message "
                       "needs the patient's national identity")
    coding = ((issue.get("code") or {}).get("coding") or [{}])[0]
    family, given = _patient_name(bundle, str(ident["value"]))
    return Alert(Patient(str(ident["value"]), id_type, family, given), coding.get("code"),
                 coding.get("display"), issue.get("detail"), issue.get("severity"),
                 issue.get("identifiedDateTime"))


def _patient_name(bundle: dict[str, Any], national_id: str) -> tuple[str | None, str | None]:
    """Family and given name(s) of the Bundle's Patient with this national id (an HL7
    v2-sourced event carries one), else (None, None). The official name is preferred;
    old or temporary names are not used. Personal data: never logged."""
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            continue
        if not any(isinstance(i, dict) and str(i.get("value")) == national_id
                   for i in resource.get("identifier") or []):
            continue
        names = [n for n in resource.get("name") or [] if isinstance(n, dict)
                 and n.get("use") not in ("old", "temp", "anonymous")]
        names.sort(key=lambda n: n.get("use") != "official")
        for name in names:
            family = str(name.get("family") or "").strip() or None
            given = " ".join(str(g).strip() for g in name.get("given") or [] if g) or None
            if family or given:
                return family, given
    return None, None


def message_id(destination: str, bundle_id: str) -> str:
    """The MsgId of a delivery: new for every event (each Bundle), but the same when the
    same delivery is re-sent after a transport failure, so a GP system that got it
    already recognises the copy."""
    return str(uuid.uuid5(TRYGGBRO_NAMESPACE, f"{destination}|{bundle_id}|MsgId"))


def outcome_for_post(response: HttpResponse, msg_id: str, deadline: datetime,
                     now: datetime) -> Outcome:
    status = response.status
    if 200 <= status < 300:
        assigned = _assigned_id(response.body)
        return Outcome.awaiting(f"accepted by EDI 2.0 (AssignedId {assigned}); awaiting AppRec "
                                f"for MsgId {msg_id}", msg_id, deadline, status,
                                transport_ref=assigned if assigned != "?" else None)
    detail = f"HTTP {status}: {_reason(response.body)}"
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    if status in (401, 403):
        return Outcome.pause(f"{detail} (credentials refused; the destination is paused)",
                             status, retry_after)
    if status in (408, 425, 429) or status >= 500:
        return Outcome.retry(detail, status, retry_after)
    return Outcome.rejected(detail, status)


def _assigned_id(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:64].decode("ascii", errors="replace").strip() or "?"
    if isinstance(data, dict):
        return str(data.get("id") or data.get("assignedId") or "?")
    return str(data)


# EDI 2.0 transportDeliveryState (GET /Messages/{id}/Status): Unconfirmed (no ebXML
# Acknowledgment yet), Acknowledged (Acknowledgment without a severe error), Rejected
# (ebXML MessageError with HighestSeverity Error), Abandoned (EDI 2.0 stopped resending
# without an Acknowledgment), Unknown.
TRANSPORT_ACKNOWLEDGED = "Acknowledged"
TRANSPORT_REJECTED = "Rejected"
TRANSPORT_ABANDONED = "Abandoned"


def transport_check(response: HttpResponse, receiver_her_id: str) -> TransportCheck | None:
    """What an answer of GET /Messages/{id}/Status means for the delivery; None when the
    answer says nothing usable now (an error answer, for example): ask again later."""
    if not 200 <= response.status < 300:
        return None
    try:
        data = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return None
    items = data.get("statusList") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return None
    entries = [i for i in items if isinstance(i, dict)]
    ours = [i for i in entries if str(i.get("receiverHerId")) == receiver_her_id] or entries
    if not ours:
        return TransportCheck("Unconfirmed", TransportAction.WAIT, "no status yet")
    states = {str(i.get("transportDeliveryState") or "Unknown") for i in ours}
    where = f"receiver HER-id {receiver_her_id}"
    if TRANSPORT_REJECTED in states:
        return TransportCheck(TRANSPORT_REJECTED, TransportAction.DEAD,
                              f"EDI 2.0 reports the transport rejected by the {where}'s message "
                              "handler (ebXML MessageError); resending the same message would "
                              "be refused again: check the receiver's address and CPA")
    if TRANSPORT_ABANDONED in states:
        return TransportCheck(TRANSPORT_ABANDONED, TransportAction.RESEND,
                              f"EDI 2.0 gave up without a transport receipt from the {where}")
    if states == {TRANSPORT_ACKNOWLEDGED}:
        return TransportCheck(TRANSPORT_ACKNOWLEDGED, TransportAction.CONFIRMED,
                              f"transport acknowledged by the {where}")
    state = sorted(states - {TRANSPORT_ACKNOWLEDGED})[0]
    return TransportCheck(state, TransportAction.WAIT, f"transport {state} ({where})")


class Edi2Destination:
    def __init__(self, name: str, settings: Edi2Settings) -> None:
        self.name = name
        self.settings = settings
        self.transport_check_seconds = settings.transport_check_seconds
        self.client = Edi2Client(settings, f"destinations.{name}", settings.max_connections)
        self.schemas = SchemaSet(settings.xsd_dir) if settings.xsd_dir else None
        self._warned_missing: set[str] = set()

    def build(self, delivery: OutboundDelivery, now: datetime) -> bytes:
        """The GP message for a delivery (raises HubError when it cannot be built)."""
        s = self.settings
        alert = read_alert(delivery.payload)
        msg_id = message_id(self.name, delivery.bundle_id)
        return build_message(OutgoingMessage(
            kind=s.message, msg_id=msg_id, conversation=ConversationRef(msg_id, msg_id),
            generated_at=now, sender=s.sender.party(), receiver=s.receiver.party(),
            patient=alert.patient, subject=s.subject, text="\n".join(alert.lines()),
            encoding=s.encoding, contact_name=s.contact_name, contact_phone=s.contact_phone,
            dialog_part=s.dialog, question=s.question, question_type=s.question_type,
        ))

    async def send(self, delivery: OutboundDelivery) -> Outcome:
        now = datetime.now(UTC)
        try:
            document = self.build(delivery, now)
        except (HubError, XmlRejected) as exc:
            return Outcome.rejected(f"cannot build the GP message: {exc}")
        if self.schemas is not None:
            report = self.schemas.validate(document)
            for ns in set(report.missing) - self._warned_missing:
                self._warned_missing.add(ns)
                log.warning("no XSD for this namespace in xsd_dir; not validated", namespace=ns)
            if report.problems:
                return Outcome.rejected("the GP message does not validate against the XSDs in "
                                        f"xsd_dir: {'; '.join(report.problems[:3])}")
        msg_id = message_id(self.name, delivery.bundle_id)
        deadline = now + timedelta(hours=self.settings.receipt_deadline_hours)
        try:
            response = await self.client.post_message(document)
        except TransportFailure as exc:
            return Outcome.retry(f"no answer from EDI 2.0 ({exc}); will resend with the same "
                                 "MsgId")
        except AuthError as exc:
            return outcome_for_auth_error(exc)
        return outcome_for_post(response, msg_id, deadline, now)

    async def check_transport(self, transport_ref: str) -> TransportCheck | None:
        """The transport state of a sent message (GET /Messages/{id}/Status)."""
        try:
            response = await self.client.status(transport_ref)
        except (TransportFailure, AuthError) as exc:
            log.warning("EDI 2.0 status not answered; asking again later",
                        destination=self.name, reason=str(exc))
            return None
        if not 200 <= response.status < 300:
            log.warning("EDI 2.0 status refused; asking again later", destination=self.name,
                        status=response.status, reason=_reason(response.body))
        return transport_check(response, self.settings.receiver.party().addressed_her_id)

    async def aclose(self) -> None:
        await self.client.aclose()


def _factory(name: str, settings: Edi2Settings) -> Edi2Destination:
    return Edi2Destination(name, settings)


@hookimpl(trylast=True)
def hub_register_destinations(register: RegisterDestination) -> None:
    register(DestinationType("edi2", Edi2Settings, _factory))
