"""Sensor-platform webhook JSON → canonical events. Codes come from mappings/supervision.toml.

An alert (fall, left bed, door opened, camera supervision …) is one digital-supervision
case: every event about it carries the whole alert as it stands (a snapshot), and the hub
maps it to DetectedIssue (vkp-alert-code 4.x) + vkp-digital-Encounter (class VR) + a
Composition once the log has entries. A planned round that found nothing is an Encounter
without a DetectedIssue (no code), as the VKP IG's "report digital supervision".
"""

from __future__ import annotations

from typing import Any

from hub.adapters import json_event_id, validate_payload
from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import (
    AlarmDetails,
    AlarmStatus,
    Category,
    DeviceRef,
    EncounterReason,
    Event,
    Priority,
    StoredMessage,
    TimelineEntry,
)
from hub.jsonsafe import loads_strict
from tryggbro_supervision.schema import Alert, Device, Webhook

TABLE = "supervision"
ALERT_CODE = "vkp-alert-code"
HEARTBEAT = "heartbeat"
_STATUS = {
    "alert.raised": AlarmStatus.RAISED,
    "alert.acknowledged": AlarmStatus.IN_PROGRESS,
    "alert.closed": AlarmStatus.CLOSED,
    "supervision.completed": AlarmStatus.CLOSED,
}
_REASON = {"event": EncounterReason.EVENT_BASED, "planned": EncounterReason.PLANNED}
CLOSED_STEP = "3"  # vkp-composition-event: hendelse kvittert
ANONYMISED_IMAGE, IMAGE = "0", "1"  # vkp-encounter-mode


class SupervisionAdapter:
    # An alarm source: processing takes its messages ahead of other traffic.
    intake_priority = Priority.ALARM

    def __init__(self, setup: AdapterSetup) -> None:
        table = setup.mappings.table(TABLE)
        self.source = setup.source
        self.event_types = table.section("event_types")
        self.planned_types = table.section("planned_types")
        self.log_actions = table.section("log_actions")
        self.methods = table.section("look_in_methods")
        self.severities = table.section("severities")
        self.alert_codes = setup.mappings.codesystem(ALERT_CODE)

    def intake_key(self, request: IntakeRequest) -> str | None:
        return json_event_id(request.body)

    def parse(self, message: StoredMessage) -> list[Event]:
        data: Any = loads_strict(message.body)
        hook = validate_payload(Webhook, data)
        if hook.alert is not None:
            return [self._alert_event(hook, hook.alert)]
        assert hook.device is not None
        # Heartbeats say the sensor is alive: device health, never journaled to the EHR.
        return [Event(
            source=self.source, business_key=hook.event_id, kind=HEARTBEAT,
            category=Category.DEVICE_HEALTH, occurred_at=hook.sent_at,
            device=_device(hook.device, None),
        )]

    def code_for(self, alert: Alert) -> str | None:
        """vkp-alert-code 4.x, or None for a planned round that found nothing."""
        if alert.origin == "event":
            return self.event_types.lookup(alert.sensor_type)
        if alert.finding == "none":
            return None
        return self.planned_types.lookup(alert.sensor_type)

    def _alert_event(self, hook: Webhook, alert: Alert) -> Event:
        code = self.code_for(alert)
        log = sorted(alert.log, key=lambda entry: entry.at)
        timeline = tuple(
            TimelineEntry(code=self.log_actions.lookup(e.action), at=e.at, note=e.note)
            for e in log
        )
        status = _STATUS[hook.type]
        closed_at = None
        if status is AlarmStatus.CLOSED:
            closes = [t.at for t in timeline if t.code == CLOSED_STEP]
            closed_at = alert.closed_at or (closes[-1] if closes else hook.sent_at)
        looked_in = [e for e in log if e.method is not None]
        mode = None
        if looked_in:
            mode = self.methods.lookup(looked_in[-1].method or "")
        elif alert.camera is not None:
            mode = ANONYMISED_IMAGE if alert.camera.anonymised else IMAGE
        staff = [e.staff_id for e in log if e.staff_id]
        text = None
        if code is not None:
            text = self.alert_codes.display(code)
            if alert.room:
                text += f" – {alert.room}"
        details = AlarmDetails(
            alarm_id=alert.id, status=status, raised_at=alert.detected_at,
            closed_at=closed_at, encounter_mode=mode, timeline=timeline,
            operator_id=staff[-1] if staff else None, trigger_text=text,
            reason=_REASON[alert.origin], digital=True,
        )
        return Event(
            source=self.source, business_key=alert.id, kind=hook.type,
            category=Category.SUPERVISION, occurred_at=hook.sent_at,
            device=_device(alert.device, alert.room), code=code,
            severity=self.severities.get(alert.sensor_type) if code else None,
            snapshot=True, alarm=details,
        )


def _device(device: Device, room: str | None) -> DeviceRef:
    return DeviceRef(id=device.id, model=device.model, type=device.type, location=room)
