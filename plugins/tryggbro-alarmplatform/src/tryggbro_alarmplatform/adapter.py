"""Webhook JSON → canonical events. Codes come from mappings/alarmplatform.toml."""

from __future__ import annotations

from typing import Any

from hub.adapters import json_event_id, validate_payload
from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import (
    AlarmDetails,
    AlarmStatus,
    Category,
    DeviceRef,
    Event,
    OrganisationRef,
    Priority,
    StoredMessage,
    TimelineEntry,
)
from hub.errors import MappingError
from hub.jsonsafe import loads_strict
from tryggbro_alarmplatform.schema import Alarm, Device, Webhook

TABLE = "alarmplatform"
_STATUS = {
    "alarm.raised": AlarmStatus.RAISED,
    "alarm.handled": AlarmStatus.IN_PROGRESS,
    "alarm.acknowledged": AlarmStatus.CLOSED,
}
CALL_OUT_ACCEPTED = "5"  # vkp-composition-event: utrykning akseptert
ACKNOWLEDGED = "3"  # vkp-composition-event: hendelse kvittert


class AlarmPlatformAdapter:
    # An alarm source: processing takes its messages ahead of other traffic.
    intake_priority = Priority.ALARM

    def __init__(self, setup: AdapterSetup) -> None:
        table = setup.mappings.table(TABLE)
        self.source = setup.source
        self.triggers = table.section("triggers")
        self.trigger_texts = table.section("trigger_texts")
        self.steps = table.section("timeline_steps")
        self.contact_modes = table.section("contact_modes")
        self.priorities = table.section("priorities")

    def intake_key(self, request: IntakeRequest) -> str | None:
        return json_event_id(request.body)

    def parse(self, message: StoredMessage) -> list[Event]:
        data: Any = loads_strict(message.body)
        hook = validate_payload(Webhook, data)
        if hook.alarm is not None:
            return [self._alarm_event(hook, hook.alarm)]
        assert hook.device is not None
        return [Event(
            source=self.source, business_key=hook.event_id, kind=hook.type,
            category=Category.DEVICE_HEALTH, occurred_at=hook.occurred_at,
            device=_device(hook.device),
        )]

    def _alarm_event(self, hook: Webhook, alarm: Alarm) -> Event:
        timeline = tuple(
            TimelineEntry(code=self.steps.lookup(s.step), at=s.at, note=s.note)
            for s in sorted(alarm.handling.timeline, key=lambda s: s.at)
        )
        status = _STATUS[hook.type]
        closed_at = alarm.handling.closed_at
        if status is AlarmStatus.CLOSED and closed_at is None:
            acks = [t.at for t in timeline if t.code == ACKNOWLEDGED]
            closed_at = acks[-1] if acks else hook.occurred_at
        mode = None
        if alarm.handling.contact:
            mode = self.contact_modes.lookup(alarm.handling.contact)
        centre = None
        if alarm.response_centre is not None:
            centre = OrganisationRef(alarm.response_centre.org_number, alarm.response_centre.name)
        details = AlarmDetails(
            alarm_id=alarm.id, status=status, raised_at=alarm.raised_at,
            closed_at=closed_at if status is AlarmStatus.CLOSED else None,
            encounter_mode=mode,
            call_out=any(t.code == CALL_OUT_ACCEPTED for t in timeline),
            timeline=timeline, operator_id=alarm.handling.operator_id,
            response_centre=centre, display_url=alarm.portal_url,
            trigger_text=self.trigger_texts.get(alarm.trigger),
        )
        severity = self.priorities.get(alarm.priority or "")
        if severity is None:
            raise MappingError(f"alarm priority {alarm.priority!r} has no mapping")
        return Event(
            source=self.source, business_key=alarm.id, kind=hook.type,
            category=Category.SAFETY_ALARM, occurred_at=hook.occurred_at,
            device=_device(alarm.device), code=self.triggers.lookup(alarm.trigger),
            severity=severity, snapshot=True, alarm=details,
        )


def _device(device: Device) -> DeviceRef:
    return DeviceRef(id=device.id, model=device.model, type=device.type,
                     location=device.location)
