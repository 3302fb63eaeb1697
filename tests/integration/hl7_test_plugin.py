"""A test-only plugin: the adapter `test-hl7v2-journal` for MLLP source tests.

The MLLP source does not depend on the real `hl7v2` adapter (written elsewhere); its
tests need an adapter name for the config and check the journal, not the mapping. This
adapter reads the stored message back with the same decoder as the source and emits no
events, so processing marks the message done.
"""

from __future__ import annotations

from hub import hookimpl
from hub.contracts import AdapterSetup, IntakeRequest
from hub.domain.model import Event, StoredMessage
from hub.hl7v2.wire import decode

ADAPTER = "test-hl7v2-journal"


class JournalOnlyAdapter:
    def __init__(self, setup: AdapterSetup) -> None:
        self.source = setup.source

    def intake_key(self, request: IntakeRequest) -> str | None:
        return decode(request.body).header.dedup_key

    def parse(self, message: StoredMessage) -> list[Event]:
        decode(message.body, default_charset=message.transport.get("charset", "utf-8"))
        return []


@hookimpl
def hub_register_adapters(register):
    register(ADAPTER, JournalOnlyAdapter)
