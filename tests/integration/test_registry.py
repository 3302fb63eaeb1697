"""The device registry: enrolments over time with a legal basis, CSV import, last seen,
and the scheduled checks (no contact, missing measurement), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from hub.api.app import create_app
from hub.domain.model import RawMessage
from hub.httpclient import asgi_client
from hub.monitor import MONITOR_SOURCE, Monitor
from hub.store.db import alembic_config, open_database, upgrade
from hub.store.repository import RegistryConflict, Repository
from tests.integration.helpers import (
    OPERATOR_TOKEN,
    PATIENTS,
    VIEWER_TOKEN,
    alarm_event,
    body,
    build_hub,
    enrol,
    enrolment_request,
)

VIEW = {"authorization": f"Bearer {VIEWER_TOKEN}"}
OPERATE = {"authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture
def hub(tmp_path, db_url):
    hub = build_hub(tmp_path, db_url, {"files": {"type": "folder", "path": str(tmp_path / "o")}},
                    routes=[
                        {"name": "device-health", "match": {"categories": ["device_health"]},
                         "action": "filter"},
                        {"name": "everything-else", "match": {}, "destinations": ["files"]},
                    ])
    yield hub
    hub.close()


def ingest(hub, event):
    return hub.intake.submit_sync(RawMessage("alarmplatform", event["eventId"],
                                             "application/json", body(event),
                                             datetime.now(UTC))).id


def state(hub, message_id):
    trace = hub.repo.message_trace(message_id)
    return trace["state"], trace["reason"]


def test_overlapping_enrolments_are_refused_and_ending_one_holds_later_events(hub):
    enrol(hub, "TA-1", PATIENTS[0])
    with pytest.raises(RegistryConflict, match=r"TA-1 is already enrolled \(enrolment 1"):
        enrol(hub, "TA-1", PATIENTS[1], valid_from="2026-01-01T00:00:00+00:00")
    # The device moves to another patient: end the first enrolment, then enrol again.
    assert hub.repo.end_enrolment(1, datetime(2026, 11, 20, 20, tzinfo=UTC)) == "ended"
    assert hub.repo.end_enrolment(1) == "already-ended"
    assert hub.repo.end_enrolment(99) == "not-found"
    message_id = ingest(hub, alarm_event("e1", "A1", "TA-1"))  # at 21:00, after the end
    hub.processor().run_batch()
    found, reason = state(hub, message_id)
    assert found == "unmatched"
    assert "(enrolment ended)" in reason
    enrol(hub, "TA-1", PATIENTS[1], valid_from="2026-11-20T20:00:00+00:00")
    assert hub.repo.requeue_unmatched("alarmplatform") == 1
    hub.processor().run_batch()
    assert state(hub, message_id) == ("processed", None)
    (payload,) = [p for _, p in hub.repo.event_payloads(message_id)]
    assert PATIENTS[1] in payload
    assert PATIENTS[0] not in payload
    history = hub.repo.list_enrolments("alarmplatform", "TA-1")
    assert [(e["id"], e["legal_basis"]) for e in history] == [(1, "consent"), (2, "consent")]
    assert all("patient" not in key or key == "patient_type" for e in history for key in e)


def test_every_message_moves_last_seen_and_silence_raises_no_contact(hub):
    enrol(hub, "TA-1", PATIENTS[0], heartbeat_minutes="60")
    heartbeat = {"eventId": "hb-1", "type": "device.heartbeat",
                 "occurredAt": "2026-11-20T03:00:00+01:00", "device": {"id": "TA-1"}}
    message_id = ingest(hub, heartbeat)
    hub.processor().run_batch()
    assert state(hub, message_id) == ("filtered", "filtered by device-health")
    (device,) = hub.repo.list_devices("alarmplatform")
    seen = device["last_seen_at"]
    assert seen is not None
    assert device["state"] == "enrolled"

    submitted: list[RawMessage] = []

    async def submit(raw: RawMessage):
        submitted.append(raw)
        return hub.intake.submit_sync(raw)

    import asyncio

    early = Monitor(hub.repo, submit, 60, clock=lambda: seen + timedelta(minutes=59))
    assert asyncio.run(early.check_once()) == 0
    late = Monitor(hub.repo, submit, 60, clock=lambda: seen + timedelta(minutes=61))
    assert asyncio.run(late.check_once()) == 1
    assert asyncio.run(late.check_once()) == 0  # alerted once per silence
    (finding,) = submitted
    assert finding.source == MONITOR_SOURCE
    hub.processor().run_batch()
    (msg,) = hub.repo.search_messages(source=MONITOR_SOURCE)
    assert msg["state"] == "processed"
    (payload,) = [json.loads(p) for _, p in hub.repo.event_payloads(msg["id"])]
    (issue,) = [e["resource"] for e in payload["entry"]]
    assert issue["resourceType"] == "DetectedIssue"
    assert issue["code"]["coding"][0]["code"] == "3"
    assert issue["detail"] == ("Ingen kontakt med trygghetsalarmen "
                               "(no contact with the safety alarm)")
    assert hub.repo.list_devices()[0]["no_contact_at"] is not None

    # Heard again: in contact, and a later silence is a new finding.
    ingest(hub, {**heartbeat, "eventId": "hb-2"})
    hub.processor().run_batch()
    assert hub.repo.list_devices()[0]["no_contact_at"] is None


def test_a_missing_dho_measurement_raises_5_3_2_once(hub):
    enrol(hub, "DHO-1", PATIENTS[2], device_type="dho_device", plans="spo2:92..100@24h",
          valid_from="2026-11-01T00:00:00+00:00")
    submitted: list[RawMessage] = []

    async def submit(raw: RawMessage):
        submitted.append(raw)
        return hub.intake.submit_sync(raw)

    import asyncio

    now = datetime(2026, 11, 1, 23, tzinfo=UTC)
    assert asyncio.run(Monitor(hub.repo, submit, 60, clock=lambda: now).check_once()) == 0
    later = now + timedelta(hours=2)
    monitor = Monitor(hub.repo, submit, 60, clock=lambda: later)
    assert asyncio.run(monitor.check_once()) == 1
    assert asyncio.run(monitor.check_once()) == 0
    assert PATIENTS[2] not in submitted[0].dedup_key  # keys are shown in logs
    hub.processor().run_batch()
    (msg,) = hub.repo.search_messages(source=MONITOR_SOURCE)
    (payload,) = [json.loads(p) for _, p in hub.repo.event_payloads(msg["id"])]
    (issue,) = [e["resource"] for e in payload["entry"]]
    assert issue["code"]["coding"][0]["code"] == "5.3.2"
    assert issue["detail"] == "Måling ikke rapportert (measurement not reported): spo2"
    assert issue["patient"]["identifier"]["value"] == PATIENTS[2]


def test_migration_keeps_old_enrolments_but_they_route_nothing_without_a_basis(db_url):
    db = open_database(db_url)
    try:
        cfg = alembic_config()
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")
            conn.commit()
        with db.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO device (source, device_id, patient_system, patient_value, "
                "municipality, valid_from, created_at) VALUES ('alarmplatform', 'TA-OLD', "
                f"'urn:oid:2.16.578.1.12.4.1.4.1', '{PATIENTS[0]}', '0301', "
                "'2020-01-01 00:00:00', '2020-01-01 00:00:00')"))
        upgrade(db)
        repo = Repository(db)
        (device,) = repo.list_devices()
        assert (device["device_id"], device["state"]) == ("TA-OLD", "no legal basis")
        assert repo.lookup_device("alarmplatform", "TA-OLD", datetime.now(UTC)) is None
    finally:
        db.dispose()


async def test_admin_api_enrols_imports_lists_and_ends(hub):
    client = asgi_client(create_app(hub))
    try:
        record = {"source": "alarmplatform", "device_id": "TA-9", "device_type": "safety_alarm",
                  "patient": PATIENTS[3], "municipality": "4601", "legal_basis": "vedtak"}
        r = await client.post("/admin/enrolments", json=record, headers=VIEW)
        assert r.status_code == 403
        r = await client.post("/admin/enrolments", json=record, headers=OPERATE)
        assert r.status_code == 422
        assert r.json()["problems"] == [
            "legal_basis_ref: required for a vedtak (the decision's case reference)"]
        r = await client.post("/admin/enrolments", headers=OPERATE,
                              json={**record, "legal_basis_ref": "2026/12"})
        assert r.status_code == 201, r.text
        (first,) = r.json()["enrolled"]

        bad_csv = ("source,device_id,device_type,patient,municipality,legal_basis\n"
                   f"alarmplatform,TA-10,safety_alarm,{PATIENTS[4]},0301,consent\n"
                   "alarmplatform,TA-11,safety_alarm,01819012013,0301,consent\n"
                   f"nowhere,TA-12,safety_alarm,{PATIENTS[5]},0301,consent\n")
        r = await client.post("/admin/enrolments/import", content=bad_csv.encode(),
                              headers={**OPERATE, "content-type": "text/csv"})
        assert r.status_code == 422
        assert r.json()["problems"] == [
            "line 3: patient: FNR is not 11 digits with valid mod-11 check digits",
            "source 'nowhere' is not configured"]
        assert [d["device_id"] for d in (await client.get("/admin/devices",
                                                          headers=VIEW)).json()] == ["TA-9"]
        good_csv = bad_csv.splitlines()[0] + "\n" + bad_csv.splitlines()[1] + "\n"
        r = await client.post("/admin/enrolments/import", content=good_csv.encode(),
                              headers={**OPERATE, "content-type": "text/csv"})
        assert r.status_code == 201, r.text
        devices = (await client.get("/admin/devices", headers=VIEW)).json()
        assert [(d["device_id"], d["state"]) for d in devices] == [("TA-10", "enrolled"),
                                                                   ("TA-9", "enrolled")]
        assert PATIENTS[3] not in r.text + json.dumps(devices)
        r = await client.post(f"/admin/enrolments/{first}/end", headers=OPERATE)
        assert r.json() == {"id": first, "status": "ended"}
        r = await client.post(f"/admin/enrolments/{first}/end", headers=OPERATE)
        assert r.status_code == 409
    finally:
        await client.aclose()


def test_cli_import_is_all_or_nothing(tmp_path):
    from tests.integration.serve import cli as run_cli
    from tests.integration.serve import toml_config

    config = toml_config(tmp_path, 0, "http://127.0.0.1:9/fhir/R4")

    def cli(*args):
        return run_cli(config, *args)

    csv_file = tmp_path / "devices.csv"
    csv_file.write_text(
        "source;device_id;device_type;patient;municipality;legal_basis;legal_basis_ref\n"
        f"alarmplatform;TA-1;safety_alarm;{PATIENTS[0]};0301;consent;\n"
        f"alarmplatform;TA-2;safety_alarm;{PATIENTS[1]};0301;vedtak;\n", encoding="utf-8")
    result = cli("devices", "import", str(csv_file))
    assert result.returncode == 1
    assert "devices.csv: line 3: legal_basis_ref: required for a vedtak" in result.stderr
    assert "1 problem(s); nothing was imported" in result.stderr
    listed = cli("devices", "list", "--json")
    assert json.loads(listed.stdout) == []
    csv_file.write_text(csv_file.read_text().replace("vedtak;\n", "vedtak;2026/9\n"))
    result = cli("devices", "import", str(csv_file))
    assert result.returncode == 0, result.stderr
    assert "enrolled 2 device(s)" in result.stdout
    listed = cli("devices", "list")
    assert "TA-2" in listed.stdout
    assert PATIENTS[1] not in listed.stdout


def test_enrolment_request_helper_matches_the_repository(tmp_path, db_url):
    db = open_database(db_url)
    try:
        upgrade(db)
        ids = Repository(db).enrol([enrolment_request("X-1"), enrolment_request("X-2")])
        assert len(ids) == 2
    finally:
        db.dispose()
