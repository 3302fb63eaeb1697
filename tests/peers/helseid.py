"""A local OAuth 2.0 authorization server in HelseID's image, and a resource-server
verifier for the peers that play NHN's APIs (VKP, JFT, PMD) and protected FHIR servers.

Why: HelseID is not reachable from tests. This peer follows NHN's published profile
(domain.md §1.7, reliability.md §4.1, RFC 7523 private_key_jwt, RFC 9449 DPoP) and really
verifies what it gets: nothing here imports hub code, so a passing test shows the hub
speaks to an independent implementation. It uses PyJWT for the signatures.

Authorization server (`AuthorizationServer`, real HTTP on 127.0.0.1, port 0):

- ``GET /.well-known/openid-configuration`` (issuer, token_endpoint, jwks_uri),
  ``GET /.well-known/openid-configuration/jwks`` (the key its access tokens are signed with),
  ``POST /connect/token`` (client_credentials only).
- Clients are registered with their public JWK, allowed scopes and extra token claims
  (`register_client`); `revoke` makes a client unusable.
- The client assertion: asymmetric ``alg`` only (``none`` and HS* are refused), the
  registered key (by ``kid``), ``iss`` = ``sub`` = client_id, ``aud`` = the issuer or the
  token endpoint (HelseID) / the token endpoint (SMART profile), ``exp`` not passed and at
  most 60 s (SMART: 300 s) ahead, ``jti`` never seen before.
- DPoP (HelseID profile): a proof is required for clients registered with ``dpop=True``;
  signature with the header ``jwk``, ``typ`` dpop+jwt, ``htm``, ``htu``, ``iat`` within
  60 s, ``jti`` unique; with `require_nonce`, a proof without the current nonce gets
  ``400 use_dpop_nonce`` and a ``DPoP-Nonce`` header. Tokens are then DPoP-bound
  (``token_type`` DPoP, ``cnf.jkt``).
- `clock_offset` shifts the server's clock (an expired or too-far-ahead assertion is what a
  skewed clock produces); `fail_next(n, status)` makes the next token requests fail.
- Every token request is recorded in `token_requests` (client, error or None).

Resource-server side (`ResourceVerifier`, no HTTP of its own: call it from a peer's handler)::

    verifier = server.verifier(require_nonce=True)
    try:
        claims = verifier.verify_request(method, url, headers, "nhn:jft/api")
    except OAuthError as err:
        return JSONResponse(err.body(), err.status, headers=err.headers())

It checks the token's signature (this server's key), issuer, expiry, revocation, the
scope (403 ``insufficient_scope``), and for DPoP-bound tokens the proof: signature, ``typ``,
``htm``, ``htu`` (against `public_url` when the server sits behind a proxy), ``iat``
window, ``jti`` replay, ``ath``, ``cnf.jkt`` and, with `require_nonce`, the nonce
(401 ``use_dpop_nonce`` + ``DPoP-Nonce``). `url` is the full request URL as received
(query allowed: it is not part of ``htu``); `headers` may have any case.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._asgi import AsgiPeer, ServerTls

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
PROOF_WINDOW = 60.0  # seconds a DPoP proof's iat may differ from the server clock
LEEWAY = 5.0


class OAuthError(Exception):
    """An OAuth error answer: `status`, `error` code, description, and (for DPoP) a nonce."""

    def __init__(self, status: int, error: str, description: str, *,
                 nonce: str | None = None, scheme: str = "DPoP") -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status = status
        self.error = error
        self.description = description
        self.nonce = nonce
        self.scheme = scheme

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}

    def headers(self) -> dict[str, str]:
        out = {"cache-control": "no-store"}
        if self.status in (401, 403):
            out["www-authenticate"] = (f'{self.scheme} error="{self.error}", '
                                       f'error_description="{self.description}"')
        if self.nonce is not None:
            out["dpop-nonce"] = self.nonce
        return out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 (own implementation, so the hub's is checked against it)."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[str(jwk["kty"])]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def normalise_url(url: str) -> str:
    """scheme://host:port/path, lower-case scheme and host, no query or fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", "", ""))


class ReplayCache:
    """Seen `jti` values until they could no longer be accepted anyway."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_use(self, jti: str, keep_until: float) -> bool:
        with self._lock:
            now = time.time()
            for key in [k for k, until in self._seen.items() if until < now - 600]:
                del self._seen[key]
            if jti in self._seen:
                return False
            self._seen[jti] = keep_until
            return True


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def verify_dpop_proof(proof: str, *, method: str, url: str, now: float, replay: ReplayCache,
                      nonce: str | None, access_token: str | None, status: int,
                      scheme: str = "DPoP") -> dict[str, Any]:
    """The proof's public JWK (verified) or OAuthError(status, invalid_dpop_proof /
    use_dpop_nonce). `nonce`: the nonce the proof must carry (None: none required)."""

    def fail(text: str) -> OAuthError:
        return OAuthError(status, "invalid_dpop_proof", text, nonce=nonce, scheme=scheme)

    try:
        header = jwt.get_unverified_header(proof)
    except jwt.PyJWTError:
        raise fail("the DPoP proof is not a JWS") from None
    if header.get("typ") != "dpop+jwt":
        raise fail("the DPoP proof's typ is not dpop+jwt")
    alg = header.get("alg")
    if alg not in ASYMMETRIC:
        raise fail(f"the DPoP proof's alg {alg!r} is not an asymmetric algorithm")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or "d" in jwk or jwk.get("kty") not in ("RSA", "EC"):
        raise fail("the DPoP proof's header has no public jwk (or a private one)")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
        claims = jwt.decode(proof, key, algorithms=[alg],
                            options={"verify_exp": False, "verify_iat": False,
                                     "verify_nbf": False, "verify_aud": False})
    except (jwt.PyJWTError, ValueError, KeyError, TypeError):
        raise fail("the DPoP proof's signature does not verify with its jwk") from None
    if claims.get("htm") != method.upper():
        raise fail(f"htm {claims.get('htm')!r} is not the request method {method.upper()}")
    if not isinstance(claims.get("htu"), str) or normalise_url(claims["htu"]) != \
            normalise_url(url):
        raise fail(f"htu {claims.get('htu')!r} is not the request URL {normalise_url(url)}")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or abs(now - iat) > PROOF_WINDOW:
        raise fail("the DPoP proof's iat is outside the accepted window")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise fail("the DPoP proof has no jti")
    if access_token is not None:
        expected = b64url(hashlib.sha256(access_token.encode()).digest())
        if claims.get("ath") != expected:
            raise fail("ath does not match the access token")
    if nonce is not None and claims.get("nonce") != nonce:
        raise OAuthError(status, "use_dpop_nonce", "a DPoP nonce is required", nonce=nonce,
                         scheme=scheme)
    if not replay.first_use(jti, now + PROOF_WINDOW):
        raise fail("the DPoP proof's jti was used before (replay)")
    return jwk


@dataclass
class RegisteredClient:
    client_id: str
    jwk: dict[str, Any]
    kid: str
    scopes: set[str]
    dpop: bool = True
    claims: dict[str, Any] = field(default_factory=dict)
    revoked: bool = False


@dataclass(frozen=True)
class TokenRequest:
    client_id: str | None
    error: str | None  # None: a token was issued
    description: str = ""
    dpop: bool = False
    scopes: tuple[str, ...] = ()


class AuthorizationServer:
    """HelseID-like token service; see the module docstring."""

    def __init__(self, *, profile: str = "helseid", require_nonce: bool = False,
                 token_lifetime: int = 300, tls: ServerTls | None = None) -> None:
        if profile not in ("helseid", "smart"):
            raise ValueError("profile is helseid or smart")
        self.profile = profile
        self.require_nonce = require_nonce
        self.token_lifetime = token_lifetime
        self.max_assertion_seconds = 60 if profile == "helseid" else 300
        self.clock_offset = 0.0
        self.clients: dict[str, RegisteredClient] = {}
        self.token_requests: list[TokenRequest] = []
        self.last_form: dict[str, str] = {}
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = "as-" + secrets.token_hex(4)
        self._nonce = secrets.token_urlsafe(16)
        self._assertions = ReplayCache()
        self._proofs = ReplayCache()
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._peer = AsgiPeer(Starlette(routes=[
            Route("/.well-known/openid-configuration", self._discovery, methods=["GET"]),
            Route("/.well-known/openid-configuration/jwks", self._jwks, methods=["GET"]),
            Route("/connect/token", self._token, methods=["POST"]),
        ]), "authorization-server", tls)

    # -- set-up ---------------------------------------------------------------------------

    def register_client(self, client_id: str, public_jwk: Mapping[str, Any], scopes: Any,
                        *, kid: str | None = None, dpop: bool | None = None,
                        claims: Mapping[str, Any] | None = None) -> RegisteredClient:
        """A client with its public key (a JWK without private members)."""
        if "d" in public_jwk:
            raise ValueError("register the public key only")
        jwk = dict(public_jwk)
        client = RegisteredClient(
            client_id, jwk, kid or str(jwk.get("kid") or thumbprint(jwk)), set(scopes),
            dpop=(self.profile == "helseid") if dpop is None else dpop,
            claims={"client_amr": "private_key_jwt", **(claims or {})})
        self.clients[client_id] = client
        return client

    def revoke(self, client_id: str) -> None:
        self.clients[client_id].revoked = True

    def rotate_nonce(self) -> str:
        self._nonce = secrets.token_urlsafe(16)
        return self._nonce

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def now(self) -> float:
        return time.time() + self.clock_offset

    def errors(self) -> list[str | None]:
        return [r.error for r in self.token_requests]

    # -- endpoints ------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return self._peer.url

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/connect/token"

    @property
    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self._kid, "use": "sig", "alg": "RS256"}]}

    async def _discovery(self, request: Request) -> Response:
        return JSONResponse({
            "issuer": self.issuer, "token_endpoint": self.token_endpoint,
            "jwks_uri": self.issuer + "/.well-known/openid-configuration/jwks",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(ASYMMETRIC),
            "dpop_signing_alg_values_supported": list(ASYMMETRIC)})

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse(self.jwks)

    async def _token(self, request: Request) -> Response:
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            self.token_requests.append(TokenRequest(None, f"http_{failure}"))
            return JSONResponse({"error": "temporarily_unavailable"}, failure)
        raw = (await request.body()).decode("utf-8", errors="replace")
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        self.last_form = form
        client_id = form.get("client_id")
        try:
            token, dpop = self._issue(form, request.headers, str(request.url))
        except OAuthError as err:
            self.token_requests.append(TokenRequest(client_id, err.error, err.description))
            return JSONResponse(err.body(), err.status, headers=err.headers())
        scopes = tuple(form.get("scope", "").split())
        self.token_requests.append(TokenRequest(client_id, None, dpop=dpop, scopes=scopes))
        headers = {"cache-control": "no-store"}
        if self.require_nonce:
            headers["dpop-nonce"] = self._nonce
        return JSONResponse({"access_token": token, "token_type": "DPoP" if dpop else "Bearer",
                             "expires_in": self.token_lifetime,
                             "scope": " ".join(scopes)}, headers=headers)

    def _issue(self, form: Mapping[str, str], headers: Mapping[str, str],
               url: str) -> tuple[str, bool]:
        now = self.now()
        if form.get("grant_type") != "client_credentials":
            raise OAuthError(400, "unsupported_grant_type", "only client_credentials")
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            raise OAuthError(400, "invalid_client", "unknown client")
        if client.revoked:
            raise OAuthError(400, "invalid_client", "the client is revoked")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError(400, "invalid_client", "client_assertion_type must be jwt-bearer")
        proof = _header(headers, "dpop")
        jkt = None
        if proof is not None:
            jwk = verify_dpop_proof(proof, method="POST", url=url, now=now,
                                    replay=self._proofs, access_token=None, status=400,
                                    nonce=self._nonce if self.require_nonce else None)
            jkt = thumbprint(jwk)
        elif client.dpop:
            raise OAuthError(400, "invalid_dpop_proof", "this client must send a DPoP proof")
        self._check_assertion(client, form.get("client_assertion", ""), now)
        scopes = form.get("scope", "").split()
        missing = [s for s in scopes if s not in client.scopes]
        if missing:
            raise OAuthError(400, "invalid_scope", f"not allowed for this client: "
                             f"{' '.join(missing)}")
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": client.client_id, "client_id": client.client_id,
            "aud": sorted({s.split("/")[0] for s in scopes}) or [self.issuer],
            "scope": " ".join(scopes), "iat": int(now), "nbf": int(now),
            "exp": int(now) + self.token_lifetime, "jti": str(uuid.uuid4()), **client.claims}
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        token = jwt.encode(claims, self._key, algorithm="RS256",
                           headers={"kid": self._kid, "typ": "at+jwt"})
        return token, jkt is not None

    def _check_assertion(self, client: RegisteredClient, assertion: str, now: float) -> None:
        def fail(text: str) -> OAuthError:
            return OAuthError(400, "invalid_client", text)

        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise fail("the client assertion is not a JWS") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC:  # alg none and the HS256 downgrade end here
            raise fail(f"the client assertion's alg {alg!r} is not allowed")
        if header.get("kid") not in (None, client.kid):
            raise fail(f"no key {header.get('kid')!r} is registered for this client")
        try:
            key = jwt.PyJWK(client.jwk, algorithm=alg).key
            claims = jwt.decode(assertion, key, algorithms=[alg],
                                options={"verify_exp": False, "verify_iat": False,
                                         "verify_nbf": False, "verify_aud": False})
        except (jwt.PyJWTError, ValueError, KeyError, TypeError):
            raise fail("the client assertion's signature does not verify with the "
                       "registered key") from None
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            raise fail("iss and sub must both be the client_id")
        audiences = {self.token_endpoint} if self.profile == "smart" else \
            {self.issuer, self.token_endpoint}
        aud = claims.get("aud")
        given = set(aud) if isinstance(aud, list) else {aud}
        if not given & audiences:
            raise fail(f"aud {aud!r} is not this server ({' or '.join(sorted(audiences))})")
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise fail("the client assertion has no exp")
        if exp < now - LEEWAY:
            raise fail("the client assertion has expired")
        if exp > now + self.max_assertion_seconds + LEEWAY:
            raise fail(f"the client assertion's exp is more than "
                       f"{self.max_assertion_seconds} s ahead")
        iat = claims.get("iat")
        if isinstance(iat, int | float) and iat > now + LEEWAY:
            raise fail("the client assertion was issued in the future")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + LEEWAY:
            raise fail("the client assertion is not valid yet (nbf)")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise fail("the client assertion has no jti")
        if not self._assertions.first_use(f"{client.client_id}|{jti}", exp):
            raise fail("the client assertion's jti was used before (replay)")

    # -- resource servers -----------------------------------------------------------------

    def verifier(self, **options: Any) -> ResourceVerifier:
        return ResourceVerifier(self, **options)

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """Claims of a token this server issued, or OAuthError 401 invalid_token."""
        try:
            claims = jwt.decode(token, self._key.public_key(), algorithms=["RS256"],
                                issuer=self.issuer, leeway=LEEWAY,
                                options={"verify_aud": False, "require": ["exp", "iss"]})
        except jwt.ExpiredSignatureError:
            raise OAuthError(401, "invalid_token", "the access token has expired") from None
        except jwt.PyJWTError:
            raise OAuthError(401, "invalid_token", "the access token is not from this "
                             "issuer or its signature does not verify") from None
        client = self.clients.get(str(claims.get("client_id")))
        if client is None or client.revoked:
            raise OAuthError(401, "invalid_token", "the client is revoked")
        return claims

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> int:
        return self._peer.start()

    def stop(self) -> None:
        self._peer.stop()

    def __enter__(self) -> AuthorizationServer:
        self.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.stop()


class ResourceVerifier:
    """Checks the access token and DPoP proof of a request to a protected API.

    `require_dpop`: only DPoP-bound tokens are accepted (JFT, PMD); False also accepts
    Bearer tokens (VKP, SMART). `require_nonce`: proofs must carry this verifier's nonce.
    `public_url`: the API's external base URL when ``htu`` names it rather than the
    address the request arrived at (a server behind a proxy)."""

    def __init__(self, server: AuthorizationServer, *, require_dpop: bool = True,
                 require_nonce: bool = False, public_url: str | None = None) -> None:
        self.server = server
        self.require_dpop = require_dpop
        self.require_nonce = require_nonce
        self.public_url = public_url
        self.nonce = secrets.token_urlsafe(16)
        self.accepted = 0
        self.rejected: list[str] = []  # error codes, in order
        self._proofs = ReplayCache()
        self._lock = threading.Lock()

    def rotate_nonce(self) -> str:
        self.nonce = secrets.token_urlsafe(16)
        return self.nonce

    def response_headers(self) -> dict[str, str]:
        """Headers for a successful answer (the current nonce, when one is required)."""
        return {"dpop-nonce": self.nonce} if self.require_nonce else {}

    def verify_request(self, method: str, url: str, headers: Mapping[str, str],
                       required_scope: str | None) -> dict[str, Any]:
        """The token's claims, or OAuthError (401/403 with WWW-Authenticate)."""
        try:
            claims = self._verify(method, url, headers, required_scope)
        except OAuthError as err:
            with self._lock:
                self.rejected.append(err.error)
            raise
        with self._lock:
            self.accepted += 1
        return claims

    def _verify(self, method: str, url: str, headers: Mapping[str, str],
                required_scope: str | None) -> dict[str, Any]:
        scheme = "DPoP" if self.require_dpop else "Bearer"
        nonce = self.nonce if self.require_nonce else None
        authorization = _header(headers, "authorization") or ""
        kind, _, token = authorization.partition(" ")
        if not token or kind.lower() not in ("dpop", "bearer"):
            raise OAuthError(401, "invalid_token", "no access token", scheme=scheme)
        try:
            claims = self.server.verify_access_token(token.strip())
        except OAuthError as err:
            err.scheme = scheme
            raise
        bound = (claims.get("cnf") or {}).get("jkt")
        if bound is None and self.require_dpop:
            raise OAuthError(401, "invalid_token", "a DPoP-bound token is required",
                             scheme=scheme)
        if bound is not None:
            if kind.lower() != "dpop":
                raise OAuthError(401, "invalid_token", "a DPoP-bound token must be sent "
                                 "with the DPoP scheme", scheme="DPoP")
            proof = _header(headers, "dpop")
            if proof is None:
                raise OAuthError(401, "invalid_dpop_proof", "no DPoP proof", nonce=nonce)
            target = url
            if self.public_url is not None:
                path = urlsplit(url).path
                target = self.public_url.rstrip("/") + path
            jwk = verify_dpop_proof(proof, method=method, url=target,
                                    now=self.server.now(), replay=self._proofs,
                                    nonce=nonce, access_token=token.strip(), status=401)
            if thumbprint(jwk) != bound:
                raise OAuthError(401, "invalid_dpop_proof", "the proof's key is not the "
                                 "key the token is bound to", nonce=nonce)
        elif kind.lower() != "bearer":
            raise OAuthError(401, "invalid_token", "an unbound token is a Bearer token",
                             scheme=scheme)
        if required_scope is not None and required_scope not in \
                str(claims.get("scope", "")).split():
            raise OAuthError(403, "insufficient_scope", f"the token lacks {required_scope}",
                             scheme=scheme)
        return claims
