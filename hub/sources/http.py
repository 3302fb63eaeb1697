"""HTTP webhook source: `POST /ingest/{source}`.

Each configured source authenticates its sender with either a per-source API key
(`X-API-Key`, several keys allowed for rotation) or a Standard Webhooks HMAC signature
over the raw body bytes (reliability.md §4.7). The API endpoint lives in
`hub.api.ingest`; this module owns the source type, its settings and the checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub import hookimpl
from hub.contracts import RegisterSource, SourceType
from hub.errors import ConfigError, InputError

WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret


class HttpSourceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    auth: Literal["api-key", "standard-webhooks"] = Field(
        description="how the sender proves who it is")
    api_key_env: str | None = Field(
        None, description="env var with the source's API key(s), comma-separated")
    webhook_secret_env: str | None = Field(
        None, description="env var with the Standard Webhooks secret(s) (whsec_…), "
        "space- or comma-separated")
    webhook_tolerance_seconds: int = Field(300, ge=1, le=3600)
    max_body_bytes: int = Field(1_048_576, ge=1, le=64 * 1_048_576)
    content_types: list[str] = Field(default_factory=lambda: ["application/json"])

    @model_validator(mode="after")
    def _secret_named(self) -> HttpSourceSettings:
        if self.auth == "api-key" and not self.api_key_env:
            raise ValueError("auth = 'api-key' needs api_key_env")
        if self.auth == "standard-webhooks" and not self.webhook_secret_env:
            raise ValueError("auth = 'standard-webhooks' needs webhook_secret_env")
        return self


def _decode_secret(secret: str) -> bytes:
    if secret.startswith(WEBHOOK_SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return secret.encode()


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value a Standard Webhooks sender computes (for tests/tools)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(_decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify_webhook(secrets: Sequence[bytes], headers: Mapping[str, str], body: bytes,
                   tolerance_s: int, now: float | None = None) -> str:
    """Check a Standard Webhooks signature; returns the webhook-id or raises InputError."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signature = headers.get("webhook-signature")
    missing = [n for n, v in (("webhook-id", msg_id), ("webhook-timestamp", stamp),
                              ("webhook-signature", signature)) if not v]
    if missing:
        raise InputError("missing-signature",
                         f"missing header(s) {', '.join(missing)}: this source requires a "
                         "Standard Webhooks signature", 401)
    assert msg_id is not None
    assert stamp is not None
    assert signature is not None
    if "." in msg_id or len(msg_id) > 255:
        raise InputError("bad-webhook-id",
                         "webhook-id must not contain '.' and must be at most 255 characters")
    if not (stamp.isascii() and stamp.isdigit()):
        raise InputError("bad-signature", "webhook-timestamp must be integer Unix seconds", 401)
    age = (now if now is not None else time.time()) - int(stamp)
    if abs(age) > tolerance_s:
        direction = "old" if age > 0 else "in the future"
        raise InputError("stale-signature",
                         f"webhook-timestamp is {abs(int(age))} s {direction} (tolerance "
                         f"{tolerance_s} s): resend with a fresh timestamp and signature", 401)
    signed = f"{msg_id}.{stamp}.".encode() + body
    for secret in secrets:
        expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest())
        for part in signature.split():
            version, _, sig = part.partition(",")
            if version == "v1" and hmac.compare_digest(sig.encode(), expected):
                return msg_id
    raise InputError("bad-signature",
                     "webhook-signature does not match the body with any configured secret "
                     "(the signature covers the exact bytes sent)", 401)


class HttpSource:
    """A configured HTTP source: its adapter name, limits and credentials."""

    def __init__(self, name: str, settings: HttpSourceSettings, api_keys: Sequence[str],
                 webhook_secrets: Sequence[bytes]) -> None:
        self.name = name
        self.settings = settings
        self._api_keys = [k.encode() for k in api_keys]
        self._secrets = list(webhook_secrets)

    def check_api_key(self, headers: Mapping[str, str]) -> None:
        if self.settings.auth != "api-key":
            return
        given = headers.get("x-api-key")
        if not given:
            raise InputError("missing-credentials",
                             "this source requires an X-API-Key header", 401)
        # Compare against every key so the time taken does not tell which one is close.
        matched = False
        for key in self._api_keys:
            matched |= hmac.compare_digest(given.encode(), key)
        if not matched:
            raise InputError("invalid-credentials", "the X-API-Key is not valid for this source",
                             401)

    def check_signature(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """Verify a Standard Webhooks signature; returns the webhook-id (a dedup key)."""
        if self.settings.auth != "standard-webhooks":
            return None
        return verify_webhook(self._secrets, headers, body,
                              self.settings.webhook_tolerance_seconds)

    def check_content_type(self, content_type: str | None) -> str:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media not in [c.lower() for c in self.settings.content_types]:
            given = media or "(none)"
            raise InputError(
                "unsupported-media-type",
                f"Content-Type {given} is not accepted by this source; send one of "
                f"{', '.join(self.settings.content_types)}", 415)
        return media

    async def start(self) -> None:
        """The HTTP server serves this source; nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""


def build_http_source(name: str, settings: HttpSourceSettings, _intake: object) -> HttpSource:
    import os

    def env(key: str, var: str | None) -> str:
        value = os.environ.get(var or "")
        if not value:
            raise ConfigError(f"sources.{name}.{key}: environment variable {var} is not set")
        return value

    keys: list[str] = []
    secrets: list[bytes] = []
    if settings.auth == "api-key":
        keys = [k.strip() for k in env("api_key_env", settings.api_key_env).split(",")
                if k.strip()]
    else:
        raw = env("webhook_secret_env", settings.webhook_secret_env)
        try:
            secrets = [_decode_secret(s) for s in raw.replace(",", " ").split()]
        except ValueError as exc:
            raise ConfigError(f"sources.{name}.webhook_secret_env: {exc}") from None
    return HttpSource(name, settings, keys, secrets)


@hookimpl(trylast=True)
def hub_register_sources(register: RegisterSource) -> None:
    register(SourceType("http", HttpSourceSettings, build_http_source))
