"""The GPS platform's webhook payload as it sends it (see README.md).

Unknown fields are ignored, so the vendor can add fields without breaking the gateway;
missing or malformed known fields fail the message with the exact path. Error texts
name the field and the rule, never the value: a coordinate is personal data.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Device(Model):
    id: str = Field(min_length=1, max_length=128)
    model: str | None = Field(None, max_length=200)
    type: str | None = Field(None, max_length=100)


class Position(Model):
    """WGS84. Strict numbers: a coordinate sent as a string or a boolean is refused."""

    lat: float = Field(strict=True, ge=-90, le=90)
    lon: float = Field(strict=True, ge=-180, le=180)
    accuracy: float | None = Field(None, strict=True, ge=0, le=100_000)  # metres
    time: AwareDatetime | None = None  # when the fix was taken


class Geofence(Model):
    id: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=200)


class ResponseCentre(Model):
    org_number: str = Field(alias="orgNumber", pattern=r"^\d{9}$")
    name: str | None = Field(None, max_length=200)


class Alarm(Model):
    id: str = Field(min_length=1, max_length=128)
    trigger: str = Field(min_length=1, max_length=64)
    priority: str | None = Field(None, max_length=32)
    raised_at: AwareDatetime = Field(alias="raisedAt")
    closed_at: AwareDatetime | None = Field(None, alias="closedAt")
    call_out: bool = Field(False, alias="callOut")  # staff went out to the person
    operator_id: str | None = Field(None, alias="operatorId", max_length=128)
    geofence: Geofence | None = None
    response_centre: ResponseCentre | None = Field(None, alias="responseCentre")
    portal_url: str | None = Field(None, alias="portalUrl", max_length=2000)


class Battery(Model):
    level: int | None = Field(None, ge=0, le=100)  # percent


ALARM_TYPES = frozenset({"geofence_exit", "sos", "alarm_handled", "alarm_closed"})
EventType = Literal["geofence_exit", "sos", "alarm_handled", "alarm_closed",
                    "position_update", "heartbeat", "low_battery"]


class Webhook(Model):
    event_id: str = Field(alias="eventId", min_length=1, max_length=255)
    type: EventType = Field(alias="eventType")
    occurred_at: AwareDatetime = Field(alias="occurredAt")
    device: Device
    alarm: Alarm | None = None
    position: Position | None = None
    battery: Battery | None = None

    @model_validator(mode="after")
    def _payload_matches_type(self) -> Webhook:
        if self.type in ALARM_TYPES and self.alarm is None:
            raise ValueError(f"eventType {self.type} needs an 'alarm' object")
        if self.type == "position_update" and self.position is None:
            raise ValueError("eventType position_update needs a 'position' object")
        return self
