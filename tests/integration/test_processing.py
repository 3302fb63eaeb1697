"""Processing: a plugin failure fails only its message; nothing is dropped silently."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from hub import hookimpl
from hub.domain.model import Enrolment, PersonId, RawMessage
from hub.domain.privacy import FNR_SYSTEM
from hub.plugins import PluginHost
from hub.runtime import Hub
from tests.integration.helpers import (
    PATIENTS,
    alarm_event,
    body,
    config_dict,
    enrol,
    make_config,
)


class Exploding:
    """Fails mapping for one device, as a buggy vendor plugin might, leaking an FNR."""

    @hookimpl
    def hub_map_event(self, event, context):
        if event.device.id == "TA-BUG":
            raise RuntimeError(f"boom for patient {context.enrolment.patient.value}")
        return None


class AsyncEnricher:
    """Returns an awaitable, as a plugin that looks the device up over HTTP would."""

    @hookimpl
    def hub_enrich_event(self, event, context):
        async def lookup():
            await asyncio.sleep(0)
            if event.device.id == "TA-REMOTE":
                return Enrolment(event.source, event.device.id,
                                 PersonId(FNR_SYSTEM, PATIENTS[2]), "4601")
            return None
        return lookup()


@pytest.fixture
def hub(tmp_path, db_url):
    plugins = PluginHost()
    plugins.load_entry_points()
    plugins.register(Exploding(), "exploding")
    plugins.register(AsyncEnricher(), "async-enricher")
    data = config_dict(db_url, {"files": {"type": "folder", "path": str(tmp_path / "o")}})
    data["routes"].insert(0, {"name": "nothing-for-municipality-9999",
                              "match": {"municipalities": ["9999"]}, "action": "filter"})
    hub = Hub.build(make_config(tmp_path, data), plugins=plugins)
    enrol(hub, "TA-1", PATIENTS[0])
    enrol(hub, "TA-BUG", PATIENTS[1])
    yield hub
    hub.close()


def ingest(hub, *events):
    return [hub.intake.submit_sync(RawMessage("alarmplatform", e["eventId"], "application/json",
                                              body(e), datetime.now(UTC))).id for e in events]


def state(hub, message_id):
    trace = hub.repo.message_trace(message_id)
    return trace["state"], trace["reason"]


def test_plugin_exception_fails_only_its_message_and_keeps_it(hub):
    good, bad, good2 = ingest(hub, alarm_event("e1", "A1", "TA-1"),
                              alarm_event("e2", "A2", "TA-BUG"),
                              alarm_event("e3", "A3", "TA-1"))
    assert hub.processor().run_batch() == (3, 2)
    assert state(hub, good)[0] == state(hub, good2)[0] == "processed"
    failed, reason = state(hub, bad)
    assert failed == "failed"
    assert reason.startswith("map: RuntimeError: boom for patient fnr#")
    assert PATIENTS[1] not in reason  # the stored reason is redacted
    hub.plugins.unregister("exploding")  # "the fix is deployed"
    assert hub.repo.reprocess(bad) == "queued"
    hub.processor().run_batch()
    assert state(hub, bad) == ("processed", None)


def test_awaitable_hook_results_are_resolved(hub):
    (message_id,) = ingest(hub, alarm_event("e1", "A1", "TA-REMOTE"))
    hub.processor().run_batch()
    trace = hub.repo.message_trace(message_id)
    assert trace["state"] == "processed"
    (payload,) = [p for _, p in hub.repo.event_payloads(message_id)]
    assert PATIENTS[2] in payload


def test_unenrolled_device_is_held_and_reruns_after_enrolment(hub):
    (message_id,) = ingest(hub, alarm_event("e1", "A1", "TA-NEW"))
    hub.processor().run_batch()
    assert state(hub, message_id)[0] == "unmatched"
    enrol(hub, "TA-NEW", PATIENTS[3])
    assert hub.repo.requeue_unmatched("alarmplatform") == 1
    hub.processor().run_batch()
    assert state(hub, message_id)[0] == "processed"


def test_filtered_by_a_named_rule_and_no_route_fails(tmp_path, db_url, hub):
    enrol(hub, "TA-9999", PATIENTS[4], municipality="9999")
    heartbeat = {"eventId": "hb", "type": "device.heartbeat",
                 "occurredAt": "2026-11-20T03:00:00+01:00", "device": {"id": "TA-1"}}
    hb, far = ingest(hub, heartbeat, alarm_event("e2", "A2", "TA-9999"))
    hub.processor().run_batch()
    assert state(hub, hb) == ("filtered", "filtered by device-health")
    assert state(hub, far) == ("filtered", "filtered by nothing-for-municipality-9999")

    data = config_dict(db_url, {"files": {"type": "folder", "path": str(tmp_path / "o")}},
                       routes=[{"name": "only-tests", "match": {"kinds": ["device.test"]},
                                "action": "filter"}])
    strict = Hub.build(make_config(tmp_path, data))
    try:
        (msg,) = [strict.intake.submit_sync(RawMessage(
            "alarmplatform", "e3", "application/json",
            body(alarm_event("e3", "A3", "TA-1")), datetime.now(UTC))).id]
        strict.processor().run_batch()
        failed, reason = state(strict, msg)
        assert failed == "failed"
        assert reason.startswith("route: no route matches kind=alarm.raised "
                                 "category=safety_alarm code=3")
    finally:
        strict.close()


def test_older_snapshot_in_the_same_batch_is_superseded(hub):
    newer = alarm_event("e2", "A1", "TA-1", kind="alarm.acknowledged", minute=10,
                        steps=[("reported", 0), ("acknowledged", 10)])
    older = alarm_event("e1", "A1", "TA-1", minute=0)
    new_id, old_id = ingest(hub, newer, older)
    hub.processor().run_batch()
    assert state(hub, new_id)[0] == "processed"
    assert state(hub, old_id) == ("filtered", "filtered by superseded-by-newer-snapshot")
