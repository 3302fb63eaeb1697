"""End to end: vendor JSON over HTTP into a real `tryggbro serve`, VKP R4 resources out
to the Medplum FHIR engine (validating every resource), readable with the expected
content; the same input again makes no second resource."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.integration.helpers import alarm_event, unique_patient
from tests.integration.serve import cli, new_port, toml_config

pytestmark = [pytest.mark.peer, pytest.mark.slow]
ALARM_SYSTEM = "urn:tryggbro:alarm:alarmplatform"


def wait_delivered(config, expected, timeout=30.0):
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        status = json.loads(cli(config, "status", "--json").stdout)
        if status["deliveries"].get("ehr", {}).get("delivered") == expected and \
                not status["messages"].get("received") and \
                not status["messages"].get("processing"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"not delivered in time: {status}")


def one(medplum, resource_type, **params):
    found = medplum.search(resource_type, **params)
    assert len(found) == 1, f"{resource_type} {params}: {len(found)} resources"
    return found[0]


def test_alarm_lifecycle_lands_in_the_ehr_once(tmp_path, medplum, serve_process):
    port = new_port()
    config = toml_config(tmp_path, port, medplum.base_url)
    patient = unique_patient()
    enrolled = cli(config, "devices", "enrol", "alarmplatform", "TA-E2E", "--type",
                   "safety_alarm", "--patient", patient, "--municipality", "0301", "--consent",
                   "--valid-from", "2020-01-01")
    assert enrolled.returncode == 0, enrolled.stderr
    server = serve_process(config, port, tmp_path / "serve.log")
    alarm_id = f"ALM-{uuid.uuid4().hex[:8]}"
    lifecycle = [
        alarm_event("e1-" + alarm_id, alarm_id, "TA-E2E"),
        alarm_event("e2-" + alarm_id, alarm_id, "TA-E2E", kind="alarm.handled", minute=2,
                    steps=[("reported", 0), ("in_progress", 1), ("call_out_accepted", 2)]),
        alarm_event("e3-" + alarm_id, alarm_id, "TA-E2E", kind="alarm.acknowledged", minute=20,
                    steps=[("reported", 0), ("in_progress", 1), ("call_out_accepted", 2),
                           ("acknowledged", 20)]),
    ]
    server.start()
    try:
        for event in lifecycle:
            status, reply = server.post(event)
            assert (status, reply["duplicate"]) == (202, False)
            wait_delivered(config, lifecycle.index(event) + 1)
        issue = one(medplum, "DetectedIssue", identifier=f"{ALARM_SYSTEM}|{alarm_id}")
        assert issue["status"] == "final"
        assert issue["code"]["coding"][0]["code"] == "3"
        assert issue["patient"]["identifier"] == {"system": "urn:oid:2.16.578.1.12.4.1.4.1",
                                                  "value": patient}
        uuid_identifier = next(i["value"] for i in issue["identifier"]
                               if i["system"] == "urn:ietf:rfc:3986")
        assert uuid_identifier == f"urn:uuid:{issue['id']}"  # not rewritten by the server
        encounters = [e for e in medplum.search("Encounter", _count=1000)
                      if e["subject"]["identifier"]["value"] == patient]
        assert len(encounters) == 1
        encounter = encounters[0]
        assert encounter["status"] == "finished"
        assert encounter["class"]["code"] == "HH"  # the call-out reached the home
        assert encounter["period"]["end"].startswith("2026-11-20T21:20")
        (composition,) = [c for c in medplum.search("Composition", _count=1000)
                          if c["encounter"]["reference"] == f"Encounter/{encounter['id']}"]
        assert composition["status"] == "final"
        assert [e["code"][0]["coding"][0]["code"] for e in composition["event"]] == \
            ["0", "1", "5", "3"]
        # the vendor resends the last event (lost answer): no new message, no new resource
        status, reply = server.post(lifecycle[-1])
        assert (status, reply["duplicate"]) == (202, True)
        # the vendor sends the same state under a new event id: updated, not duplicated
        resent = dict(lifecycle[-1], eventId="e4-" + alarm_id)
        assert server.post(resent)[0] == 202
        wait_delivered(config, 4)
        one(medplum, "DetectedIssue", identifier=f"{ALARM_SYSTEM}|{alarm_id}")
        history = medplum.request("GET", f"/DetectedIssue/{issue['id']}/_history")[2]
        assert len(history["entry"]) == 4  # four updates of one resource
        shown = cli(config, "show", str(reply["id"]))
        assert "delivered (attempts 1" in shown.stdout
        assert patient not in shown.stdout
    finally:
        server.stop()
    log = (tmp_path / "serve.log").read_text()
    assert patient not in log
    assert '"message_id"' in log
