"""GPS platform webhook JSON → canonical events. Codes come from mappings/location.toml.

- `geofence_exit`, `sos`, `alarm_handled`, `alarm_closed`: one alarm case per vendor alarm
  id (`Category.LOCATION`, vkp-alert-code `2`), a snapshot at each change, with the
  position when the device had a fix. The built-in VKP mapping makes it DetectedIssue +
  Encounter + Location.
- `position_update`: a position outside an alarm (`Category.LOCATION`, kind
  `position_update`, no code). Nothing maps it to FHIR: routes filter it (README.md).
- `heartbeat`, `low_battery`: `Category.DEVICE_HEALTH`; a position they carry is dropped.
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
    Event,
    OrganisationRef,
    Position,
    Priority,
    StoredMessage,
)
from hub.errors import MappingError
from hub.jsonsafe import loads_strict
from tryggbro_location import schema

TABLE = "location"
_STATUS = {
    "geofence_exit": AlarmStatus.RAISED,
    "sos": AlarmStatus.RAISED,
    "alarm_handled": AlarmStatus.IN_PROGRESS,
    "alarm_closed": AlarmStatus.CLOSED,
}


class LocationAdapter:
    # An alarm source: processing takes its messages ahead of other traffic.
    intake_priority = Priority.ALARM

    def __init__(self, setup: AdapterSetup) -> None:
        table = setup.mappings.table(TABLE)
        self.source = setup.source
        self.triggers = table.section("triggers")
        self.trigger_texts = table.section("trigger_texts")
        self.priorities = table.section("priorities")

    def intake_key(self, request: IntakeRequest) -> str | None:
        return json_event_id(request.body)

    def parse(self, message: StoredMessage) -> list[Event]:
        data: Any = loads_strict(message.body)
        hook = validate_payload(schema.Webhook, data)
        device = DeviceRef(id=hook.device.id, model=hook.device.model, type=hook.device.type)
        if hook.alarm is not None:
            return [self._alarm_event(hook, hook.alarm, device)]
        if hook.type == "position_update":
            return [Event(
                source=self.source, business_key=hook.event_id, kind=hook.type,
                category=Category.LOCATION, occurred_at=hook.occurred_at, device=device,
                position=_position(hook.position),
            )]
        # Heartbeats and battery reports feed device-health tracking only; a position they
        # carry is deliberately not kept on the event.
        return [Event(
            source=self.source, business_key=hook.event_id, kind=hook.type,
            category=Category.DEVICE_HEALTH, occurred_at=hook.occurred_at, device=device,
        )]

    def _alarm_event(self, hook: schema.Webhook, alarm: schema.Alarm,
                     device: DeviceRef) -> Event:
        status = _STATUS[hook.type]
        closed_at = None
        if status is AlarmStatus.CLOSED:
            closed_at = alarm.closed_at or hook.occurred_at
        text = self.trigger_texts.lookup(alarm.trigger)
        if alarm.geofence is not None and alarm.geofence.name:
            text += f" «{alarm.geofence.name}»"
        centre = None
        if alarm.response_centre is not None:
            centre = OrganisationRef(alarm.response_centre.org_number, alarm.response_centre.name)
        severity = self.priorities.get(alarm.priority or "")
        if severity is None:
            raise MappingError(f"alarm priority {alarm.priority!r} has no mapping")
        details = AlarmDetails(
            alarm_id=alarm.id, status=status, raised_at=alarm.raised_at, closed_at=closed_at,
            call_out=alarm.call_out, operator_id=alarm.operator_id, response_centre=centre,
            display_url=alarm.portal_url, trigger_text=text,
        )
        return Event(
            source=self.source, business_key=alarm.id, kind=hook.type,
            category=Category.LOCATION, occurred_at=hook.occurred_at, device=device,
            code=self.triggers.lookup(alarm.trigger), severity=severity, snapshot=True,
            alarm=details, position=_position(hook.position),
        )


def _position(position: schema.Position | None) -> Position | None:
    if position is None:
        return None
    return Position(latitude=position.lat, longitude=position.lon,
                    accuracy_m=position.accuracy, at=position.time)
