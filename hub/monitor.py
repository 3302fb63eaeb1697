"""Scheduled checks: devices out of contact, DHO measurements that did not arrive, and
receipts (AppRec, $status) that did not come by their deadline.

Silence produces no message, so the hub makes one. Each finding is journaled through
the same intake as vendor messages, on the internal source `tryggbro-monitor`, and the
built-in `tryggbro-monitor` adapter turns it into an ordinary event (a plain issue:
DetectedIssue). So a finding is durable, deduplicated, enriched, routed, mapped and
delivered exactly like a vendor's alarm, and visible in `tryggbro messages`.

The dedup key names the silence it reports (device and last contact; patient, type and
last measurement), so a crash between journaling and marking the finding, or two
instances checking at once, still journals one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hub.config import RESERVED_SOURCE, MonitorSettings
from hub.contracts import IntakeRequest
from hub.domain.ids import order_key
from hub.domain.model import Category, DeviceRef, Event, RawMessage, StoredMessage
from hub.errors import ConfigError, InputError
from hub.logging import get_logger
from hub.mappings import MappingStore
from hub.store.repository import Repository, StatusReport

log = get_logger("hub.monitor")

MONITOR_SOURCE = RESERVED_SOURCE
DEVICE_TYPES_TABLE = "device-types"
NO_CONTACT = "no_contact"
MEASUREMENT_MISSING = "measurement_missing"
MISSING_MEASUREMENT_CODE = "5.3.2"  # vkp-alert-code: måling ikke rapportert
RECEIPT_OVERDUE = "receipt_overdue"
# A missing receipt is about the area of what was sent: the top-level vkp-alert-code.
AREA_CODES = {Category.MEDICATION: "1", Category.LOCATION: "2", Category.SAFETY_ALARM: "3",
              Category.SUPERVISION: "4", Category.HOME_FOLLOW_UP: "5",
              Category.DOOR_LOCK: "6", Category.NURSE_CALL: "7"}


class DeviceTypes:
    """`mappings/device-types.toml`: the kinds of device and their "no contact" issue."""

    def __init__(self, mappings: MappingStore) -> None:
        table = mappings.table(DEVICE_TYPES_TABLE)
        self.categories = dict(table.section("categories").entries)
        self.codes = table.section("no_contact_codes")
        self.texts = table.section("no_contact_texts")
        problems = []
        for name, category in self.categories.items():
            if category not in set(Category):
                problems.append(f"[categories] {name} = {category!r} is not a category")
            if self.codes.get(name) is None:
                problems.append(f"[no_contact_codes] has no code for {name!r}")
        if problems:
            raise ConfigError(f"{table.file}: " + "; ".join(problems))

    @property
    def names(self) -> list[str]:
        return sorted(self.categories)


class MonitorAdapter:
    """Reads the monitor's own findings back as events (the adapter of its source)."""

    def __init__(self, mappings: MappingStore) -> None:
        self.types = DeviceTypes(mappings)

    def intake_key(self, request: IntakeRequest) -> str | None:
        raise InputError("internal-source", "the monitor source takes no input from outside",
                         403)

    def parse(self, message: StoredMessage) -> list[Event]:
        finding = json.loads(message.body)
        at = datetime.fromisoformat(finding["checked_at"])
        device = DeviceRef(finding["device_id"], type=finding.get("device_type"))
        if finding["check"] == NO_CONTACT:
            dtype = finding.get("device_type") or ""
            category = Category(self.types.categories.get(dtype, Category.DEVICE_HEALTH))
            return [Event(
                source=finding["source"], business_key=message.dedup_key, kind=NO_CONTACT,
                category=category, occurred_at=at, device=device,
                code=self.types.codes.lookup(dtype), severity="moderate",
                detail=self.types.texts.lookup(dtype), priority=None,
            )]
        if finding["check"] == MEASUREMENT_MISSING:
            return [Event(
                source=finding["source"], business_key=message.dedup_key,
                kind=MEASUREMENT_MISSING, category=Category.HOME_FOLLOW_UP, occurred_at=at,
                device=device, code=MISSING_MEASUREMENT_CODE, severity="moderate",
                detail=f"Måling ikke rapportert (measurement not reported): "
                       f"{finding['measurement_type']}",
                extra={"measurement_type": finding["measurement_type"]},
            )]
        if finding["check"] == RECEIPT_OVERDUE:
            category = Category(finding["category"])
            return [Event(
                source=finding["source"], business_key=message.dedup_key,
                kind=RECEIPT_OVERDUE, category=category, occurred_at=at, device=device,
                code=AREA_CODES.get(category), severity="moderate",
                detail=f"Ingen kvittering (no receipt) from {finding['destination']} by "
                       f"{finding['deadline']} for message {finding['correlation_id']}",
                extra={"destination": finding["destination"],
                       "correlation_id": finding["correlation_id"],
                       "delivery_id": finding["delivery_id"]},
            )]
        raise ValueError(f"unknown monitor check {finding['check']!r}")


Submit = Callable[[RawMessage], Awaitable[Any]]


class Monitor:
    """Runs the checks every `interval` seconds in the process that owns intake."""

    def __init__(self, repo: Repository, submit: Submit, interval: float,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.repo = repo
        self.submit = submit
        self.interval = interval
        self.clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check_once()
            except Exception:
                log.exception("monitor check failed; trying again next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def check_once(self) -> int:
        """Journal a finding for every silence found now. Returns how many."""
        now = self.clock()
        found = 0
        for dev in await asyncio.to_thread(self.repo.silent_devices, now):
            await self.submit(_finding(
                f"no-contact|{dev.source}|{dev.device_id}|{dev.since.isoformat()}",
                {"check": NO_CONTACT, "source": dev.source, "device_id": dev.device_id,
                 "device_type": dev.device_type, "since": dev.since.isoformat(),
                 "expected_minutes": dev.heartbeat_seconds // 60,
                 "checked_at": now.isoformat()}, now))
            await asyncio.to_thread(self.repo.mark_no_contact, dev.source, dev.device_id, now)
            log.warning("device out of contact", source=dev.source, device=dev.device_id,
                        silent_minutes=int((now - dev.since).total_seconds() // 60))
            found += 1
        for miss in await asyncio.to_thread(self.repo.missing_measurements, now):
            e = miss.enrolment
            # The patient is named in the key only by a pseudonym: keys are shown in logs.
            who = order_key(e.patient)
            await self.submit(_finding(
                f"missing-measurement|{who}|{miss.type}|{miss.since.isoformat()}",
                {"check": MEASUREMENT_MISSING, "source": e.source, "device_id": e.device_id,
                 "measurement_type": miss.type, "since": miss.since.isoformat(),
                 "every_hours": miss.every.total_seconds() / 3600,
                 "checked_at": now.isoformat()}, now))
            await asyncio.to_thread(self.repo.mark_measurement_alerted, e.patient, miss.type,
                                    miss.since, now)
            log.warning("measurement missing", source=e.source, device=e.device_id,
                        measurement=miss.type)
            found += 1
        for late in await asyncio.to_thread(self.repo.overdue_receipts, now):
            await self.submit(_finding(
                f"receipt-overdue|{late.destination}|{late.correlation_id}",
                {"check": RECEIPT_OVERDUE, "source": late.source, "device_id": late.device_id,
                 "category": late.category, "destination": late.destination,
                 "correlation_id": late.correlation_id, "delivery_id": late.delivery_id,
                 "deadline": late.deadline.isoformat(), "checked_at": now.isoformat()}, now))
            await asyncio.to_thread(self.repo.mark_receipt_alerted, late.delivery_id, now)
            log.warning("receipt overdue", destination=late.destination,
                        delivery_id=late.delivery_id, correlation_id=late.correlation_id)
            found += 1
        return found


def _finding(key: str, body: dict[str, Any], now: datetime) -> RawMessage:
    return RawMessage(MONITOR_SOURCE, key, "application/json",
                      json.dumps(body, separators=(",", ":")).encode(), now)


# ---------------------------------------------------------------------------------------
# Outbox age: a destination that has not taken our deliveries for too long
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxAlert:
    """A destination whose oldest undelivered delivery is past its threshold."""

    destination: str
    age_seconds: float
    threshold_seconds: float
    alarm: bool  # raised by an alarm delivery (the sooner threshold)

    def as_dict(self) -> dict[str, Any]:
        return {"age_seconds": round(self.age_seconds, 1),
                "threshold_seconds": self.threshold_seconds, "alarm": self.alarm}


def outbox_alerts(report: StatusReport, settings: MonitorSettings) -> dict[str, OutboxAlert]:
    """Destinations in alert now, from the outbox rows (so every process agrees)."""
    found: dict[str, OutboxAlert] = {}
    for dest, age in report.oldest_pending_alarm_seconds.items():
        if age >= settings.outbox_age_alarm_alert_seconds:
            found[dest] = OutboxAlert(dest, age, settings.outbox_age_alarm_alert_seconds, True)
    for dest, age in report.oldest_pending_seconds.items():
        if dest not in found and age >= settings.outbox_age_alert_seconds:
            found[dest] = OutboxAlert(dest, age, settings.outbox_age_alert_seconds, False)
    return found


class OutboxWatch:
    """Logs an outbox-age alert when it is raised and when it clears (the metric
    `tryggbro_outbox_age_alert` and `/admin/status` show it at any time)."""

    def __init__(self, repo: Repository, settings: MonitorSettings) -> None:
        self.repo = repo
        self.settings = settings
        self.active: dict[str, OutboxAlert] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check_once()
            except Exception:
                log.exception("outbox age check failed; trying again next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.outbox_check_seconds)

    async def check_once(self) -> dict[str, OutboxAlert]:
        report = await asyncio.to_thread(self.repo.status)
        now = outbox_alerts(report, self.settings)
        for dest, alert in now.items():
            if dest not in self.active or (alert.alarm and not self.active[dest].alarm):
                log.error("outbox age alert: deliveries are not getting through",
                          destination=dest, oldest_seconds=round(alert.age_seconds, 1),
                          threshold_seconds=alert.threshold_seconds, alarm=alert.alarm,
                          pending=report.deliveries.get(dest, {}).get("pending", 0))
        for dest in set(self.active) - set(now):
            log.info("outbox age alert cleared", destination=dest)
        self.active = now
        return now
