"""What the VKP, JFT and PMD peers share: an HTTP server on 127.0.0.1 (port 0) run by
uvicorn in its own loop thread, and the access check of a resource server.

Access check: `Verifier.verify(method, url, headers)` returns the token's `Grant` (scopes
and claims) or a `Refusal` (status, WWW-Authenticate, reason). `StaticTokens` knows a
table of opaque tokens issued by the test; it is the one function to swap for the HelseID
resource-server verifier (tests/peers/helseid.py, being built in parallel), which checks
a JWT's signature, audience and expiry and the DPoP proof (htm, htu, ath, jti, nonce).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.responses import JSONResponse

from ._asgi import AppPeer


@dataclass(frozen=True)
class Grant:
    scopes: frozenset[str]
    claims: Mapping[str, Any] = field(default_factory=dict)
    scheme: str = "Bearer"


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    www_authenticate: str = 'Bearer error="invalid_token"'
    extra_headers: Mapping[str, str] = field(default_factory=dict)  # e.g. DPoP-Nonce

    def headers(self) -> dict[str, str]:
        return {**self.extra_headers, "www-authenticate": self.www_authenticate}


class Verifier(Protocol):
    def verify(self, method: str, url: str, headers: Mapping[str, str]) -> Grant | Refusal: ...


class StaticTokens:
    """Opaque tokens the test issues, each with scopes and claims.

    `require_dpop`: the service takes only `Authorization: DPoP <token>` with a `DPoP`
    proof header (JFT, PMD). This verifier checks the scheme and that a proof is present;
    verifying the proof itself is the HelseID verifier's job (see the module docstring).
    """

    def __init__(self, require_dpop: bool = False) -> None:
        self.require_dpop = require_dpop
        self._tokens: dict[str, Grant] = {}

    def issue(self, scopes: Sequence[str], **claims: Any) -> str:
        token = secrets.token_urlsafe(24)
        self._tokens[token] = Grant(frozenset(scopes), dict(claims))
        return token

    def revoke(self, token: str) -> None:
        self._tokens.pop(token, None)

    def verify(self, method: str, url: str, headers: Mapping[str, str]) -> Grant | Refusal:
        value = headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if not token:
            return Refusal(401, "no access token", "Bearer" if not self.require_dpop else "DPoP")
        if self.require_dpop:
            if scheme != "DPoP":
                return Refusal(401, f"{scheme} token where a DPoP-bound token is required",
                               'DPoP error="invalid_token"')
            if not headers.get("dpop"):
                return Refusal(401, "no DPoP proof", 'DPoP error="invalid_dpop_proof"')
        elif scheme != "Bearer":
            return Refusal(401, f"unsupported scheme {scheme!r}")
        grant = self._tokens.get(token)
        if grant is None:
            return Refusal(401, "unknown or revoked token")
        return Grant(grant.scopes, grant.claims, scheme)


class HelseIdVerifier:
    """The HelseID resource-server verifier (tests/peers/helseid.ResourceVerifier: JWT
    signature, issuer, expiry, revocation; for DPoP-bound tokens the proof with htm, htu,
    iat, jti replay, ath, cnf.jkt and nonce) behind this module's `Verifier`. Scopes are
    left to the peer, which answers a missing one as its service does."""

    def __init__(self, verifier: Any) -> None:
        self.inner = verifier

    def verify(self, method: str, url: str, headers: Mapping[str, str]) -> Grant | Refusal:
        from .helseid import OAuthError

        try:
            claims = self.inner.verify_request(method, url, headers, None)
        except OAuthError as err:
            out = err.headers()
            return Refusal(err.status, f"{err.error}: {err.description}",
                           out.pop("www-authenticate", "DPoP"), out)
        scheme = (headers.get("authorization") or "").partition(" ")[0]
        return Grant(frozenset(str(claims.get("scope", "")).split()), claims, scheme)


def operation_outcome(severity: str, code: str, text: str,
                      coding: dict[str, str] | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": text}
    if coding:
        issue["details"] = {"coding": [coding], "text": text}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def fhir_json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None
              ) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=dict(headers or {}),
                        media_type="application/fhir+json")


class HttpPeer(AppPeer):
    """Runs `self.app` on 127.0.0.1, port 0, in a loop thread; a context manager."""

    name = "peer"

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.lock = threading.Condition()
        self._failures: list[Any] = []
        super().__init__(f"{self.name}-peer")

    def fail_next(self, answer: Any, times: int = 1) -> None:
        """Answer the next `times` writes with `answer` (an HTTP status, or the service's
        own error code) instead of handling them."""
        with self.lock:
            self._failures.extend([answer] * times)

    def next_failure(self) -> Any | None:
        """The planned failure for this request, if any (taken off the queue)."""
        with self.lock:
            return self._failures.pop(0) if self._failures else None
