"""Built-in enrichment: who an event is about.

A device event gets its patient from the device registry (device → patient,
municipality). A hospital message (HL7 v2 ADT/lab) names its patient itself: its adapter
puts the enrolment on the event (`Event.enrolment`: the patient from PID-3 under the
source's cooperation agreement), and that is used as is.
"""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import EnrichContext
from hub.domain.model import Enrolment, Event


@hookimpl(trylast=True)
def hub_enrich_event(event: Event, context: EnrichContext) -> Enrolment | None:
    if event.enrolment is not None:
        return event.enrolment
    return context.lookup_device(event.source, event.device.id, event.occurred_at)
