"""OAuth 2.0 client credentials with private_key_jwt (RFC 7523), DPoP (RFC 9449).

HelseID (domain.md §1.7, reliability.md §4.1) and SMART Backend Services (§4.2) differ in
the assertion's audience, in DPoP, and in where the token endpoint comes from; the rest is
one `TokenClient`. Nothing here logs or raises with a key, assertion, proof or token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import ssl
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlencode, urlsplit, urlunsplit

from hub.auth.settings import AuthBinding, BearerAuth, HelseIdAuth, SmartAuth, check_https
from hub.domain.model import Outcome
from hub.errors import ConfigError, HubError
from hub.httpclient import HttpClient, HttpResponse, TransportFailure, ssl_context
from hub.logging import get_logger

# hub.auth.keys (PyJWT on cryptography, ~0.66 s of imports) is imported where a key is
# loaded or made: build_authorizer() at start-up for a configured [auth.*] section, so a
# gateway without HelseID/SMART never pays for it, and one with them still fails at
# start-up when the library is missing.
if TYPE_CHECKING:
    from hub.auth.keys import SigningKey

log = get_logger("hub.auth")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Token endpoint errors that will not go away by asking again (RFC 6749 §5.2, RFC 9449).
PERMANENT_ERRORS = frozenset({"invalid_client", "invalid_grant", "unauthorized_client",
                              "invalid_scope", "unsupported_grant_type", "invalid_request",
                              "invalid_dpop_proof", "access_denied", "invalid_target"})
FAILURE_HOLD_SECONDS = 5.0  # a failed token request is not repeated sooner (no storm)
DEFAULT_EXPIRES_IN = 60.0


class AuthError(HubError):
    """Getting a token failed. `status`: the token endpoint's HTTP status, if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthRejected(AuthError):
    """The token endpoint refused the client for good: pause the destination."""


class AuthUnavailable(AuthError):
    """The token endpoint did not answer usefully (timeout, 5xx, 429): retry later."""


def outcome_for_auth_error(exc: AuthError) -> Outcome:
    if isinstance(exc, AuthRejected):
        return Outcome.pause(f"authorization refused: {exc} (the destination is paused)",
                             exc.status)
    return Outcome.retry(f"authorization server unavailable: {exc}", exc.status)


def htu(url: str) -> str:
    """The DPoP ``htu`` of a request URL: without query and fragment (RFC 9449 §4.2)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", "", ""))


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def access_token_hash(token: str) -> str:
    """The DPoP ``ath``: base64url(SHA-256(access token))."""
    from hub.auth.keys import b64url

    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def header(response: HttpResponse, name: str) -> str | None:
    for key, value in response.headers.items():
        if key.lower() == name:
            return value
    return None


_ERROR_PARAM = re.compile(r'error\s*=\s*"?([A-Za-z0-9_.\-]+)"?')


def challenge_error(response: HttpResponse) -> str | None:
    """The OAuth ``error`` of a WWW-Authenticate challenge or a JSON error body."""
    match = _ERROR_PARAM.search(header(response, "www-authenticate") or "")
    if match:
        return match.group(1)
    try:
        data = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else None


class DPoPSigner:
    """Fresh DPoP proofs (unique `jti`) and the latest nonce of each server (by origin)."""

    def __init__(self, key: SigningKey | None = None) -> None:
        from hub.auth.keys import SigningKey

        self.key = key or SigningKey.generate_ec()
        self._nonces: dict[str, str] = {}

    @property
    def thumbprint(self) -> str:
        return self.key.thumbprint

    def learn_nonce(self, url: str, nonce: str) -> None:
        self._nonces[origin(url)] = nonce

    def proof(self, method: str, url: str, access_token: str | None = None) -> str:
        claims: dict[str, object] = {"jti": str(uuid.uuid4()), "htm": method.upper(),
                                     "htu": htu(url), "iat": int(time.time())}
        nonce = self._nonces.get(origin(url))
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        return self.key.sign(claims, typ="dpop+jwt", embed_jwk=True)

    def __repr__(self) -> str:
        return f"DPoPSigner(jkt={self.thumbprint!r})"


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    token_type: str  # "DPoP" or "Bearer"
    renew_at: float  # time.monotonic() after which a new token is fetched

    def __repr__(self) -> str:
        return f"AccessToken(type={self.token_type!r})"


class TokenClient:
    """client_credentials + private_key_jwt against one token endpoint; tokens cached per
    scope set; concurrent callers share one request; a failure is held for a few seconds
    so a burst of deliveries cannot turn into a burst of token requests."""

    def __init__(self, *, name: str, client_id: str, key: SigningKey, token_endpoint: str | None,
                 audience: str | None, http: HttpClient, dpop: DPoPSigner | None = None,
                 discovery_url: str | None = None, discovery_http: HttpClient | None = None,
                 assertion_lifetime: float = 30.0, refresh_before: float = 30.0) -> None:
        self.name = name
        self.client_id = client_id
        self._key = key
        self._token_endpoint = token_endpoint
        self._audience = audience  # None: the token endpoint (SMART)
        self._http = http
        self._discovery_url = discovery_url
        self._discovery_http = discovery_http
        self.dpop = dpop
        self._lifetime = min(assertion_lifetime, 60.0)
        self._refresh_before = refresh_before
        self._tokens: dict[tuple[str, ...], AccessToken] = {}
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._failed: dict[tuple[str, ...], tuple[AuthError, float]] = {}
        self.requests = 0  # token requests sent (tests and metrics)

    def __repr__(self) -> str:
        return f"TokenClient(name={self.name!r}, client_id={self.client_id!r})"

    async def token(self, scopes: Sequence[str]) -> AccessToken:
        scope_key = tuple(sorted(set(scopes)))
        cached = self._tokens.get(scope_key)
        if cached is not None and time.monotonic() < cached.renew_at:
            return cached
        lock = self._locks.setdefault(scope_key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(scope_key)
            if cached is not None and time.monotonic() < cached.renew_at:
                return cached
            failed = self._failed.get(scope_key)
            if failed is not None and time.monotonic() < failed[1]:
                raise failed[0]
            try:
                token = await self._fetch(scope_key)
            except AuthError as exc:
                self._failed[scope_key] = (exc, time.monotonic() + FAILURE_HOLD_SECONDS)
                self._tokens.pop(scope_key, None)
                raise
            self._failed.pop(scope_key, None)
            self._tokens[scope_key] = token
            return token

    def invalidate(self, scopes: Sequence[str], value: str | None = None) -> None:
        """Forget the cached token (the resource server said it is no longer valid)."""
        scope_key = tuple(sorted(set(scopes)))
        cached = self._tokens.get(scope_key)
        if cached is not None and (value is None or cached.value == value):
            del self._tokens[scope_key]

    async def token_endpoint(self) -> str:
        if self._token_endpoint is None:
            self._token_endpoint = await self._discover()
        return self._token_endpoint

    async def _discover(self) -> str:
        url = self._discovery_url
        http = self._discovery_http or self._http
        if url is None:
            raise AuthRejected(f"auth {self.name}: no token_endpoint and nothing to discover "
                               "it from")
        try:
            response = await http.request("GET", url, headers={"accept": "application/json"})
        except TransportFailure as exc:
            raise AuthUnavailable(f"auth {self.name}: {url}: no answer ({exc.kind})") from None
        if response.status >= 500 or response.status == 429:
            raise AuthUnavailable(f"auth {self.name}: {url}: HTTP {response.status}",
                                  response.status)
        try:
            endpoint = json.loads(response.body)["token_endpoint"]
            if not isinstance(endpoint, str):
                raise TypeError
            return check_https(endpoint)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise AuthRejected(f"auth {self.name}: {url} (HTTP {response.status}) names no "
                               "usable token_endpoint; set token_endpoint in the auth section",
                               response.status) from None

    def _assertion(self, endpoint: str) -> str:
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id,
                  "aud": self._audience or endpoint, "jti": str(uuid.uuid4()),
                  "iat": now, "nbf": now, "exp": now + int(self._lifetime)}
        return self._key.sign(claims)

    async def _fetch(self, scopes: tuple[str, ...]) -> AccessToken:
        endpoint = await self.token_endpoint()
        for attempt in (1, 2):
            form = {"grant_type": "client_credentials", "client_id": self.client_id,
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": self._assertion(endpoint)}
            if scopes:
                form["scope"] = " ".join(scopes)
            headers = {"content-type": "application/x-www-form-urlencoded",
                       "accept": "application/json"}
            if self.dpop is not None:
                headers["dpop"] = self.dpop.proof("POST", endpoint)
            self.requests += 1
            started = time.monotonic()
            try:
                response = await self._http.request("POST", endpoint, headers=headers,
                                                    content=urlencode(form).encode())
            except TransportFailure as exc:
                raise AuthUnavailable(f"auth {self.name}: token endpoint did not answer "
                                      f"({exc.kind})") from None
            nonce = header(response, "dpop-nonce")
            if self.dpop is not None and nonce:
                self.dpop.learn_nonce(endpoint, nonce)
            if response.status == 200:
                return self._accept(response, started, scopes)
            error = challenge_error(response)
            if error == "use_dpop_nonce" and nonce and self.dpop is not None and attempt == 1:
                continue  # RFC 9449 §8: once more, with the nonce the server gave
            raise self._failure(response, error)
        raise AuthRejected(f"auth {self.name}: the token endpoint asked for a DPoP nonce twice")

    def _accept(self, response: HttpResponse, started: float,
                scopes: tuple[str, ...]) -> AccessToken:
        try:
            data = json.loads(response.body)
            value = data["access_token"]
            token_type = str(data.get("token_type", "Bearer"))
            expires_in = float(data.get("expires_in", DEFAULT_EXPIRES_IN))
            if not isinstance(value, str) or not value or expires_in <= 0:
                raise ValueError
            value.encode("ascii")
        except (ValueError, KeyError, TypeError, UnicodeError):
            raise AuthUnavailable(f"auth {self.name}: the token endpoint's answer holds no "
                                  "usable access_token", response.status) from None
        if self.dpop is not None and token_type.lower() != "dpop":
            log.warning("token is not DPoP-bound", auth=self.name, token_type=token_type)
        renew_at = started + expires_in - min(self._refresh_before, expires_in / 2)
        log.info("access token obtained", auth=self.name, client_id=self.client_id,
                 scopes=" ".join(scopes), token_type=token_type, expires_in=expires_in)
        return AccessToken(value, "DPoP" if token_type.lower() == "dpop" else "Bearer",
                           renew_at)

    def _failure(self, response: HttpResponse, error: str | None) -> AuthError:
        description = ""
        try:
            data = json.loads(response.body)
            if isinstance(data, dict) and isinstance(data.get("error_description"), str):
                description = data["error_description"][:200]
        except (ValueError, UnicodeDecodeError):
            pass
        what = error or f"HTTP {response.status}"
        if response.status >= 500 or response.status in (408, 429):
            return AuthUnavailable(f"auth {self.name}: the token endpoint answered HTTP "
                                   f"{response.status}" + (f" ({error})" if error else ""),
                                   response.status)
        text = (f"auth {self.name}: the token endpoint refused client {self.client_id}: "
                f"{what}" + (f" ({description})" if description else ""))
        if error in PERMANENT_ERRORS or 400 <= response.status < 500:
            return AuthRejected(text, response.status)
        return AuthUnavailable(text, response.status)

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._discovery_http is not None:
            await self._discovery_http.aclose()


@runtime_checkable
class RequestAuthorizer(Protocol):
    """Authorization headers for outbound requests to one resource server."""

    async def authorize(self, method: str, url: str) -> dict[str, str]:
        """Headers for one request: ``authorization`` (``Bearer …`` or ``DPoP …``) and,
        with DPoP, a ``dpop`` proof for `method` and `url` (absolute; query and fragment
        are left out of ``htu``) with ``ath`` and the server's latest nonce. Gets or reuses
        a cached access token (per scope set, until shortly before it expires).

        Raises AuthRejected (pause) or AuthUnavailable (retry)."""
        ...

    async def handle_challenge(self, url: str, response: HttpResponse) -> bool:
        """Look at the resource server's answer to a request made with `authorize`'s
        headers (call it with every answer: it also keeps a rotated ``DPoP-Nonce``).

        True when exactly one more attempt with fresh `authorize` headers can succeed: a
        ``use_dpop_nonce`` challenge (the nonce is now stored) or a 401 ``invalid_token``
        (the cached token is dropped). The caller retries at most once."""
        ...

    async def aclose(self) -> None:
        """Release the token endpoint's connections."""
        ...


class NoAuthorizer:
    """No Authorization header."""

    async def authorize(self, method: str, url: str) -> dict[str, str]:
        return {}

    async def handle_challenge(self, url: str, response: HttpResponse) -> bool:
        return False

    async def aclose(self) -> None:
        return None


class StaticBearerAuthorizer(NoAuthorizer):
    """A fixed bearer token (from the environment)."""

    def __init__(self, token: str) -> None:
        self._header = {"authorization": f"Bearer {token}"}

    def __repr__(self) -> str:
        return "StaticBearerAuthorizer()"

    async def authorize(self, method: str, url: str) -> dict[str, str]:
        return dict(self._header)


class OAuthAuthorizer:
    """Tokens from a `TokenClient` for one scope set; DPoP proofs when the token is bound."""

    def __init__(self, client: TokenClient, scopes: Sequence[str]) -> None:
        self.client = client
        self.scopes = tuple(scopes)

    def __repr__(self) -> str:
        return f"OAuthAuthorizer({self.client!r}, scopes={' '.join(self.scopes)!r})"

    async def authorize(self, method: str, url: str) -> dict[str, str]:
        token = await self.client.token(self.scopes)
        dpop = self.client.dpop
        if token.token_type == "DPoP" and dpop is not None:  # noqa: S105 (a type name)
            return {"authorization": f"DPoP {token.value}",
                    "dpop": dpop.proof(method, url, token.value)}
        return {"authorization": f"Bearer {token.value}"}

    async def handle_challenge(self, url: str, response: HttpResponse) -> bool:
        dpop = self.client.dpop
        nonce = header(response, "dpop-nonce")
        if nonce and dpop is not None:
            dpop.learn_nonce(url, nonce)
        if response.status not in (400, 401):
            return False
        error = challenge_error(response)
        if error == "use_dpop_nonce":
            return bool(nonce) and dpop is not None
        if response.status == 401 and error == "invalid_token":
            self.client.invalidate(self.scopes)
            return True
        return False

    async def aclose(self) -> None:
        await self.client.aclose()


async def send_authorized(http: HttpClient, authorizer: RequestAuthorizer, method: str,
                          url: str, *, content: bytes | None = None,
                          headers: Mapping[str, str] | None = None) -> HttpResponse:
    """One request with authorization; once more (never in a loop) after a challenge.

    Raises AuthRejected / AuthUnavailable (token endpoint) or TransportFailure."""
    target = http.absolute_url(url)
    response: HttpResponse | None = None
    for attempt in (1, 2):
        auth_headers = await authorizer.authorize(method, target)
        response = await http.request(method, url, content=content,
                                      headers={**(headers or {}), **auth_headers})
        if not await authorizer.handle_challenge(target, response) or attempt == 2:
            return response
    assert response is not None
    return response


def build_authorizer(binding: AuthBinding, *, key: str, scopes: Sequence[str] | None = None,
                     resource_base_url: str | None = None,
                     bearer_token_env: str | None = None,
                     resource_tls: ssl.SSLContext | None = None) -> RequestAuthorizer:
    """The authorizer for a destination's ``auth`` key (`key`, e.g. ``destinations.jft``,
    names the destination in errors).

    `scopes` override the section's; `resource_base_url` lets SMART discover its token
    endpoint; `bearer_token_env` serves ``auth = "bearer"`` (the destination's older key)."""
    section = binding.section
    if binding.name == "none":
        return NoAuthorizer()
    if binding.name == "bearer" or isinstance(section, BearerAuth):
        env: str | None
        if isinstance(section, BearerAuth):
            env, where = section.token_env, f"auth.{binding.name}.token_env"
        else:
            env, where = bearer_token_env, f"{key}.token_env"
        if not env:
            raise ConfigError(f"{where}: auth = 'bearer' needs token_env (the variable "
                              "holding the token)")
        token = os.environ.get(env)
        if not token:
            raise ConfigError(f"{where}: environment variable {env} is not set")
        return StaticBearerAuthorizer(token)
    assert isinstance(section, HelseIdAuth | SmartAuth)
    where = f"auth.{binding.name}"
    from hub.auth.keys import load_signing_key

    signing_key = load_signing_key(file=section.private_key_file, env=section.private_key_env,
                                   kid=section.key_id, algorithm=section.algorithm, where=where)
    verify: ssl.SSLContext | bool = (ssl_context(str(section.ca_file)) if section.ca_file
                                     else True)
    if isinstance(section, HelseIdAuth):
        token_url = section.token_url()
        http = HttpClient(token_url, timeout=section.timeout_seconds,
                          connect_timeout=min(3.0, section.timeout_seconds),
                          max_connections=2, verify=verify)
        client = TokenClient(
            name=binding.name, client_id=section.client_id, key=signing_key,
            token_endpoint=token_url, audience=section.assertion_audience(), http=http,
            dpop=DPoPSigner() if section.dpop else None,
            assertion_lifetime=section.assertion_lifetime_seconds,
            refresh_before=section.refresh_before_seconds)
    else:
        discovery = None
        discovery_http = None
        if section.token_endpoint is None:
            if not resource_base_url:
                raise ConfigError(f"{where}: token_endpoint is not set and {key} has no FHIR "
                                  "base URL to discover it from")
            discovery = resource_base_url.rstrip("/") + "/.well-known/smart-configuration"
            discovery_http = HttpClient(discovery, timeout=section.timeout_seconds,
                                        max_connections=1,
                                        verify=resource_tls if resource_tls else True)
        http = HttpClient(section.token_endpoint or discovery or "", max_connections=2,
                          timeout=section.timeout_seconds, verify=verify)
        client = TokenClient(
            name=binding.name, client_id=section.client_id, key=signing_key,
            token_endpoint=section.token_endpoint, audience=section.audience, http=http,
            discovery_url=discovery, discovery_http=discovery_http,
            assertion_lifetime=section.assertion_lifetime_seconds,
            refresh_before=section.refresh_before_seconds)
    return OAuthAuthorizer(client, scopes if scopes else section.scopes)
