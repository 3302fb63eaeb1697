"""The door-lock system's webhook payload as it sends it (see README.md).

Unknown fields are ignored; missing or malformed known fields fail the message with the
exact path and the rule, never the value (a staff id is personal data).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Lock(Model):
    id: str = Field(min_length=1, max_length=128)
    model: str | None = Field(None, max_length=200)
    location: str | None = Field(None, max_length=200)  # which door: "Hoveddør"


class Staff(Model):
    """Who opened: an HPR number (helsepersonellnummer) or the municipality's employee
    number, as enrolled in the lock system."""

    id: str = Field(min_length=1, max_length=64)
    id_type: Literal["hpr", "employee"] = Field(alias="idType")
    name: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _hpr_is_digits(self) -> Staff:
        if self.id_type == "hpr" and not (self.id.isascii() and self.id.isdigit()
                                          and len(self.id) <= 9):
            raise ValueError("staff.id: an HPR number is 1 to 9 digits")
        return self


class Visit(Model):
    id: str = Field(min_length=1, max_length=128)
    started_at: AwareDatetime = Field(alias="startedAt")
    ended_at: AwareDatetime | None = Field(None, alias="endedAt")


class Webhook(Model):
    event_id: str = Field(alias="eventId", min_length=1, max_length=255)
    type: str = Field(alias="eventType", min_length=1, max_length=64)
    occurred_at: AwareDatetime = Field(alias="occurredAt")
    lock: Lock
    staff: Staff | None = None
    method: str | None = Field(None, max_length=64)
    visit: Visit | None = None
    attempts: int | None = Field(None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _staff_has_visit(self) -> Webhook:
        if self.staff is not None and self.type in ("unlocked", "locked") \
                and self.visit is None:
            raise ValueError(f"eventType {self.type} by staff needs a 'visit' object")
        return self
