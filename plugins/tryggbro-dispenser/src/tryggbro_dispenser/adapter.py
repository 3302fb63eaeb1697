"""Webhook JSON → canonical events. Codes come from mappings/dispenser.toml.

- a dispense (`[dispensed]`) → an event with `DispenseDetails` (vkp-MedicationDispense);
- a dose not dispensed, a fault or a warning (`[alerts]`) → a plain issue: `code` 1.x,
  `severity` and `detail`, no details (vkp-DetectedIssue);
- a heartbeat or self-test (`[device_health]`) → `Category.DEVICE_HEALTH`, never
  journaled to the EHR.
"""

from __future__ import annotations

from typing import Any

from hub.adapters import json_event_id, validate_payload
from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import (
    Category,
    DeviceRef,
    DispenseDetails,
    Event,
    Performer,
    StoredMessage,
)
from hub.errors import ConfigError, InputError, MappingError
from hub.jsonsafe import loads_strict
from tryggbro_dispenser.schema import Device, Dose, Webhook

TABLE = "dispenser"
HPR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.4"  # HPR-nummer (Helsepersonellregisteret)
ALERT_CODES = "vkp-alert-code"
KIND_DISPENSE = "dispense"
KIND_ISSUE = "issue"


class DispenserAdapter:
    def __init__(self, setup: AdapterSetup) -> None:
        table = setup.mappings.table(TABLE)
        self.source = setup.source
        self.dispensed = table.section("dispensed")
        self.alerts = table.section("alerts")
        self.severities = table.section("alert_severities")
        self.device_health = table.section("device_health")
        self.alert_codes = setup.mappings.codesystem(ALERT_CODES)
        sections = (self.dispensed, self.alerts, self.device_health)
        seen: dict[str, str] = {}
        for section in sections:
            for event_type in section.entries:
                if event_type in seen:
                    raise ConfigError(
                        f"{table.file}: event type {event_type!r} is in both "
                        f"[{seen[event_type]}] and [{section.name}]; it must be in one"
                    )
                seen[event_type] = section.name
        unknown = sorted(k for k in self.severities.entries if k not in self.alert_codes)
        if unknown:
            raise ConfigError(
                f"{table.file}: [alert_severities] keys {unknown} are not in {ALERT_CODES}"
            )
        self.known_types = sorted(seen)

    def intake_key(self, request: IntakeRequest) -> str | None:
        return json_event_id(request.body)

    def parse(self, message: StoredMessage) -> list[Event]:
        data: Any = loads_strict(message.body)
        hook = validate_payload(Webhook, data)
        kind = hook.event_type
        if kind in self.dispensed.entries:
            return [self._dispense(hook, self.dispensed.entries[kind])]
        if kind in self.alerts.entries:
            return [self._issue(hook, self.alerts.entries[kind])]
        if kind in self.device_health.entries:
            return [Event(
                source=self.source, business_key=f"event:{hook.event_id}",
                kind=self.device_health.entries[kind], category=Category.DEVICE_HEALTH,
                occurred_at=hook.timestamp, device=_device(hook.device),
            )]
        raise MappingError(
            f"unknown event type {kind!r}: {TABLE}.toml maps it in none of [dispensed], "
            f"[alerts], [device_health] (known: {', '.join(self.known_types)}); add it to "
            "the table and reprocess the message"
        )

    def _dispense(self, hook: Webhook, category: str) -> Event:
        dose = hook.dose
        if dose is None:
            raise InputError("malformed-payload",
                             f"dose: required for eventType {hook.event_type}")
        if dose.handed_over_at is None:
            raise InputError("malformed-payload",
                             f"dose.handedOverAt: required for eventType {hook.event_type}")
        helper = None
        if dose.assisted_by is not None:
            helper = Performer(HPR_SYSTEM, dose.assisted_by.hpr_number, dose.assisted_by.name)
        details = DispenseDetails(
            dispense_id=dose.dose_id, category=category, handed_over_at=dose.handed_over_at,
            planned_at=dose.planned_at, medication_text=dose.medication_text,
            dosage_text=dose.instruction_text, assisted_by=helper,
        )
        return Event(
            source=self.source, business_key=f"dose:{dose.dose_id}", kind=KIND_DISPENSE,
            category=Category.MEDICATION, occurred_at=hook.timestamp,
            device=_device(hook.device), dispense=details,
        )

    def _issue(self, hook: Webhook, code: str) -> Event:
        # A dose's issue is keyed by the dose and the code, so a resend under a new event
        # id updates the same DetectedIssue; a fault without a dose is its own issue.
        key = f"dose:{hook.dose.dose_id}:{code}" if hook.dose else f"event:{hook.event_id}"
        severity = self.severities.get(code)
        if severity is None:  # the section has a default; a table without one is a bug
            raise MappingError(f"{TABLE}.toml [alert_severities] has no entry for {code!r}")
        return Event(
            source=self.source, business_key=key, kind=KIND_ISSUE,
            category=Category.MEDICATION, occurred_at=hook.timestamp,
            device=_device(hook.device), code=code, severity=severity,
            detail=self._detail(code, hook.dose, hook),
        )

    def _detail(self, code: str, dose: Dose | None, hook: Webhook) -> str:
        """Short coded text for staff: the code's display, the planned dose time, the
        vendor's fault code. Never the vendor's free text (it may name the patient)."""
        text = f"Medisindispenser: {self.alert_codes.display(code)}"
        if dose is not None and dose.planned_at is not None:
            text += f", planlagt dose {dose.planned_at.strftime('%d.%m.%Y %H:%M')}"
        if hook.fault is not None:
            text += f" (feilkode {hook.fault.code})"
        return text


def _device(device: Device) -> DeviceRef:
    return DeviceRef(id=device.serial_number, model=device.model, type=device.type,
                     location=device.location)
