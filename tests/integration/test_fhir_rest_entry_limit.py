"""Merged transactions against the real Medplum engine, which refuses a transaction with
more than 50 updates: with the default `max_entries_per_request` no merged request is
refused; with a limit above the server's, the refusal is logged, counted and survived
(every event is sent alone and lands exactly once)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from hub.destinations.fhir_rest import FhirRestDestination
from hub.domain.model import RawMessage
from hub.runtime import Hub
from tests.integration.helpers import alarm_event, body, build_hub, enrol, unique_patient
from tests.integration.running import wait_until

pytestmark = [pytest.mark.peer, pytest.mark.slow]
ALARM_SYSTEM = "urn:tryggbro:alarm:alarmplatform"
EVENTS = 40  # of 40 patients: one claim round holds them all (batch_size 64)


def refused_posts(answers: dict[str, int]) -> int:
    return sum(n for key, n in answers.items()
               if key.startswith("POST 4") or key.startswith("POST 5"))


async def run_stage(hub: Hub, stage: str, done: Any, what: str) -> None:
    """Run one stage of `hub` in this loop until `done()` holds."""
    task = asyncio.create_task(hub.run(serve_http=False, handle_signals=False,
                                       stages={stage}))
    try:
        await wait_until(done, timeout=60, what=what)
    finally:
        hub.stop()
        await asyncio.wait_for(task, timeout=30)


async def deliver_alarms(tmp_path, db_url, medplum, **destination: Any
                         ) -> tuple[Hub, list[int], dict[str, int],
                                    list[MutableMapping[str, Any]]]:
    """EVENTS alarms of as many patients, all processed first, then dispatched together
    (so the grouping, not the arrival timing, decides the requests). Returns the
    dispatching hub, the message ids, the server's answers during dispatch and the logs."""
    settings = {"type": "fhir-rest", "base_url": medplum.base_url, "concurrency": 4,
                **destination}
    run = uuid.uuid4().hex[:8]
    alarms = [f"ALM-{run}-{i}" for i in range(EVENTS)]
    first = build_hub(tmp_path, db_url, {"ehr": settings})
    messages = []
    try:
        for i, alarm in enumerate(alarms):
            enrol(first, f"TA-{run}-{i}", unique_patient())
            event = alarm_event(f"e-{alarm}", alarm, f"TA-{run}-{i}")
            messages.append(first.intake.submit_sync(RawMessage("alarmplatform", event["eventId"],
                                                "application/json", body(event),
                                                datetime.now(UTC))).id)
        await run_stage(first, "processing", lambda: first.repo.status().deliveries.get(
            "ehr", {}).get("pending") == EVENTS, f"{EVENTS} deliveries planned")
    finally:
        first.close()
    hub = build_hub(tmp_path, db_url, {"ehr": settings})
    before = medplum.answers()
    with structlog.testing.capture_logs() as logs:
        await run_stage(hub, "dispatch", lambda: hub.repo.status().deliveries.get("ehr") ==
                        {"delivered": EVENTS}, f"{EVENTS} delivered")
    after = medplum.answers()
    during: dict[str, int] = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    for alarm in alarms:  # exactly once in the EHR
        found = medplum.search("DetectedIssue", identifier=f"{ALARM_SYSTEM}|{alarm}")
        assert len(found) == 1, alarm
    return hub, messages, during, logs


async def test_default_limit_keeps_merged_alarms_under_medplums(tmp_path, db_url, medplum):
    hub, _, answers, logs = await deliver_alarms(tmp_path, db_url, medplum)
    try:
        destination = hub.destinations["ehr"]
        assert isinstance(destination, FhirRestDestination)
        assert destination.merged_sent >= 1  # alarms did share requests
        assert destination.merged_refused == 0
        assert refused_posts(answers) == 0, answers
        # 40 alarms of 3 entries in requests of at most 50 entries: 16 + 16 + 8
        assert answers.get("POST 200") == 3, answers
        assert not [e for e in logs if e["event"].startswith("merged transaction refused")]
    finally:
        hub.close()


async def test_limit_above_medplums_falls_back_logs_and_counts(tmp_path, db_url, medplum):
    hub, messages, answers, logs = await deliver_alarms(tmp_path, db_url, medplum,
                                                        max_entries_per_request=150)
    try:
        destination = hub.destinations["ehr"]
        assert isinstance(destination, FhirRestDestination)
        refusals = [e for e in logs if e["event"].startswith("merged transaction refused")]
        assert refusals, logs
        assert destination.merged_refused == len(refusals) == refused_posts(answers)
        first = refusals[0]
        assert first["log_level"] == "warning"
        assert first["destination"] == "ehr"
        assert first["events"] == 25  # events_per_request bounds the first group
        assert first["entries"] == 75
        assert first["status"] // 100 == 4
        assert "more update operations than allowed" in first["reason"]
        assert len(first["reason"]) <= 200
        assert first["delivered_alone"] == 25
        assert first["shrunk_entry_limit"] == 37  # later groups stay under half
        # every delivery took one attempt: the fallback is within it, nothing resent
        for message_id in messages:
            (delivery,) = hub.repo.message_trace(message_id)["deliveries"]
            assert (delivery["state"], delivery["attempts"]) == ("delivered", 1)
    finally:
        hub.close()
