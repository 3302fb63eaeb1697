"""The plugin contract: every hook a Tryggbro plugin can implement.

Plugins are modules or objects with functions marked `@hub.hookimpl` whose names match
the specs below. Built-in behaviour is registered the same way (entry-point group
`tryggbro`), so any of it can be replaced or extended.

Rules that hold for every hook:
- Hooks are synchronous. A hook may return an awaitable instead of a value; the hub
  awaits it. Never mark an implementation `async def` under a wrapper.
- Collecting hooks call every implementation, last registered first (pluggy's LIFO
  order); built-ins use `trylast=True` so third-party plugins come first.
- Documentation of every hook lives in `docs/plugins.md`; a test fails if one is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from hub.contracts import (
        EnrichContext,
        MapContext,
        MaybeAwaitable,
        RegisterAdapter,
        RegisterDestination,
        RegisterRoute,
        RegisterSource,
        RouteContext,
    )
    from hub.domain.model import Enrolment, Event, Outcome, PatientContext
    from hub.domain.routing import RouteDecision

PROJECT = "hub"
hookspec = pluggy.HookspecMarker(PROJECT)


# ---------------------------------------------------------------------------------------
# Registries: called once at start-up.
# ---------------------------------------------------------------------------------------


@hookspec
def hub_register_adapters(register: RegisterAdapter) -> None:
    """Register adapters that turn a source's bytes into events.

    :param register: call ``register(name, factory)`` once per adapter. ``name`` is what
        a source's ``adapter = "..."`` key refers to; ``factory(setup)`` receives an
        :class:`hub.contracts.AdapterSetup` and returns an :class:`hub.contracts.Adapter`.

    Two plugins registering the same name is a start-up error naming both.
    Returns nothing.
    """


@hookspec
def hub_register_destinations(register: RegisterDestination) -> None:
    """Register destination types (FHIR REST, folder, VKP, MLLP …).

    :param register: call ``register(DestinationType(name, settings_model, factory))``.
        A ``[destinations.X]`` table with ``type = name`` is validated against
        ``settings_model`` and built with ``factory(X, settings)``.

    Returns nothing.
    """


@hookspec
def hub_register_sources(register: RegisterSource) -> None:
    """Register source types: listeners that receive messages (HTTP, MLLP, alarm TCP).

    :param register: call ``register(SourceType(name, settings_model, factory))``.
        ``factory(source_name, settings, intake)`` returns a :class:`hub.contracts.Source`;
        the source must answer its sender only after ``await intake.submit(raw)`` returned.

    Returns nothing.
    """


@hookspec
def hub_register_commands(cli: click.Group) -> None:
    """Add commands to the ``tryggbro`` command line.

    :param cli: the root click group; use ``@cli.command()`` to add to it.

    Returns nothing.
    """


@hookspec
def hub_register_routes(register: RegisterRoute) -> None:
    """Add HTTP endpoints to the gateway's API (a vendor callback, a status page).

    :param register: call ``register(path, endpoint, methods)``; ``endpoint`` is a
        FastAPI endpoint function. Paths under ``/ingest`` and ``/admin`` are reserved.

    Returns nothing.
    """


# ---------------------------------------------------------------------------------------
# Per-event hooks: called in the processing transaction of each message.
# ---------------------------------------------------------------------------------------


@hookspec
def hub_enrich_event(event: Event, context: EnrichContext) -> MaybeAwaitable[Enrolment | None]:
    """Find who and where an event is about: the device's enrolment.

    :param event: the parsed event.
    :param context: the message id and ``lookup_device(source, device_id, at)``, the
        built-in registry lookup of the enrolment valid at time ``at``.
    :returns: an :class:`hub.domain.model.Enrolment`, or None if this plugin does not
        know the device. The first non-None result in call order is used; the built-in
        device registry runs last. An event nobody enrols is held as ``unmatched``.
    """


@hookspec
def hub_patient_context(
    event: Event, enrolment: Enrolment
) -> MaybeAwaitable[PatientContext | None]:
    """Tell what is known about the event's patient (care zone, household, door-lock
    system), for the resources the event is mapped to.

    :param event: the event, enrolled and about to be mapped (filtered events are not
        asked about).
    :param enrolment: its enrolment (the patient's identifier).
    :returns: a :class:`hub.domain.model.PatientContext`, or None. Results are merged in
        call order (the first value of each field wins) into ``enrolment.context``, which
        ``hub_map_event`` sees. Best effort: an implementation that raises or times out
        is logged (without the patient) and counted, and the event goes on without it.
        Called outside any database transaction; an awaitable runs on the hub's loop.
    """


@hookspec
def hub_map_event(event: Event, context: MapContext) -> MaybeAwaitable[list[dict[str, Any]] | None]:
    """Turn an event into FHIR R4 resources (plain JSON dicts) in the VKP R4 shape.

    :param event: the parsed event.
    :param context: the enrolment, the message's dedup key and id helpers; use
        ``context.resource_id(event, "DetectedIssue")`` for ids so that replays update
        instead of duplicating.
    :returns: resources to add to the event's Bundle, or None. The results of all
        plugins are concatenated in call order; the built-in VKP mapping runs last. An
        event nobody maps fails its message with a reason.
    """


@hookspec
def hub_route_event(
    event: Event, enrolment: Enrolment | None, context: RouteContext
) -> RouteDecision | None:
    """Decide where an event goes, or that it is filtered.

    :param event: the parsed event.
    :param enrolment: the device's enrolment, or None if it has none (yet).
    :param context: the configured ``[[routes]]`` rules and destination names.
    :returns: a :class:`hub.domain.routing.RouteDecision` or None. Decisions of all
        plugins are combined: any "deliver" wins over "filter" and destinations are
        united. No decision at all fails the message ("no route"), so nothing is dropped
        silently. The built-in router applies the ``[[routes]]`` of the configuration.
    """


@hookspec
def hub_delivery_outcome(
    delivery_id: int, destination: str, outcome: Outcome, state: str, alarm: bool
) -> None:
    """Be told the outcome of every delivery attempt, after it is recorded.

    :param delivery_id: the delivery's id (see ``tryggbro show``).
    :param destination: the destination's configured name.
    :param outcome: what the destination answered.
    :param state: the delivery's new state (``delivered``, ``pending``, ``dead``,
        ``awaiting_receipt``).
    :param alarm: whether the delivery carries an alarm.

    For alerting and audit. Must be quick and must not raise; errors are logged and
    ignored. Returns nothing.
    """
