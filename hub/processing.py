"""Processing: journaled messages become events, FHIR Bundles and deliveries.

For each message: parse (the source's adapter) → enrich (device registry) → route (rules)
→ map (FHIR R4, VKP shape) → validate → plan deliveries. The results of a message are
written atomically with its new state (a savepoint per message inside one transaction per
batch, so a batch costs one fsync). Routing comes before mapping so that filtered events
(heartbeats, tests) are never mapped.

A plugin that raises fails only its message: it is kept as `failed` with the reason and
can be re-run with `tryggbro reprocess`. Nothing is dropped silently: a filtered event
names the rule that filtered it, and an event no rule matches fails its message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from hub.contracts import Adapter, EnrichContext, MapContext, RouteContext
from hub.domain.ids import bundle_id, order_key
from hub.domain.model import (
    Category,
    DeliveryState,
    DeviceRef,
    Enrolment,
    Event,
    EventState,
    MessageState,
    PatientContext,
    ReceiptStatus,
    StoredMessage,
)
from hub.domain.privacy import safe_error_text
from hub.domain.routing import RouteAction, RouteDecision, RouteRule
from hub.errors import HubError, ValidationFailure
from hub.faults import crashpoint
from hub.fhir import transaction_bundle, validate_bundle
from hub.logging import bound_message, get_logger
from hub.mappings import MappingStore
from hub.measurements import assess
from hub.monitor import MONITOR_SOURCE
from hub.store.repository import (
    DeviceRecord,
    MessageOutcome,
    Origin,
    PlannedDelivery,
    PlannedEvent,
    Repository,
)

log = get_logger("hub.processing")

Resolver = Callable[[Any], Any]  # resolves a hook result that may be an awaitable


class MessageFailed(Exception):
    """Processing of one message stopped; `stage` says where, the message says why."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage


class Unmatched(Exception):
    """An event would be delivered but its device has no valid enrolment."""


class BatchLookups:
    """What the messages of one batch need from the database, read once.

    `snapshots` starts with the newest routed snapshot per (source, business key) and is
    updated as the batch routes newer ones, so an older snapshot later in the same batch
    is superseded too.
    """

    def __init__(self, repo: Repository, devices: dict[tuple[str, str], DeviceRecord],
                 snapshots: dict[tuple[str, str], datetime],
                 origins: dict[str, Origin] | None = None) -> None:
        self.repo = repo
        self.devices = devices
        self.snapshots = snapshots
        self.origins = origins or {}

    def lookup_device(self, source: str, device_id: str, at: datetime) -> Enrolment | None:
        key = (source, device_id)
        if key not in self.devices:  # a plugin asked about a device outside the batch
            record = self.repo.devices_for([key]).get(key)
            if record is None:
                return None
            self.devices[key] = record
        return self.devices[key].enrolment_at(at)

    def why_unmatched(self, source: str, device_id: str, at: datetime) -> str:
        record = self.devices.get((source, device_id))
        state = record.state_at(at) if record is not None else "not enrolled"
        if state == "enrolled":  # a plugin's enrichment declined it
            state = "not matched by enrichment"
        return state


class Pipeline:
    """parse → enrich → route → map → validate for messages, no writes."""

    def __init__(
        self,
        *,
        hook: Any,
        adapters: Mapping[str, Adapter],
        mappings: MappingStore,
        rules: Iterable[RouteRule],
        destinations: Iterable[str],
        repo: Repository,
        resolve: Resolver,
    ) -> None:
        self.hook = hook
        self.adapters = adapters
        self.mappings = mappings
        self.route_context = RouteContext(tuple(rules), frozenset(destinations))
        self.repo = repo
        self.resolve = resolve
        self.patient_context_misses = 0  # hub_patient_context failures (log + count)

    def run_batch(self, messages: Sequence[StoredMessage]) -> list[MessageOutcome]:
        """Decide what happens to each message. Never raises: failures become outcomes.

        All messages are parsed first, so the device enrolments and the newest snapshot
        states they need are read with one query each for the whole batch.
        """
        parsed: list[tuple[StoredMessage, list[Event] | MessageOutcome]] = []
        for msg in messages:
            with bound_message(msg.id):
                try:
                    parsed.append((msg, self._parse(msg)))
                except MessageFailed as exc:
                    parsed.append((msg, MessageOutcome(msg.id, MessageState.FAILED, str(exc))))
        events = [ev for _, result in parsed if isinstance(result, list) for ev in result]
        receipts = {ev.receipt.correlation_id for ev in events if ev.receipt is not None}
        origins = self.repo.origins(receipts) if receipts else {}
        # An answer is about the patient of what it answers: it is enriched as that.
        keys = {(ev.source, ev.device.id) for ev in events}
        keys |= {(o.source, o.device_id) for o in origins.values()}
        batch = BatchLookups(
            self.repo,
            self.repo.devices_for(keys),
            self.repo.newest_snapshots({(ev.source, ev.business_key) for ev in events
                                        if ev.snapshot}),
            origins,
        )
        outcomes = []
        for msg, result in parsed:
            with bound_message(msg.id):
                outcomes.append(result if isinstance(result, MessageOutcome)
                                else self._plan_message(msg, result, batch))
        return outcomes

    def _plan_message(self, msg: StoredMessage, events: list[Event],
                      batch: BatchLookups) -> MessageOutcome:
        # Any message from a device, heartbeat or not, shows it is alive: its last-seen
        # time moves even if the message is then held or fails. The monitor's findings
        # about a device are not the device speaking.
        seen = ([] if msg.source == MONITOR_SOURCE
                else [(ev.source, ev.device.id, msg.received_at) for ev in events])
        measured: list[tuple[str, str, str, datetime]] = []
        try:
            planned = [self._plan(msg, seq, ev, batch, measured) for seq, ev in enumerate(events)]
        except Unmatched as exc:
            return MessageOutcome(msg.id, MessageState.UNMATCHED, str(exc), seen=seen)
        except MessageFailed as exc:
            return MessageOutcome(msg.id, MessageState.FAILED, str(exc), seen=seen)
        if not planned:
            return MessageOutcome(msg.id, MessageState.FILTERED, "the adapter found no events")
        if any(p.state in (EventState.ROUTED, EventState.RECEIPT) for p in planned):
            return MessageOutcome(msg.id, MessageState.PROCESSED, None, planned, seen, measured)
        rules = sorted({p.filtered_by or "" for p in planned})
        return MessageOutcome(msg.id, MessageState.FILTERED, "filtered by " + ", ".join(rules),
                              planned, seen, measured)

    def _parse(self, msg: StoredMessage) -> list[Event]:
        adapter = self.adapters.get(msg.source)
        if adapter is None:
            raise MessageFailed("parse", f"source {msg.source!r} is not configured any more")
        try:
            events = adapter.parse(msg)
        except Exception as exc:
            raise MessageFailed("parse", _describe(exc)) from exc
        for ev in events:
            if not isinstance(ev, Event):
                raise MessageFailed("parse", f"adapter returned {type(ev).__name__}, not Event")
        return list(events)

    def _plan(self, msg: StoredMessage, seq: int, event: Event, batch: BatchLookups,
              measured: list[tuple[str, str, str, datetime]]) -> PlannedEvent:
        if event.receipt is not None:
            event, settled = self._correlate(event, seq, batch)
            if settled is not None:
                return settled
        enrolment = self._enrich(msg, event, batch)
        if enrolment is not None and event.measurement is not None:
            event = self._assess_measurement(event, enrolment)
        decision = self._route(event, enrolment)
        base = PlannedEvent(
            seq=seq, source=event.source, business_key=event.business_key, kind=event.kind,
            category=str(event.category), code=event.code, device_id=event.device.id,
            occurred_at=event.occurred_at, priority=event.effective_priority,
            snapshot=event.snapshot, state=EventState.FILTERED, summary=_summary(event),
        )
        if decision.action is RouteAction.FILTER:
            return replace(base, filtered_by=", ".join(decision.rules))
        if enrolment is None:
            why = batch.why_unmatched(event.source, event.device.id, event.occurred_at)
            raise Unmatched(
                f"device {event.device.id!r} of source {event.source!r} has no valid "
                f"enrolment at {event.occurred_at.isoformat()} ({why}); the message is held "
                "until the device is enrolled with a legal basis"
            )
        priority = decision.priority if decision.priority is not None else event.effective_priority
        if event.snapshot:
            key = (event.source, event.business_key)
            newest = batch.snapshots.get(key)
            if newest is not None and newest > event.occurred_at:
                return replace(base, priority=priority,
                               filtered_by="superseded-by-newer-snapshot")
            batch.snapshots[key] = event.occurred_at
        enrolment = self._patient_context(event, enrolment)
        bid = bundle_id(msg.source, msg.dedup_key, seq)
        resources = self._map(msg, seq, event, enrolment)
        bundle = transaction_bundle(bid, event.occurred_at, resources)
        try:
            validate_bundle(bundle, self.mappings)
        except ValidationFailure as exc:
            raise MessageFailed("validate", "; ".join(exc.problems[:10])) from exc
        if event.measurement is not None:
            m, patient = event.measurement, enrolment.patient
            for mtype in (m.type, *(c.type for c in m.components)):
                measured.append((patient.system, patient.value, mtype, m.effective_at))
        okey = order_key(enrolment.patient)
        return replace(
            base, priority=priority, state=EventState.ROUTED, bundle_id=bid,
            payload=json.dumps(bundle, ensure_ascii=False, separators=(",", ":")),
            deliveries=[PlannedDelivery(d, priority, okey) for d in decision.destinations],
            receipt=event.receipt,
        )

    def _correlate(self, event: Event, seq: int, batch: BatchLookups
                   ) -> tuple[Event, PlannedEvent | None]:
        """A receipt or answer names something we sent: find it.

        A receipt (AppRec) settles that delivery in this message's transaction and is
        not routed. An answer becomes an event about the same patient and device as
        what it answers (so it is enriched, routed and mapped like any event), with
        `extra["about"]` naming the resources that were sent.
        """
        receipt = event.receipt
        assert receipt is not None
        origin = batch.origins.get(receipt.correlation_id)
        if origin is None or (receipt.destination and origin.destination != receipt.destination):
            to = f" to {receipt.destination}" if receipt.destination else ""
            raise MessageFailed(
                "correlate", f"no delivery{to} was sent with id {receipt.correlation_id}; the "
                f"{event.kind} cannot be matched (reprocess it once the delivery exists)")
        category = Category(origin.category)
        if receipt.status is not ReceiptStatus.ANSWER:
            if origin.state not in (DeliveryState.AWAITING_RECEIPT.value,
                                    DeliveryState.DELIVERED.value, DeliveryState.DEAD.value):
                raise MessageFailed(
                    "correlate", f"delivery {origin.delivery_id} is {origin.state}, not awaiting "
                    "a receipt (it was re-sent); reprocess this receipt once it is")
            summary = {**_summary(event), "receipt": receipt.status.value,
                       "delivery": origin.delivery_id}
            return event, PlannedEvent(
                seq=seq, source=event.source, business_key=event.business_key, kind=event.kind,
                category=str(category), code=event.code, device_id=origin.device_id,
                occurred_at=event.occurred_at, priority=event.effective_priority,
                snapshot=False, state=EventState.RECEIPT, summary=summary,
                receipt=replace(receipt, destination=origin.destination),
            )
        answered = replace(
            event, source=origin.source, category=category,
            device=DeviceRef(origin.device_id), receipt=replace(receipt,
                                                                 destination=origin.destination),
            extra={**event.extra, "about": list(origin.references),
                   "answered_destination": origin.destination})
        return answered, None

    def _enrich(self, msg: StoredMessage, event: Event, batch: BatchLookups) -> Enrolment | None:
        context = EnrichContext(msg.id, batch.lookup_device)
        try:
            results = self.hook.hub_enrich_event(event=event, context=context)
            for result in results:
                value = self.resolve(result)
                if value is not None:
                    if not isinstance(value, Enrolment):
                        raise MessageFailed("enrich", f"a plugin returned {type(value).__name__}")
                    return value
        except MessageFailed:
            raise
        except Exception as exc:
            raise MessageFailed("enrich", _describe(exc)) from exc
        return None

    def _patient_context(self, event: Event, enrolment: Enrolment) -> Enrolment:
        """What plugins know about the patient (hub_patient_context), best effort: a
        plugin that fails is logged without the patient, and the event goes on."""
        merged = enrolment.context or PatientContext()
        try:
            for result in self.hook.hub_patient_context(event=event, enrolment=enrolment):
                value = self.resolve(result)
                if isinstance(value, PatientContext):
                    merged = merged.merged(value)
        except Exception as exc:
            self.patient_context_misses += 1
            log.warning("patient context not available; mapped without it",
                        reason=_describe(exc), misses=self.patient_context_misses)
        return replace(enrolment, context=merged) if merged else enrolment

    def _assess_measurement(self, event: Event, enrolment: Enrolment) -> Event:
        """A DHO measurement outside the patient's plan is an alert (5.1) before routing,
        so routes and priority see it."""
        try:
            return assess(event, enrolment, self.mappings.measurements)
        except HubError as exc:
            raise MessageFailed("map", _describe(exc)) from exc

    def _route(self, event: Event, enrolment: Enrolment | None) -> RouteDecision:
        try:
            decisions = self.hook.hub_route_event(
                event=event, enrolment=enrolment, context=self.route_context)
            decision = RouteDecision.combine(decisions)
        except Exception as exc:
            raise MessageFailed("route", _describe(exc)) from exc
        if decision is None:
            raise MessageFailed(
                "route", f"no route matches kind={event.kind} category={event.category} "
                f"code={event.code}; add a [[routes]] rule (deliver or filter) and reprocess")
        unknown = [d for d in decision.destinations if d not in self.route_context.destinations]
        if unknown:
            raise MessageFailed("route", f"routed to unknown destination(s) {unknown}")
        return decision

    def _map(self, msg: StoredMessage, seq: int, event: Event,
             enrolment: Enrolment) -> list[dict[str, Any]]:
        context = MapContext(msg.id, msg.dedup_key, seq, enrolment, self.mappings)
        resources: list[dict[str, Any]] = []
        try:
            for result in self.hook.hub_map_event(event=event, context=context):
                value = self.resolve(result)
                if value:
                    resources.extend(value)
        except Exception as exc:
            raise MessageFailed("map", _describe(exc)) from exc
        if not resources:
            raise MessageFailed("map", f"no plugin maps events of kind={event.kind} "
                                f"category={event.category}")
        return resources


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HubError):
        return safe_error_text(str(exc))
    return safe_error_text(f"{type(exc).__name__}: {exc}")


def _summary(event: Event) -> dict[str, Any]:
    """What `tryggbro show` prints about an event: codes and times, no free text."""
    summary: dict[str, Any] = {
        "kind": event.kind, "category": str(event.category), "code": event.code,
        "severity": event.severity, "device": event.device.id,
        "occurred_at": event.occurred_at.isoformat(),
    }
    if event.alarm is not None:
        summary["alarm"] = {
            "status": str(event.alarm.status),
            "timeline": [t.code for t in event.alarm.timeline],
            "closed": event.alarm.closed_at is not None,
        }
    return summary


class Processor:
    """Claims batches of received messages and runs them through the pipeline."""

    def __init__(self, repo: Repository, pipeline: Pipeline, worker: str, *,
                 batch_size: int, lease_seconds: float, max_attempts: int) -> None:
        self.repo = repo
        self.pipeline = pipeline
        self.worker = worker
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts

    def run_batch(self) -> tuple[int, int]:
        """Process one batch. Returns (messages processed, deliveries created)."""
        messages = self.repo.claim_messages(self.worker, self.batch_size, self.lease_seconds,
                                            self.max_attempts)
        if not messages:
            return (0, 0)
        outcomes = self.pipeline.run_batch(messages)
        crashpoint("mid_processing")
        lost = set(self.repo.save_outcomes(self.worker, outcomes))
        deliveries = 0
        for outcome in outcomes:
            with bound_message(outcome.message_id):
                if outcome.message_id in lost:
                    log.warning("processing result discarded: lease lost to another worker")
                    continue
                n = sum(len(e.deliveries) for e in outcome.events)
                deliveries += n
                if outcome.state in (MessageState.FAILED, MessageState.UNMATCHED):
                    log.warning("message held", state=outcome.state.value,
                                reason=outcome.reason)
                else:
                    log.info("message processed", state=outcome.state.value,
                             events=len(outcome.events), deliveries=n)
        return (len(messages), deliveries)

