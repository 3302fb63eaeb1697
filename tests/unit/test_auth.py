"""hub.auth on its own: key loading, proofs and assertions, settings and their errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub.auth import DPoPSigner, SigningKey, access_token_hash, htu, jwk_thumbprint
from hub.auth.keys import b64url, load_signing_key
from hub.config import config_from_dict, validate_type_settings
from hub.destinations.fhir_rest import FhirRestSettings
from hub.errors import ConfigError
from tests.peers.helseid import thumbprint as peer_thumbprint

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC256 = ec.generate_private_key(ec.SECP256R1())


def pem(key, fmt=serialization.PrivateFormat.PKCS8):
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def load(tmp_path: Path, data: bytes, **kw):
    path = tmp_path / "key"
    path.write_bytes(data)
    return load_signing_key(file=path, env=None, kid=kw.get("kid"),
                            algorithm=kw.get("algorithm"), where="auth.x")


@pytest.mark.parametrize(("key", "fmt", "alg"), [
    (RSA, serialization.PrivateFormat.PKCS8, "RS256"),
    (RSA, serialization.PrivateFormat.TraditionalOpenSSL, "RS256"),
    (EC256, serialization.PrivateFormat.PKCS8, "ES256"),
    (EC256, serialization.PrivateFormat.TraditionalOpenSSL, "ES256"),
])
def test_pem_keys_load_and_sign_verifiably(tmp_path, key, fmt, alg):
    signing = load(tmp_path, pem(key, fmt))
    assert signing.algorithm == alg
    token = signing.sign({"iss": "c"})
    assert jwt.get_unverified_header(token)["kid"] == signing.kid == signing.thumbprint
    assert jwt.decode(token, key.public_key(), algorithms=[alg]) == {"iss": "c"}
    assert "d" not in signing.jwk


def test_jwk_file_and_environment_variable(tmp_path, monkeypatch):
    private = jwt.algorithms.RSAAlgorithm.to_jwk(RSA, as_dict=True)
    private.update(kid="nhn-key-1", alg="RS384")
    signing = load(tmp_path, json.dumps(private).encode())
    assert (signing.kid, signing.algorithm) == ("nhn-key-1", "RS384")
    monkeypatch.setenv("TEST_KEY", pem(EC256).decode())
    from_env = load_signing_key(file=None, env="TEST_KEY", kid="configured", algorithm=None,
                                where="auth.x")
    assert (from_env.kid, from_env.algorithm) == ("configured", "ES256")


@pytest.mark.parametrize(("data", "message"), [
    (b"not a key", "expected a PEM private key or a JWK"),
    (b'{"kty": "RSA", "n": "x", "e": "AQAB"}', "no private part"),
    (b"{not json", "not valid JWK JSON"),
    (pem(RSA, serialization.PrivateFormat.PKCS8).replace(b"A", b"B", 20),
     "not a readable PEM private key"),
    (RSA.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                       serialization.BestAvailableEncryption(b"pw")), "encrypted"),
    (pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "at least 2048"),
])
def test_bad_keys_are_named_errors_without_their_content(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load(tmp_path, data)
    text = str(caught.value)
    assert "auth.x.private_key_file" in text
    assert "PRIVATE KEY" not in text
    assert (data[40:60].decode(errors="ignore") or "@@") not in text


def test_algorithm_must_fit_the_key(tmp_path):
    with pytest.raises(ConfigError, match="does not fit the key"):
        load(tmp_path, pem(EC256), algorithm="RS256")
    with pytest.raises(ConfigError, match="cannot read"):
        load_signing_key(file=tmp_path / "missing.pem", env=None, kid=None, algorithm=None,
                         where="auth.x")
    with pytest.raises(ConfigError, match="TEST_ABSENT is not set"):
        load_signing_key(file=None, env="TEST_ABSENT", kid=None, algorithm=None,
                         where="auth.x")


def test_thumbprint_agrees_with_the_peers_own_implementation():
    for key in (RSA, EC256, ec.generate_private_key(ec.SECP384R1())):
        jwk = SigningKey(key).jwk
        assert jwk_thumbprint(jwk) == peer_thumbprint(jwk)


def test_dpop_proof_claims():
    signer = DPoPSigner()
    proof = signer.proof("post", "https://API.example.no/fhir/Bundle?x=1#f", "tok")
    header = jwt.get_unverified_header(proof)
    assert header["typ"] == "dpop+jwt"
    assert header["alg"] == "ES256"
    assert "d" not in header["jwk"]
    claims = jwt.decode(proof, jwt.PyJWK(header["jwk"]).key, algorithms=["ES256"])
    assert claims["htm"] == "POST"
    assert claims["htu"] == "https://api.example.no/fhir/Bundle"
    assert claims["ath"] == b64url(hashlib.sha256(b"tok").digest()) == access_token_hash("tok")
    assert "nonce" not in claims
    signer.learn_nonce("https://api.example.no/other", "n-1")
    again = jwt.decode(signer.proof("GET", "https://api.example.no/x"),
                       options={"verify_signature": False})
    assert again["nonce"] == "n-1"
    assert "ath" not in again
    assert again["jti"] != claims["jti"]
    other_origin = jwt.decode(signer.proof("GET", "https://sts.example.no/connect/token"),
                              options={"verify_signature": False})
    assert "nonce" not in other_origin
    assert htu("http://h:8080") == "http://h:8080/"


def _validate(tmp_path, auth, destination):
    config = config_from_dict({"auth": auth, "destinations": {
        "ehr": {"type": "fhir-rest", "base_url": "https://ehr.example.no/fhir", **destination}}},
        tmp_path / "tryggbro.toml")
    return validate_type_settings(config, "destinations.ehr", FhirRestSettings,
                                  config.destinations["ehr"].type_settings())


HELSEID = {"type": "helseid", "issuer": "https://helseid-sts.test.nhn.no", "client_id": "c",
           "private_key_file": "keys/c.pem"}


def test_auth_reference_resolves_to_its_section_with_paths_resolved(tmp_path):
    settings = _validate(tmp_path, {"h": HELSEID}, {"auth": "h"})
    assert settings.auth.name == "h"
    assert settings.auth.section.private_key_file == tmp_path / "keys/c.pem"
    assert settings.auth.section.token_url() == "https://helseid-sts.test.nhn.no/connect/token"
    assert _validate(tmp_path, {}, {}).auth.name == "none"


@pytest.mark.parametrize(("auth", "destination", "message"), [
    ({}, {"auth": "helseid"}, r"destinations\.ehr\.auth: .*no \[auth\.helseid\] section "
                              r"\(have: none\)"),
    ({"none": HELSEID}, {}, r"auth: .*\[auth\.none\]: the name is reserved"),
    ({"h": {**HELSEID, "issuer": "http://helseid.example.no"}}, {}, r"auth\.h\.helseid\."
     r"issuer: .*must be an https:// URL"),
    ({"h": {**HELSEID, "private_key_env": "X"}}, {}, "exactly one of private_key_file"),
    ({"h": {**HELSEID, "assertion_lifetime_seconds": 120}}, {}, "less than or equal to 60"),
    ({"h": {"type": "helseid", "issuer": "https://x.no", "client_id": "c",
            "private_key": "-----BEGIN"}}, {}, "auth.h.private_key: secrets must not"),
    ({}, {"tls_client_cert": "c.pem"}, "needs both tls_client_cert and tls_client_key"),
])
def test_configuration_errors_name_the_key(tmp_path, auth, destination, message):
    with pytest.raises(ConfigError, match=message):
        _validate(tmp_path, auth, destination)
