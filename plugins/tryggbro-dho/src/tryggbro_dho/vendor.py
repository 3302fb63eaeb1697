"""The DHO vendor's JSON form (adapter `dho-json`, see README.md) → measurement events.

One message is one upload from a patient's DHO kit (a tablet or hub, the enrolled device)
with one or more readings. Kinds and units are translated by mappings/dho.toml, then
converted to canonical UCUM units by mappings/measurements.toml; an unknown kind or unit
fails the message with the reason, it is never converted by guess.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from hub.adapters import validate_payload
from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import (
    Category,
    DeviceRef,
    Event,
    Measurement,
    MeasurementComponent,
    Quantity,
    StoredMessage,
)
from hub.errors import ConfigError, InputError
from hub.jsonsafe import loads_strict
from hub.measurements import MeasurementTable
from tryggbro_dho.common import NOT_A_NUMBER, loads_exact, measured_value

TABLE = "dho"
KIND = "measurement"
CUFF_PULSE_MDC = "149546"  # MDC_PULS_RATE_NON_INV: the pulse a blood-pressure cuff reports


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True,
                              arbitrary_types_allowed=True)


class Station(Model):
    id: str = Field(min_length=1, max_length=128)
    model: str | None = Field(None, max_length=200)


class Reading(Model):
    reading_id: str = Field(alias="readingId", min_length=1, max_length=255)
    kind: str = Field(min_length=1, max_length=64)
    taken_at: AwareDatetime = Field(alias="takenAt")
    unit: str = Field(min_length=1, max_length=32)
    value: Any = None
    systolic: Any = None
    diastolic: Any = None
    pulse: Any = None  # a blood-pressure reading's pulse (bpm), if the cuff reports it
    instrument: str | None = Field(None, max_length=200)
    comment: str | None = Field(None, max_length=4000)


class Upload(Model):
    message_id: str = Field(alias="messageId", min_length=1, max_length=255)
    sent_at: AwareDatetime = Field(alias="sentAt")
    station: Station
    readings: list[Reading] = Field(min_length=1, max_length=500)


class DhoJsonAdapter:
    def __init__(self, setup: AdapterSetup) -> None:
        table = setup.mappings.table(TABLE)
        self.source = setup.source
        self.kinds = table.section("kinds")
        self.units = table.section("units")
        self.measurements: MeasurementTable = setup.mappings.measurements
        self._check_table()

    def _check_table(self) -> None:
        """Every kind names a measurement type, every unit a UCUM code some type accepts."""
        file = self.kinds.file
        for kind, key in self.kinds.entries.items():
            if key not in self.measurements:
                raise ConfigError(f"{file}: [kinds] {kind} = {key!r} is not a measurement type "
                                  "of measurements.toml")
        accepted = {u for t in self.measurements if t.unit
                    for u in (t.unit, *t.units)}
        for alias, ucum in self.units.entries.items():
            if ucum not in accepted:
                raise ConfigError(f"{file}: [units] {alias!r} = {ucum!r} is not a unit any "
                                  "measurement type accepts")

    def intake_key(self, request: IntakeRequest) -> str | None:
        data = loads_strict(request.body)
        if not isinstance(data, dict):
            raise InputError("malformed-payload", "the body must be a JSON object")
        message_id = data.get("messageId")
        if not isinstance(message_id, str) or not message_id:
            raise InputError("malformed-payload", "messageId: required, a non-empty string")
        return message_id

    def parse(self, message: StoredMessage) -> list[Event]:
        upload = validate_payload(Upload, loads_exact(message.body))
        device = DeviceRef(id=upload.station.id, model=upload.station.model)
        events = []
        for i, reading in enumerate(upload.readings):
            events.extend(self._reading(reading, f"readings[{i}]", device))
        return events

    def _event(self, reading: Reading, device: DeviceRef, m: Measurement) -> Event:
        return Event(source=self.source, business_key=m.measurement_id, kind=KIND,
                     category=Category.HOME_FOLLOW_UP, occurred_at=reading.taken_at,
                     device=device, measurement=m)

    def _quantity(self, type_key: str, value: Decimal, unit: str) -> Quantity:
        return self.measurements.type(type_key).to_canonical(value, unit)

    def _reading(self, r: Reading, where: str, device: DeviceRef) -> list[Event]:
        type_key = self.kinds.lookup(r.kind)
        ucum = self.units.lookup(r.unit)
        mtype = self.measurements.type(type_key)
        base = Measurement(measurement_id=r.reading_id, type=type_key, effective_at=r.taken_at,
                           device_display=r.instrument, note=r.comment)
        if not mtype.components:
            value = measured_value(r.value, f"{where}.value")
            m = (replace(base, data_absent=NOT_A_NUMBER) if value is None
                 else replace(base, value=self._quantity(type_key, value, ucum)))
            return [self._event(r, device, m)]
        parts = {"systolic": r.systolic, "diastolic": r.diastolic}
        values = {k: measured_value(v, f"{where}.{k}") for k, v in parts.items()}
        components = tuple(MeasurementComponent(k, self._quantity(k, v, ucum))
                           for k, v in values.items() if v is not None)
        m = (replace(base, data_absent=NOT_A_NUMBER) if len(components) < len(values)
             else replace(base, components=components))
        events = [self._event(r, device, m)]
        if r.pulse is not None:
            pulse = measured_value(r.pulse, f"{where}.pulse")
            pm = Measurement(measurement_id=f"{r.reading_id}#pulse", type="pulse",
                             effective_at=r.taken_at, device_display=r.instrument,
                             mdc_code=CUFF_PULSE_MDC)
            pm = (replace(pm, data_absent=NOT_A_NUMBER) if pulse is None
                  else replace(pm, value=self._quantity("pulse", pulse, "/min")))
            events.append(self._event(r, device, pm))
        return events
