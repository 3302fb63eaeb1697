"""Stored SOS Access v4 documents → canonical events. Codes from mappings/sos-access.toml.

- `pingrequest` → a `Category.DEVICE_HEALTH` event of kind `heartbeat` (never journaled
  to the EHR: routing filters device health; it feeds last-seen / no-contact tracking).
- `alarmrequest` with `alarmtype` AL (or none) → a `Category.SAFETY_ALARM` event, code from
  `[event_codes]` (default "3" trygghetsalarm), unless `[device_health_codes]` names the
  event code (periodic tests, battery and power trouble): then device health.
  An **unknown event code is treated as a safety alarm** (code "3") whose detail names the
  unknown code: an alarm too many is better than one held back at night.
- `alarmrequest` with `alarmtype` RE (restore: the condition was reset at the device) →
  device health of kind `restore`: it does not close the response centre's case.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import (
    AlarmDetails,
    AlarmStatus,
    Category,
    DeviceRef,
    Event,
    Position,
    Priority,
    StoredMessage,
)
from hub.errors import ConfigError, InputError
from tryggbro_sosaccess.protocol import (
    ALARM,
    PING,
    Document,
    ProtocolError,
    dedup_key,
    parse_document,
    parse_time,
)

TABLE = "sos-access"
HEARTBEAT = "heartbeat"
RESTORE = "restore"
_SEVERITIES = ("high", "moderate", "low")
_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,25}$")
# WGS84 "NDDMMmmEDDDMMmm": degrees, minutes and hundredths of minutes.
_WGS84 = re.compile(r"^([NS])(\d{2})(\d{2})(\d{2})([EW])(\d{3})(\d{2})(\d{2})$")


def problem(exc: ProtocolError) -> InputError:
    slug = "malformed-xml" if exc.status in (2, 100) else "invalid-sos-access-document"
    return InputError(slug, f"SOS Access status {int(exc.status)}: {exc.info}")


class SosAccessAdapter:
    # An alarm source: processing takes its messages ahead of other traffic.
    intake_priority = Priority.ALARM

    def __init__(self, setup: AdapterSetup) -> None:
        table = setup.mappings.table(TABLE)
        self.source = setup.source
        self.codes = table.section("event_codes")
        self.texts = table.section("event_texts")
        self.health = table.section("device_health_codes")
        severity = table.settings.get("severity", "high")
        if severity not in _SEVERITIES:
            raise ConfigError(f"{table.file}: severity must be one of {', '.join(_SEVERITIES)} "
                              f"(got {severity!r})")
        self.severity = str(severity)
        zone = str(setup.options.get("timezone", "Europe/Oslo"))
        try:
            self.zone = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"options.timezone: unknown time zone {zone!r}") from None

    def intake_key(self, request: IntakeRequest) -> str | None:
        try:
            doc = parse_document(request.body)
        except ProtocolError as exc:
            raise problem(exc) from None
        if doc.kind not in (ALARM, PING):
            raise InputError("unsupported-document",
                             f"<{doc.kind}> is answered by the receiver, not stored")
        return dedup_key(doc, request.body)

    def parse(self, message: StoredMessage) -> list[Event]:
        try:
            doc = parse_document(message.body)
        except ProtocolError as exc:
            raise problem(exc) from None
        device = DeviceRef(id=doc.transmitter_code, type=doc.transmitter_type,
                           location=_location(doc))
        if doc.kind == PING:
            return [Event(source=self.source, business_key=message.dedup_key, kind=HEARTBEAT,
                          category=Category.DEVICE_HEALTH, occurred_at=message.received_at,
                          device=device)]
        if doc.kind != ALARM:
            raise InputError("unsupported-document", f"<{doc.kind}> is not an alarm or ping")
        occurred = self._time(doc, message.received_at)
        code = doc.fields["eventcode"]
        if doc.alarm_type == "RE":
            return [Event(source=self.source, business_key=message.dedup_key, kind=RESTORE,
                          category=Category.DEVICE_HEALTH, occurred_at=occurred, device=device,
                          detail=f"Gjenoppretting (restore) av hendelseskode {_shown(code)}")]
        health_kind = self.health.entries.get(code)
        if health_kind is not None:
            return [Event(source=self.source, business_key=message.dedup_key,
                          kind=health_kind, category=Category.DEVICE_HEALTH,
                          occurred_at=occurred, device=device)]
        text = self.texts.entries.get(code)
        if text is None:
            text = f"{self.texts.default or 'Trygghetsalarm'} (ukjent hendelseskode " \
                   f"{_shown(code)})"
        details = AlarmDetails(alarm_id=message.dedup_key, status=AlarmStatus.RAISED,
                               raised_at=occurred, trigger_text=text)
        return [Event(
            source=self.source, business_key=message.dedup_key, kind=f"alarm.{_shown(code)}",
            category=Category.SAFETY_ALARM, occurred_at=occurred, device=device,
            code=self.codes.lookup(code), severity=self.severity, detail=text, alarm=details,
            position=_position(doc.get("pos"), occurred),
        )]

    def _time(self, doc: Document, received_at: datetime) -> datetime:
        stamp = doc.get("transmittertime")
        at = parse_time(stamp) if stamp else None
        if at is None:
            return received_at
        return at if at.tzinfo else at.replace(tzinfo=self.zone)


def _shown(code: str) -> str:
    return code if _SAFE_CODE.match(code) else "(ikke lesbar)"


def _location(doc: Document) -> str | None:
    parts = [p for p in (doc.get("sectiontext"), doc.get("detectortext")) if p]
    return " / ".join(parts) or None


def _position(pos: str | None, at: datetime) -> Position | None:
    """A WGS84 `<pos>`; RT90 grid positions are not converted (None)."""
    m = _WGS84.match(pos or "")
    if m is None:
        return None
    ns, lat_d, lat_m, lat_h, ew, lon_d, lon_m, lon_h = m.groups()
    lat = int(lat_d) + (int(lat_m) + int(lat_h) / 100) / 60
    lon = int(lon_d) + (int(lon_m) + int(lon_h) / 100) / 60
    if lat > 90 or lon > 180:
        return None
    return Position(latitude=round(-lat if ns == "S" else lat, 6),
                    longitude=round(-lon if ew == "W" else lon, 6), at=at.astimezone(UTC))
