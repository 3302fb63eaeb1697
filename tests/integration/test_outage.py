"""Outage: the EHR is unreachable while events arrive; deliveries retry and none is
given up; when it is back, everything is delivered and nothing is duplicated."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.helpers import PATIENTS, alarm_event, body, build_hub, enrol
from tests.integration.running import running, wait_until
from tests.peers.faultproxy import FaultProxy

pytestmark = [pytest.mark.peer, pytest.mark.slow]
ALARM_SYSTEM = "urn:tryggbro:alarm:alarmplatform"


async def test_ehr_down_then_back(tmp_path, db_url, medplum):
    with FaultProxy("127.0.0.1", medplum.port, mode="refuse") as proxy:
        hub = build_hub(tmp_path, db_url, {"ehr": {
            "type": "fhir-rest", "base_url": f"{proxy.url}/fhir/R4", "timeout_seconds": 1,
            "concurrency": 4}})
        devices = [f"TA-OUT-{i}" for i in range(4)]
        for device, patient in zip(devices, PATIENTS, strict=False):
            enrol(hub, device, patient)
        run = uuid.uuid4().hex[:8]
        alarms = [f"ALM-{run}-{i}" for i in range(12)]
        try:
            async with running(hub):
                for i, alarm in enumerate(alarms):
                    event = alarm_event(f"e-{alarm}", alarm, devices[i % 4])
                    result = await hub.intake.submit(raw(event))
                    assert not result.duplicate

                def all_retrying():
                    status = hub.repo.status()
                    per = status.deliveries.get("ehr", {})
                    return sum(per.values()) == 12 and not per.get("dead") and \
                        not per.get("delivered")

                await wait_until(all_retrying, what="12 deliveries retrying")
                proxy.set_mode("reset")  # connections cut mid-way: outcome unknown
                await wait_until(lambda: proxy.connections >= 3, what="reset connections")
                proxy.set_mode("blackhole")  # requests time out: outcome unknown
                await wait_until(lambda: proxy.connections >= 6, what="timed-out attempts")
                assert not hub.repo.status().deliveries["ehr"].get("dead")
                assert hub.repo.status().oldest_pending_seconds["ehr"] > 0
                proxy.set_mode("pass")
                await wait_until(lambda: hub.repo.status().deliveries["ehr"] ==
                                 {"delivered": 12}, timeout=30, what="all delivered")
        finally:
            hub.close()
    for alarm in alarms:
        found = medplum.search("DetectedIssue", identifier=f"{ALARM_SYSTEM}|{alarm}")
        assert len(found) == 1, alarm


def raw(event):
    from datetime import UTC, datetime

    from hub.domain.model import RawMessage

    return RawMessage("alarmplatform", event["eventId"], "application/json", body(event),
                      datetime.now(UTC))
