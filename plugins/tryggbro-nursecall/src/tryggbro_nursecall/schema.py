"""The webhook payload as the nurse-call system sends it (see README.md).

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


class Presence(Model):
    staff_id: str | None = Field(None, alias="staffId", max_length=128)
    at: AwareDatetime


class Call(Model):
    id: str = Field(min_length=1, max_length=128)
    call_type: str = Field(alias="callType", min_length=1, max_length=64)
    raised_at: AwareDatetime = Field(alias="raisedAt")
    device: Device
    room: str | None = Field(None, max_length=200)
    answered_via: str | None = Field(None, alias="answeredVia", max_length=64)
    presence: list[Presence] = Field(default_factory=list, max_length=500)
    cancelled_at: AwareDatetime | None = Field(None, alias="cancelledAt")


EventType = Literal["call.raised", "call.presence", "call.cancelled", "device.heartbeat"]


class Webhook(Model):
    event_id: str = Field(alias="eventId", min_length=1, max_length=255)
    type: EventType
    occurred_at: AwareDatetime = Field(alias="occurredAt")
    call: Call | None = None
    device: Device | None = None

    @model_validator(mode="after")
    def _payload_matches_type(self) -> Webhook:
        if self.type.startswith("call.") and self.call is None:
            raise ValueError(f"type {self.type} needs a 'call' object")
        if self.type == "call.presence" and self.call is not None and not self.call.presence:
            raise ValueError("type call.presence needs at least one call.presence entry")
        if self.type == "device.heartbeat" and self.device is None:
            raise ValueError("type device.heartbeat needs a 'device' object")
        return self
