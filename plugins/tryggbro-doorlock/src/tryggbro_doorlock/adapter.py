"""Door-lock webhook JSON → canonical events. Codes come from mappings/doorlock.toml.

- `unlocked` / `locked` by staff: a staff visit (`DoorAccess` with the staff member and
  the visit), kind `unlocked` / `locked`, no code; hub.builtin.access_mapping records it
  as an Encounter. A snapshot of the visit: a late unlock after the lock is superseded.
- `unlocked` / `locked` without staff (the resident, a relative, a mechanical key):
  kind `unlocked.no_staff` / `locked.no_staff`; routes filter it (the resident's own
  comings and goings are not journaled).
- `forced` / `failed_attempts`: an issue, vkp-alert-code `6` → DetectedIssue.
"""

from __future__ import annotations

from typing import Any

from hub.adapters import json_event_id, validate_payload
from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import Category, DeviceRef, DoorAccess, Event, Performer, StoredMessage
from hub.jsonsafe import loads_strict
from tryggbro_doorlock.schema import Staff, Webhook

TABLE = "doorlock"
HPR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.4"  # helsepersonellnummer
STAFF_ID_SYSTEM_PREFIX = "urn:tryggbro:staff:"  # the municipality's employee numbers


class DoorLockAdapter:
    def __init__(self, setup: AdapterSetup) -> None:
        table = setup.mappings.table(TABLE)
        self.source = setup.source
        self.event_types = table.section("event_types")
        self.alert_codes = table.section("alert_codes")
        self.issue_texts = table.section("issue_texts")
        self.severities = table.section("severities")
        self.methods = table.section("methods")

    def intake_key(self, request: IntakeRequest) -> str | None:
        return json_event_id(request.body)

    def parse(self, message: StoredMessage) -> list[Event]:
        data: Any = loads_strict(message.body)
        hook = validate_payload(Webhook, data)
        outcome = self.event_types.lookup(hook.type)
        device = DeviceRef(id=hook.lock.id, model=hook.lock.model, type="Elektronisk dørlås",
                           location=hook.lock.location)
        method = self.methods.get(hook.method) if hook.method else None
        staff = self._staff(hook.staff) if hook.staff else None
        visit = hook.visit
        access = DoorAccess(
            outcome=outcome, staff=staff, method=method,
            visit_id=visit.id if visit else None,
            visit_start=visit.started_at if visit else None,
            visit_end=visit.ended_at if visit else None,
            attempts=hook.attempts,
        )
        code = self.alert_codes.get(outcome)
        if code is not None:
            return [Event(
                source=self.source, business_key=hook.event_id, kind=hook.type,
                category=Category.DOOR_LOCK, occurred_at=hook.occurred_at, device=device,
                code=code, severity=self.severities.lookup(outcome),
                detail=self.issue_texts.lookup(outcome), access=access,
            )]
        if staff is None or visit is None:
            return [Event(
                source=self.source, business_key=hook.event_id,
                kind=f"{outcome}.no_staff", category=Category.DOOR_LOCK,
                occurred_at=hook.occurred_at, device=device, access=access,
            )]
        return [Event(
            source=self.source, business_key=visit.id, kind=outcome,
            category=Category.DOOR_LOCK, occurred_at=hook.occurred_at, device=device,
            snapshot=True, access=access,
        )]

    def _staff(self, staff: Staff) -> Performer:
        system = HPR_SYSTEM if staff.id_type == "hpr" else STAFF_ID_SYSTEM_PREFIX + self.source
        return Performer(system=system, value=staff.id, display=staff.name)
