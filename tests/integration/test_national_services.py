"""VKP R4, JFT and PMD destinations against local peers written from NHN's published
documentation (tests/peers/vkp.py, jft.py, pmd.py): real sockets on 127.0.0.1, real SQLite,
the hub's real stages, dispatcher and monitor.

Auth: every test here runs the hub's real HelseID client (hub.auth: private_key_jwt, DPoP
with nonces for JFT and PMD, Bearer for VKP as NHN documents it) against the HelseID peer
(tests/peers/helseid.py), whose resource-server verifier the VKP, JFT and PMD peers use:
the `helseid` fixture gives a registered client and its `[auth.nhn]` section. JFT and PMD
peers take DPoP-bound tokens only. The abuse cases (expired assertion, reused jti, wrong
audience, missing or replayed DPoP proof, revoked client) run through the JFT destination
at the end and count the requests the peers saw.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa

from hub.api.app import create_app
from hub.auth import DPoPSigner, htu
from hub.auth.oauth import TokenClient
from hub.cli import State, cli
from hub.destinations.pmd import (
    BUNDLE_IDENTIFIER_SYSTEM,
    MUNICIPALITY_TAG_SYSTEM,
    r5_problems,
)
from hub.destinations.vkp import DEFAULT_SCOPES, write_scope
from hub.domain.model import OutboundDelivery, OutcomeKind, RawMessage
from hub.errors import ConfigError
from hub.fhir import structure_problems
from hub.httpclient import asgi_client
from hub.runtime import Hub
from tests.integration.helpers import (
    FAST_RETRY,
    PATIENTS,
    VIEWER_TOKEN,
    alarm_event,
    body,
    config_dict,
    enrol,
    make_config,
)
from tests.integration.running import running, wait_until
from tests.integration.test_auth import public_jwk, write_pem
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
JFT_SCOPE = "nhn:jft/api"
PMD_SCOPE = "nhn:pmd/test-scope"
CLIENT_ID = "tryggbro-oslo"


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


# --- HelseID: one registered client and its [auth.nhn] section ---------------------------


@dataclass
class HelseIdClient:
    """The HelseID peer with one client of the municipality (one per system, as NHN
    issues them) and the `[auth.nhn]` section the hub uses for it."""

    sts: AuthorizationServer
    jwk: dict[str, Any]
    key_file: Path
    client_id: str = CLIENT_ID

    def register(self, scopes: Any, *, claims: dict[str, Any] | None = None,
                 dpop: bool = True) -> None:
        self.sts.register_client(self.client_id, self.jwk, set(scopes), dpop=dpop,
                                 claims=claims)

    def verifier(self, *, dpop: bool = True) -> HelseIdVerifier:
        """A resource server's check: DPoP-bound tokens with nonces (JFT, PMD), or Bearer
        tokens (VKP)."""
        return HelseIdVerifier(self.sts.verifier(require_dpop=dpop, require_nonce=dpop))

    def auth(self, *, dpop: bool = True, **extra: Any) -> dict[str, dict[str, Any]]:
        return {"nhn": {"type": "helseid", "issuer": self.sts.issuer,
                        "client_id": self.client_id, "private_key_file": str(self.key_file),
                        "dpop": dpop, **extra}}

    def token_errors(self) -> list[str | None]:
        """Token requests' errors (None: a token was issued), nonce challenges left out."""
        return [e for e in self.sts.errors() if e != "use_dpop_nonce"]


@pytest.fixture
def helseid(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Iterator[HelseIdClient]:
    with AuthorizationServer(require_nonce=True) as sts:
        yield HelseIdClient(sts, public_jwk(rsa_key),
                            write_pem(rsa_key, tmp_path / "helseid-client.pem"))


def hub_with(tmp_path: Path, helseid: HelseIdClient, destinations: dict[str, dict[str, Any]],
             *, dpop: bool = True, db: str = "hub", auth_extra: dict[str, Any] | None = None,
             patient: str = PATIENTS[0], **extra: Any) -> Hub:
    """A hub whose national destinations use `auth = "nhn"`."""
    for settings in destinations.values():
        if settings["type"] in ("vkp", "jft", "pmd"):
            settings.setdefault("auth", "nhn")
    data = config_dict(f"sqlite:///{tmp_path}/{db}.db", destinations,
                       auth=helseid.auth(dpop=dpop, **(auth_extra or {})), **extra)
    hub = Hub.build(make_config(tmp_path, data))
    enrol(hub, "TA-1", patient)
    return hub


class Built:
    """One destination built by the hub from its configuration (for tests that call
    `send` directly)."""

    def __init__(self, tmp_path: Path, helseid: HelseIdClient, settings: dict[str, Any],
                 *, dpop: bool = True, db: str = "direct") -> None:
        self.hub = hub_with(tmp_path, helseid, {"d": settings}, dpop=dpop, db=db)
        self.hub.build_destinations()
        self.dest: Any = self.hub.destinations["d"]

    async def __aenter__(self) -> Any:
        return self.dest

    async def __aexit__(self, *args: object) -> None:
        await self.dest.aclose()
        self.hub.close()


# --- VKP R4 -----------------------------------------------------------------------------


@pytest.fixture
def vkp(helseid: HelseIdClient) -> Iterator[VkpPeer]:
    helseid.register(DEFAULT_SCOPES, claims=VkpPeer.client_claims(VKP_ID), dpop=False)
    with VkpPeer(helseid.verifier(dpop=False)) as peer:
        peer.add_municipality(ORG, active_service={PATIENTS[0]})
        peer.allow(VKP_ID, ORG)
        yield peer


def vkp_settings(vkp: VkpPeer, org: str = ORG, **extra: Any) -> dict[str, Any]:
    return {"type": "vkp", "base_url": f"{vkp.url}/epj/r4", "organisation_number": org,
            **extra}


def vkp_hub(tmp_path: Path, vkp: VkpPeer, helseid: HelseIdClient, org: str = ORG,
            patient: str = PATIENTS[0], **extra: Any) -> Hub:
    return hub_with(tmp_path, helseid, {"vkp": vkp_settings(vkp, org, **extra)}, dpop=False,
                    patient=patient)


async def test_vkp_alarm_is_written_per_resource_under_the_org_number(tmp_path, vkp, helseid):
    hub = vkp_hub(tmp_path, vkp, helseid)
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


async def test_vkp_1_3_no_active_service_is_a_dead_letter_with_the_reason(tmp_path, vkp, helseid):
    hub = vkp_hub(tmp_path, vkp, helseid, patient=PATIENTS[1])  # no service in ORG
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


async def test_vkp_2x_is_a_dead_letter(tmp_path, vkp, helseid):
    hub = vkp_hub(tmp_path, vkp, helseid)
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


async def test_vkp_3_1_is_retried_then_delivered(tmp_path, vkp, helseid):
    hub = vkp_hub(tmp_path, vkp, helseid)
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


async def test_vkp_unknown_org_number_pauses_with_a_clear_error(tmp_path, vkp, helseid):
    hub = vkp_hub(tmp_path, vkp, helseid, org=OTHER_ORG)
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


ZONE_EXT = "http://ehelse.no/fhir/StructureDefinition/vkp-sone-v090"
HOUSEHOLD_EXT = "http://hl7.no/fhir/StructureDefinition/vkp-household-v090"  # either host
ELOCK_EXT = "http://ehelse.no/fhir/StructureDefinition/vkp-elock-v090"


def vkp_patient(fnr: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1",
            "identifier": [{"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": fnr}],
            "extension": [{"url": ZONE_EXT, "valueString": "Sone 3 Grünerløkka"},
                          {"url": HOUSEHOLD_EXT, "valueString": "Bor alene, hund"}],
            "address": [{"extension": [{"url": ELOCK_EXT, "valueString": "Phoniro"}],
                         "line": ["Testveien 1"], "postalCode": "0550"}]}


async def test_vkp_enriches_alarms_with_zone_household_and_e_lock(tmp_path, vkp, helseid):
    vkp.municipalities[ORG].patients[PATIENTS[0]] = vkp_patient(PATIENTS[0])
    hub = vkp_hub(tmp_path, vkp, helseid, enrich_patients=True)
    try:
        async with running(hub):
            first = await send_alarm(hub, 40)
            second = await send_alarm(hub, 41)
            await wait_until(lambda: all(delivery_of(hub, m, "vkp")["state"] == "delivered"
                                         for m in (first, second)), what="delivered to VKP")
            enricher = hub.plugins.pm.get_plugin("patient-context:vkp")
    finally:
        hub.close()
    issues = vkp.resources("DetectedIssue")
    assert len(issues) == 2
    for issue in issues:
        detail = issue.resource["detail"]
        assert "Sone (zone): Sone 3 Grünerløkka" in detail
        assert "Husstand (household): Bor alene, hund" in detail
        assert "Dørlås (e-lock): Phoniro" in detail
    assert vkp.searches == 1  # the second alarm used the cached answer
    assert (enricher.hits, enricher.misses) == (2, 0)


async def test_a_vkp_outage_does_not_stop_processing(tmp_path, helseid):
    """The read side is down (nothing listens): alarms are mapped and delivered without
    the patient context, the miss is logged without the patient, and searches pause."""
    helseid.register(DEFAULT_SCOPES, claims=VkpPeer.client_claims(VKP_ID), dpop=False)
    with VkpPeer() as gone:
        dead_url = f"{gone.url}/epj/r4"
    hub = hub_with(tmp_path, helseid, {
        "vkp": {"type": "vkp", "base_url": dead_url, "organisation_number": ORG,
                "enrich_patients": True, "enrich_timeout_seconds": 1},
        "files": {"type": "folder", "path": str(tmp_path / "out")},
    }, dpop=False, routes=[{"name": "alarms", "match": {"categories": ["safety_alarm"]},
                             "destinations": ["files"]}])
    try:
        # structlog's own capture: caplog sees structlog only while it forwards to stdlib
        # logging, which depends on how earlier tests configured it.
        with structlog.testing.capture_logs() as logs:
            async with running(hub):
                sent = [await send_alarm(hub, 50), await send_alarm(hub, 51)]
                await wait_until(lambda: all(
                    delivery_of(hub, m, "files")["state"] == "delivered" for m in sent),
                    what="delivered without VKP")
                enricher = hub.plugins.pm.get_plugin("patient-context:vkp")
    finally:
        hub.close()
    assert enricher.misses == 1
    assert enricher.skipped == 1  # the second alarm did not wait for VKP again
    bundles = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    details = [e["resource"].get("detail", "") for b in bundles for e in b["entry"]
               if e["resource"]["resourceType"] == "DetectedIssue"]
    assert len(details) == 2
    assert not any("Sone (zone)" in d for d in details)
    warnings = [json.dumps(entry, default=str) for entry in logs
                if "patient context not available" in entry["event"]]
    assert warnings
    assert not any(PATIENTS[0] in w for w in warnings)


def test_vkp_malformed_org_number_is_a_config_error(tmp_path, helseid):
    hub = hub_with(tmp_path, helseid, {"vkp": {
        "type": "vkp", "base_url": "https://vkp.invalid/epj/r4",
        "organisation_number": "974778743"}}, dpop=False)
    try:
        with pytest.raises(ConfigError, match=r"organisation_number .*check digit"):
            hub.build_destinations()
    finally:
        hub.close()


async def test_vkp_dispenser_bundle_and_missing_scope(tmp_path, vkp, helseid):
    bundle = golden("dispenser/cases/01-dispensed-unassisted")
    async with Built(tmp_path, helseid, vkp_settings(vkp), dpop=False) as dest:
        outcome = await dest.send(delivery(bundle))
        assert outcome.kind is OutcomeKind.DELIVERED, outcome.detail
        (stored,) = vkp.resources("MedicationDispense")
        assert stored.resource == bundle["entry"][0]["resource"]
        # Resent (a retry after a timeout): the same id is updated, not duplicated.
        assert (await dest.send(delivery(bundle))).kind is OutcomeKind.DELIVERED
        assert len(vkp.resources("MedicationDispense")) == 1
    # A destination that asks HelseID for too narrow a scope set: VKP's 1.5 pauses it.
    narrow = vkp_settings(vkp, scopes=[write_scope("DetectedIssue")])
    async with Built(tmp_path, helseid, narrow, dpop=False, db="narrow") as dest:
        refused = await dest.send(delivery(bundle))
    assert refused.kind is OutcomeKind.PAUSE
    assert "1.5 NotAuthorized" in refused.detail
    assert "scopes" in refused.detail


async def test_vkp_patient_search_is_cached_without_the_number_as_key(tmp_path, vkp, helseid):
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [
        {"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": PATIENTS[0]}]}
    vkp.municipalities[ORG].patients[PATIENTS[0]] = patient
    settings = vkp_settings(vkp, patient_cache_seconds=30)
    async with Built(tmp_path, helseid, settings, dpop=False) as dest:
        clock = [0.0]
        dest.directory._clock = lambda: clock[0]
        assert await dest.directory.patient(PATIENTS[0]) == patient
        assert await dest.directory.patient(PATIENTS[0]) == patient
        assert await dest.directory.patient(PATIENTS[2]) is None  # not found: cached too
        assert await dest.directory.patient(PATIENTS[2]) is None
        assert vkp.searches == 2
        assert not any(PATIENTS[0] in k or PATIENTS[2] in k for k in dest.directory._cache)
        clock[0] = 31.0  # past the TTL: asked again
        assert await dest.directory.patient(PATIENTS[0]) == patient
        assert vkp.searches == 3


# --- JFT ---------------------------------------------------------------------------------


@pytest.fixture
def jft(helseid: HelseIdClient) -> Iterator[JftPeer]:
    helseid.register([JFT_SCOPE], claims={ORGNR_PARENT: ORG})
    with JftPeer(helseid.verifier()) as peer:
        yield peer


def jft_settings(jft: JftPeer, **extra: Any) -> dict[str, Any]:
    return {"type": "jft", "base_url": jft.url, "organisation_number": ORG, **extra}


def jft_hub(tmp_path: Path, jft: JftPeer, helseid: HelseIdClient,
            deadline_hours: float = 24.0, poll: float = 0.1, pause: float | None = None,
            **auth_extra: Any) -> Hub:
    retry = {**FAST_RETRY, **({"pause_seconds": pause} if pause else {})}
    return hub_with(tmp_path, helseid, {
        "jft": jft_settings(jft, source_system="tryggbro-test", retry=retry,
                            journal_deadline_hours=deadline_hours, status_poll_seconds=poll),
        "alerts": {"type": "folder", "path": str(tmp_path / "alerts")},
    }, routes=[
        {"name": "overdue", "match": {"kinds": ["receipt_overdue"]}, "destinations": ["alerts"]},
        {"name": "alarms", "match": {"categories": ["safety_alarm"]}, "destinations": ["jft"]},
    ], http={"host": "127.0.0.1", "port": 0}, monitor={"interval_seconds": 0.2},
        auth_extra=auth_extra)


def cli_status(hub: Hub) -> str:
    state = State(None, hub.plugins)
    state._config = hub.config  # the hub's own configuration, as --config would load it
    result = CliRunner().invoke(cli, ["status"], obj=state)
    assert result.exit_code == 0, result.output
    return result.output


async def test_jft_202_registered_read_journaled_ends_delivered(tmp_path, jft, helseid):
    hub = jft_hub(tmp_path, jft, helseid)
    verifier = jft.verifier.inner
    try:
        async with running(hub):
            first = await send_alarm(hub, 10)
            (event,) = await wait_until(jft.stored, what="event at JFT")
            assert event.source_system == "tryggbro-test"
            assert event.orgnr_parent == ORG
            assert event.bundle["type"] in ("document", "collection")
            assert structure_problems(event.bundle) == []
            d = await wait_until(
                lambda: (d := delivery_of(hub, first, "jft"))["transport_state"] == "registered"
                and d, what="registered")
            assert d["state"] == "awaiting_receipt"
            assert d["transport_ref"] == f"/v1/Bundle/{event.id}/$status"
            assert hub.repo.status().awaiting_by_transport_state == {"jft": {"registered": 1}}
            jft.read(event.id)
            await wait_until(lambda: delivery_of(hub, first, "jft")["transport_state"] == "read",
                             what="read")
            assert delivery_of(hub, first, "jft")["state"] == "awaiting_receipt"
            assert hub.repo.status().awaiting_by_transport_state == {"jft": {"read": 1}}
            assert "jft awaiting: 1 read" in cli_status(hub)
            jft.mark_journaled(event.id)
            done = await wait_until(lambda: (d := delivery_of(hub, first, "jft"))["state"]
                                    == "delivered" and d, what="delivered once journaled")
        log = [(a["outcome"], a["detail"].split(":")[0]) for a in done["attempt_log"]]
        assert log[0][0] == "awaiting", log
        assert log[1:] == [("transport:wait", "registered"), ("transport:wait", "read"),
                           ("transport:delivered", "journaled")], log
        assert done["transport_state"] == "journaled"
        assert hub.repo.status().deliveries["jft"] == {"delivered": 1}
        assert hub.repo.status().awaiting_by_transport_state == {}
        # Every call carried a DPoP proof the verifier accepted, after one nonce challenge.
        assert set(verifier.rejected) == {"use_dpop_nonce"}
        assert verifier.accepted >= 3  # the POST and at least two $status
        assert helseid.token_errors() == [None]  # one token for all of it
    finally:
        hub.close()


async def test_admin_status_counts_awaiting_per_transport_state(tmp_path, jft, helseid):
    hub = jft_hub(tmp_path, jft, helseid)
    jft.auto_register = False  # the first event stays "accepted", the second is registered
    try:
        async with running(hub):
            first = await send_alarm(hub, 13)
            await wait_until(lambda: delivery_of(hub, first, "jft")["state"]
                             == "awaiting_receipt", what="awaiting")
            second = await send_alarm(hub, 14)
            await wait_until(lambda: len(jft.stored()) == 2, what="two events at JFT")
            _, two = jft.stored()
            jft.register_event(two.id)
            await wait_until(lambda: delivery_of(hub, second, "jft")["transport_state"]
                             == "registered", what="registered")
            await wait_until(lambda: delivery_of(hub, first, "jft")["transport_state"]
                             == "accepted", what="accepted")
            client = asgi_client(create_app(hub))
            try:
                answer = await client.get("/admin/status",
                                          headers={"authorization": f"Bearer {VIEWER_TOKEN}"})
            finally:
                await client.aclose()
        assert answer.status_code == 200
        assert answer.json()["awaiting_by_transport_state"] == {
            "jft": {"accepted": 1, "registered": 1}}
        assert "jft awaiting: 1 accepted, 1 registered" in cli_status(hub)
    finally:
        hub.close()


async def test_jft_never_journaled_by_the_deadline_raises_an_alert(tmp_path, jft, helseid):
    hub = jft_hub(tmp_path, jft, helseid, deadline_hours=1 / 3600)
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


async def test_jft_failed_status_is_a_dead_letter_and_400_is_rejected(tmp_path, jft, helseid):
    hub = jft_hub(tmp_path, jft, helseid)
    try:
        async with running(hub):
            first = await send_alarm(hub, 12)
            (event,) = await wait_until(jft.stored, what="event at JFT")
            jft.fail(event.id)
            dead = await wait_until(lambda: (d := delivery_of(hub, first, "jft"))["state"]
                                    == "dead" and d, what="dead after failed")
            assert "JFT reports the event failed" in dead["last_error"]
    finally:
        hub.close()
    jft.environment = "production"  # a test person number in production: refused
    async with Built(tmp_path, helseid, jft_settings(jft)) as dest:
        outcome = await dest.send(delivery(golden("dispenser/cases/01-dispensed-unassisted")))
    assert outcome.kind is OutcomeKind.REJECTED
    assert "test person number in the production environment" in outcome.detail


# --- PMD ---------------------------------------------------------------------------------


@pytest.fixture
def pmd(helseid: HelseIdClient) -> Iterator[PmdPeer]:
    helseid.register([PMD_SCOPE, "nhn:something/else"])
    with PmdPeer(PMD_SCOPE, helseid.verifier()) as peer:
        yield peer


def pmd_destination(tmp_path: Path, helseid: HelseIdClient, pmd: PmdPeer,
                    scope: str = PMD_SCOPE) -> Built:
    return Built(tmp_path, helseid, {
        "type": "pmd", "base_url": pmd.url, "organisation_number": ORG,
        "municipality": "0301", "scope": scope}, db="pmd" if scope == PMD_SCOPE else "pmd-other")


async def test_pmd_collection_bundle_with_the_municipality_tag(tmp_path, pmd, helseid):
    source = golden("dho/cases/01-blood-pressure")
    async with pmd_destination(tmp_path, helseid, pmd) as dest:
        outcome = await dest.send(delivery(source))
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


async def test_pmd_sends_only_observations_and_refuses_bundles_without_any(tmp_path, pmd,
                                                                           helseid):
    async with pmd_destination(tmp_path, helseid, pmd) as dest:
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
    async with pmd_destination(tmp_path, helseid, pmd, scope="nhn:something/else") as wrong:
        refused = await wrong.send(delivery(golden("dho/cases/02-spo2")))
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




# --- abuse cases through a national destination (reliability.md §5.6) ---------------------
#
# Each ends in a clear reason and a paused destination (its messages kept, ready for when
# the client is fixed), with the requests to HelseID and to JFT counted: no retry storm.
# The status poll and the pause are a minute (the defaults), so only the sends are counted.

ABUSE = {
    # case: (text in the reason, alarms sent, token requests, requests to JFT), both
    # without the one DPoP-nonce challenge each server makes
    "expired_assertion": ("the client assertion has expired", 1, 1, 0),
    "reused_jti": ("jti was used before", 2, 2, 1),
    "wrong_audience": ("is not this server", 1, 1, 0),
    "missing_dpop_proof": ("no DPoP proof", 1, 1, 1),
    "replayed_dpop_proof": ("replay", 2, 1, 2),
    "revoked_client": ("the client is revoked", 2, 2, 2),
}


class DropDPoP:
    """An ASGI layer in front of the peer that drops the DPoP header (a proxy that does
    not forward it): the service sees a DPoP token without a proof."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k != b"dpop"])
        await self.app(scope, receive, send)


@pytest.mark.parametrize("case", list(ABUSE))
async def test_abuse_cases_pause_the_national_destination_without_a_storm(
        tmp_path, helseid, monkeypatch, case):
    expected, alarms, token_requests, jft_requests = ABUSE[case]
    helseid.register([JFT_SCOPE], claims={ORGNR_PARENT: ORG})
    auth_extra: dict[str, Any] = {}
    if case == "expired_assertion":
        helseid.sts.clock_offset = 45  # HelseID's clock 45 s ahead: our 30 s assertion expired
    elif case == "wrong_audience":
        auth_extra["audience"] = "https://helseid-sts.test.nhn.no"  # production, not test
    elif case == "reused_jti":
        # A broken client that signs every assertion with the same jti: the first token is
        # issued; when it is renewed (short-lived tokens here) HelseID refuses the replay.
        helseid.sts.token_lifetime = 2
        original = TokenClient._assertion

        def same_jti(self: TokenClient, endpoint: str) -> str:
            now = int(time.time())
            return self._key.sign({"iss": self.client_id, "sub": self.client_id,
                                   "aud": self._audience or endpoint, "jti": "always-this-one",
                                   "iat": now, "nbf": now, "exp": now + 30})

        assert original is not same_jti
        monkeypatch.setattr(TokenClient, "_assertion", same_jti)
    elif case == "replayed_dpop_proof":
        # A client that caches its proofs per request target: the second POST replays one.
        made: dict[tuple[str, ...], str] = {}
        fresh = DPoPSigner.proof

        def cached(self: DPoPSigner, method: str, url: str,
                   access_token: str | None = None) -> str:
            key = (method, htu(url), access_token or "", str(self._nonces))
            if key not in made:
                made[key] = fresh(self, method, url, access_token)
            return made[key]

        monkeypatch.setattr(DPoPSigner, "proof", cached)
    peer = JftPeer(helseid.verifier())
    if case == "missing_dpop_proof":
        peer.app = DropDPoP(peer.app)
    verifier = peer.verifier.inner  # type: ignore[attr-defined]
    with peer as jft:
        hub = jft_hub(tmp_path, jft, helseid, poll=60.0, pause=60.0, **auth_extra)
        try:
            async with running(hub):
                sent: list[int] = []
                for n in range(alarms):
                    if n == 1:
                        await wait_until(lambda: delivery_of(hub, sent[0], "jft")["state"]
                                         == "awaiting_receipt", what="first alarm accepted")
                        if case == "revoked_client":
                            helseid.sts.revoke(CLIENT_ID)
                        elif case == "reused_jti":
                            await asyncio.sleep(1.2)  # the token is due for renewal
                    sent.append(await send_alarm(hub, 30 + n))
                await wait_until(lambda: "jft" in hub.repo.status().paused, what="paused")
                await asyncio.sleep(1.0)  # time for a storm, if there were one
                last = delivery_of(hub, sent[-1], "jft")
                status = hub.repo.status()
        finally:
            hub.close()
    reason = status.paused["jft"]["reason"]
    assert expected in reason, reason
    assert expected in last["last_error"]
    assert last["state"] == "pending"  # kept: it goes once the client is fixed
    assert last["attempts"] == 1
    assert len(helseid.token_errors()) == token_requests, helseid.sts.token_requests
    calls = [e for e in verifier.rejected if e != "use_dpop_nonce"]
    assert len(calls) + verifier.accepted == jft_requests, (verifier.rejected,
                                                            verifier.accepted)
    assert verifier.rejected.count("use_dpop_nonce") <= 1
    assert helseid.sts.errors().count("use_dpop_nonce") <= 1
    assert len(jft.stored()) == alarms - 1
    # The refusal names no key, token, assertion or proof.
    assert "eyJ" not in reason
