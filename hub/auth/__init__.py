"""Outbound authorization: HelseID (private_key_jwt + DPoP), SMART Backend Services, bearer.

A destination gets one `RequestAuthorizer` and asks it for the headers of each request.
The API (for destination authors; VKP, JFT, PMD, fhir-rest and edi2 use it):

Configuration: a named ``[auth.<name>]`` section (``type = "helseid" | "smart" |
"bearer"``, see docs/configuration.md) and, in the destination's settings model, a field
``auth: AuthRef = NO_AUTH`` (TOML: ``auth = "<name>"``). The hub resolves the name when it
validates the destination's settings (an unknown name is a configuration error naming the
key); the field then holds an `AuthBinding`. ``"none"`` means no authorization;
``"bearer"`` a static token from the variable passed as `bearer_token_env`.

Build the authorizer once, in the destination's factory (it loads the key: a missing file
or environment variable is a ConfigError there)::

    authorizer = build_authorizer(settings.auth, key=f"destinations.{name}",
                                  scopes=["nhn:jft/api"], resource_base_url=settings.base_url)

Send through it: `send_authorized` adds ``Authorization`` (and a fresh ``DPoP`` proof),
and retries exactly once when the server answers a DPoP nonce challenge
(``use_dpop_nonce`` + ``DPoP-Nonce``) or refuses an expired token (``invalid_token``)::

    try:
        response = await send_authorized(http, authorizer, "POST", "v1/Bundle", content=body)
    except AuthError as exc:
        return outcome_for_auth_error(exc)   # AuthRejected → pause, AuthUnavailable → retry
    # a 401/403 that is still there after the one retry: pause the destination (credentials
    # refused); never retry it in a loop.

Or use the two methods directly: ``headers = await authorizer.authorize(method, url)``
(``url`` absolute, as sent: the DPoP ``htu``), send, then
``if await authorizer.handle_challenge(url, response): ... send once more with fresh
headers``.

Errors: `AuthRejected` — the token endpoint refused the client for good (400
``invalid_client``, ``invalid_grant``, ``unauthorized_client``, ``invalid_scope``…): pause
the destination with the reason. `AuthUnavailable` — the token endpoint did not answer
usefully (timeout, 5xx, 429): retry with the normal backoff. Neither message ever carries
a key, an assertion, a proof or a token; neither does the `repr` of any object here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub.auth.oauth import (
    AuthError,
    AuthRejected,
    AuthUnavailable,
    DPoPSigner,
    RequestAuthorizer,
    TokenClient,
    access_token_hash,
    build_authorizer,
    htu,
    outcome_for_auth_error,
    send_authorized,
)
from hub.auth.settings import NO_AUTH, AuthBinding, AuthRef, AuthSection

if TYPE_CHECKING:
    from hub.auth.keys import SigningKey, jwk_thumbprint

# hub.auth.keys pulls in PyJWT and cryptography (~0.66 s): hub.config imports this package
# for the [auth.*] settings, so the keys module loads only when a key is needed
# (build_authorizer at start-up) or one of its names is asked for here.
_FROM_KEYS = frozenset({"SigningKey", "jwk_thumbprint"})


def __getattr__(name: str) -> Any:
    if name in _FROM_KEYS:
        from hub.auth import keys

        return getattr(keys, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "NO_AUTH",
    "AuthBinding",
    "AuthError",
    "AuthRef",
    "AuthRejected",
    "AuthSection",
    "AuthUnavailable",
    "DPoPSigner",
    "RequestAuthorizer",
    "SigningKey",
    "TokenClient",
    "access_token_hash",
    "build_authorizer",
    "htu",
    "jwk_thumbprint",
    "outcome_for_auth_error",
    "send_authorized",
]
