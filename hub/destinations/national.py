"""What the national-service destinations (VKP R4, JFT, PMD) share: settings, request
authentication, the organisation number and the HTTP status policy.

Authentication is a small injectable object (`RequestAuth`): the destination asks it for
the headers of each request, naming the scope the request needs. `EnvTokenAuth` takes a
token from the environment (for a gateway that holds the HelseID client, and for tests);
the HelseID client (client_credentials + private_key_jwt + DPoP, domain.md §1.7) plugs in
through the same interface. `use_dpop_nonce` answers are retried once with the nonce.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.domain.delivery import parse_retry_after
from hub.domain.model import Outcome
from hub.errors import ConfigError
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


@runtime_checkable
class RequestAuth(Protocol):
    """Gives the authentication headers of one request to a national service.

    `scope` is what the request needs (e.g. ``nhn:vkp/api/user/detectedissue.write``);
    `nonce` is the server's ``DPoP-Nonce`` when it asked for one (RFC 9449 §8).
    Implementations never log tokens, assertions or proofs.
    """

    async def headers(self, method: str, url: str, scope: str,
                      nonce: str | None = None) -> dict[str, str]: ...


class EnvTokenAuth:
    """A ready access token from an environment variable, sent as `scheme <token>`.

    For a deployment where an outbound gateway holds the HelseID client, and for tests.
    It cannot make DPoP proofs: JFT and PMD in NHN's environments need the HelseID client.
    """

    def __init__(self, token: str, scheme: str = "Bearer") -> None:
        self._token = token
        self._scheme = scheme

    async def headers(self, method: str, url: str, scope: str,
                      nonce: str | None = None) -> dict[str, str]:
        return {"authorization": f"{self._scheme} {self._token}"}

    def __repr__(self) -> str:  # never the token
        return f"EnvTokenAuth(scheme={self._scheme!r})"


class NationalSettings(BaseModel):
    """Keys every national-service destination has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="the service's base URL (from NHN's onboarding)")
    auth: Literal["token-env"] = Field(
        "token-env", description="where the access token comes from")
    token_env: str = Field(description="env var holding the access token")
    timeout_seconds: float = Field(10.0, gt=0)
    connect_timeout_seconds: float = Field(3.0, gt=0)
    ca_file: str | None = None
    max_connections: int = Field(8, ge=1, le=256)

    @model_validator(mode="after")
    def _check_url(self) -> NationalSettings:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
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


def make_auth(name: str, settings: NationalSettings, scheme: str = "Bearer") -> RequestAuth:
    token = os.environ.get(settings.token_env)
    if not token:
        raise ConfigError(f"destinations.{name}.token_env: environment variable "
                          f"{settings.token_env} is not set")
    return EnvTokenAuth(token, scheme)


def make_client(settings: NationalSettings, headers: Mapping[str, str]) -> HttpClient:
    verify = ssl_context(settings.ca_file) if settings.ca_file else True
    return HttpClient(settings.base_url.rstrip("/") + "/", timeout=settings.timeout_seconds,
                      connect_timeout=settings.connect_timeout_seconds,
                      max_connections=settings.max_connections, verify=verify,
                      headers=headers)


async def authorised_request(client: HttpClient, auth: RequestAuth, method: str, url: str,
                             scope: str, *, content: bytes | None = None,
                             headers: Mapping[str, str] | None = None) -> HttpResponse:
    """One request with the auth headers; a ``use_dpop_nonce`` refusal is retried once
    with the server's nonce. Raises TransportFailure when there is no answer."""
    extra = dict(headers or {})
    response = await client.request(method, url, content=content,
                                    headers={**extra, **await auth.headers(method, url, scope)})
    nonce = response.headers.get("dpop-nonce")
    if response.status in (400, 401) and nonce and "use_dpop_nonce" in \
            response.headers.get("www-authenticate", ""):
        response = await client.request(
            method, url, content=content,
            headers={**extra, **await auth.headers(method, url, scope, nonce)})
    return response


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
