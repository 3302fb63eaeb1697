"""The shipped configuration examples load with every plugin, and route as they say."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.config import load_config
from hub.destinations.vkp import DEFAULT_SCOPES
from hub.domain.model import Category, DeviceRef, Enrolment, Event, PersonId, RawMessage
from hub.domain.privacy import FNR_SYSTEM
from hub.domain.routing import RouteAction, evaluate
from hub.errors import ConfigError
from hub.runtime import Hub
from tests.integration.test_auth import rsa_key as rsa_key

ROOT = Path(__file__).resolve().parents[2]
BERGEN = Enrolment("x", "d", PersonId(FNR_SYSTEM, "01819012012"), "4601")
OSLO = Enrolment("x", "d", PersonId(FNR_SYSTEM, "01819012012"), "0301")


def event(category: Category, kind: str = "k", code: str | None = None,
          severity: str | None = None) -> Event:
    return Event(source="x", business_key="b", kind=kind, category=category,
                 occurred_at=datetime(2026, 11, 22, tzinfo=UTC), device=DeviceRef("d"),
                 code=code, severity=severity)


@pytest.fixture
def municipality(tmp_path):
    config = load_config(ROOT / "examples" / "municipality.toml")
    hub = Hub.build(config, database_url=f"sqlite:///{tmp_path}/hub.db", with_sources=False)
    yield hub
    hub.close()


@pytest.mark.parametrize(("ev", "enrolment", "expected"), [
    (event(Category.SAFETY_ALARM, code="3"), BERGEN, ("response-centre", "ehr")),
    (event(Category.NURSE_CALL, code="7.1"), BERGEN, ("response-centre", "ehr")),
    (event(Category.MEDICATION, code="1.20"), BERGEN, ("response-centre", "ehr")),
    (event(Category.MEDICATION, code="1.7"), BERGEN, ("ehr",)),
    (event(Category.HOME_FOLLOW_UP, code="5.1", severity="high"), BERGEN,
     ("response-centre", "ehr", "gp")),
    (event(Category.HOME_FOLLOW_UP, kind="gp_answer"), BERGEN, ("ehr",)),
    (event(Category.SAFETY_ALARM, kind="receipt_overdue", code="3"), BERGEN, ("ehr",)),
    (event(Category.HOME_FOLLOW_UP, code="5.1", severity="moderate"), BERGEN, ("ehr",)),
    (event(Category.DOOR_LOCK, kind="unlocked"), BERGEN, ("ehr",)),
    (event(Category.DOOR_LOCK, kind="unlocked.no_staff"), BERGEN, None),
    (event(Category.LOCATION, kind="position_update"), BERGEN, None),
    (event(Category.DEVICE_HEALTH, kind="heartbeat"), None, None),
    (event(Category.PATIENT_ADMINISTRATION, kind="adt.discharge"), BERGEN, ("home-care", "ehr")),
    (event(Category.PATIENT_ADMINISTRATION, kind="adt.admit"), BERGEN, ("ehr",)),
    (event(Category.LABORATORY, kind="lab.result"), BERGEN, ("ehr",)),
])
def test_the_municipality_example_routes_each_category(municipality, ev, enrolment, expected):
    decision = evaluate(municipality.rules, ev, enrolment)
    assert decision is not None
    if expected is None:
        assert decision.action is RouteAction.FILTER
    else:
        assert (decision.action, decision.destinations) == (RouteAction.DELIVER, expected)


def test_another_municipalitys_alarm_matches_no_route_and_is_held(municipality):
    assert evaluate(municipality.rules, event(Category.SAFETY_ALARM, code="3"), OSLO) is None


# --- examples/national.toml: VKP, JFT and PMD for one municipality ----------------------

NATIONAL = ROOT / "examples" / "national.toml"
BERGEN_ORG = "964338531"


@pytest.fixture
def national(tmp_path):
    hub = Hub.build(load_config(NATIONAL), database_url=f"sqlite:///{tmp_path}/hub.db",
                    with_sources=False)
    yield hub
    hub.close()


@pytest.mark.parametrize(("ev", "expected"), [
    (event(Category.SAFETY_ALARM, code="3"), ("vkp", "jft")),
    (event(Category.HOME_FOLLOW_UP, kind="measurement"), ("pmd",)),
    (event(Category.HOME_FOLLOW_UP, code="5.1", severity="high"), ("vkp",)),
    (event(Category.MEDICATION, code="1.7"), ("vkp",)),
    (event(Category.DOOR_LOCK, kind="forced", code="6"), ("vkp",)),
    (event(Category.SAFETY_ALARM, kind="receipt_overdue", code="3"), ("alerts",)),
])
def test_the_national_example_routes_each_kind(national, ev, expected):
    decision = evaluate(national.rules, ev, BERGEN)
    assert decision is not None
    assert (decision.action, decision.destinations) == (RouteAction.DELIVER, expected)


def test_the_national_example_needs_its_key_files(national):
    """Every destination's keys validate; building them reads the private keys, which
    are not on this machine: the error names the key and the file."""
    with pytest.raises(ConfigError, match=r"auth\.helseid-4601(-bearer)?\.private_key_file: "
                       r"cannot read /etc/tryggbro/keys/helseid-4601\.pem"):
        national.build_destinations()


async def test_the_national_example_delivers_through_helseid_to_vkp_and_jft(tmp_path, rsa_key):
    """The example as shipped, with only its hosts and key path pointed at the local
    HelseID, VKP and JFT peers: an alarm reaches VKP (Bearer; enriched from VKP's
    Patient) and JFT (DPoP; registered, awaiting journaling) with the one client."""
    from tests.integration.helpers import PATIENTS, alarm_event, body, enrol
    from tests.integration.running import running, wait_until
    from tests.integration.test_auth import public_jwk, write_pem
    from tests.peers._national import HelseIdVerifier
    from tests.peers.helseid import AuthorizationServer
    from tests.peers.jft import ORGNR_PARENT, JftPeer
    from tests.peers.vkp import VkpPeer

    key = write_pem(rsa_key, tmp_path / "key.pem")
    text = NATIONAL.read_text()
    with AuthorizationServer(require_nonce=True) as sts:
        vkp_id = "Tryggbro_Bergen"
        # One client (DPoP allowed, not required), with the scopes of all three services.
        sts.register_client("00000000-0000-0000-0000-000000004601", public_jwk(rsa_key),
                            {*DEFAULT_SCOPES, "nhn:jft/api", "nhn:pmd/api"}, dpop=False,
                            claims={**VkpPeer.client_claims(vkp_id), ORGNR_PARENT: BERGEN_ORG})
        with VkpPeer(HelseIdVerifier(sts.verifier(require_dpop=False))) as vkp, \
                JftPeer(HelseIdVerifier(sts.verifier(require_nonce=True))) as jft:
            vkp.add_municipality(BERGEN_ORG, active_service={PATIENTS[0]})
            vkp.allow(vkp_id, BERGEN_ORG)
            vkp.municipalities[BERGEN_ORG].patients[PATIENTS[0]] = {
                "resourceType": "Patient", "id": "p1", "extension": [
                    {"url": "http://ehelse.no/fhir/StructureDefinition/vkp-sone-v090",
                     "valueString": "Sone Årstad"}]}
            for old, new in [
                ("https://helseid-sts.test.nhn.no", sts.issuer),
                ("https://api.test.vkpnorge.no/epj/r4", f"{vkp.url}/epj/r4"),
                ("https://api.write.jft.test.nhn.no", jft.url),
                ("/etc/tryggbro/keys/helseid-4601.pem", str(key)),
                ("/var/lib/tryggbro", str(tmp_path)),
                ('mappings_dir = "../mappings"', f'mappings_dir = "{ROOT / "mappings"}"'),
                ("status_poll_seconds = 60", "status_poll_seconds = 0.2"),
            ]:
                assert old in text, old
                text = text.replace(old, new)
            path = tmp_path / "national.toml"
            path.write_text(text)
            hub = Hub.build(load_config(path), database_url=f"sqlite:///{tmp_path}/e2e.db",
                            with_sources=False)
            enrol(hub, "TA-1", PATIENTS[0], municipality="4601")
            try:
                async with running(hub):
                    raw = RawMessage("alarmplatform", "ev-1", "application/json",
                                     body(alarm_event("ev-1", "A-1", "TA-1")),
                                     datetime.now(UTC))
                    message = (await hub.intake.submit(raw)).id

                    def states() -> dict[str, tuple[str, str | None]]:
                        return {d["destination"]: (d["state"], d["transport_state"])
                                for d in hub.repo.message_trace(message)["deliveries"]}

                    await wait_until(lambda: states() == {
                        "vkp": ("delivered", None),
                        "jft": ("awaiting_receipt", "registered")}, what="VKP and JFT")
            finally:
                hub.close()
        (issue,) = vkp.resources("DetectedIssue")
        assert "Sone (zone): Sone Årstad" in issue.resource["detail"]
        (event_at_jft,) = jft.stored()
        assert event_at_jft.orgnr_parent == BERGEN_ORG
        # One token each: JFT's, VKP's for writing and VKP's for processing's Patient
        # search (processing builds its own client: it may run in a process of its own).
        tokens = [r for r in sts.token_requests if r.error != "use_dpop_nonce"]
        assert [r.error for r in tokens] == [None, None, None]
        assert sorted(r.dpop for r in tokens) == [False, False, True]  # VKP Bearer, JFT DPoP
