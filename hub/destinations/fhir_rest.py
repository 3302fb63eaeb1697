"""FHIR REST destination: the municipal EHR or any FHIR R4 server.

Writes are idempotent by construction: every resource is PUT at an id derived from the
vendor's keys, either in one transaction Bundle (default) or one PUT per resource for
servers without transactions. Responses follow the status-code policy of
reliability.md §3.2.

Auth: `auth = "<name>"` names an `[auth.<name>]` section (HelseID with DPoP, or SMART
Backend Services), or `"bearer"` with `token_env`, or `"none"`. Mutual TLS: the client
certificate `tls_client_cert` and key `tls_client_key` (through an ssl.SSLContext).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub import hookimpl
from hub.auth import (
    NO_AUTH,
    AuthError,
    AuthRef,
    RequestAuthorizer,
    build_authorizer,
    outcome_for_auth_error,
    send_authorized,
)
from hub.auth.oauth import challenge_error
from hub.contracts import DestinationType, RegisterDestination
from hub.domain.delivery import parse_retry_after
from hub.domain.model import OutboundDelivery, Outcome
from hub.domain.privacy import safe_error_text
from hub.errors import ConfigError
from hub.httpclient import HttpClient, HttpResponse, TransportFailure, ssl_context
from hub.logging import get_logger

log = get_logger("hub.destinations.fhir_rest")

FHIR_JSON = "application/fhir+json; fhirVersion=4.0"
# After a merged transaction was refused although each of its events alone was accepted
# (the server's limit on the size of a transaction), merged requests are kept to half its
# entries for this long; then the configured limit is tried again.
SHRUNK_LIMIT_SECONDS = 600.0
# How much of the server's OperationOutcome text the refusal warning carries.
REFUSAL_REASON_CHARS = 200


class FhirRestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="FHIR base, e.g. https://ehr.example.no/fhir/R4")
    mode: Literal["transaction", "put"] = "transaction"
    auth: AuthRef = Field(NO_AUTH, description="\"none\", \"bearer\" (with token_env) or "
                          "the name of an [auth.<name>] section (HelseID, SMART)")
    token_env: str | None = Field(None, description="env var holding the bearer token")
    scopes: list[str] = Field(default_factory=list, description="scopes to ask the auth "
                              "section's token endpoint for (default: the section's scopes)")
    tls_client_cert: Path | None = Field(None, description="mutual TLS: client certificate "
                                         "chain (PEM)")
    tls_client_key: Path | None = Field(None, description="mutual TLS: the certificate's "
                                        "private key (PEM, mode 0600)")
    timeout_seconds: float = Field(10.0, gt=0)
    connect_timeout_seconds: float = Field(3.0, gt=0)
    ca_file: str | None = None
    max_connections: int = Field(16, ge=1, le=256, description="HTTP connections to the server")
    events_per_request: int = Field(
        25, ge=1, le=500,
        description="transaction mode: events of different patients sent in one transaction")
    max_entries_per_request: int = Field(
        50, ge=1, le=10_000,
        description="transaction mode: at most this many entries (resources) in a merged "
                    "transaction; an event with more is sent alone (Medplum refuses more "
                    "than 50 updates in one transaction)")

    @model_validator(mode="after")
    def _auth_needs_token(self) -> FhirRestSettings:
        if self.auth.name == "bearer" and not self.token_env:
            raise ValueError("auth = 'bearer' needs token_env (the variable holding the token)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ValueError("mutual TLS needs both tls_client_cert and tls_client_key")
        return self

    def tls_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None and self.tls_client_cert is None:
            return None
        return ssl_context(self.ca_file,
                           str(self.tls_client_cert) if self.tls_client_cert else None,
                           str(self.tls_client_key) if self.tls_client_key else None)


def outcome_for_response(response: HttpResponse, now: datetime) -> Outcome:
    """Map one HTTP answer to an outcome (reliability.md §3.2)."""
    status = response.status
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    why = _diagnostics(response.body)
    detail = f"HTTP {status}" + (f": {why}" if why else "")
    if 200 <= status < 300:
        failed = _failed_entries(response.body)
        if failed:  # a batch-like answer with failed entries: judge by the worst entry
            return outcome_for_response(HttpResponse(max(failed), response.headers, b""), now)
        return Outcome.delivered(detail, status)
    if status in (401, 403):
        error = challenge_error(response)
        said = f" [{error}]" if error else ""
        return Outcome.pause(f"{detail}{said} (credentials refused; the destination is paused)",
                             status, retry_after)
    if status in (404, 405) or 300 <= status < 400:
        return Outcome.pause(
            f"{detail} (the server refuses PUT at this URL: check base_url and that "
            "update-as-create is enabled)", status, retry_after)
    if status in (408, 409, 425, 429) or status >= 500:
        return Outcome.retry(detail, status, retry_after)
    return Outcome.rejected(detail, status)  # 400, 410, 412, 422 … will not succeed as is


def _diagnostics(body: bytes) -> str:
    """Short reason from an OperationOutcome body, if there is one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict) or data.get("resourceType") != "OperationOutcome":
        return ""
    texts = []
    for issue in data.get("issue", [])[:5]:
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
        expr = ",".join(issue.get("expression", [])[:2])
        if text:
            texts.append(f"{text} ({expr})" if expr else str(text))
    return "; ".join(texts)[:500]


def _failed_entries(body: bytes) -> list[int]:
    """Non-2xx entry statuses of a transaction-response, if any."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(data, dict) or data.get("type") != "transaction-response":
        return []
    codes = []
    for entry in data.get("entry", []):
        status = str((entry.get("response") or {}).get("status", ""))[:3]
        if status.isdigit() and not status.startswith("2"):
            codes.append(int(status))
    return codes


class FhirRestDestination:
    def __init__(self, name: str, settings: FhirRestSettings, authorizer: RequestAuthorizer,
                 max_connections: int = 8, tls: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.settings = settings
        self.events_per_request = settings.events_per_request
        self.max_entries_per_request = settings.max_entries_per_request
        # Counters, like the VKP enricher's: merged transactions sent, and those the server
        # refused so that their events were sent one by one (dispatch may run in a stage
        # process, so they are in this process and its log, not in /metrics).
        self.merged_sent = 0
        self.merged_refused = 0
        self._shrunk_limit: int | None = None  # entries, after a refusal (see above)
        self._shrunk_until = 0.0  # time.monotonic()
        self.authorizer = authorizer
        headers = {"accept": "application/fhir+json", "content-type": FHIR_JSON}
        verify: ssl.SSLContext | bool = tls if tls is not None else True
        self.client = HttpClient(
            settings.base_url.rstrip("/") + "/",
            timeout=settings.timeout_seconds,
            connect_timeout=settings.connect_timeout_seconds,
            max_connections=max_connections,
            verify=verify,
            headers=headers,
        )

    async def _request(self, method: str, url: str, content: bytes) -> HttpResponse:
        return await send_authorized(self.client, self.authorizer, method, url, content=content)

    async def send(self, delivery: OutboundDelivery) -> Outcome:
        try:
            if self.settings.mode == "transaction":
                response = await self._request("POST", "", delivery.payload)
                return outcome_for_response(response, datetime.now(UTC))
            return await self._put_each(delivery)
        except TransportFailure as exc:
            return Outcome.retry(f"no answer ({exc}); will resend (PUTs are idempotent)")
        except AuthError as exc:
            return outcome_for_auth_error(exc)

    def entry_limit(self) -> int:
        """Entries allowed in one merged transaction now: the setting, or less for a while
        after the server refused a merged transaction that its events alone passed."""
        if self._shrunk_limit is not None:
            if time.monotonic() < self._shrunk_until:
                return min(self._shrunk_limit, self.max_entries_per_request)
            self._shrunk_limit = None
        return self.max_entries_per_request

    def request_sizes(self, payloads: Sequence[bytes]) -> list[int]:
        """How many of `payloads`, in order, go into each request: at most
        `events_per_request` events and, unless one event alone has more, at most
        `entry_limit()` entries. An event is never split across requests."""
        if self.settings.mode != "transaction":
            return [1] * len(payloads)
        limit = self.entry_limit()
        sizes: list[int] = []
        events = entries = 0
        for payload in payloads:
            count = entry_count(payload)
            if events and (events >= self.events_per_request or entries + count > limit):
                sizes.append(events)
                events = entries = 0
            events += 1
            entries += count
        if events:
            sizes.append(events)
        return sizes

    async def send_many(self, deliveries: Sequence[OutboundDelivery]) -> list[Outcome]:
        """Send several events (one per patient, by per-key FIFO) in one transaction.

        All or nothing for the group; if the server rejects it, each event is sent on
        its own at once, so a bad event fails alone. Transient failures apply to all.
        """
        if self.settings.mode != "transaction" or len(deliveries) == 1:
            return [await self.send(d) for d in deliveries]
        payloads = [d.payload for d in deliveries]
        merged = merge_transactions(payloads)
        self.merged_sent += 1
        try:
            response = await self._request("POST", "", merged)
        except TransportFailure as exc:
            outcome = Outcome.retry(f"no answer ({exc}); will resend (PUTs are idempotent)")
            return [outcome] * len(deliveries)
        except AuthError as exc:
            return [outcome_for_auth_error(exc)] * len(deliveries)
        outcome = outcome_for_response(response, datetime.now(UTC))
        if outcome.kind == "rejected":
            alone = list(await asyncio.gather(*(self.send(d) for d in deliveries)))
            self._merged_refused(response, sum(map(entry_count, payloads)), alone)
            return alone
        return [outcome] * len(deliveries)

    def _merged_refused(self, response: HttpResponse, entries: int,
                        alone: Sequence[Outcome]) -> None:
        """Count and log a refused merged transaction (its events were just sent alone).

        When every event alone was delivered, the refusal was about the merge itself
        (most likely the server's limit on entries per transaction), so merged requests
        stay under half this size for `SHRUNK_LIMIT_SECONDS`. A refusal caused by a bad
        event (one alone is refused too) says nothing about size and changes nothing."""
        self.merged_refused += 1
        shrunk = None
        if all(o.kind == "delivered" for o in alone):
            shrunk = max(1, min(entries // 2, self.entry_limit()))
            self._shrunk_limit = shrunk
            self._shrunk_until = time.monotonic() + SHRUNK_LIMIT_SECONDS
        reason = safe_error_text(_diagnostics(response.body))[:REFUSAL_REASON_CHARS]
        log.warning("merged transaction refused; its events were sent one by one",
                    destination=self.name, events=len(alone), entries=entries,
                    status=response.status, reason=reason,
                    delivered_alone=sum(o.kind == "delivered" for o in alone),
                    entry_limit=self.max_entries_per_request, shrunk_entry_limit=shrunk,
                    refused_total=self.merged_refused)

    async def _put_each(self, delivery: OutboundDelivery) -> Outcome:
        bundle: dict[str, Any] = json.loads(delivery.payload)
        last = Outcome.delivered("empty bundle")
        for entry in bundle.get("entry", []):
            url = entry["request"]["url"]
            body = json.dumps(entry["resource"], ensure_ascii=False).encode()
            response = await self._request("PUT", url, body)
            last = outcome_for_response(response, datetime.now(UTC))
            if last.kind != "delivered":
                return last
        return last

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.authorizer.aclose()


_ENTRY = b',"entry":['
_MERGED_HEAD = b'{"resourceType":"Bundle","type":"transaction","entry":['


def entry_items(payload: bytes) -> bytes | None:
    """The text inside the top-level ``entry`` array of a Bundle as processing writes it
    (`hub.fhir.vkp.transaction_bundle` through compact `json.dumps`: ``entry`` is the last
    key), without parsing the resources; None when the payload is not in that shape.

    The header before ``,"entry":[`` must itself parse as a Bundle object once closed,
    which proves the match is the top-level key (not a nested ``Composition.section.entry``
    or text inside a string: either would leave the header unbalanced)."""
    if not payload.endswith(b"]}"):
        return None
    at = payload.find(_ENTRY)
    if at < 0:
        return None
    try:
        head = json.loads(payload[:at] + b"}")
    except ValueError:
        return None
    if not isinstance(head, dict) or head.get("resourceType") != "Bundle":
        return None
    return payload[at + len(_ENTRY):-2]


def entry_count(payload: bytes) -> int:
    """Entries of a transaction Bundle, without parsing it when processing wrote it.

    ``{"fullUrl":`` opens every entry processing writes, and no FHIR resource but a
    Bundle has a ``fullUrl`` key (inside a string its quotes would be escaped), so counting
    it is exact for the hub's own payloads; any other payload is parsed."""
    count = payload.count(b'{"fullUrl":')
    if count:
        return count
    try:
        entries = json.loads(payload).get("entry", [])
    except (ValueError, UnicodeDecodeError, AttributeError):
        return 1
    return len(entries) if isinstance(entries, list) else 1


def merge_transactions(payloads: Sequence[bytes]) -> bytes:
    """One transaction Bundle holding the entries of every payload, in order.

    Dispatch merges up to `events_per_request` bundles per request; splicing the entry
    arrays' text instead of parsing and re-encoding them saves about half the dispatch
    CPU (bench/RESULTS.md, delivery side). A payload of another shape is parsed."""
    parts: list[bytes] = []
    for payload in payloads:
        items = entry_items(payload)
        if items is None:
            entries = json.loads(payload).get("entry", [])
            items = json.dumps(entries, ensure_ascii=False,
                               separators=(",", ":")).encode()[1:-1]
        if items.strip():
            parts.append(items)
    return _MERGED_HEAD + b",".join(parts) + b"]}"


def _factory(name: str, settings: FhirRestSettings) -> FhirRestDestination:
    key = f"destinations.{name}"
    try:
        tls = settings.tls_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}: cannot load the TLS certificate, key or CA file: "
                          f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    authorizer = build_authorizer(settings.auth, key=key, scopes=settings.scopes,
                                  resource_base_url=settings.base_url,
                                  bearer_token_env=settings.token_env, resource_tls=tls)
    return FhirRestDestination(name, settings, authorizer, settings.max_connections, tls)


@hookimpl(trylast=True)
def hub_register_destinations(register: RegisterDestination) -> None:
    register(DestinationType("fhir-rest", FhirRestSettings, _factory))
