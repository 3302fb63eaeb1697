"""The webhook payload as the sensor platform sends it (see README.md).

Unknown fields are ignored, so the vendor can add fields without breaking the gateway;
missing or malformed known fields fail the message with the exact path.
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


class Camera(Model):
    anonymised: bool


class LogEntry(Model):
    action: str = Field(min_length=1, max_length=64)
    at: AwareDatetime
    staff_id: str | None = Field(None, alias="staffId", max_length=128)
    method: str | None = Field(None, max_length=64)  # how staff looked in (look_in_methods)
    note: str | None = Field(None, max_length=4000)


Origin = Literal["event", "planned"]
Finding = Literal["none", "follow_up"]


class Alert(Model):
    id: str = Field(min_length=1, max_length=128)
    origin: Origin
    sensor_type: str = Field(alias="sensorType", min_length=1, max_length=64)
    detected_at: AwareDatetime = Field(alias="detectedAt")
    device: Device
    room: str | None = Field(None, max_length=200)
    camera: Camera | None = None
    log: list[LogEntry] = Field(default_factory=list, max_length=500)
    closed_at: AwareDatetime | None = Field(None, alias="closedAt")
    finding: Finding | None = None  # planned rounds: did staff find anything to report?

    @model_validator(mode="after")
    def _finding_only_for_planned(self) -> Alert:
        if self.finding is not None and self.origin != "planned":
            raise ValueError("finding: only a planned supervision has a finding")
        return self


EventType = Literal["alert.raised", "alert.acknowledged", "alert.closed",
                    "supervision.completed", "device.heartbeat"]


class Webhook(Model):
    event_id: str = Field(alias="eventId", min_length=1, max_length=255)
    type: EventType
    sent_at: AwareDatetime = Field(alias="sentAt")
    alert: Alert | None = None
    device: Device | None = None

    @model_validator(mode="after")
    def _payload_matches_type(self) -> Webhook:
        if self.type == "device.heartbeat":
            if self.device is None:
                raise ValueError("type device.heartbeat needs a 'device' object")
            return self
        if self.alert is None:
            raise ValueError(f"type {self.type} needs an 'alert' object")
        if self.type == "supervision.completed" and (
                self.alert.origin != "planned" or self.alert.finding is None):
            raise ValueError("type supervision.completed needs alert.origin 'planned' "
                             "and alert.finding")
        return self
