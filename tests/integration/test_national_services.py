"""VKP R4, JFT and PMD destinations against local peers written from NHN's published
documentation (tests/peers/vkp.py, jft.py, pmd.py): real sockets on 127.0.0.1, real SQLite,
the hub's real stages, dispatcher and monitor.

Auth: the destinations use hub.auth. Most tests use `auth = "bearer"` and peers that check
tokens, scopes and claims through tests/peers/_national.StaticTokens (JFT and PMD with
`require_dpop=False`: a static token carries no DPoP proof). The HelseID tests at the end
run the hub's real HelseID client (private_key_jwt, DPoP, nonces) against
tests/peers/helseid.py, whose resource-server verifier the JFT and VKP peers then use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hub.auth.oauth import StaticBearerAuthorizer
from hub.destinations.jft import JftDestination, JftSettings
from hub.destinations.pmd import (
    BUNDLE_IDENTIFIER_SYSTEM,
    MUNICIPALITY_TAG_SYSTEM,
    PmdDestination,
    PmdSettings,
    r5_problems,
)
from hub.destinations.vkp import VkpDestination, VkpSettings, write_scope
from hub.domain.model import OutboundDelivery, OutcomeKind, RawMessage
from hub.errors import ConfigError
from hub.fhir import structure_problems
from hub.runtime import Hub
from tests.integration.helpers import PATIENTS, alarm_event, body, config_dict, enrol, make_config
from tests.integration.running import running, wait_until
from tests.integration.test_auth import key_file as key_file
from tests.integration.test_auth import public_jwk
from tests.integration.test_auth import rsa_key as rsa_key
from tests.peers._national import HelseIdVerifier
from tests.peers.helseid import AuthorizationServer
from tests.peers.jft import ORGNR_PARENT, JftPeer
from tests.peers.pmd import PmdPeer
from tests.peers.vkp import VkpPeer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
ORG = "974778742"  # valid mod-11 organisation number for the receiving municipality
OTHER_ORG = "923609016"  # valid mod-11, unknown to the VKP peer
VKP_ID = "Tryggbro_Alarm_Oslo"
ALARM_SCOPES = [write_scope(t) for t in ("DetectedIssue", "Encounter", "Composition",
                                          "Location", "MedicationDispense")]
TOKEN_ENV = "TEST_NATIONAL_TOKEN"
PMD_SCOPE = "nhn:pmd/test-scope"
STATIC = {"auth": "bearer", "token_env": "unused"}  # the token is handed to the authorizer


def golden(path: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / path / "expected.json").read_text())
    bundle: dict[str, Any] = data[0]["events"][0]["bundle"]
    return bundle


def delivery(bundle: dict[str, Any], n: int = 1) -> OutboundDelivery:
    return OutboundDelivery(id=n, message_id=n, destination="x",
                            payload=json.dumps(bundle).encode(), bundle_id=bundle["id"],
                            priority=50, attempt=1)


def delivery_of(hub: Hub, message_id: int, destination: str) -> dict[str, Any]:
    found = [d for d in hub.repo.message_trace(message_id)["deliveries"]
             if d["destination"] == destination]
    return found[0] if found else {"state": "not planned yet", "attempt_log": []}


async def send_alarm(hub: Hub, n: int) -> int:
    result = await hub.intake.submit(RawMessage(
        "alarmplatform", f"ev-{n}", "application/json",
        body(alarm_event(f"ev-{n}", f"A-{n}", "TA-1")), datetime.now(UTC)))
    return result.id


# --- VKP R4 -----------------------------------------------------------------------------


@pytest.fixture
def vkp() -> Iterator[VkpPeer]:
    with VkpPeer() as peer:
        peer.add_municipality(ORG, active_service={PATIENTS[0]})
        peer.allow(VKP_ID, ORG)
        yield peer


def vkp_hub(tmp_path: Path, vkp: VkpPeer, monkeypatch: pytest.MonkeyPatch,
            org: str = ORG, patient: str = PATIENTS[0]) -> Hub:
    token = vkp.tokens.issue(ALARM_SCOPES, **vkp.client_claims(VKP_ID))
    monkeypatch.setenv(TOKEN_ENV, token)
    data = config_dict(f"sqlite:///{tmp_path}/hub.db", {
        "vkp": {"type": "vkp", "base_url": f"{vkp.url}/epj/r4", "organisation_number": org,
                "auth": "bearer", "token_env": TOKEN_ENV}})
    hub = Hub.build(make_config(tmp_path, data))
    enrol(hub, "TA-1", patient)
    return hub


async def test_vkp_alarm_is_written_per_resource_under_the_org_number(tmp_path, vkp,
                                                                       monkeypatch):
    hub = vkp_hub(tmp_path, vkp, monkeypatch)
    try:
        async with running(hub):
            first = await send_alarm(hub, 1)
            done = await wait_until(lambda: (d := delivery_of(hub, first, "vkp"))["state"]
                                    == "delivered" and d, what="delivered to VKP")
        kinds = sorted(r.resource_type for r in vkp.resources())
        assert "DetectedIssue" in kinds
        assert "Encounter" in kinds
        assert all(r.orgnr == ORG and r.scheme == "Bearer" and r.vkp_id == VKP_ID
                   for r in vkp.resources())
        assert done["attempts"] == 1
    finally:
        hub.close()


async def test_vkp_1_3_no_active_service_is_a_dead_letter_with_the_reason(tmp_path, vkp,
                                                                          monkeypatch):
    hub = vkp_hub(tmp_path, vkp, monkeypatch, patient=PATIENTS[1])  # no service in ORG
    try:
        async with running(hub):
            first = await send_alarm(hub, 2)
            dead = await wait_until(lambda: (d := delivery_of(hub, first, "vkp"))["state"]
                                    == "dead" and d, what="dead letter")
        assert "VKP 1.3 MissingActiveService" in dead["last_error"]
        assert "no active service" in dead["last_error"]
        assert dead["attempts"] == 1  # permanent: not retried
        assert PATIENTS[1] not in dead["last_error"]
        assert vkp.resources() == []
    finally:
        hub.close()


async def test_vkp_2x_is_a_dead_letter(tmp_path, vkp, monkeypatch):
    hub = vkp_hub(tmp_path, vkp, monkeypatch)
    vkp.fail_next("2.4")
    try:
        async with running(hub):
            first = await send_alarm(hub, 3)
            dead = await wait_until(lambda: (d := delivery_of(hub, first, "vkp"))["state"]
                                    == "dead" and d, what="dead letter")
        assert "VKP 2.4 InvalidFormat" in dead["last_error"]
        assert dead["attempts"] == 1
    finally:
        hub.close()


async def test_vkp_3_1_is_retried_then_delivered(tmp_path, vkp, monkeypatch):
    hub = vkp_hub(tmp_path, vkp, monkeypatch)
    vkp.fail_next("3.1", times=2)
    try:
        async with running(hub):
            first = await send_alarm(hub, 4)
            done = await wait_until(lambda: (d := delivery_of(hub, first, "vkp"))["state"]
                                    == "delivered" and d, what="delivered after 3.1")
        outcomes = [a["outcome"] for a in done["attempt_log"]]
        assert outcomes == ["retry", "retry", "delivered"]
        assert "VKP 3.1 TimedOut" in done["attempt_log"][0]["detail"]
    finally:
        hub.close()


async def test_vkp_unknown_org_number_pauses_with_a_clear_error(tmp_path, vkp, monkeypatch):
    hub = vkp_hub(tmp_path, vkp, monkeypatch, org=OTHER_ORG)
    try:
        async with running(hub):
            first = await send_alarm(hub, 5)
            await wait_until(lambda: "vkp" in hub.repo.status().paused, what="paused")
            d = delivery_of(hub, first, "vkp")
        assert d["state"] == "pending"  # kept, not dead: it goes once the address is fixed
        assert "VKP 2.2 InvalidOrg" in d["last_error"]
        assert "check organisation_number" in d["last_error"]
    finally:
        hub.close()


def test_vkp_malformed_org_number_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "x")
    data = config_dict(f"sqlite:///{tmp_path}/hub.db", {
        "vkp": {"type": "vkp", "base_url": "https://vkp.invalid/epj/r4",
                "organisation_number": "974778743", "auth": "bearer", "token_env": TOKEN_ENV}})
    hub = Hub.build(make_config(tmp_path, data))
    try:
        with pytest.raises(ConfigError, match=r"organisation_number .*check digit"):
            hub.build_destinations()
    finally:
        hub.close()


async def test_vkp_dispenser_bundle_and_missing_scope(vkp):
    token = vkp.tokens.issue(ALARM_SCOPES, **vkp.client_claims(VKP_ID))
    settings = VkpSettings.model_validate({"base_url": f"{vkp.url}/epj/r4",
                                           "organisation_number": ORG, **STATIC})
    dest = VkpDestination("vkp", settings, StaticBearerAuthorizer(token))
    bundle = golden("dispenser/cases/01-dispensed-unassisted")
    try:
        outcome = await dest.send(delivery(bundle))
        assert outcome.kind is OutcomeKind.DELIVERED, outcome.detail
        (stored,) = vkp.resources("MedicationDispense")
        assert stored.resource == bundle["entry"][0]["resource"]
        # Resent (a retry after a timeout): the same id is updated, not duplicated.
        assert (await dest.send(delivery(bundle))).kind is OutcomeKind.DELIVERED
        assert len(vkp.resources("MedicationDispense")) == 1
        narrow = vkp.tokens.issue([write_scope("DetectedIssue")], **vkp.client_claims(VKP_ID))
        dest.auth = StaticBearerAuthorizer(narrow)
        refused = await dest.send(delivery(bundle))
        assert refused.kind is OutcomeKind.PAUSE
        assert "1.5 NotAuthorized" in refused.detail
        assert "scopes" in refused.detail
    finally:
        await dest.aclose()


async def test_vkp_patient_search_is_cached_without_the_number_as_key(vkp):
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [
        {"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": PATIENTS[0]}]}
    vkp.municipalities[ORG].patients[PATIENTS[0]] = patient
    token = vkp.tokens.issue(["nhn:vkp/api/user/patient.read"], **vkp.client_claims(VKP_ID))
    settings = VkpSettings.model_validate({"base_url": f"{vkp.url}/epj/r4",
                                           "organisation_number": ORG, **STATIC,
                                           "patient_cache_seconds": 30})
    dest = VkpDestination("vkp", settings, StaticBearerAuthorizer(token))
    clock = [0.0]
    dest.directory._clock = lambda: clock[0]
    try:
        assert await dest.directory.patient(PATIENTS[0]) == patient
        assert await dest.directory.patient(PATIENTS[0]) == patient
        assert await dest.directory.patient(PATIENTS[2]) is None  # not found: cached too
        assert await dest.directory.patient(PATIENTS[2]) is None
        assert vkp.searches == 2
        assert not any(PATIENTS[0] in k or PATIENTS[2] in k for k in dest.directory._cache)
        clock[0] = 31.0  # past the TTL: asked again
        assert await dest.directory.patient(PATIENTS[0]) == patient
        assert vkp.searches == 3
    finally:
        await dest.aclose()


# --- JFT ---------------------------------------------------------------------------------


@pytest.fixture
def jft() -> Iterator[JftPeer]:
    # require_dpop=False until the HelseID client makes DPoP proofs (module docstring).
    with JftPeer(require_dpop=False) as peer:
        yield peer


def jft_hub(tmp_path: Path, jft: JftPeer, monkeypatch: pytest.MonkeyPatch,
            deadline_hours: float = 24.0) -> Hub:
    monkeypatch.setenv(TOKEN_ENV, jft.tokens.issue(["nhn:jft/api"], **{ORGNR_PARENT: ORG}))
    data = config_dict(f"sqlite:///{tmp_path}/hub.db", {
        "jft": {"type": "jft", "base_url": jft.url, "organisation_number": ORG,
                "auth": "bearer", "token_env": TOKEN_ENV, "source_system": "tryggbro-test",
                "journal_deadline_hours": deadline_hours, "status_poll_seconds": 0.1},
        "alerts": {"type": "folder", "path": str(tmp_path / "alerts")},
    }, routes=[
        {"name": "overdue", "match": {"kinds": ["receipt_overdue"]}, "destinations": ["alerts"]},
        {"name": "alarms", "match": {"categories": ["safety_alarm"]}, "destinations": ["jft"]},
    ], http={"host": "127.0.0.1", "port": 0}, monitor={"interval_seconds": 0.2})
    hub = Hub.build(make_config(tmp_path, data))
    enrol(hub, "TA-1", PATIENTS[0])
    return hub


async def test_jft_202_registered_read_journaled_ends_delivered(tmp_path, jft, monkeypatch):
    hub = jft_hub(tmp_path, jft, monkeypatch)
    epj = jft.tokens.issue(["nhn:jft/api"], **{ORGNR_PARENT: ORG})
    try:
        async with running(hub):
            first = await send_alarm(hub, 10)
            (event,) = await wait_until(jft.stored, what="event at JFT")
            assert event.source_system == "tryggbro-test"
            assert event.bundle["type"] in ("document", "collection")
            assert structure_problems(event.bundle) == []
            d = await wait_until(
                lambda: (d := delivery_of(hub, first, "jft"))["transport_state"] == "registered"
                and d, what="registered")
            assert d["state"] == "awaiting_receipt"
            assert d["transport_ref"] == f"/v1/Bundle/{event.id}/$status"
            jft.read(event.id)
            await wait_until(lambda: delivery_of(hub, first, "jft")["transport_state"] == "read",
                             what="read")
            assert delivery_of(hub, first, "jft")["state"] == "awaiting_receipt"
            jft.journal(event.id, epj)
            done = await wait_until(lambda: (d := delivery_of(hub, first, "jft"))["state"]
                                    == "delivered" and d, what="delivered once journaled")
        log = [(a["outcome"], a["detail"].split(":")[0]) for a in done["attempt_log"]]
        assert log[0][0] == "awaiting", log
        assert log[1:] == [("transport:wait", "registered"), ("transport:wait", "read"),
                           ("transport:delivered", "journaled")], log
        assert done["transport_state"] == "journaled"
        assert hub.repo.status().deliveries["jft"] == {"delivered": 1}
    finally:
        hub.close()


async def test_jft_never_journaled_by_the_deadline_raises_an_alert(tmp_path, jft, monkeypatch):
    hub = jft_hub(tmp_path, jft, monkeypatch, deadline_hours=1 / 3600)
    try:
        async with running(hub, serve_http=True):  # the monitor runs with the HTTP side
            first = await send_alarm(hub, 11)
            (event,) = await wait_until(jft.stored, what="event at JFT")
            jft.read(event.id)  # fetched by the EPJ, never journaled
            files = await wait_until(lambda: list((tmp_path / "alerts").glob("*.json")),
                                     timeout=20, what="overdue alert")
            assert hub.repo.status().receipts_overdue == {"jft": 1}
            d = delivery_of(hub, first, "jft")
        assert d["state"] == "awaiting_receipt"
        assert d["transport_state"] == "read"
        (alert,) = files
        issues = [e["resource"] for e in json.loads(alert.read_text())["entry"]
                  if e["resource"]["resourceType"] == "DetectedIssue"]
        assert "Ingen kvittering" in issues[0]["detail"]
        assert "jft" in issues[0]["detail"]
    finally:
        hub.close()


async def test_jft_failed_status_is_a_dead_letter_and_400_is_rejected(tmp_path, jft,
                                                                      monkeypatch):
    hub = jft_hub(tmp_path, jft, monkeypatch)
    try:
        async with running(hub):
            first = await send_alarm(hub, 12)
            (event,) = await wait_until(jft.stored, what="event at JFT")
            jft.fail(event.id)
            dead = await wait_until(lambda: (d := delivery_of(hub, first, "jft"))["state"]
                                    == "dead" and d, what="dead after failed")
            assert "JFT reports the event failed" in dead["last_error"]
        jft.environment = "production"  # a test person number in production: refused
        token = jft.tokens.issue(["nhn:jft/api"], **{ORGNR_PARENT: ORG})
        dest = JftDestination("jft", JftSettings.model_validate(
            {"base_url": jft.url, "organisation_number": ORG, **STATIC}),
            StaticBearerAuthorizer(token))
        try:
            outcome = await dest.send(delivery(golden("dispenser/cases/01-dispensed-unassisted")))
        finally:
            await dest.aclose()
        assert outcome.kind is OutcomeKind.REJECTED
        assert "test person number in the production environment" in outcome.detail
    finally:
        hub.close()


# --- PMD ---------------------------------------------------------------------------------


@pytest.fixture
def pmd() -> Iterator[PmdPeer]:
    with PmdPeer(PMD_SCOPE, require_dpop=False) as peer:
        yield peer


def pmd_destination(pmd: PmdPeer, scopes: list[str] | None = None) -> PmdDestination:
    token = pmd.tokens.issue(scopes if scopes is not None else [PMD_SCOPE])
    settings = PmdSettings.model_validate({
        "base_url": pmd.url, "organisation_number": ORG, "municipality": "0301",
        "scope": PMD_SCOPE, **STATIC})
    return PmdDestination("pmd", settings, StaticBearerAuthorizer(token))


async def test_pmd_collection_bundle_with_the_municipality_tag(pmd):
    dest = pmd_destination(pmd)
    source = golden("dho/cases/01-blood-pressure")
    try:
        outcome = await dest.send(delivery(source))
    finally:
        await dest.aclose()
    assert outcome.kind is OutcomeKind.DELIVERED, outcome.detail
    (stored,) = pmd.stored()
    b = stored.bundle
    assert b["type"] == "collection"
    assert b["meta"]["tag"] == [{"system": MUNICIPALITY_TAG_SYSTEM, "code": "0301"}]
    assert b["identifier"] == {"system": BUNDLE_IDENTIFIER_SYSTEM, "value": source["id"]}
    assert all("request" not in e for e in b["entry"])
    obs = b["entry"][0]["resource"]
    assert obs["resourceType"] == "Observation"
    assert obs["subject"]["identifier"]["value"] == PATIENTS[0]
    assert obs["performer"] == [{"identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.101",
                                                "value": ORG}}]
    assert structure_problems(b) == []
    assert r5_problems(b) == []


async def test_pmd_sends_only_observations_and_refuses_bundles_without_any(pmd):
    dest = pmd_destination(pmd)
    try:
        mixed = await dest.send(delivery(golden("dho/cases/08-spo2-out-of-range-alert")))
        assert mixed.kind is OutcomeKind.DELIVERED
        assert "2 resources of other types not sent" in mixed.detail
        assert [e["resource"]["resourceType"] for e in pmd.stored()[0].bundle["entry"]] \
            == ["Observation"]
        alarm = await dest.send(delivery(golden("dispenser/cases/01-dispensed-unassisted")))
        assert alarm.kind is OutcomeKind.REJECTED
        assert "Observations only" in alarm.detail
        pmd.fail_next(503)
        assert (await dest.send(delivery(golden("dho/cases/02-spo2")))).kind \
            is OutcomeKind.RETRY
    finally:
        await dest.aclose()
    wrong = pmd_destination(pmd, scopes=["nhn:something/else"])
    try:
        refused = await wrong.send(delivery(golden("dho/cases/02-spo2")))
    finally:
        await wrong.aclose()
    assert refused.kind is OutcomeKind.PAUSE
    assert "HTTP 403" in refused.detail


def test_r5_check_names_r4_only_shapes_and_the_peer_agrees(pmd):
    obs = dict(golden("dho/cases/02-spo2")["entry"][0]["resource"])
    obs["valueSampledData"] = {"origin": {"value": 0}, "period": 1000, "dimensions": 1,
                               "data": "1 2 3"}
    obs["instantiatesCanonical"] = "http://example.org/x"  # R5-only: not R4-compatible
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": "urn:uuid:1", "resource": obs,
                         "request": {"method": "POST", "url": "Observation"}}]}
    problems = "\n".join(r5_problems(bundle))
    assert "valueSampledData: R4-only shape" in problems
    assert "instantiatesCanonical: not an R4/R5 Observation element" in problems
    assert "request: not allowed in a collection Bundle" in problems
    # The peer, with its own R5 element list, refuses R4's SampledData.period too.
    assert any("valueSampledData.period" in p for p in pmd._problems(bundle))


@pytest.mark.parametrize(("dest_type", "extra"), [
    ("jft", {}), ("pmd", {"municipality": "0301", "scope": PMD_SCOPE})])
def test_jft_and_pmd_refuse_a_helseid_client_without_dpop(tmp_path, dest_type, extra):
    data = config_dict(f"sqlite:///{tmp_path}/hub.db", {
        "national": {"type": dest_type, "base_url": "https://national.invalid",
                     "organisation_number": ORG, "auth": "nhn", **extra}},
        auth={"nhn": {"type": "helseid", "client_id": "tryggbro-oslo",
                      "issuer": "https://helseid-sts.test.nhn.no",
                      "private_key_env": "TEST_UNUSED_KEY", "dpop": False}})
    hub = Hub.build(make_config(tmp_path, data))
    try:
        with pytest.raises(ConfigError, match="requires DPoP-bound tokens"):
            hub.build_destinations()
    finally:
        hub.close()


def test_national_destinations_need_auth(tmp_path):
    data = config_dict(f"sqlite:///{tmp_path}/hub.db", {
        "vkp": {"type": "vkp", "base_url": "https://vkp.invalid/epj/r4",
                "organisation_number": ORG}})
    hub = Hub.build(make_config(tmp_path, data))
    try:
        with pytest.raises(ConfigError, match="auth"):
            hub.build_destinations()
    finally:
        hub.close()


# --- HelseID: the hub's hub.auth client against the HelseID peer and its verifier ---------


@pytest.fixture
def sts() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(require_nonce=True) as server:
        yield server


def helseid_hub(tmp_path: Path, sts: AuthorizationServer, key_file: Path,
                destinations: dict[str, dict[str, Any]], dpop: bool = True) -> Hub:
    data = config_dict(f"sqlite:///{tmp_path}/hub.db", destinations, auth={
        "nhn": {"type": "helseid", "issuer": sts.issuer, "client_id": "tryggbro-oslo",
                "private_key_file": str(key_file), "dpop": dpop}})
    hub = Hub.build(make_config(tmp_path, data))
    enrol(hub, "TA-1", PATIENTS[0])
    return hub


async def test_jft_with_helseid_dpop_and_nonces_until_journaled(tmp_path, sts, key_file,
                                                                rsa_key):
    sts.register_client("tryggbro-oslo", public_jwk(rsa_key), {"nhn:jft/api"},
                        claims={ORGNR_PARENT: ORG})
    verifier = sts.verifier(require_dpop=True, require_nonce=True)
    with JftPeer(HelseIdVerifier(verifier)) as jft:
        hub = helseid_hub(tmp_path, sts, key_file, {"jft": {
            "type": "jft", "base_url": jft.url, "organisation_number": ORG, "auth": "nhn",
            "status_poll_seconds": 0.1}})
        try:
            async with running(hub):
                first = await send_alarm(hub, 20)
                (event,) = await wait_until(jft.stored, what="event at JFT")
                await wait_until(lambda: delivery_of(hub, first, "jft")["transport_state"]
                                 == "registered", what="registered ($status with DPoP)")
                jft.mark_journaled(event.id)
                await wait_until(lambda: delivery_of(hub, first, "jft")["state"]
                                 == "delivered", what="delivered")
        finally:
            hub.close()
    assert event.orgnr_parent == ORG
    # Every API call carried a DPoP proof the verifier accepted, after one nonce challenge.
    assert "use_dpop_nonce" in verifier.rejected
    assert set(verifier.rejected) <= {"use_dpop_nonce"}
    assert verifier.accepted >= 2  # the POST and at least one $status
    assert sts.errors()[-1] is None


async def test_vkp_with_a_helseid_bearer_client(tmp_path, sts, key_file, rsa_key):
    sts.register_client("tryggbro-oslo", public_jwk(rsa_key), set(ALARM_SCOPES), dpop=False,
                        claims=VkpPeer.client_claims(VKP_ID))
    with VkpPeer(HelseIdVerifier(sts.verifier(require_dpop=False))) as vkp:
        vkp.add_municipality(ORG, active_service={PATIENTS[0]})
        vkp.allow(VKP_ID, ORG)
        hub = helseid_hub(tmp_path, sts, key_file, {"vkp": {
            "type": "vkp", "base_url": f"{vkp.url}/epj/r4", "organisation_number": ORG,
            "auth": "nhn", "scopes": ALARM_SCOPES}}, dpop=False)
        try:
            async with running(hub):
                first = await send_alarm(hub, 21)
                await wait_until(lambda: delivery_of(hub, first, "vkp")["state"]
                                 == "delivered", what="delivered to VKP")
        finally:
            hub.close()
        assert {r.scheme for r in vkp.resources()} == {"Bearer"}
        assert {r.vkp_id for r in vkp.resources()} == {VKP_ID}
