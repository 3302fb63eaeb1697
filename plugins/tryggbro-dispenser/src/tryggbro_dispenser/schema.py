"""The webhook payload as the dispenser platform sends it (see README.md).

Unknown fields are ignored, so the vendor can add fields without breaking the gateway;
missing or malformed known fields fail the message with the exact path. Which objects an
event type needs (`dose` for a dispense) is checked by the adapter, which knows from
mappings/dispenser.toml what each type is.
"""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Device(Model):
    serial_number: str = Field(alias="serialNumber", min_length=1, max_length=128)
    model: str | None = Field(None, max_length=200)
    type: str | None = Field(None, max_length=100)
    location: str | None = Field(None, max_length=200)


class Staff(Model):
    """The health worker who assisted, by HPR number (Helsepersonellregisteret)."""

    hpr_number: str = Field(alias="hprNumber", pattern=r"^\d{6,9}$")
    name: str | None = Field(None, max_length=200)


class Dose(Model):
    dose_id: str = Field(alias="doseId", min_length=1, max_length=255)
    planned_at: AwareDatetime | None = Field(None, alias="plannedAt")
    handed_over_at: AwareDatetime | None = Field(None, alias="handedOverAt")
    medication_text: str | None = Field(None, alias="medicationText", max_length=4000)
    instruction_text: str | None = Field(None, alias="instructionText", max_length=4000)
    assisted_by: Staff | None = Field(None, alias="assistedBy")


class Fault(Model):
    code: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = Field(None, max_length=500)


class Webhook(Model):
    event_id: str = Field(alias="eventId", min_length=1, max_length=255)
    event_type: str = Field(alias="eventType", min_length=1, max_length=64)
    timestamp: AwareDatetime
    device: Device
    dose: Dose | None = None
    fault: Fault | None = None
