"""The webhook payload as the platform sends it (see README.md).

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
    location: str | None = Field(None, max_length=200)


class TimelineStep(Model):
    step: str = Field(min_length=1, max_length=64)
    at: AwareDatetime
    note: str | None = Field(None, max_length=4000)


class ResponseCentre(Model):
    org_number: str = Field(alias="orgNumber", pattern=r"^\d{9}$")
    name: str | None = Field(None, max_length=200)


class Handling(Model):
    operator_id: str | None = Field(None, alias="operatorId", max_length=128)
    contact: str | None = Field(None, max_length=64)
    timeline: list[TimelineStep] = Field(default_factory=list, max_length=500)
    closed_at: AwareDatetime | None = Field(None, alias="closedAt")


class Alarm(Model):
    id: str = Field(min_length=1, max_length=128)
    trigger: str = Field(min_length=1, max_length=64)
    priority: str | None = Field(None, max_length=32)
    raised_at: AwareDatetime = Field(alias="raisedAt")
    device: Device
    response_centre: ResponseCentre | None = Field(None, alias="responseCentre")
    handling: Handling = Handling()
    portal_url: str | None = Field(None, alias="portalUrl", max_length=2000)


EventType = Literal["alarm.raised", "alarm.handled", "alarm.acknowledged",
                    "device.heartbeat", "device.test"]


class Webhook(Model):
    event_id: str = Field(alias="eventId", min_length=1, max_length=255)
    type: EventType
    occurred_at: AwareDatetime = Field(alias="occurredAt")
    alarm: Alarm | None = None
    device: Device | None = None

    @model_validator(mode="after")
    def _payload_matches_type(self) -> Webhook:
        if self.type.startswith("alarm.") and self.alarm is None:
            raise ValueError(f"type {self.type} needs an 'alarm' object")
        if self.type.startswith("device.") and self.device is None:
            raise ValueError(f"type {self.type} needs a 'device' object")
        return self
