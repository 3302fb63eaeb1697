"""DC-09 frame → canonical events. Codes come from mappings/sia-dc09.toml.

- Device id = the DC-09 account (one account is one alarm unit in the home); the zone
  (which pendant or sensor) is in the business key and in `extra`, not in the device id,
  so one enrolment covers every pendant of the unit.
- Each onset (MA, PA, QA, CID 100/101/102/120 with qualifier 1 or 6) is its own alarm
  case: business key `account/zone/family/timestamp/sequence`. DC-09 carries no alarm id,
  and keying on account+zone+family alone would make every later alarm of the same
  pendant overwrite the earlier case's DetectedIssue and Encounter in the EHR.
- A restore (MH, QR, CID qualifier 3) is the unit's "condition cleared" signal, not the
  response centre closing the case (that is the response centre's own report). It is a
  DEVICE_HEALTH event of kind `alarm_restored` (never journaled), `extra` naming the
  family and zone; device-health restores map through [health_kinds] (`power_restored`…).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import (
    AlarmDetails,
    AlarmStatus,
    Category,
    DeviceRef,
    Event,
    Priority,
    StoredMessage,
    TimelineEntry,
)
from hub.errors import ConfigError, InputError
from hub.mappings import MappingTable
from tryggbro_siadc09.content import Record, parse_records
from tryggbro_siadc09.frame import Frame, FrameError, dedup_key, parse_frame

TABLE = "sia-dc09"
CONTENT_TYPE = "application/x-sia-dc09"
RESTORE = ":restore"
ALARM_RESTORED = "alarm_restored"
HEARTBEAT = "heartbeat"
REPORTED = "0"  # vkp-composition-event: hendelse meldt
ALARM_CATEGORIES = {Category.SAFETY_ALARM, Category.SUPERVISION}


class SiaDc09Adapter:
    # An alarm source: processing takes its messages ahead of other traffic.
    intake_priority = Priority.ALARM

    def __init__(self, setup: AdapterSetup) -> None:
        self.source = setup.source
        table = setup.mappings.table(TABLE)
        self.sia_codes = table.section("sia_codes")
        self.cid_codes = table.section("cid_codes")
        self.categories = table.section("categories")
        self.alert_codes = table.section("alert_codes")
        self.texts = table.section("texts")
        self.health_kinds = table.section("health_kinds")
        _check_table(table)

    def intake_key(self, request: IntakeRequest) -> str | None:
        frame = _frame(request.body)
        try:
            parse_records(frame)
            return dedup_key(frame)
        except FrameError as exc:
            raise InputError(f"dc09-{exc.reason}", exc.detail) from None

    def parse(self, message: StoredMessage) -> list[Event]:
        frame = _frame(message.body)
        try:
            records = parse_records(frame)
        except FrameError as exc:
            raise InputError(f"dc09-{exc.reason}", exc.detail) from None
        at = frame.timestamp or message.received_at
        return [self._event(frame, record, at) for record in records]

    def _family(self, record: Record) -> tuple[str, bool]:
        if record.protocol == "null":
            return HEARTBEAT, False
        if record.protocol == "cid":
            return self.cid_codes.lookup(record.code), record.restore
        mapped = self.sia_codes.lookup(record.code)
        return mapped.removesuffix(RESTORE), mapped.endswith(RESTORE)

    def _event(self, frame: Frame, record: Record, at: datetime) -> Event:
        family, restore = self._family(record)
        category = Category(self.categories.lookup(family))
        stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        zone = record.zone or "0"
        key = f"{frame.account}/{zone}/{family}/{stamp}/{frame.header.sequence}"
        extra: dict[str, Any] = {"protocol": record.protocol, "code": record.code,
                                 "zone": record.zone, "area": record.area,
                                 "family": family, "sequence": frame.header.sequence}
        if record.qualifier:
            extra["qualifier"] = record.qualifier
        device = DeviceRef(id=frame.account)
        if category is Category.DEVICE_HEALTH or restore:
            if category is Category.DEVICE_HEALTH:
                kind = self.health_kinds.lookup(family + RESTORE if restore else family)
            else:
                kind = ALARM_RESTORED
            return Event(source=self.source, business_key=key, kind=kind,
                         category=Category.DEVICE_HEALTH, occurred_at=at, device=device,
                         extra=extra)
        code = self.alert_codes.lookup(family)
        text = self.texts.get(family)
        if category is Category.SUPERVISION:
            # A fire or water alarm from a sensor: a plain issue (DetectedIssue), nobody
            # has looked in yet, so there is no Encounter to report.
            return Event(source=self.source, business_key=key, kind=family,
                         category=category, occurred_at=at, device=device, code=code,
                         severity="high", detail=text, extra=extra)
        alarm = AlarmDetails(
            alarm_id=key.replace("/", "-"), status=AlarmStatus.RAISED, raised_at=at,
            timeline=(TimelineEntry(REPORTED, at),), trigger_text=text)
        return Event(source=self.source, business_key=key, kind=family, category=category,
                     occurred_at=at, device=device, code=code, severity="high",
                     snapshot=True, alarm=alarm, extra=extra)


def _frame(body: bytes) -> Frame:
    try:
        frame = parse_frame(body)
    except FrameError as exc:
        raise InputError(f"dc09-{exc.reason}", exc.detail) from None
    if not frame.account:
        raise InputError("dc09-no-account", "the frame has no #account: cannot tell the device")
    return frame


def _check_table(table: MappingTable) -> None:
    """Start-up check: every family the codes name is fully mapped."""
    problems = []
    categories = table.section("categories").entries
    alert_codes = table.section("alert_codes").entries
    kinds = table.section("health_kinds").entries
    named = set(table.section("sia_codes").entries.values())
    named |= set(table.section("cid_codes").entries.values())
    named |= {f + RESTORE for f in table.section("cid_codes").entries.values()}
    named.add(HEARTBEAT)
    for entry in sorted(named):
        family = entry.removesuffix(RESTORE)
        category = categories.get(family)
        if category is None:
            problems.append(f"family {family!r} has no [categories] entry")
        elif Category(category) in ALARM_CATEGORIES:
            if family not in alert_codes:
                problems.append(f"alarm family {family!r} has no [alert_codes] entry")
        elif entry not in kinds and not (entry.endswith(RESTORE) and
                                         entry not in table.section("sia_codes").entries.values()):
            problems.append(f"device-health {entry!r} has no [health_kinds] entry")
    if problems:
        raise ConfigError(f"{table.file}: " + "; ".join(problems))
