"""Signing keys for client assertions and DPoP proofs (PyJWT on top of cryptography).

A `SigningKey` holds the private key and shows only its `kid` and algorithm: its `repr`
and `str` carry no key material, it cannot be pickled, and load errors name the file or
variable, never the content.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, NoReturn

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from hub.errors import ConfigError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384"}
_JWK_CRV = {"secp256r1": "P-256", "secp384r1": "P-384"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK (the DPoP ``cnf.jkt``)."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}.get(jwk.get("kty", ""))
    if members is None:
        raise ValueError(f"unsupported JWK key type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def public_jwk(key: PrivateKey) -> dict[str, Any]:
    """The public half as a JWK (members only: no ``d``, no private parts)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {k: data[k] for k in ("kty", "n", "e")}
    data = ECAlgorithm.to_jwk(public, as_dict=True)
    return {k: data[k] for k in ("kty", "crv", "x", "y")}


def default_algorithm(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    curve = key.curve.name
    if curve not in _EC_ALGORITHMS:
        raise ValueError(f"EC curve {curve} is not supported (use P-256 or P-384)")
    return _EC_ALGORITHMS[curve]


def _compatible(key: PrivateKey, algorithm: str) -> bool:
    if isinstance(key, rsa.RSAPrivateKey):
        return algorithm.startswith(("RS", "PS"))
    return _EC_ALGORITHMS.get(key.curve.name) == algorithm


class SigningKey:
    """A private key with its `kid` and JWS algorithm. Never shows the key."""

    __slots__ = ("_key", "algorithm", "jwk", "kid", "thumbprint")

    def __init__(self, key: PrivateKey, *, kid: str | None = None,
                 algorithm: str | None = None) -> None:
        algorithm = algorithm or default_algorithm(key)
        if not _compatible(key, algorithm):
            raise ValueError(f"algorithm {algorithm} does not fit the key "
                             f"({'RSA' if isinstance(key, rsa.RSAPrivateKey) else 'EC'})")
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
            raise ValueError("RSA keys must have at least 2048 bits")
        self._key = key
        self.algorithm = algorithm
        self.jwk = public_jwk(key)
        self.thumbprint = jwk_thumbprint(self.jwk)
        self.kid = kid or self.thumbprint

    @classmethod
    def generate_ec(cls, curve: ec.EllipticCurve | None = None) -> SigningKey:
        """A fresh key (the DPoP key of one process: its tokens are bound to it)."""
        return cls(ec.generate_private_key(curve or ec.SECP256R1()))

    def sign(self, claims: dict[str, Any], *, typ: str = "JWT",
             embed_jwk: bool = False) -> str:
        """A compact JWS: header `alg`, `typ`, and `kid` (or the public `jwk` for DPoP)."""
        headers: dict[str, Any] = {"typ": typ}
        if embed_jwk:
            headers["jwk"] = self.jwk
        else:
            headers["kid"] = self.kid
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, algorithm={self.algorithm!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SigningKey cannot be pickled (it holds a private key)")


def _parse(data: bytes, where: str) -> tuple[PrivateKey, str | None, str | None]:
    """(key, kid, alg) from PEM or JWK bytes; errors name `where`, never the content."""
    text = data.strip()
    if text.startswith(b"{"):
        try:
            jwk = json.loads(text)
        except ValueError:
            raise ConfigError(f"{where}: not valid JWK JSON") from None
        if not isinstance(jwk, dict) or "d" not in jwk:
            raise ConfigError(f"{where}: the JWK has no private part (\"d\"): the hub signs "
                              "with the private key; register only the public key")
        try:
            parsed = jwt.PyJWK(jwk)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, KeyError, TypeError):
            raise ConfigError(f"{where}: not a usable RSA or EC private JWK") from None
        key = parsed.key
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{where}: not an RSA or EC private JWK")
        kid, alg = jwk.get("kid"), jwk.get("alg")
        return key, kid if isinstance(kid, str) else None, alg if isinstance(alg, str) else None
    if b"PRIVATE KEY-----" not in text:
        raise ConfigError(f"{where}: expected a PEM private key or a JWK (JSON)")
    try:
        pem = serialization.load_pem_private_key(text, password=None)
    except TypeError:
        raise ConfigError(f"{where}: the PEM key is encrypted; store it unencrypted with "
                          "mode 0600, or pass it in the environment") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{where}: not a readable PEM private key") from None
    if not isinstance(pem, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{where}: only RSA and EC keys can sign client assertions")
    return pem, None, None


def load_signing_key(*, file: Path | None, env: str | None, kid: str | None,
                     algorithm: str | None, where: str) -> SigningKey:
    """The client's key from `file` or the environment variable `env`."""
    if file is not None:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}.private_key_file: cannot read {file}: "
                              f"{exc.strerror or type(exc).__name__}") from None
        source = f"{where}.private_key_file ({file})"
    elif env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{where}.private_key_env: environment variable {env} is not set")
        data = value.encode()
        source = f"{where}.private_key_env ({env})"
    else:
        raise ConfigError(f"{where}: no private key configured")
    key, jwk_kid, jwk_alg = _parse(data, source)
    try:
        return SigningKey(key, kid=kid or jwk_kid, algorithm=algorithm or jwk_alg)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None

