"""FHIR REST destination: the municipal EHR or any FHIR R4 server.

Writes are idempotent by construction: every resource is PUT at an id derived from the
vendor's keys, either in one transaction Bundle (default) or one PUT per resource for
servers without transactions. Responses follow the status-code policy of
reliability.md §3.2.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub import hookimpl
from hub.contracts import DestinationType, RegisterDestination
from hub.domain.delivery import parse_retry_after
from hub.domain.model import OutboundDelivery, Outcome
from hub.errors import ConfigError
from hub.httpclient import HttpClient, HttpResponse, TransportFailure, ssl_context

FHIR_JSON = "application/fhir+json; fhirVersion=4.0"


class FhirRestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="FHIR base, e.g. https://ehr.example.no/fhir/R4")
    mode: Literal["transaction", "put"] = "transaction"
    auth: Literal["none", "bearer"] = "none"
    token_env: str | None = Field(None, description="env var holding the bearer token")
    timeout_seconds: float = Field(10.0, gt=0)
    connect_timeout_seconds: float = Field(3.0, gt=0)
    ca_file: str | None = None
    max_connections: int = Field(16, ge=1, le=256, description="HTTP connections to the server")
    events_per_request: int = Field(
        25, ge=1, le=500,
        description="transaction mode: events of different patients sent in one transaction")

    @model_validator(mode="after")
    def _auth_needs_token(self) -> FhirRestSettings:
        if self.auth == "bearer" and not self.token_env:
            raise ValueError("auth = 'bearer' needs token_env (the variable holding the token)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return self


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
        return Outcome.pause(f"{detail} (credentials refused; the destination is paused)",
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
    def __init__(self, name: str, settings: FhirRestSettings, token: str | None,
                 max_connections: int = 8) -> None:
        self.name = name
        self.settings = settings
        self.events_per_request = settings.events_per_request
        headers = {"accept": "application/fhir+json", "content-type": FHIR_JSON}
        if token:
            headers["authorization"] = f"Bearer {token}"
        verify = ssl_context(settings.ca_file) if settings.ca_file else True
        self.client = HttpClient(
            settings.base_url.rstrip("/") + "/",
            timeout=settings.timeout_seconds,
            connect_timeout=settings.connect_timeout_seconds,
            max_connections=max_connections,
            verify=verify,
            headers=headers,
        )

    async def send(self, delivery: OutboundDelivery) -> Outcome:
        try:
            if self.settings.mode == "transaction":
                response = await self.client.request("POST", "", content=delivery.payload)
                return outcome_for_response(response, datetime.now(UTC))
            return await self._put_each(delivery)
        except TransportFailure as exc:
            return Outcome.retry(f"no answer ({exc}); will resend (PUTs are idempotent)")

    async def send_many(self, deliveries: Sequence[OutboundDelivery]) -> list[Outcome]:
        """Send several events (one per patient, by per-key FIFO) in one transaction.

        All or nothing for the group; if the server rejects it, each event is sent on
        its own at once, so a bad event fails alone. Transient failures apply to all.
        """
        if self.settings.mode != "transaction" or len(deliveries) == 1:
            return [await self.send(d) for d in deliveries]
        entries: list[Any] = []
        for delivery in deliveries:
            entries.extend(json.loads(delivery.payload).get("entry", []))
        merged = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries},
                            ensure_ascii=False, separators=(",", ":")).encode()
        try:
            response = await self.client.request("POST", "", content=merged)
        except TransportFailure as exc:
            outcome = Outcome.retry(f"no answer ({exc}); will resend (PUTs are idempotent)")
            return [outcome] * len(deliveries)
        outcome = outcome_for_response(response, datetime.now(UTC))
        if outcome.kind == "rejected":
            return list(await asyncio.gather(*(self.send(d) for d in deliveries)))
        return [outcome] * len(deliveries)

    async def _put_each(self, delivery: OutboundDelivery) -> Outcome:
        bundle: dict[str, Any] = json.loads(delivery.payload)
        last = Outcome.delivered("empty bundle")
        for entry in bundle.get("entry", []):
            url = entry["request"]["url"]
            body = json.dumps(entry["resource"], ensure_ascii=False).encode()
            response = await self.client.request("PUT", url, content=body)
            last = outcome_for_response(response, datetime.now(UTC))
            if last.kind != "delivered":
                return last
        return last

    async def aclose(self) -> None:
        await self.client.aclose()


def _factory(name: str, settings: FhirRestSettings) -> FhirRestDestination:
    import os

    token = None
    if settings.auth == "bearer" and settings.token_env:
        token = os.environ.get(settings.token_env)
        if not token:
            raise ConfigError(f"destinations.{name}.token_env: environment variable "
                              f"{settings.token_env} is not set")
    return FhirRestDestination(name, settings, token, settings.max_connections)


@hookimpl(trylast=True)
def hub_register_destinations(register: RegisterDestination) -> None:
    register(DestinationType("fhir-rest", FhirRestSettings, _factory))
