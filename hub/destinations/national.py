"""What the national-service destinations (VKP R4, JFT, PMD) share: settings, request
authentication, the organisation number and the HTTP status policy.

Authentication goes through `hub.auth`: `auth = "<name>"` names an `[auth.<name>]`
section (HelseID: client_credentials + private_key_jwt + DPoP, domain.md §1.7), or
`auth = "bearer"` with `token_env` for a ready token. Each request gets fresh headers from
the destination's `RequestAuthorizer`; a DPoP-nonce or invalid-token challenge is
answered once, never in a loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.auth import AuthRef, RequestAuthorizer, build_authorizer, send_authorized
from hub.auth.settings import HelseIdAuth
from hub.domain.delivery import parse_retry_after
from hub.domain.model import Outcome
from hub.httpclient import HttpClient, HttpResponse, ssl_context

_ORGNR = re.compile(r"^\d{9}$")
_ORGNR_WEIGHTS = (3, 2, 7, 6, 5, 4, 3, 2)


def organisation_number_problem(value: str) -> str | None:
    """Why `value` is not a Norwegian organisation number (9 digits, mod-11 check digit,
    Enhetsregisteret), or None if it is one."""
    if not _ORGNR.match(value):
        return f"{value!r} is not 9 digits"
    rest = sum(int(d) * w for d, w in zip(value[:8], _ORGNR_WEIGHTS, strict=True)) % 11
    check = 0 if rest == 0 else 11 - rest
    if check == 10 or check != int(value[8]):
        return f"{value!r} has a wrong check digit (mod 11)"
    return None


class NationalSettings(BaseModel):
    """Keys every national-service destination has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="the service's base URL (from NHN's onboarding)")
    auth: AuthRef = Field(description="the name of an [auth.<name>] section (HelseID), or "
                          "\"bearer\" with token_env")
    token_env: str | None = Field(None, description="auth = \"bearer\": env var with the token")
    timeout_seconds: float = Field(10.0, gt=0)
    connect_timeout_seconds: float = Field(3.0, gt=0)
    ca_file: str | None = None
    max_connections: int = Field(8, ge=1, le=256)

    # Whether the service requires DPoP-bound tokens (JFT, PMD); VKP documents Bearer.
    requires_dpop: ClassVar[bool] = False

    @model_validator(mode="after")
    def _check(self) -> NationalSettings:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        if self.auth.name == "none":
            raise ValueError("auth is required: the name of an [auth.<name>] section "
                             "(HelseID), or \"bearer\" with token_env")
        if self.auth.name == "bearer" and not self.token_env:
            raise ValueError("auth = 'bearer' needs token_env (the variable holding the token)")
        section = self.auth.section
        if self.requires_dpop and isinstance(section, HelseIdAuth) and not section.dpop:
            raise ValueError(f"[auth.{self.auth.name}] has dpop = false, but this service "
                             "requires DPoP-bound tokens")
        return self


class OrganisationMixin(BaseModel):
    organisation_number: str = Field(
        description="the receiving municipality's organisation number (9 digits)")

    @field_validator("organisation_number")
    @classmethod
    def _orgnr(cls, value: str) -> str:
        problem = organisation_number_problem(value)
        if problem:
            raise ValueError(f"organisation_number {problem}: use the municipality's "
                             "organisation number from Enhetsregisteret")
        return value


def make_authorizer(name: str, settings: NationalSettings,
                    scopes: Sequence[str]) -> RequestAuthorizer:
    """The destination's authorizer (loads the key: a missing one is a ConfigError)."""
    return build_authorizer(settings.auth, key=f"destinations.{name}", scopes=scopes,
                            resource_base_url=settings.base_url,
                            bearer_token_env=settings.token_env)


def make_client(settings: NationalSettings, headers: Mapping[str, str]) -> HttpClient:
    verify = ssl_context(settings.ca_file) if settings.ca_file else True
    return HttpClient(settings.base_url.rstrip("/") + "/", timeout=settings.timeout_seconds,
                      connect_timeout=settings.connect_timeout_seconds,
                      max_connections=settings.max_connections, verify=verify,
                      headers=headers)


async def request(client: HttpClient, authorizer: RequestAuthorizer, method: str, url: str,
                  *, content: bytes | None = None,
                  headers: Mapping[str, str] | None = None) -> HttpResponse:
    """One authorized request (once more after a DPoP-nonce or invalid-token challenge).
    Raises TransportFailure (no answer) or hub.auth.AuthError (token endpoint)."""
    return await send_authorized(client, authorizer, method, url, content=content,
                                 headers=headers)


def operation_outcome(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        return data
    return None


def diagnostics(body: bytes) -> str:
    """A short reason from an OperationOutcome or problem-JSON body, if there is one."""
    outcome = operation_outcome(body)
    if outcome is None:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return ""
        if isinstance(data, dict):
            return str(data.get("detail") or data.get("title") or "")[:300]
        return ""
    texts = []
    for issue in outcome.get("issue", [])[:5]:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
        if text:
            texts.append(str(text))
    return "; ".join(texts)[:500]


def outcome_for_status(response: HttpResponse, now: datetime, service: str) -> Outcome:
    """The status-code policy (reliability.md §3.2) for an answer with nothing more
    specific in it."""
    status = response.status
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    why = diagnostics(response.body)
    detail = f"{service} HTTP {status}" + (f": {why}" if why else "")
    if 200 <= status < 300:
        return Outcome.delivered(detail, status)
    if status in (401, 403):
        return Outcome.pause(f"{detail} (credentials or scope refused; the destination is "
                             "paused: check the HelseID client, its scopes and the "
                             "municipality's grant)", status, retry_after)
    if status in (404, 405) or 300 <= status < 400:
        return Outcome.pause(f"{detail} (no such endpoint: check base_url)", status,
                             retry_after)
    if status in (408, 409, 425, 429) or status >= 500:
        return Outcome.retry(detail, status, retry_after)
    return Outcome.rejected(detail, status)
