"""Built-in enrichment: the device registry (device → patient, municipality)."""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import EnrichContext
from hub.domain.model import Enrolment, Event


@hookimpl(trylast=True)
def hub_enrich_event(event: Event, context: EnrichContext) -> Enrolment | None:
    return context.lookup_device(event.source, event.device.id, event.occurred_at)
