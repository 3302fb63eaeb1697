"""Outbound auth through the real fhir-rest destination: HelseID (private_key_jwt + DPoP
with nonces), SMART Backend Services, mutual TLS, and the abuse cases of
reliability.md §5.6 against a verifying authorization server (tests/peers/helseid.py).

Each abuse case ends in a clear reason and a paused destination (or a dead letter), with
the number of token requests and API calls bounded: no retry storm.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
import structlog
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub.auth import DPoPSigner, SigningKey
from hub.config import config_from_dict, validate_type_settings
from hub.destinations.edi import Edi2Settings
from hub.destinations.edi import _factory as edi_factory
from hub.destinations.fhir_rest import FhirRestSettings, _factory
from hub.domain.model import OutboundDelivery, OutcomeKind, RawMessage
from hub.httpclient import HttpClient
from tests.integration.helpers import alarm_event, body, build_hub, enrol
from tests.integration.running import running, wait_until
from tests.peers._asgi import ServerTls
from tests.peers.fhir_protected import ProtectedFhirServer
from tests.peers.helseid import AuthorizationServer

CLIENT_ID = "tryggbro-vft-0301"
SCOPE = "nhn:fhir/api"
BUNDLE = {"resourceType": "Bundle", "id": "b-1", "type": "transaction", "entry": [
    {"fullUrl": "urn:uuid:1", "request": {"method": "PUT", "url": "DetectedIssue/x"},
     "resource": {"resourceType": "DetectedIssue", "id": "x", "status": "final"}}]}


def delivery(n: int = 1) -> OutboundDelivery:
    return OutboundDelivery(id=n, message_id=n, destination="ehr", bundle_id=f"b-{n}",
                            payload=json.dumps(BUNDLE).encode(), priority=100, attempt=1)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: Any) -> dict[str, Any]:
    """The public key as a JWK, made with PyJWT directly (not with hub code)."""
    public = key.public_key()
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) \
        else jwt.algorithms.ECAlgorithm
    data = algorithm.to_jwk(public, as_dict=True)
    return {k: v for k, v in data.items() if k in ("kty", "n", "e", "crv", "x", "y")}


def write_pem(key: Any, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@pytest.fixture
def key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    return write_pem(rsa_key, tmp_path / "helseid-client.pem")


@pytest.fixture
def sts() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(require_nonce=True) as server:
        yield server


def settings_for(base_dir: Path, destination: dict[str, Any],
                 auth: dict[str, dict[str, Any]]) -> FhirRestSettings:
    """Validate the destination's keys the way the hub does (auth names resolved)."""
    config = config_from_dict({"auth": auth, "destinations": {"ehr": {"type": "fhir-rest",
                                                                      **destination}}},
                              base_dir / "tryggbro.toml")
    settings = validate_type_settings(config, "destinations.ehr", FhirRestSettings,
                                      config.destinations["ehr"].type_settings())
    assert isinstance(settings, FhirRestSettings)
    return settings


def helseid_section(sts: AuthorizationServer, key_file: Path, **extra: Any) -> dict[str, Any]:
    return {"type": "helseid", "issuer": sts.issuer, "client_id": CLIENT_ID,
            "private_key_file": str(key_file), "scopes": [SCOPE], **extra}


async def send_all(destination: Any, count: int = 1) -> list[Any]:
    try:
        return [await destination.send(delivery(n)) for n in range(1, count + 1)]
    finally:
        await destination.aclose()


# --- happy paths ---------------------------------------------------------------------------


async def test_helseid_dpop_with_nonces_on_both_servers(tmp_path, sts, key_file, rsa_key):
    sts.register_client(CLIENT_ID, public_jwk(rsa_key), {SCOPE},
                        claims={"helseid://claims/client/claims/orgnr_parent": "999888777"})
    verifier = sts.verifier(require_dpop=True, require_nonce=True)
    with ProtectedFhirServer(verifier=verifier, required_scope=SCOPE) as fhir:
        settings = settings_for(tmp_path, {"base_url": fhir.base_url, "auth": "helseid"},
                                {"helseid": helseid_section(sts, key_file)})
        outcomes = await send_all(_factory("ehr", settings), 3)
    assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED] * 3
    # Token endpoint: a nonce challenge, then one token, cached for all three requests.
    assert sts.errors() == ["use_dpop_nonce", None]
    # Resource server: one nonce challenge (the first request), then three accepted.
    assert verifier.rejected == ["use_dpop_nonce"]
    assert verifier.accepted == 3
    assert len(fhir.requests) == 3
    first = fhir.requests[0]
    assert first.headers["authorization"].startswith("DPoP ")
    proof = jwt.decode(first.headers["dpop"], options={"verify_signature": False})
    assert proof["htm"] == "POST"
    assert proof["htu"] == fhir.base_url + "/"
    assert proof["nonce"] == verifier.nonce
    assert "ath" in proof
    proofs = {r.headers["dpop"] for r in fhir.requests}
    assert len(proofs) == 3  # a fresh proof (jti) per request
    assertion = jwt.decode(sts.last_form["client_assertion"],
                           options={"verify_signature": False})
    assert assertion["iss"] == assertion["sub"] == CLIENT_ID
    assert assertion["aud"] == sts.issuer
    assert 0 < assertion["exp"] - assertion["iat"] <= 60
    header = jwt.get_unverified_header(sts.last_form["client_assertion"])
    assert header["alg"] == "RS256"
    assert header["kid"]


async def test_put_mode_binds_each_proof_to_its_url(tmp_path, sts, key_file, rsa_key):
    sts.register_client(CLIENT_ID, public_jwk(rsa_key), {SCOPE})
    verifier = sts.verifier(require_dpop=True)
    with ProtectedFhirServer(verifier=verifier, required_scope=SCOPE) as fhir:
        settings = settings_for(tmp_path, {"base_url": fhir.base_url, "auth": "helseid",
                                           "mode": "put"},
                                {"helseid": helseid_section(sts, key_file)})
        (outcome,) = await send_all(_factory("ehr", settings))
    assert outcome.kind is OutcomeKind.DELIVERED
    (request,) = fhir.requests
    proof = jwt.decode(request.headers["dpop"], options={"verify_signature": False})
    assert (proof["htm"], proof["htu"]) == ("PUT", fhir.base_url + "/DetectedIssue/x")


async def test_smart_backend_services_discovers_its_token_endpoint(tmp_path, key_file, rsa_key):
    ec_key = ec.generate_private_key(ec.SECP384R1())
    ec_file = write_pem(ec_key, tmp_path / "smart.pem")
    scope = "system/DetectedIssue.write"
    with AuthorizationServer(profile="smart") as smart:
        smart.register_client("tryggbro-smart", public_jwk(ec_key), {scope}, dpop=False)
        verifier = smart.verifier(require_dpop=False)
        with ProtectedFhirServer(verifier=verifier, required_scope=scope,
                                 authorization_server=smart) as fhir:
            settings = settings_for(
                tmp_path, {"base_url": fhir.base_url, "auth": "ehr-smart"},
                {"ehr-smart": {"type": "smart", "client_id": "tryggbro-smart",
                               "private_key_file": str(ec_file), "scopes": [scope]}})
            outcomes = await send_all(_factory("ehr", settings), 2)
        assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED] * 2
        assert smart.errors() == [None]
        assert fhir.requests[0].headers["authorization"].startswith("Bearer ")
        assert "dpop" not in fhir.requests[0].headers
        assertion = jwt.decode(smart.last_form["client_assertion"],
                               options={"verify_signature": False})
        assert assertion["aud"] == smart.token_endpoint  # SMART: aud is the token endpoint
        assert jwt.get_unverified_header(smart.last_form["client_assertion"])["alg"] == "ES384"
        assert smart.last_form["scope"] == scope


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("tryggbro-0301.kommune.test")
    stranger = trustme.CA().issue_cert("tryggbro-0301.kommune.test")
    paths = {"ca": folder / "ca.pem", "server": folder / "server.pem",
             "client": folder / "client.pem", "client_key": folder / "client.key",
             "stranger": folder / "stranger.pem", "stranger_key": folder / "stranger.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths["server"]))
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(paths["client"]), append=True)
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    for blob in stranger.cert_chain_pems:
        blob.write_to_path(str(paths["stranger"]), append=True)
    stranger.private_key_pem.write_to_path(str(paths["stranger_key"]))
    return paths


def mtls_server(pki: dict[str, Path], **options: Any) -> ProtectedFhirServer:
    tls = ServerTls(pki["server"], pki["server"], client_ca=pki["ca"])
    return ProtectedFhirServer(tls=tls, **options)


async def test_mutual_tls_client_certificate_reaches_the_server(tmp_path, pki):
    with mtls_server(pki) as fhir:
        settings = settings_for(tmp_path, {
            "base_url": fhir.base_url, "ca_file": str(pki["ca"]),
            "tls_client_cert": str(pki["client"]), "tls_client_key": str(pki["client_key"])},
            {})
        (outcome,) = await send_all(_factory("ehr", settings))
        assert outcome.kind is OutcomeKind.DELIVERED, outcome.detail
        assert len(fhir.requests) == 1

        # Without a client certificate, or with one from another CA, the handshake fails:
        # no answer, so the delivery is retried later (never marked delivered).
        for extra in ({}, {"tls_client_cert": str(pki["stranger"]),
                           "tls_client_key": str(pki["stranger_key"])}):
            settings = settings_for(tmp_path, {"base_url": fhir.base_url,
                                               "ca_file": str(pki["ca"]), **extra}, {})
            (refused,) = await send_all(_factory("ehr", settings))
            assert refused.kind is OutcomeKind.RETRY, refused.detail
            assert "no answer" in refused.detail
        assert len(fhir.requests) == 1


async def test_mutual_tls_and_helseid_dpop_together(tmp_path, pki, sts, key_file, rsa_key):
    sts.register_client(CLIENT_ID, public_jwk(rsa_key), {SCOPE})
    verifier = sts.verifier(require_dpop=True, require_nonce=True)
    with mtls_server(pki, verifier=verifier, required_scope=SCOPE) as fhir:
        settings = settings_for(tmp_path, {
            "base_url": fhir.base_url, "auth": "helseid", "ca_file": str(pki["ca"]),
            "tls_client_cert": str(pki["client"]), "tls_client_key": str(pki["client_key"])},
            {"helseid": helseid_section(sts, key_file)})
        outcomes = await send_all(_factory("ehr", settings), 2)
    assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED] * 2
    assert verifier.accepted == 2


# --- abuse cases: each ends in a clear reason, bounded attempts --------------------------


async def _one_send(tmp_path, sts, key_file, fhir, **section_extra):
    settings = settings_for(tmp_path, {"base_url": fhir.base_url, "auth": "helseid"},
                            {"helseid": helseid_section(sts, key_file, **section_extra)})
    return await send_all(_factory("ehr", settings), 3)


@pytest.mark.parametrize(("case", "expected"), [
    ("expired_assertion", "the client assertion has expired"),
    ("assertion_too_far_ahead", "more than 60 s ahead"),
    ("wrong_audience", "aud 'https://helseid-sts.test.nhn.no' is not this server"),
    ("revoked_client", "the client is revoked"),
    ("missing_scope", "invalid_scope"),
    ("unknown_key", "is registered for this client"),
    ("no_dpop_proof", "must send a DPoP proof"),
])
async def test_token_endpoint_refusals_pause_without_a_storm(tmp_path, sts, key_file, rsa_key,
                                                              case, expected):
    registered = public_jwk(rsa_key)
    extra: dict[str, Any] = {}
    scopes = {SCOPE}
    if case == "expired_assertion":
        sts.clock_offset = 45  # the STS's clock is 45 s ahead: our 30 s assertion expired
    elif case == "assertion_too_far_ahead":
        sts.clock_offset = -40  # … or 40 s behind: our exp looks 70 s ahead
    elif case == "wrong_audience":
        extra["audience"] = "https://helseid-sts.test.nhn.no"
    elif case == "missing_scope":
        scopes = {"nhn:other/api"}
    elif case == "unknown_key":
        registered = public_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    elif case == "no_dpop_proof":
        extra["dpop"] = False
    sts.register_client(CLIENT_ID, registered, scopes)
    if case == "revoked_client":
        sts.revoke(CLIENT_ID)
    with ProtectedFhirServer(verifier=sts.verifier(), required_scope=SCOPE) as fhir:
        outcomes = await _one_send(tmp_path, sts, key_file, fhir, **extra)
        assert fhir.requests == []
        assert fhir.refused == 0
    assert {o.kind for o in outcomes} == {OutcomeKind.PAUSE}
    assert expected in outcomes[0].detail
    assert "authorization refused" in outcomes[0].detail
    # One token request (plus the one nonce challenge) for three deliveries: a refusal is
    # held, not asked again at once.
    assert len([e for e in sts.errors() if e != "use_dpop_nonce"]) == 1


@pytest.mark.parametrize(("case", "expected"), [
    ("missing_api_scope", "insufficient_scope"),
    ("wrong_htu", "invalid_dpop_proof"),
    ("revoked_after_token", "invalid_client"),
])
async def test_resource_server_refusals_pause(tmp_path, sts, key_file, rsa_key, case, expected):
    sts.register_client(CLIENT_ID, public_jwk(rsa_key), {SCOPE, "nhn:other/api"})
    options: dict[str, Any] = {}
    required = SCOPE
    if case == "missing_api_scope":
        required = "nhn:fhir/write"
    if case == "wrong_htu":  # the API thinks it lives elsewhere (a proxy rewrote the URL)
        options["public_url"] = "https://fhir.kommune.test/fhir/R4"
    verifier = sts.verifier(require_dpop=True, **options)
    with ProtectedFhirServer(verifier=verifier, required_scope=required) as fhir:
        settings = settings_for(tmp_path, {"base_url": fhir.base_url, "auth": "helseid"},
                                {"helseid": helseid_section(sts, key_file)})
        destination = _factory("ehr", settings)
        try:
            if case == "revoked_after_token":
                first = await destination.send(delivery(1))
                assert first.kind is OutcomeKind.DELIVERED
                sts.revoke(CLIENT_ID)
            outcome = await destination.send(delivery(2))
            again = await destination.send(delivery(3))
        finally:
            await destination.aclose()
    assert outcome.kind is again.kind is OutcomeKind.PAUSE, outcome.detail
    assert expected in outcome.detail
    refusals = [e for e in verifier.rejected if e != "use_dpop_nonce"]
    if case == "revoked_after_token":
        # The API refuses the token once; the hub drops it and asks the STS, which refuses
        # the revoked client: pause, and the next send does not call anyone again at once.
        assert refusals == ["invalid_token"]
        assert sts.errors().count("invalid_client") == 1
    else:
        assert len(refusals) == 2  # one call per send, no retry loop


async def test_replayed_and_forged_requests_are_refused_by_the_peer(tmp_path, sts, key_file,
                                                                    rsa_key):
    """The verifier's own checks, with requests the hub would never make: a replayed proof,
    a proof for another token (ath), no proof, an HS256 assertion and a replayed assertion."""
    sts.register_client(CLIENT_ID, public_jwk(rsa_key), {SCOPE})
    verifier = sts.verifier(require_dpop=True)
    with ProtectedFhirServer(verifier=verifier, required_scope=SCOPE) as fhir:
        settings = settings_for(tmp_path, {"base_url": fhir.base_url, "auth": "helseid"},
                                {"helseid": helseid_section(sts, key_file)})
        (ok,) = await send_all(_factory("ehr", settings))
        assert ok.kind is OutcomeKind.DELIVERED
        sent = fhir.requests[0].headers
        http = HttpClient(fhir.base_url + "/")
        try:
            payload = json.dumps(BUNDLE).encode()
            replay = await http.request("POST", "", content=payload, headers={
                "authorization": sent["authorization"], "dpop": sent["dpop"],
                "content-type": "application/fhir+json"})
            no_proof = await http.request("POST", "", content=payload, headers={
                "authorization": sent["authorization"]})
            other = DPoPSigner()
            wrong_ath = await http.request("POST", "", content=payload, headers={
                "authorization": sent["authorization"],
                "dpop": other.proof("POST", fhir.base_url + "/", "some-other-token")})
            token = sent["authorization"].split(" ", 1)[1]
            wrong_key = await http.request("POST", "", content=payload, headers={
                "authorization": sent["authorization"],
                "dpop": other.proof("POST", fhir.base_url + "/", token)})
            as_bearer = await http.request("POST", "", content=payload, headers={
                "authorization": f"Bearer {token}"})
        finally:
            await http.aclose()
    for response in (replay, no_proof, wrong_ath, wrong_key, as_bearer):
        assert response.status == 401
    assert "replay" in json.loads(replay.body)["error_description"]
    assert "ath" in json.loads(wrong_ath.body)["error_description"]
    assert "bound" in json.loads(wrong_key.body)["error_description"]
    assert verifier.rejected == ["invalid_dpop_proof", "invalid_dpop_proof",
                                 "invalid_dpop_proof", "invalid_dpop_proof", "invalid_token"]

    # Token endpoint: the assertion the hub sent cannot be used again, and an HS256 token
    # "signed" with the public key (the classic downgrade) is refused.
    form = dict(sts.last_form)
    sts.register_client("no-dpop", public_jwk(rsa_key), {SCOPE}, dpop=False)
    exp = int(datetime.now(UTC).timestamp()) + 30
    claims = {"iss": "no-dpop", "sub": "no-dpop", "aud": sts.issuer, "jti": "x", "exp": exp}
    forged = dict(form, client_id="no-dpop", client_assertion=jwt.encode(
        claims, "a-shared-secret-guess-0123456789ab", algorithm="HS256"))
    unsigned = dict(form, client_id="no-dpop", client_assertion=jwt.encode(
        claims, None, algorithm="none"))  # type: ignore[arg-type]
    sts_http = HttpClient(sts.token_endpoint)
    try:
        answers = []
        for attempt in (form, forged, unsigned):
            answers.append(await sts_http.request(
                "POST", sts.token_endpoint, content=urlencode(attempt).encode(),
                headers={"content-type": "application/x-www-form-urlencoded"}))
    finally:
        await sts_http.aclose()
    descriptions = [json.loads(a.body).get("error_description", "") for a in answers]
    assert all(a.status == 400 for a in answers)
    # The replayed form carries no new DPoP proof: the client needs one before its
    # assertion is even looked at; the forged ones fail on their algorithm.
    assert "DPoP proof" in descriptions[0]
    assert "alg 'HS256' is not allowed" in descriptions[1]
    assert "alg 'none' is not allowed" in descriptions[2]


async def test_a_replayed_assertion_is_refused(tmp_path, key_file, rsa_key):
    """Without DPoP (SMART profile) the replayed assertion itself is what is refused."""
    with AuthorizationServer(profile="smart") as smart:
        smart.register_client("c1", public_jwk(rsa_key), {"system/Observation.write"},
                              dpop=False)
        key = SigningKey(rsa_key)
        http = HttpClient(smart.token_endpoint)
        try:
            now = int(datetime.now(UTC).timestamp())
            assertion = key.sign({"iss": "c1", "sub": "c1", "aud": smart.token_endpoint,
                                  "jti": "once", "iat": now, "exp": now + 30})
            form = {"grant_type": "client_credentials", "client_id": "c1",
                    "scope": "system/Observation.write", "client_assertion": assertion,
                    "client_assertion_type":
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
            answers = [await http.request(
                "POST", smart.token_endpoint, content=urlencode(form).encode(),
                headers={"content-type": "application/x-www-form-urlencoded"})
                for _ in range(2)]
        finally:
            await http.aclose()
    assert [a.status for a in answers] == [200, 400]
    assert "jti was used before" in json.loads(answers[1].body)["error_description"]


async def test_transient_token_endpoint_failures_retry_then_deliver(tmp_path, sts, key_file,
                                                                     rsa_key, monkeypatch):
    monkeypatch.setattr("hub.auth.oauth.FAILURE_HOLD_SECONDS", 0.3)
    sts.register_client(CLIENT_ID, public_jwk(rsa_key), {SCOPE})
    sts.require_nonce = False
    sts.fail_next(1, 503)
    with ProtectedFhirServer(verifier=sts.verifier(), required_scope=SCOPE) as fhir:
        settings = settings_for(tmp_path, {"base_url": fhir.base_url, "auth": "helseid"},
                                {"helseid": helseid_section(sts, key_file)})
        destination = _factory("ehr", settings)
        try:
            first = await destination.send(delivery(1))
            held = await destination.send(delivery(2))  # within the hold: no new request
            assert sts.errors() == ["http_503"]
            await asyncio.sleep(0.4)
            later = await destination.send(delivery(3))
        finally:
            await destination.aclose()
    assert first.kind is held.kind is OutcomeKind.RETRY
    assert "authorization server unavailable" in first.detail
    assert "503" in first.detail
    assert later.kind is OutcomeKind.DELIVERED
    assert sts.errors() == ["http_503", None]


# --- through the running hub --------------------------------------------------------------


def ingest(hub: Any, *events: dict[str, Any]) -> list[int]:
    return [hub.intake.submit_sync(RawMessage("alarmplatform", e["eventId"], "application/json",
                                              body(e), datetime.now(UTC))).id for e in events]


async def test_hub_delivers_with_helseid_and_pauses_when_the_client_is_revoked(
        tmp_path, sts, key_file, rsa_key, monkeypatch):
    sts.register_client(CLIENT_ID, public_jwk(rsa_key), {SCOPE})
    monkeypatch.setenv("TEST_HELSEID_KEY", key_file.read_text())
    verifier = sts.verifier(require_dpop=True, require_nonce=True)
    with ProtectedFhirServer(verifier=verifier, required_scope=SCOPE) as fhir, \
            structlog.testing.capture_logs() as logs, _stdlib_records() as records:
        hub = build_hub(tmp_path, "sqlite:///" + str(tmp_path / "hub.db"), {
            "ehr": {"type": "fhir-rest", "base_url": fhir.base_url, "auth": "helseid",
                    "concurrency": 4}},
            auth={"helseid": {"type": "helseid", "issuer": sts.issuer, "client_id": CLIENT_ID,
                              "private_key_env": "TEST_HELSEID_KEY", "scopes": [SCOPE]}})
        enrol(hub, "TA-1")
        first = ingest(hub, alarm_event("e1", "A1", "TA-1"))
        try:
            async with running(hub):
                await wait_until(lambda: _state(hub, first[0]) == "delivered",
                                 what="delivery with a HelseID token")
                sts.revoke(CLIENT_ID)
                verifier.rotate_nonce()
                second = ingest(hub, alarm_event("e2", "A2", "TA-1", minute=1),
                                alarm_event("e3", "A3", "TA-1", minute=2))
                await wait_until(lambda: "ehr" in hub.repo.status().paused, what="a pause")
                reason = hub.repo.status().paused["ehr"]["reason"]
                await asyncio.sleep(0.5)
                token_requests = len(sts.token_requests)
                api_calls = verifier.accepted + len(verifier.rejected)
        finally:
            hub.close()
    assert "the client is revoked" in reason
    assert "invalid_client" in reason
    assert all(_state(hub, m) != "delivered" for m in second)
    # Bounded: the first token (+ nonce challenge), then after the revocation one refused
    # token request; the API saw the first delivery, its nonce challenge and the one call
    # with the then-revoked token.
    assert token_requests <= 4
    assert api_calls <= 5
    secrets = _secrets(sts, fhir, key_file)
    _assert_no_key_material(logs, records, secrets)
    _assert_no_key_material_in_database(tmp_path / "hub.db", secrets)


def _state(hub: Any, message_id: int) -> str | None:
    found = hub.repo.message_trace(message_id)["deliveries"]
    return found[0]["state"] if found else None


# --- no key material in logs, errors or reprs ---------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + repr(record.__dict__))


class _stdlib_records:  # noqa: N801 (a context manager used like a function)
    def __enter__(self) -> list[str]:
        self.handler = _Records()
        logging.getLogger().addHandler(self.handler)
        return self.handler.lines

    def __exit__(self, *args: object) -> None:
        logging.getLogger().removeHandler(self.handler)


def _secrets(sts: AuthorizationServer, fhir: ProtectedFhirServer, key_file: Path) -> list[str]:
    pem = key_file.read_text()
    body_lines = [line for line in pem.splitlines() if "-----" not in line]
    values = ["PRIVATE KEY", *body_lines[:3]]
    for request in fhir.requests:
        values.append(request.headers["authorization"].split(" ", 1)[1])
        values.append(request.headers.get("dpop", "") or "unused-placeholder-value")
    if sts.last_form.get("client_assertion"):
        values.append(sts.last_form["client_assertion"])
    return [v for v in values if v]


def _assert_no_key_material(logs: list[Any], records: list[str],
                            secrets: list[str]) -> None:
    text = "\n".join([repr(entry) for entry in logs] + records)
    assert logs, "nothing was logged: the check would prove nothing"
    for secret in secrets:
        assert secret not in text, "key material or a token appears in the logs"
    assert '"d":' not in text
    assert "'d':" not in text


def _assert_no_key_material_in_database(db: Path, secrets: list[str]) -> None:
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT last_error FROM delivery UNION ALL SELECT detail FROM "
                            "delivery_attempt UNION ALL SELECT reason FROM "
                            "destination_status").fetchall()
    text = "\n".join(str(r[0]) for r in rows if r[0])
    assert text, "no error text was stored: the check would prove nothing"
    for secret in secrets:
        assert secret not in text


def test_key_objects_never_show_their_key(tmp_path, rsa_key, key_file, sts, monkeypatch):
    sts.register_client(CLIENT_ID, public_jwk(rsa_key), {SCOPE})
    settings = settings_for(tmp_path, {"base_url": "http://127.0.0.1:9/fhir", "auth": "h"},
                            {"h": helseid_section(sts, key_file)})
    destination = _factory("ehr", settings)
    authorizer = destination.authorizer
    shown = " ".join([repr(authorizer), str(authorizer), repr(authorizer.client),  # type: ignore[attr-defined]
                      repr(authorizer.client._key), repr(settings),  # type: ignore[attr-defined]
                      repr(authorizer.client.dpop)])  # type: ignore[attr-defined]
    numbers = rsa_key.private_numbers()
    for secret in (str(numbers.d), str(numbers.p), "PRIVATE KEY",
                   jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key, as_dict=True)["d"]):
        assert secret not in shown
    import pickle
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(authorizer.client._key)  # type: ignore[attr-defined]
    asyncio.run(destination.aclose())

    # A key that does not parse: the error names the variable, not the content.
    monkeypatch.setenv("TEST_BAD_KEY", "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n"
                       "-----END PRIVATE KEY-----\n")
    bad = settings_for(tmp_path, {"base_url": "http://127.0.0.1:9/fhir", "auth": "h"},
                       {"h": {**helseid_section(sts, key_file), "private_key_file": None,
                              "private_key_env": "TEST_BAD_KEY"}})
    from hub.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        _factory("ehr", bad)
    assert "TEST_BAD_KEY" in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)
    assert os.environ["TEST_BAD_KEY"] not in str(caught.value)


async def test_edi2_destination_uses_a_helseid_section(tmp_path, sts, key_file, rsa_key):
    """EDI 2.0 with HelseID: the destination sends a DPoP-bound token and proof; the API
    side is verified by the same verifier the national-service peers use."""
    scope = "nhn:msgh/api"
    sts.register_client(CLIENT_ID, public_jwk(rsa_key), {scope})
    verifier = sts.verifier(require_dpop=True)
    api = "https://api.edi.test.nhn.no"
    config = config_from_dict({"auth": {"msgh": helseid_section(sts, key_file,
                                                                scopes=[scope])}},
                              tmp_path / "tryggbro.toml")
    settings = validate_type_settings(config, "destinations.gp", Edi2Settings, {
        "base_url": api, "auth": "msgh", "sender": {"name": "Kommune", "her_id": "1"},
        "receiver": {"name": "Legekontor", "her_id": "2"}})
    destination = edi_factory("gp", settings)  # type: ignore[arg-type]
    try:
        headers = await destination.client.authorizer.authorize("POST", api + "/Messages")
    finally:
        await destination.aclose()
    claims = verifier.verify_request("POST", api + "/Messages?x=1", headers, scope)
    assert claims["client_id"] == CLIENT_ID
    assert claims["cnf"]["jkt"]
    assert headers["authorization"].startswith("DPoP ")
    assert sts.errors()[-1] is None
