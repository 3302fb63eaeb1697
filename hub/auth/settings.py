"""The ``[auth.<name>]`` sections and the ``auth = "<name>"`` reference a destination holds.

Secrets never live in the file: a private key comes from a file path (PEM or JWK, mode
0600 outside the repository) or from an environment variable that holds the PEM or JWK.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Names a destination's `auth` key may hold without a section.
RESERVED = ("none", "bearer")
# The validation-context key under which the hub passes the resolved sections.
CONTEXT_KEY = "auth_sections"

Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]


def _loopback(host: str | None) -> bool:
    if host in (None, ""):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_https(value: str) -> str:
    """An endpoint URL: https, or plain http only on the loopback interface (tests)."""
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and _loopback(parts.hostname):
        return value
    raise ValueError("must be an https:// URL (plain http only on 127.0.0.1/localhost)")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _KeySettings(_Section):
    client_id: str = Field(min_length=1, description="the client id the authorization "
                           "server registered (HelseID: from NHN's self-service portal)")
    private_key_file: Path | None = Field(
        None, description="PEM (PKCS#8/PKCS#1/SEC1) or JWK file with the client's private key")
    private_key_env: str | None = Field(
        None, description="environment variable holding the private key as PEM or JWK JSON")
    key_id: str | None = Field(
        None, description="`kid` in the assertion header (default: the JWK's kid, else the "
        "RFC 7638 thumbprint of the public key)")
    algorithm: Algorithm | None = Field(
        None, description="signing algorithm (default by key: RSA RS256, EC P-256 ES256, "
        "EC P-384 ES384)")
    scopes: list[str] = Field(
        default_factory=list, description="scopes asked for when the destination names none")
    audience: str | None = Field(
        None, description="`aud` of the client assertion (default: HelseID the issuer, "
        "SMART the token endpoint)")
    assertion_lifetime_seconds: float = Field(
        30.0, gt=0, le=60, description="client assertion `exp` - `iat` (at most 60 s)")
    refresh_before_seconds: float = Field(
        30.0, ge=0, le=3600, description="a cached token is renewed this long before it "
        "expires (at most half its lifetime)")
    timeout_seconds: float = Field(10.0, gt=0, description="token endpoint request timeout")
    ca_file: Path | None = Field(None, description="CA bundle for the token endpoint's TLS")

    @model_validator(mode="after")
    def _one_key_source(self) -> _KeySettings:
        if (self.private_key_file is None) == (self.private_key_env is None):
            raise ValueError("set exactly one of private_key_file and private_key_env")
        return self


class HelseIdAuth(_KeySettings):
    """HelseID machine-to-machine: client_credentials, private_key_jwt, DPoP-bound tokens."""

    type: Literal["helseid"]
    issuer: str = Field(description="HelseID authority, e.g. https://helseid-sts.test.nhn.no")
    token_endpoint: str | None = Field(None, description="default {issuer}/connect/token")
    dpop: bool = Field(True, description="ask for DPoP-bound tokens and send DPoP proofs")

    @field_validator("issuer", "token_endpoint")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        return value if value is None else check_https(value)

    def token_url(self) -> str:
        return self.token_endpoint or self.issuer.rstrip("/") + "/connect/token"

    def assertion_audience(self) -> str:
        return self.audience or self.issuer.rstrip("/")


class SmartAuth(_KeySettings):
    """SMART Backend Services: client_credentials with private_key_jwt, system scopes."""

    type: Literal["smart"]
    token_endpoint: str | None = Field(
        None, description="default: from the FHIR server's /.well-known/smart-configuration")

    @field_validator("token_endpoint")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        return value if value is None else check_https(value)


class BearerAuth(_Section):
    """A static bearer token from the environment (the simple option)."""

    type: Literal["bearer"]
    token_env: str = Field(min_length=1, description="environment variable holding the token")


AuthSection = Annotated[HelseIdAuth | SmartAuth | BearerAuth, Field(discriminator="type")]


def resolve_paths(section: HelseIdAuth | SmartAuth | BearerAuth,
                  base_dir: Path) -> HelseIdAuth | SmartAuth | BearerAuth:
    """Relative key and CA files are relative to the configuration file."""
    if isinstance(section, BearerAuth):
        return section
    updates = {k: base_dir / v for k in ("private_key_file", "ca_file")
               if isinstance(v := getattr(section, k), Path) and not v.is_absolute()}
    return section.model_copy(update=updates) if updates else section


@dataclass(frozen=True, slots=True)
class AuthBinding:
    """What a destination's ``auth`` key resolved to: a section, or "none"/"bearer"."""

    name: str
    section: HelseIdAuth | SmartAuth | BearerAuth | None = None


def _resolve_ref(value: Any, info: ValidationInfo) -> AuthBinding:
    if isinstance(value, AuthBinding):
        return value
    if not isinstance(value, str):
        raise ValueError("expected the name of an [auth.<name>] section, or \"none\"")
    if value in RESERVED:
        return AuthBinding(value)
    sections = (info.context or {}).get(CONTEXT_KEY) or {}
    if value not in sections:
        have = ", ".join(sorted(sections)) or "none"
        raise ValueError(f"no [auth.{value}] section (have: {have})")
    return AuthBinding(value, sections[value])


NO_AUTH = AuthBinding("none")

AuthRef = Annotated[AuthBinding, BeforeValidator(_resolve_ref)]
"""A destination settings field: ``auth: AuthRef = NO_AUTH``; the TOML value is a name."""
