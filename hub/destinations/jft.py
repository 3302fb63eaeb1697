"""JFT destination: Journalføringstjenesten (NHN), domain.md §1.5.

`POST {base_url}/v1/Bundle` answers 202 Accepted with a `Location` (the status URL). That
is not delivery: the municipal EPJ still has to fetch and journal the event. The delivery
waits in the generic state `awaiting_receipt` (like an EDI 2.0 message waiting for its
AppRec) and the dispatcher asks `GET …/$status` every `status_poll_seconds`:

- `registered`, then `read` (the EPJ fetched it): intermediate, recorded as the delivery's
  transport state, shown by `tryggbro show` and the admin API;
- `journaled`: the delivery is delivered;
- `failed` (not yet defined by NHN): dead letter, escalated;
- not journaled by `journal_deadline_hours`: the monitor raises a `receipt_overdue`
  alert (hub.monitor), and the hub keeps asking.

Auth: HelseID with DPoP, scope `nhn:jft/api`; the token must carry `orgnr_parent` = the
municipality's main organisation number.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field

from hub import hookimpl
from hub.auth import AuthError, RequestAuthorizer, outcome_for_auth_error
from hub.contracts import DestinationType, RegisterDestination
from hub.domain.model import OutboundDelivery, Outcome, TransportAction, TransportCheck
from hub.httpclient import HttpResponse, TransportFailure
from hub.logging import get_logger

from .national import (
    NationalSettings,
    OrganisationMixin,
    diagnostics,
    make_authorizer,
    make_client,
    outcome_for_status,
    request,
)

log = get_logger("hub.destinations.jft")

SCOPE = "nhn:jft/api"
FHIR_JSON = "application/fhir+json; fhirVersion=4.0"
MAX_BODY = 1_000_000  # JFT limits requests to about 1 MB
STATUS_KEYS = ("registered", "read", "journaled", "failed")


class JftSettings(NationalSettings, OrganisationMixin):
    requires_dpop: ClassVar[bool] = True
    source_system: str | None = Field(
        None, max_length=200, description="sent as the optional nhn-source-system header")
    journal_deadline_hours: float = Field(
        24.0, gt=0, description="a delivery not journaled by then raises an alert")
    status_poll_seconds: float = Field(60.0, gt=0, description="how often to ask $status")


def jft_bundle(transaction: dict[str, Any]) -> dict[str, Any]:
    """The event's resources as JFT takes them: a `document` Bundle led by its
    Composition when there is one (JFT's example), otherwise a `collection`. The
    transaction's PUT requests are dropped (bdl-3: no request outside batch/transaction)."""
    entries = [{"fullUrl": e["fullUrl"], "resource": e["resource"]}
               for e in transaction.get("entry", []) if isinstance(e.get("resource"), dict)]
    compositions = [e for e in entries if e["resource"].get("resourceType") == "Composition"]
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": transaction.get("id"),
        "identifier": {"system": "urn:ietf:rfc:3986",
                       "value": f"urn:uuid:{_uuid_of(str(transaction.get('id', '')))}"},
        "type": "document" if compositions else "collection",
        "timestamp": transaction.get("timestamp"),
        "entry": entries,
    }
    if compositions:
        first = compositions[0]
        out["entry"] = [first, *[e for e in entries if e is not first]]
    return out


def _uuid_of(bundle_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tryggbro:jft:{bundle_id}"))


def status_path(location: str, base_url: str) -> str | None:
    """The `$status` URL from a 202's `Location`, as a path under our base; None when
    the Location points at another host (our token must not go there)."""
    parts, base = urlsplit(location), urlsplit(base_url)
    if parts.scheme and (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
        return None
    path = parts.path
    if not path.endswith("/$status"):
        path = path.rstrip("/") + "/$status"
    return path


def status_check(response: HttpResponse) -> TransportCheck | None:
    """What a `$status` answer means for the delivery; None when it says nothing usable
    now (an error answer): ask again later."""
    if response.status != 200:
        return None
    try:
        data = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    when = {k: data.get(k) for k in STATUS_KEYS}
    if when["failed"]:
        return TransportCheck("failed", TransportAction.DEAD,
                              f"JFT reports the event failed at {when['failed']}")
    if when["journaled"]:
        return TransportCheck("journaled", TransportAction.DELIVERED,
                              f"journaled by the EPJ at {when['journaled']}")
    if when["read"]:
        return TransportCheck("read", TransportAction.WAIT,
                              f"fetched by the EPJ at {when['read']}, not journaled yet")
    if when["registered"]:
        return TransportCheck("registered", TransportAction.WAIT,
                              f"registered by JFT at {when['registered']}")
    return TransportCheck("accepted", TransportAction.WAIT, "accepted, not registered yet")


class JftDestination:
    def __init__(self, name: str, settings: JftSettings, auth: RequestAuthorizer) -> None:
        self.name = name
        self.settings = settings
        self.auth = auth
        self.transport_check_seconds = settings.status_poll_seconds
        headers = {"accept": "application/json", "content-type": FHIR_JSON}
        if settings.source_system:
            headers["nhn-source-system"] = settings.source_system
        self.client = make_client(settings, headers)

    async def send(self, delivery: OutboundDelivery) -> Outcome:
        now = datetime.now(UTC)
        try:
            bundle = jft_bundle(json.loads(delivery.payload))
        except (ValueError, KeyError, AttributeError) as exc:
            return Outcome.rejected(f"the delivery is not a Bundle JFT can take: {exc}")
        body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
        if len(body) > MAX_BODY:
            return Outcome.rejected(f"the Bundle is {len(body)} bytes; JFT takes about "
                                    f"{MAX_BODY} at most")
        try:
            response = await request(self.client, self.auth, "POST", "v1/Bundle",
                                     content=body)
        except TransportFailure as exc:
            return Outcome.retry(f"no answer from JFT ({exc}); will send again")
        except AuthError as exc:
            return outcome_for_auth_error(exc)
        if response.status != 202:
            if 200 <= response.status < 300:
                return Outcome.retry(f"JFT answered HTTP {response.status}, not 202 Accepted "
                                     "with a status URL; will send again", response.status)
            return outcome_for_status(response, now, "JFT")
        location = response.headers.get("location", "")
        path = status_path(location, self.settings.base_url) if location else None
        deadline = now + timedelta(hours=self.settings.journal_deadline_hours)
        if path is None:
            why = diagnostics(response.body)
            return Outcome.awaiting(
                "accepted by JFT without a usable Location (status cannot be asked"
                + (f"; {why}" if why else "") + "); alert at the deadline",
                f"jft:{delivery.bundle_id}", deadline, response.status)
        correlation = path.removesuffix("/$status").rsplit("/", 1)[-1]
        return Outcome.awaiting(f"accepted by JFT (202); awaiting journaling of {correlation}",
                                f"jft:{correlation}", deadline, response.status,
                                transport_ref=path)

    async def check_transport(self, transport_ref: str) -> TransportCheck | None:
        """Ask JFT `$status` of one sent event."""
        try:
            response = await request(self.client, self.auth, "GET", transport_ref)
        except (TransportFailure, AuthError) as exc:
            log.warning("JFT $status not answered; asking again later", destination=self.name,
                        reason=str(exc))
            return None
        if response.status != 200:
            log.warning("JFT $status refused; asking again later", destination=self.name,
                        status=response.status, reason=diagnostics(response.body))
        return status_check(response)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.auth.aclose()


def _factory(name: str, settings: JftSettings) -> JftDestination:
    return JftDestination(name, settings, make_authorizer(name, settings, [SCOPE]))


@hookimpl(trylast=True)
def hub_register_destinations(register: RegisterDestination) -> None:
    register(DestinationType("jft", JftSettings, _factory))
