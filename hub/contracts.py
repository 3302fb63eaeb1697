"""The interfaces plugins implement and the context objects the hub hands them.

Hook signatures live in `hub.hookspecs`; this module holds the types those hooks
register or receive, so a plugin author reads one file for the "what" and one for the
"when".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable

from pydantic import BaseModel

from hub.domain.ids import resource_id
from hub.domain.model import Enrolment, Event, OutboundDelivery, Outcome, StoredMessage
from hub.domain.routing import RouteRule
from hub.mappings import MappingStore

T = TypeVar("T")
MaybeAwaitable: TypeAlias = T | Awaitable[T]


@dataclass(frozen=True, slots=True)
class IntakeRequest:
    """What an adapter sees at intake, before anything is stored."""

    source: str
    content_type: str
    body: bytes
    headers: Mapping[str, str]  # lower-case names


@runtime_checkable
class Adapter(Protocol):
    """Turns one source's bytes into canonical events.

    `intake_key` runs before the message is stored and must be cheap: it checks the
    body is well-formed and returns the sender's own id for the message (the dedup key),
    or None if the body has none (the hub then uses the `Idempotency-Key` or
    `webhook-id` header). Raise `hub.errors.InputError` for input that cannot be taken.

    `parse` runs after the message is journaled and acknowledged. An exception fails
    only this message; it is kept and can be re-run after a fix.

    An adapter of an alarm source may declare `intake_priority = Priority.ALARM` (a class
    attribute, optional): its messages are journaled with that priority and processing
    takes them ahead of other traffic. It only changes the order of processing; per-key
    delivery order is kept regardless.
    """

    def intake_key(self, request: IntakeRequest) -> str | None: ...

    def parse(self, message: StoredMessage) -> list[Event]: ...


@dataclass(frozen=True, slots=True)
class AdapterSetup:
    """Given to an adapter factory once per configured source that uses it."""

    source: str
    options: Mapping[str, Any]
    mappings: MappingStore


AdapterFactory = Callable[[AdapterSetup], Adapter]
RegisterAdapter = Callable[[str, AdapterFactory], None]


@runtime_checkable
class Destination(Protocol):
    """Sends deliveries somewhere and says how it went.

    `send` must be idempotent in effect: the hub delivers at least once, and a retry
    after a crash or a timeout sends the same payload (same resource ids) again.
    Return an `Outcome`; exceptions are treated as a retry with the exception as reason.
    """

    async def send(self, delivery: OutboundDelivery) -> Outcome: ...

    async def aclose(self) -> None: ...


DestinationFactory = Callable[[str, Any], Destination]  # (name, validated settings)


@dataclass(frozen=True, slots=True)
class DestinationType:
    """A kind of destination: its settings model (the TOML keys) and its factory."""

    name: str
    settings_model: type[BaseModel]
    factory: DestinationFactory


RegisterDestination = Callable[[DestinationType], None]


@runtime_checkable
class Source(Protocol):
    """A listener that receives messages and hands them to intake (MLLP, TCP alarms…)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceType:
    """A kind of source: settings model and factory `(name, settings, intake) -> Source`."""

    name: str
    settings_model: type[BaseModel]
    factory: Callable[[str, Any, Any], Source]


RegisterSource = Callable[[SourceType], None]

RouteEndpoint = Callable[..., Any]
RegisterRoute = Callable[[str, RouteEndpoint, list[str]], None]


@dataclass(frozen=True, slots=True)
class EnrichContext:
    """Given to `hub_enrich_event`: where the event came from."""

    message_id: int
    lookup_device: Callable[[str, str, datetime], Enrolment | None]


@dataclass(frozen=True, slots=True)
class RouteContext:
    """Given to `hub_route_event`: the configured rules and destinations."""

    rules: Sequence[RouteRule]
    destinations: frozenset[str]


@dataclass(frozen=True, slots=True)
class MapContext:
    """Given to `hub_map_event`: the enrolment and the id helpers for this event."""

    message_id: int
    dedup_key: str
    seq: int
    enrolment: Enrolment
    mappings: MappingStore

    def resource_id(self, event: Event, resource_type: str) -> str:
        """Deterministic id for the `resource_type` resource describing this event's thing."""
        return resource_id(event.source, event.business_key, resource_type)
