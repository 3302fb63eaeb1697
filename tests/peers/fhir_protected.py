"""A FHIR R4 write endpoint behind OAuth (and optionally mutual TLS), for the auth tests.

Why: the hub's fhir-rest destination must get through a server that really checks its
token, DPoP proof and scopes (tests/peers/helseid.py `ResourceVerifier`) and, with
`tls`, that refuses a TLS client without a certificate from the pinned CA.

- ``POST {base}`` (a transaction Bundle) → 200 transaction-response;
  ``PUT {base}/{type}/{id}`` → 201.
- ``GET {base}/.well-known/smart-configuration`` names the authorization server's token
  endpoint (SMART Backend Services discovery), without authentication.
- Refusals answer as a FHIR server behind OAuth does: 401/403 with ``WWW-Authenticate``
  (and ``DPoP-Nonce``) and an OAuth error body. Accepted requests are in `requests`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._asgi import AsgiPeer, ServerTls
from .helseid import AuthorizationServer, OAuthError, ResourceVerifier


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class ProtectedFhirServer:
    def __init__(self, *, verifier: ResourceVerifier | None = None,
                 required_scope: str | None = None, base_path: str = "/fhir/R4",
                 authorization_server: AuthorizationServer | None = None,
                 tls: ServerTls | None = None) -> None:
        self.verifier = verifier
        self.required_scope = required_scope
        self.base_path = base_path.rstrip("/")
        self.authorization_server = authorization_server
        self.requests: list[Received] = []
        self.refused = 0
        self._lock = threading.Lock()
        b = self.base_path
        self._peer = AsgiPeer(Starlette(routes=[
            Route(f"{b}/.well-known/smart-configuration", self._smart, methods=["GET"]),
            Route(f"{b}/", self._transaction, methods=["POST"]),
            Route(b, self._transaction, methods=["POST"]),
            Route(b + "/{type}/{id}", self._put, methods=["PUT"]),
        ]), "protected-fhir", tls)

    @property
    def url(self) -> str:
        return self._peer.url

    @property
    def base_url(self) -> str:
        return self._peer.url + self.base_path

    async def _smart(self, request: Request) -> Response:
        if self.authorization_server is None:
            return JSONResponse({"resourceType": "OperationOutcome"}, 404)
        return JSONResponse({
            "token_endpoint": self.authorization_server.token_endpoint,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256",
                                                                  "ES256"],
            "capabilities": ["client-confidential-asymmetric", "permission-v2"]})

    async def _check(self, request: Request) -> tuple[Response | None, bytes]:
        body = await request.body()
        if self.verifier is not None:
            try:
                self.verifier.verify_request(request.method, str(request.url),
                                             dict(request.headers), self.required_scope)
            except OAuthError as err:
                with self._lock:
                    self.refused += 1
                return JSONResponse(err.body(), err.status, headers=err.headers()), body
        with self._lock:
            self.requests.append(Received(request.method, request.url.path,
                                          dict(request.headers), body))
        return None, body

    def _headers(self) -> dict[str, str]:
        return self.verifier.response_headers() if self.verifier is not None else {}

    async def _transaction(self, request: Request) -> Response:
        refusal, body = await self._check(request)
        if refusal is not None:
            return refusal
        bundle: dict[str, Any] = json.loads(body)
        entries = [{"response": {"status": "201 Created"}} for _ in bundle.get("entry", [])]
        return JSONResponse({"resourceType": "Bundle", "type": "transaction-response",
                             "entry": entries}, headers=self._headers())

    async def _put(self, request: Request) -> Response:
        refusal, body = await self._check(request)
        if refusal is not None:
            return refusal
        return Response(body, 201, media_type="application/fhir+json", headers=self._headers())

    def start(self) -> int:
        return self._peer.start()

    def stop(self) -> None:
        self._peer.stop()

    def __enter__(self) -> ProtectedFhirServer:
        self.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.stop()
